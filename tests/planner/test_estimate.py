"""Closed-loop estimator and its accuracy on the measured data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from disagg.planner.catalog import PlanningError, get_backend, get_gpu, get_model
from disagg.planner.costmodel import Engine
from disagg.planner.estimate import estimate_closed_loop, mean_length
from disagg.planner.measured import (
    BENCHMARK_WAVES,
    Protocol,
    accuracy,
    compare_rows,
    engine_for_row,
    protocol_for_row,
    read_rows,
)

CSV = Path(__file__).resolve().parents[2] / "data" / "serving-measurements" / "measured-dev.csv"


def engine(tp: int = 4, backend: str = "vllm") -> Engine:
    return Engine(
        get_model("llama-3.1-70b"), get_gpu("h100-sxm"), get_backend(backend), tp=tp, weights="fp8", kv_dtype="fp8"
    )


def test_fixed_point_obeys_littles_law() -> None:
    est = estimate_closed_loop(engine(), 32, 2048, 512, waves=0)
    assert est.requests_per_s == pytest.approx(32 / ((est.ttft_ms + 512 * est.tpot_ms) / 1e3), rel=1e-6)
    assert est.decode_batch <= 32


def test_more_clients_cost_latency_but_add_throughput() -> None:
    low = estimate_closed_loop(engine(), 4, 2048, 512)
    high = estimate_closed_loop(engine(), 64, 2048, 512)
    assert high.ttft_ms > low.ttft_ms
    assert high.tpot_ms > low.tpot_ms
    assert high.output_tokens_per_s > 4 * low.output_tokens_per_s


def test_waves_add_the_first_wave_burst() -> None:
    steady = estimate_closed_loop(engine(), 64, 4096, 256, waves=0)
    bench = estimate_closed_loop(engine(), 64, 4096, 256, waves=8)
    assert bench.ttft_ms > steady.ttft_ms
    assert bench.tpot_ms == pytest.approx(steady.tpot_ms)


def test_kv_limited_clients_queue() -> None:
    e = Engine(get_model("qwen3-32b"), get_gpu("h100-sxm"), get_backend("sglang"), tp=1)
    est = estimate_closed_loop(e, 64, 4096, 1024, waves=0)
    assert est.kv_limited
    assert est.decode_batch <= est.kv_capacity_sequences


def test_model_that_does_not_fit() -> None:
    e = Engine(get_model("qwen3-235b-a22b"), get_gpu("h100-sxm"), get_backend("vllm"), tp=1, weights="fp8")
    with pytest.raises(PlanningError, match="does not fit"):
        estimate_closed_loop(e, 1, 1024, 128)


GPT_OSS_TRT_ROW = {
    "mode": "agg",
    "batch_size": "16",
    "attention_dp_size": "",
    "model_path": "openai/gpt-oss-120b",
    "system": "h200_sxm",
    "backend": "trtllm",
    "gemm_quant_mode": "nvfp4",
    "moe_quant_mode": "nvfp4",
    "precision": "fp4",
    "tp_size": "4",
    "pp_size": "1",
    "moe_ep_size": "2",
    "isl": "1024",
    "osl": "1024",
}


def test_row_mapping() -> None:
    row = GPT_OSS_TRT_ROW
    e, c, isl, osl = engine_for_row(row)
    assert (e.model.name, e.gpu.name, e.weights, e.kv_dtype, e.tp, e.ep, c, isl, osl) == (
        "gpt-oss-120b",
        "h200-sxm",
        "fp4",
        "bf16",
        4,
        2,
        16,
        1024,
        1024,
    )
    with pytest.raises(PlanningError):
        engine_for_row({**row, "mode": "disagg"})


def test_accuracy_on_measured_rows() -> None:
    comparisons, skipped = compare_rows(read_rows(CSV))
    acc = accuracy(comparisons)
    assert acc.rows > 1100
    assert skipped < 60
    # Regression guards a little above the figures published in docs/planner.md.
    assert acc.rows >= 1200  # the supported set may grow, never shrink (attention-DP rows included)
    assert acc.tpot_median <= 0.12  # docs/planner.md publishes 10.2% / 18.5% (all rows, in-sample)
    assert acc.ttft_median <= 0.20
    assert acc.tpot_within_20 > 0.68
    assert acc.ttft_within_20 > 0.5


def _measured_row(row_id_part: str) -> dict[str, str]:
    return next(r for r in read_rows(CSV) if row_id_part in r["id"])


def test_measured_attention_dp_row_is_answerable() -> None:
    """vLLM's Qwen3-235B runs at --data-parallel-size 4 over TP1 record tp_size 1 and moe_tp_size 4 (the
    attention_dp_size column is empty): four attention ranks sharing the experts on four GPUs."""
    row = _measured_row("h200_sxm_vllm_agg_2000x100_c5_tp1_epnone_10")
    assert (row["tp_size"], row["attention_dp_size"], row["moe_tp_size"], row["moe_ep_size"]) == ("1", "", "4", "1")
    e, c, isl, osl = engine_for_row(row)
    assert (e.tp, e.dp, e.ep, e.gpus, c, isl, osl) == (1, 4, 1, 4, 5, 2000, 100)
    est = estimate_closed_loop(e, c, isl, osl, waves=8)
    assert est.kv_capacity_sequences >= c
    assert est.ttft_ms > est.prefill_ms > 0
    assert est.tpot_ms > 0
    # The same four GPUs as TP4 hold the non-expert weights four times over: fewer KV slots than TP4.
    tp4 = Engine(e.model, e.gpu, e.backend, tp=4, weights=e.weights, kv_dtype=e.kv_dtype)
    assert e.max_batch(2100) < tp4.max_batch(2100)
    assert {"attention_dp_size", "moe_tp_size", "moe_ep_size"} <= set(row)
    with pytest.raises(PlanningError, match="multiple of tp"):
        engine_for_row({**row, "tp_size": "3"})


def test_explicit_attention_dp_column() -> None:
    row = {**_measured_row("h200_sxm_vllm_agg_2000x100_c5_tp1_epnone_10"), "attention_dp_size": "2"}
    row.update(moe_tp_size="1", moe_ep_size="2")
    e, *_ = engine_for_row(row)
    assert (e.tp, e.dp, e.ep) == (1, 2, 2)


def test_an_overlap_scheduler_streams_the_first_token_one_step_late() -> None:
    trt = get_backend("trtllm")
    assert trt.output_lag_steps == 1
    assert get_backend("sglang").output_lag_steps == 1
    assert get_backend("vllm").output_lag_steps == 0
    model, gpu = get_model("llama-3.1-70b"), get_gpu("h100-sxm")
    lagged = Engine(model, gpu, trt, tp=4, weights="fp8", kv_dtype="fp8")
    prompt = Engine(model, gpu, dataclasses.replace(trt, output_lag_steps=0), tp=4, weights="fp8", kv_dtype="fp8")
    a = estimate_closed_loop(lagged, 8, 1024, 512)
    b = estimate_closed_loop(prompt, 8, 1024, 512)
    assert a.tpot_ms == pytest.approx(b.tpot_ms, rel=0.01)  # the whole stream shifts
    assert a.ttft_ms - b.ttft_ms == pytest.approx(a.decode_step_ms, rel=0.1)


def test_prefill_first_waves_stretch_tpot_by_the_prefill_steps_after_the_first_token() -> None:
    """SGLang (lock-step waves): a wave that fits one prefill step decodes undisturbed; a wave of J steps adds
    (J - 1) / 2 prefill steps to each request's decode, spread over its output."""
    sgl = get_backend("sglang")
    e = Engine(get_model("qwen3-32b"), get_gpu("h100-sxm"), sgl, tp=4)
    one = estimate_closed_loop(e, 4, 1024, 256)  # 4K tokens: one 8K-budget step
    step = e.decode_step_time(4, 1024 + 128)
    assert one.tpot_ms == pytest.approx(step * 1e3, rel=0.01)
    many = estimate_closed_loop(e, 64, 1024, 256)  # 64K tokens: eight steps
    prefill = e.prefill_step_time(8192, 8 * 1024 * 512.0)
    dec = e.decode_step_time(64, 1024 + 128)
    assert many.tpot_ms == pytest.approx((dec + 3.5 * prefill / 255) * 1e3, rel=0.01)
    assert estimate_closed_loop(e, 64, 1024, 1024).tpot_ms < many.tpot_ms  # longer outputs dilute it


