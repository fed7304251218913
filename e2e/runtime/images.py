"""Image -> program: what runs when a pod names one of the images the operator renders.

No image is pulled or unpacked here; each entry says which local program plays that image, at
which path the image would have it, with which user and environment the image's own config runs
it. Entry points and users are those of the published images: the llm-d router images are
distroless (non-root 65532, program under ``/app``), Envoy's distroless image runs ``envoy`` from
``/usr/local/bin`` as 65532 too, and vLLM's OpenAI image runs ``vllm`` as root.

Two images are played by programs other than their own: Envoy (not installable here) by
``e2e.runtime.envoy``, a stand-in speaking Envoy's ext_proc protocol to the real endpoint picker;
vLLM (needs a GPU) by llm-d-inference-sim behind ``e2e.runtime.vllm``, which checks the rendered
arguments against vLLM's own parser and translates them into the simulator's flags.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from disagg import upstream

ROOT = Path(__file__).resolve().parents[2]
NONROOT = 65532
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Image:
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    user: int = 0
    binaries: dict[str, str] = field(default_factory=dict)
    """path in the container -> binary name in the tool bin dir"""
    scripts: dict[str, str] = field(default_factory=dict)
    """path in the container -> Python module run with this interpreter (a stand-in)"""
    env: dict[str, str] = field(default_factory=dict)
    vllm_parser: bool = False
    """the container asks vLLM's own argument parser (a server the runtime runs) about its args"""


IMAGES: dict[str, Image] = {
    upstream.LLMD_ROUTER_IMAGE: Image(entrypoint=("/app/epp",), user=NONROOT, binaries={"/app/epp": "epp"}),
    upstream.LLMD_SIDECAR_IMAGE: Image(
        entrypoint=("/app/pd-sidecar",), user=NONROOT, binaries={"/app/pd-sidecar": "pd-sidecar"}
    ),
    upstream.ENVOY_IMAGE: Image(
        entrypoint=("/usr/local/bin/envoy",),
        cmd=("-c", "/etc/envoy/envoy.yaml"),
        user=NONROOT,
        scripts={"/usr/local/bin/envoy": "e2e.runtime.envoy"},
    ),
    upstream.VLLM_IMAGE: Image(
        entrypoint=("vllm", "serve"),
        scripts={"/usr/local/bin/vllm": "e2e.runtime.vllm"},
        binaries={"/usr/local/bin/llm-d-inference-sim": "llm-d-inference-sim"},
        env={"HOME": "/root"},
        vllm_parser=True,
    ),
}


def image_of(reference: str) -> Image | None:
    """Only the pinned references (upstream.py): another tag would be another program."""
    return IMAGES.get(reference)


def script_text(module: str) -> str:
    """A launcher for a Python stand-in: this interpreter, this checkout on the path."""
    return f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m {module} "$@"\n'


CONTAINER_MOUNTS = ("/tmp", "/proc", "/sys", "/dev")
"""Where every container gets its own filesystem (launch.py), hiding the host's."""


def hidden_host_dirs() -> list[str]:
    """Host directories a stand-in needs (this checkout and the interpreter's environment) that a
    container's own /tmp would hide, e.g. a checkout cloned under /tmp: bound into the container."""
    needed = [ROOT.resolve(), Path(sys.prefix).resolve(), Path(sys.executable).resolve().parent]
    hidden = [p for p in needed if any(p.is_relative_to(m) and str(p) != m for m in CONTAINER_MOUNTS)]
    return sorted({str(p) for p in hidden if not any(p != q and p.is_relative_to(q) for q in hidden)})


def interpreter_dirs() -> list[str]:
    """Host directories a non-root container must be able to traverse to run a stand-in."""
    dirs: set[str] = set()
    for start in (Path(sys.executable), Path(sys.executable).resolve(), ROOT):
        for parent in start.parents:
            if str(parent) != "/":
                dirs.add(str(parent))
    return sorted(dirs)
