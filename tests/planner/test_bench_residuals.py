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


def test_implied_prefill_share_is_littles_law_over_the_dense_peak() -> None:
    """64 clients, 2000-token prompts, 100 tokens at 9.74 ms after a 121.73 ms TTFT: 58.4 req/s, so
    117k prompt tokens/s x 2 x 7.50e9 active parameters of Llama-3.1-8B = 1.75 PFLOP/s of an H200's
    1979 TFLOPS of fp8: 88.6% of peak for the prompts' weight GEMMs alone."""
    bench = load_bench()
    row = {
        "mode": "agg",
        "batch_size": "64",
        "model_path": "nvidia/Llama-3.1-8B-Instruct-FP8",
        "system": "h200_sxm",
        "backend": "vllm",
        "gemm_quant_mode": "fp8",
        "tp_size": "1",
        "isl": "2000",
        "osl": "100",
        "silicon_ttft_ms": "121.73",
        "silicon_tpot_ms": "9.74",
    }
    share = bench.implied_prefill_share(row)
    assert share is not None
    assert abs(share - 0.886) < 0.005
    assert bench.implied_prefill_share({**row, "mode": "disagg"}) is None