def test_varied_lengths_are_served_at_their_mean() -> None:
    """``--random-range-ratio 0.8`` draws lengths from [0.8 L, L]: the engine sees 0.9 L on average."""
    assert mean_length(1024, 0.8) == 922
    assert mean_length(8192, 1.0) == 8192
    varied = estimate_closed_loop(engine(), 16, 8192, 1024, waves=10, length_ratio=0.8)
    mean = estimate_closed_loop(engine(), 16, mean_length(8192, 0.8), mean_length(1024, 0.8), waves=10)
    assert varied.ttft_ms == pytest.approx(mean.ttft_ms)
    assert varied.ttft_ms < estimate_closed_loop(engine(), 16, 8192, 1024, waves=10).ttft_ms
    with pytest.raises(PlanningError, match="length ratio"):
        estimate_closed_loop(engine(), 16, 8192, 1024, length_ratio=0.0)


def test_varied_lengths_break_prefill_first_waves() -> None:
    """Requests that end at different tokens de-phase the clients: no lock-step wave under SGLang."""
    e = Engine(get_model("qwen3-32b"), get_gpu("h100-sxm"), get_backend("sglang"), tp=4)
    fixed = estimate_closed_loop(e, 64, 1024, 256, waves=8)
    varied = estimate_closed_loop(e, 64, 1024, 256, waves=8, length_ratio=0.8)
    assert varied.ttft_ms < 0.6 * fixed.ttft_ms  # the wave's half-burst is gone


