"""vLLM's own ``vllm serve`` parser (e2e/runtime/vllm_args.py, tools.sh group vllm-parser) judges the rendered args.

No cluster needed: one parser server for the module, asked through the stdlib client the engine
containers use.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness import ROOT
from e2e.runtime import vllm_args
from e2e.serving import runtime_bin_dir

SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
STARTUP_TIMEOUT = 120.0


def _containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every container spec anywhere in a rendered object (Deployment, LeaderWorkerSet, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "containers" and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def rendered_engine_args(sample: Path) -> list[list[str]]:
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "disagg"), "render", "-f", str(sample)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    found = []
    for doc in yaml.safe_load_all(out.stdout):
        for container in _containers(doc):
            if container.get("name") == "vllm":
                assert container["command"] == ["vllm", "serve"], container["command"]
                found.append([str(arg) for arg in container["args"]])
    assert found, f"no vllm container rendered for {sample.name}"
    return found


@pytest.fixture(scope="module")
def parser_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    python = runtime_bin_dir() / "vllm-parser-python"
    if not python.exists():
        pytest.fail(f"{python} is missing: run e2e/tools.sh (group vllm-parser)")
    work = tmp_path_factory.mktemp("vllm-args")
    sock, ready, log = work / "parser.sock", work / "ready", work / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(python), "-m", "e2e.runtime.vllm_args", "--serve", str(sock), "--ready-file", str(ready)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the vLLM parser server did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        assert sock.is_socket()
        assert sock.stat().st_mode & 0o777 == 0o666
        yield str(sock)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-4000:]
    assert not sock.exists()


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[list[str]]]:
    """Sample name -> the args of each of its vllm containers."""
    return {sample.stem: rendered_engine_args(sample) for sample in SAMPLES}


@pytest.mark.parametrize("sample", [s.stem for s in SAMPLES])
def test_rendered_engine_args_are_accepted(
    parser_socket: str, rendered: dict[str, list[list[str]]], sample: str
) -> None:
    for args in rendered[sample]:
        assert vllm_args.check(args, parser_socket) is None, args


PLANNED_FLAGS = ("--data-parallel-size=", "--enable-expert-parallel", "--max-num-seqs=", "--max-num-batched-tokens=")


def test_the_samples_render_every_flag_the_planner_decides(rendered: dict[str, list[list[str]]]) -> None:
    """So the parser test above covers them: data and expert parallelism (the MoE sample), the batch
    limit and the step budget (every decoding role)."""
    flags = {
        arg.partition("=")[0] + ("=" if "=" in arg else "")
        for engines in rendered.values()
        for a in engines
        for arg in a
    }
    for flag in PLANNED_FLAGS:
        assert flag in flags, f"no sample renders {flag}"
    moe = rendered["qwen3-235b-moe-expert-parallel"]
    assert any("--data-parallel-size=2" in args and "--enable-expert-parallel" in args for args in moe), moe


@pytest.mark.parametrize(
    "extra",
    [
        "--enable-expert-parallel",
        "--data-parallel-size=2",
        "--max-num-seqs=64",
        "--max-num-batched-tokens=8256",
        "--max-model-len=32768",
        "--kv-cache-dtype=fp8",
        "--kv-cache-dtype=bfloat16",
        "--quantization=fp8",
        "--dtype=float16",
    ],
)
def test_knobs_the_operator_may_add_are_accepted(
    parser_socket: str, rendered: dict[str, list[list[str]]], extra: str
) -> None:
    for engines in rendered.values():
        for args in engines:
            assert vllm_args.check([*args, extra], parser_socket) is None, [*args, extra]


BASE = ["meta-llama/Llama-3.1-8B-Instruct", "--port=8000", "--tensor-parallel-size=1"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("--no-such-flag=1", "unrecognized arguments: --no-such-flag=1"),
        ("--dtype=bf17", "argument --dtype: invalid choice: 'bf17'"),
        ("--kv-cache-dtype=fp9", "Invalid kv_cache_dtype: 'fp9'"),
        ("--quantization=bogusq", "Unknown quantization method: bogusq"),
        ("--quantization=fbgemm_fp8", "The quantization method fbgemm_fp8 is deprecated"),
        (
            '--kv-transfer-config={"kv_connector":"NixlConnector","kv_rol":"kv_both"}',
            "validation error for KVTransferConfig\nkv_rol\n  Unexpected keyword argument",
        ),
    ],
    ids=["unknown-flag", "dtype", "kv-cache-dtype", "quantization", "deprecated-quantization", "kv-transfer-key"],
)
def test_vllm_rejects_with_its_own_message(parser_socket: str, extra: str, message: str) -> None:
    error = vllm_args.check([*BASE, extra], parser_socket)
    assert error is not None, extra
    assert message in error, error


def test_a_bad_request_is_refused(parser_socket: str) -> None:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(parser_socket)
        conn.sendall(b'{"args": "not a list"}\n')
        reply = json.loads(conn.makefile("rb").readline())
    assert reply["ok"] is False
    assert reply["stage"] == "request"


def test_no_server_is_an_error_not_an_accept(tmp_path: Path) -> None:
    error = vllm_args.check(BASE, str(tmp_path / "absent.sock"))
    assert error is not None
    assert "not running" in error
