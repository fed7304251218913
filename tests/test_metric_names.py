"""Every ``vllm:`` series the operator, the adapter rules, the chart and the docs read exists in vLLM 0.33.0.

The list of what vLLM 0.33.0 exports is written down from its own source in
tests/data/vllm-0.33.0-metrics.tsv. A name vLLM dropped (``vllm:time_per_output_token_seconds``
went in favour of ``vllm:inter_token_latency_seconds``) would otherwise pass every test, because
llm-d-inference-sim still exports it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from disagg import upstream
from disagg.api.spec import DisaggregatedModelSpec
from disagg.scaling import queries, workload_queries
from tests.conftest import ROOT, SAMPLES, load
from tests.test_render import render_body

VLLM_METRICS = ROOT / "tests" / "data" / f"vllm-{upstream.VLLM_VERSION}-metrics.tsv"
NAME = re.compile(r"vllm:[a-zA-Z_][a-zA-Z0-9_:]*")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
READERS = [
    ROOT / "operator" / "disagg",
    ROOT / "manifests",
    ROOT / "charts",
    ROOT / "docs",
    ROOT / "README.md",
    ROOT / "tests" / "golden",
]
NOT_IN_VLLM = {"vllm:time_per_output_token_seconds", "vllm:gpu_cache_usage_perc"}


def exported() -> dict[str, str]:
    """name -> type, from the list taken from vLLM's source."""
    names: dict[str, str] = {}
    for line in VLLM_METRICS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, kind, *_ = line.split("\t")
        names[name] = kind
    return names


def series_names(name: str, kinds: dict[str, str]) -> str:
    """The metric a series belongs to (histogram series carry _bucket/_sum/_count)."""
    for suffix in HISTOGRAM_SERIES:
        base = name.removesuffix(suffix)
        if base != name and kinds.get(base) == "Histogram":
            return base
    return name


def files() -> list[Path]:
    out: list[Path] = []
    for reader in READERS:
        out += [reader] if reader.is_file() else [p for p in reader.rglob("*") if p.is_file()]
    return [p for p in out if p.suffix in {".py", ".yaml", ".yml", ".json", ".md", ".tpl", ".txt"}]


def test_the_list_is_vllms() -> None:
    kinds = exported()
    assert len(kinds) > 100
    for name in ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:inter_token_latency_seconds"):
        assert name in kinds
    assert not NOT_IN_VLLM & set(kinds)


def test_every_vllm_name_in_the_repository_exists_in_vllm() -> None:
    kinds = exported()
    unknown: dict[str, list[str]] = {}
    for path in files():
        for name in NAME.findall(path.read_text(errors="replace")):
            if series_names(name, kinds) in kinds:
                continue
            # prose that names the dropped metrics to say they are gone is allowed only in these words
            text = path.read_text(errors="replace")
            if name in NOT_IN_VLLM and re.search(rf"{re.escape(name)}`? (no longer exists|is gone)", text):
                continue
            unknown.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert not unknown, f"names vLLM {upstream.VLLM_VERSION} does not export: {unknown}"


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_rendered_queries_read_vllm_names(sample: Path) -> None:
    """What the operator builds at run time (PromQL for scale-to-zero, re-planning, KEDA) too."""
    kinds = exported()
    body = load(sample)
    spec = DisaggregatedModelSpec.model_validate(body["spec"])
    texts = [str(q) for q in vars(queries(spec, namespace="ns", name="m")).values()]
    texts += [str(q) for q in vars(workload_queries(spec, namespace="ns", name="m")).values()]
    keda = {**body, "spec": {**body["spec"], "autoscaling": {"engine": "keda"}}}
    scaled = [o for o in render_body(keda) if o["kind"] == "ScaledObject"]
    assert scaled
    texts += [str(o) for o in scaled]
    names = {series_names(n, kinds) for text in texts for n in NAME.findall(text)}
    assert names, "no vllm: name found: the check would pass vacuously"
    assert names <= set(kinds), names - set(kinds)