def test_batch_waiting_holds_prompts_for_its_iterations() -> None:
    """TensorRT-LLM ``batch_wait_timeout_iters: 20``: with few clients nothing else arrives in the window, so
    every prompt waits about 20 decode steps before its prefill."""
    trt = get_backend("trtllm")
    base = Engine(get_model("llama-3.1-70b"), get_gpu("h200-sxm"), trt, tp=1, weights="fp8", kv_dtype="fp8")
    held = dataclasses.replace(base, backend=dataclasses.replace(trt, batch_wait_iters=20))
    a = estimate_closed_loop(base, 4, 1024, 1024, waves=10)
    b = estimate_closed_loop(held, 4, 1024, 1024, waves=10)
    assert b.ttft_ms - a.ttft_ms == pytest.approx(20 * b.decode_step_ms, rel=0.15)
    assert b.tpot_ms == pytest.approx(a.tpot_ms, rel=0.02)


def test_batch_waiting_ends_early_once_the_token_threshold_is_met() -> None:
    trt = get_backend("trtllm")
    e = Engine(get_model("llama-3.1-8b"), get_gpu("h100-sxm"), trt, tp=1, weights="fp8", kv_dtype="fp8")
    by_iters = dataclasses.replace(e, backend=dataclasses.replace(trt, batch_wait_iters=20))
    by_tokens = dataclasses.replace(
        e, backend=dataclasses.replace(trt, batch_wait_iters=20, batch_wait_tokens_ratio=0.25)
    )
    iters = estimate_closed_loop(by_iters, 128, 1024, 128, waves=0)
    tokens = estimate_closed_loop(by_tokens, 128, 1024, 128, waves=0)
    assert tokens.ttft_ms < iters.ttft_ms  # two prompts (2K of the 8K budget) release the hold


INFERENCEMAX_ROW = {
    "silicon_data_source": "source_file=2026-04-06.csv; model=Llama-3.1-70B; ; measured=2025-10-29T00:00:00.000Z",
    "isl": "1024",
    "osl": "1024",
}


