"""The measurement-source helpers of bench/planner_accuracy.py --residuals."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "planner_accuracy.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("planner_accuracy", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measurement_source_names_the_harness() -> None:
    bench = load_bench()
    nested = {"silicon_data_source": "source_file=/home/u/aic-auto-gap-analysis/data/h100_sxm/vllm/x.csv; c=16"}
    flat = {"silicon_data_source": "source_file=2026-04-06.csv; model=GPT-OSS-120B"}
    assert bench.measurement_source(nested) == "aic-auto-gap-analysis"
    assert bench.measurement_source(flat) == "2026-04-06.csv"
    assert bench.measurement_source({}) == "unknown"


def test_concurrency_bands() -> None:
    bench = load_bench()
    assert [bench.concurrency_band(c) for c in (1, 8, 9, 32, 128, 512)] == [
        "c<=8",
        "c<=8",
        "c<=32",
        "c<=32",
        "c<=128",
        "c>128",
    ]
