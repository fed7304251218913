"""The measurement-source helpers of bench/planner_accuracy.py --residuals."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from disagg.planner.estimate import estimate_closed_loop
from disagg.planner.measured import engine_for_row

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


def test_implied_burst_weight_recovers_the_weight_a_row_was_built_with() -> None:
    """A row whose TTFT is the steady state plus a quarter of the burst's excess implies w = 0.25; the
    steady state itself implies 0, and a prefill-first (wave) backend or a disaggregated row is not judged."""
    bench = load_bench()
    row = {
        "mode": "agg",
        "batch_size": "16",
        "model_path": "Qwen/Qwen3-32B",
        "system": "h100_sxm",
        "backend": "vllm",
        "tp_size": "2",
        "isl": "2048",
        "osl": "256",
        "silicon_tpot_ms": "20",
    }
    engine, clients, isl, osl = engine_for_row(row)
    steady = estimate_closed_loop(engine, clients, isl, osl, waves=0.0).ttft_ms
    burst = estimate_closed_loop(engine, clients, isl, osl, waves=1.0).ttft_ms
    assert burst > steady + 100  # 16 prompts of 2048 tokens queue over four 8192-token steps
    for weight in (0.0, 0.25, 1.0):
        implied = bench.implied_burst_weight({**row, "silicon_ttft_ms": str(steady + weight * (burst - steady))})
        assert implied is not None
        assert implied[0] == "vllm"
        assert abs(implied[1] - weight) < 1e-6
    assert bench.implied_burst_weight({**row, "backend": "sglang", "silicon_ttft_ms": "500"}) is None
    assert bench.implied_burst_weight({**row, "mode": "disagg", "silicon_ttft_ms": "500"}) is None