def test_inferencemax_rows_take_the_published_protocol() -> None:
    p = protocol_for_row(INFERENCEMAX_ROW, "trtllm", "llama-3.1-70b", tp=4)
    assert (p.waves, p.length_ratio, p.chunk_tokens, p.batch_wait_iters, p.batch_wait_tokens_ratio) == (
        10,
        0.8,
        16384,
        20,
        0.9,
    )
    assert protocol_for_row(INFERENCEMAX_ROW, "trtllm", "llama-3.1-70b", tp=8).batch_wait_iters == 0
    assert protocol_for_row({**INFERENCEMAX_ROW, "osl": "8192"}, "trtllm", "llama-3.1-70b", 4).batch_wait_iters == 0
    gpt_oss = protocol_for_row(INFERENCEMAX_ROW, "trtllm", "gpt-oss-120b", tp=4)
    assert (gpt_oss.chunk_tokens, gpt_oss.moe_kernels_of) == (20000, "vllm")
    assert gpt_oss.experts_over_tp  # measured 2025-10-29: the script passed --ep_size=$TP
    dec15 = {**INFERENCEMAX_ROW, "silicon_data_source": "source_file=2026-04-06.csv; measured=2025-12-15T00:00:00Z"}
    assert not protocol_for_row(dec15, "trtllm", "gpt-oss-120b", tp=4).experts_over_tp  # $EP_SIZE by then
    assert not protocol_for_row(INFERENCEMAX_ROW, "vllm", "gpt-oss-120b", tp=4).experts_over_tp
    assert protocol_for_row(INFERENCEMAX_ROW, "vllm", "llama-3.1-70b", tp=4).output_lag_steps == 1
    aic = {"silicon_data_source": "source_file=/data/h100_sxm/trtllm/1.0.0rc3/Qwen_Qwen3-32B.csv; "}
    assert protocol_for_row(aic, "trtllm", "qwen3-32b", tp=4) == Protocol()
    assert Protocol().waves == BENCHMARK_WAVES
    assert Protocol().length_ratio == 1.0


def test_a_run_on_another_engines_moe_kernels_takes_their_efficiency() -> None:
    """InferenceMAX's gpt-oss TensorRT-LLM runs set ``moe_config.backend: TRITON`` and record EP 1 while the
    script of 2025-11-02 passed ``--ep_size=$TP``: the replay uses vLLM's (Triton) MoE efficiency and EP = TP."""
    row = {
        **GPT_OSS_TRT_ROW,
        "id": "imax-gpt-oss-trt",
        "silicon_data_source": "source_file=2026-04-06.csv; model=GPT-OSS-120B; ; measured=2025-11-02T00:00:00.000Z",
        "attention_dp_size": "1",
        "moe_tp_size": "4",
        "moe_ep_size": "1",
        "isl": "8192",
        "silicon_ttft_ms": "300",
        "silicon_tpot_ms": "8",
    }
    trt, vllm = get_backend("trtllm"), get_backend("vllm")
    slow = {"trtllm": trt, "vllm": dataclasses.replace(vllm, moe_gemm_eta=0.2)}
    fast = {"trtllm": trt, "vllm": dataclasses.replace(vllm, moe_gemm_eta=1.0)}
    (a,), _ = compare_rows([row], backends=slow)
    (b,), _ = compare_rows([row], backends=fast)
    assert a.predicted_ttft_ms > b.predicted_ttft_ms  # the vLLM profile's MoE efficiency is the one used
    (c,), _ = compare_rows([row], backends={**slow, "trtllm": dataclasses.replace(trt, moe_gemm_eta=1.0)})
    assert c.predicted_ttft_ms == pytest.approx(a.predicted_ttft_ms)  # TensorRT-LLM's own does not enter
    later = {**row, "silicon_data_source": row["silicon_data_source"].replace("2025-11-02", "2025-12-15")}
    (d,), _ = compare_rows([later], backends=slow)
    assert d.predicted_tpot_ms < a.predicted_tpot_ms  # MoE-TP decode is balanced; EP4 waits for its busiest rank
