"""The roofline cost model of one engine replica."""

from __future__ import annotations

import dataclasses

import pytest

from disagg.planner.catalog import PlanningError, get_backend, get_gpu, get_model
from disagg.planner.costmodel import Engine, _max_of_normals

VLLM = get_backend("vllm")


def engine(model: str = "llama-3.1-70b", gpu: str = "h100-sxm", **kw: object) -> Engine:
    return Engine(get_model(model), get_gpu(gpu), VLLM, **kw)  # type: ignore[arg-type]


def test_reference_decode_figures_within_15_percent() -> None:
    # planner.md: Llama-3.1-70B FP8 on H100, vLLM, concurrency 4: 17.4 / 11.8 / 9.1 ms at TP 2 / 4 / 8.
    for tp, measured in ((2, 17.4), (4, 11.8), (8, 9.1)):
        step = engine(tp=tp, weights="fp8", kv_dtype="fp8").decode_step_time(4, 1536) * 1e3
        assert step == pytest.approx(measured, rel=0.15)


def test_decode_is_more_than_the_weight_read() -> None:
    e = engine(tp=8, weights="fp8", kv_dtype="fp8")
    weight_read = e.weight_bytes_per_gpu / (e.gpu.hbm_tbps * 1e12)
    assert e.decode_step_time(1, 1024) > 1.8 * weight_read  # all-reduce + fixed per-step overhead


def test_step_time_grows_with_batch_and_context() -> None:
    e = engine(tp=4)
    assert e.decode_step_time(64, 2048) > e.decode_step_time(8, 2048) > e.decode_step_time(1, 2048)
    assert e.decode_step_time(32, 8192) > e.decode_step_time(32, 1024)


def test_quantisation_halves_weight_bytes() -> None:
    bf16 = engine(tp=4, weights="bf16").weight_bytes_per_gpu
    fp8 = engine(tp=4, weights="fp8").weight_bytes_per_gpu
    assert fp8 / bf16 == pytest.approx(0.5, abs=0.03)
    assert engine(tp=4, kv_dtype="fp8").kv_capacity_tokens() > engine(tp=4, kv_dtype="bf16").kv_capacity_tokens()


def test_prefill_is_compute_bound_and_scales_with_tp() -> None:
    t2 = engine(tp=2, weights="fp8").prefill_time(8192)
    t8 = engine(tp=8, weights="fp8").prefill_time(8192)
    assert 2.0 < t2 / t8 < 4.0  # all-reduce keeps the speed-up below linear
    # Attention is quadratic: doubling the prompt more than doubles the time.
    e = engine(tp=8, weights="fp8")
    assert e.prefill_time(32768) > 2.0 * e.prefill_time(16384)


def test_moe_reads_only_touched_experts() -> None:
    e = engine("qwen3-235b-a22b", tp=8, weights="fp8", kv_dtype="fp8")
    m = e.model
    assert e._expert_reads(1) == pytest.approx(m.top_k)
    assert e._expert_reads(4) <= min(m.experts, 4 * m.top_k)
    assert e._expert_reads(10_000) == pytest.approx(m.experts)
    assert e.decode_step_time(1, 1024) < e.decode_step_time(256, 1024)


def test_mla_kv_is_replicated_across_tp() -> None:
    e = engine("deepseek-v3", "h200-sxm", tp=8, weights="fp8")
    assert e.kv_shards == 1
    assert engine(tp=8).kv_shards == 8
    assert engine("qwen3-235b-a22b", tp=8, weights="fp8").kv_shards == 4  # only 4 KV heads


def test_pipeline_and_expert_parallel() -> None:
    pp = engine(tp=2, pp=2, weights="fp8")
    assert pp.gpus == 4
    assert pp.weight_bytes_per_gpu == pytest.approx(engine(tp=4, weights="fp8").weight_bytes_per_gpu, rel=0.01)
    ep = engine("qwen3-235b-a22b", tp=8, ep=8, weights="fp8")
    assert ep.decode_step_time(16, 2048) > 0
    with pytest.raises(PlanningError, match="expert parallelism"):
        engine(tp=2, ep=4)


def test_attention_data_parallelism() -> None:
    """TP1 x DP8 with EP8: non-expert weights replicated per rank, experts spread over all eight GPUs,
    each rank its own KV cache; the busiest rank and the all-ranks expert pass set the step."""
    dp = engine("qwen3-235b-a22b", tp=1, ep=8, weights="fp8", dp=8)
    tp = engine("qwen3-235b-a22b", tp=8, ep=8, weights="fp8")
    assert dp.gpus == tp.gpus == 8
    assert dp.describe().endswith("(TP1 DP8 EP8, vllm)")
    # Attention weights are whole on every rank: more bytes per GPU than under TP8, less KV room.
    assert dp.weight_bytes_per_gpu > tp.weight_bytes_per_gpu
    m = dp.model
    replicated = m.layers * m.attention_params * (1 + 1 / 128)  # fp8 attention projections + block scales
    replicated += (m.moe_layers * m.hidden * m.experts + 2 * m.embedding_params) * 2.0  # router, embeddings (bf16)
    assert dp.weight_bytes_per_gpu - tp.weight_bytes_per_gpu == pytest.approx(replicated * (1 - 1 / 8), rel=1e-6)
    # GQA with 4 KV heads: TP8 replicates KV over pairs of ranks, DP8 stores each sequence once.
    assert dp.max_batch(4096) > 0
    assert dp.max_batch(4096) % 8 == 0
    # A decode step of 64 sequences: each rank attends over 8 of them.
    assert dp.decode_step_time(64, 2048) > 0
    assert dp.decode_step_time(64, 2048) < dp.decode_step_time(512, 2048)
    # One prompt prefills on one rank (1 GPU of attention), so it is slower than under TP8 ...
    assert dp.prefill_time(4096) > tp.prefill_time(4096)
    # ... but eight prompts prefill side by side.
    assert dp.prefill_time(4096, batch=8) < 8 * dp.prefill_time(4096)
    with pytest.raises(PlanningError, match="--dp"):
        engine("qwen3-235b-a22b", tp=1, ep=8, weights="fp8")
    with pytest.raises(PlanningError, match="needs an MoE model"):
        engine(tp=1, dp=2)


def test_capacity_and_fit() -> None:
    assert not engine("llama-3.1-405b", "l40s", tp=8).fits(4096)
    assert engine(tp=4, weights="fp8").fits(4096)
    assert not engine(tp=1).fits(1)  # 141 GB of bf16 weights on an 80 GB GPU
    e = engine(tp=8, weights="fp8", kv_dtype="fp8")
    assert e.max_batch(4096) == e.kv_capacity_tokens(4096) // 4096


def test_emulated_fp4_is_slower_than_native() -> None:
    # gpt-oss (MXFP4 experts): Hopper dequantises to BF16, Blackwell runs FP4 natively.
    hopper = engine("gpt-oss-120b", "h200-sxm", tp=1, weights="fp4")
    blackwell = engine("gpt-oss-120b", "b200", tp=1, weights="fp4")
    assert hopper.prefill_time(8192) > 2.0 * blackwell.prefill_time(8192)
    # Same model in FP8 on Hopper: native math, so a long prefill is faster than the emulated FP4 one.
    assert engine("gpt-oss-120b", "h200-sxm", tp=1, weights="fp8").prefill_time(8192) < hopper.prefill_time(8192)


def test_prefill_skips_the_lm_head() -> None:
    e = engine("llama-3.1-8b", tp=1)
    assert e._linear_time(4096, sampled=0) < e._linear_time(4096)
    assert e._linear_time(1) == e._linear_time(1, sampled=1)


def test_elementwise_traffic_does_not_shrink_with_tp() -> None:
    # The residual/norm passes run on the full hidden state on every rank: more TP, smaller share saved.
    r1 = engine("qwen3-32b", tp=1)._activation_rate[0]
    r8 = engine("qwen3-32b", tp=8)._activation_rate[0]
    assert r1 / 8 < r8 < r1
    moe = engine("qwen3-235b-a22b", tp=8, weights="fp8")
    dense = engine("qwen3-32b", tp=8)
    assert sum(moe._activation_rate) > sum(dense._activation_rate)  # top-8 expert permutation traffic


def test_moe_layers_add_router_kernels_to_the_floor() -> None:
    moe = engine("qwen3-235b-a22b", tp=8, weights="fp8")
    per_layer_floor = moe.gpu.eff.layer_floor_us * 1e-6
    host = moe.backend.step_overhead_ms * 1e-3
    assert moe.step_floor - host == pytest.approx(1.5 * moe.model.layers * per_layer_floor)


def test_a_prefill_step_lasts_at_least_its_eager_dispatch() -> None:
    """A step carrying prefill tokens runs outside a CUDA graph: it cannot end before the host has issued every
    layer's operators (an MoE layer half again as many), while decode-only steps replay a graph."""
    trt = get_backend("trtllm")
    moe = Engine(get_model("qwen3-235b-a22b"), get_gpu("h100-sxm"), trt, tp=8, ep=8, weights="fp8")
    host = trt.step_overhead_ms * 1e-3 + 1.5 * moe.model.layers * trt.eager_layer_us * 1e-6
    assert moe.eager_floor == pytest.approx(host)
    short = moe.prefill_step_time(128, 128 * 64)
    assert short == pytest.approx(host)  # 128 tokens of GPU work are shorter than their dispatch
    assert moe.decode_step_time(8, 1024) < host  # graph replay: no per-operator dispatch
    assert moe.decode_step_time(8, 1024, 128, 128 * 64) >= host  # a mixed step is eager too
    long = moe.prefill_step_time(8192, 8192 * 4096)
    assert long > 1.5 * host  # a long prompt's kernels hide the dispatch
    no_host = dataclasses.replace(trt, eager_layer_us=0.0)
    bare = Engine(moe.model, moe.gpu, no_host, tp=8, ep=8, weights="fp8")
    assert bare.prefill_step_time(8192, 8192 * 4096) == pytest.approx(long)
    assert bare.prefill_step_time(128, 128 * 64) < short


def test_each_running_sequence_costs_host_time_per_step() -> None:
    e = engine(tp=4, weights="fp8", kv_dtype="fp8")
    none = Engine(e.model, e.gpu, dataclasses.replace(VLLM, seq_overhead_us=0.0), tp=4, weights="fp8", kv_dtype="fp8")
    for batch in (1, 16, 64):
        extra = e.decode_step_time(batch, 2048) - none.decode_step_time(batch, 2048)
        assert extra == pytest.approx(batch * VLLM.seq_overhead_us * 1e-6)


def test_expected_maximum_of_normals() -> None:
    assert _max_of_normals(1) == 0.0
    # Exact expected maxima of 2, 4, 8 and 16 standard normals; Blom's approximation is within 0.03.
    for n, value in ((2, 0.564), (4, 1.029), (8, 1.424), (16, 1.766)):
        assert _max_of_normals(n) == pytest.approx(value, abs=0.03)


def test_the_busiest_ep_rank_sets_the_moe_step() -> None:
    model = get_model("qwen3-235b-a22b")
    tp8 = Engine(model, get_gpu("h100-sxm"), VLLM, tp=8, weights="fp8")
    ep8 = Engine(model, get_gpu("h100-sxm"), VLLM, tp=8, ep=8, weights="fp8")
    for tokens in (1, 4, 16, 64):
        even = tp8._expert_reads(tokens)
        assert even < ep8._expert_reads(tokens) <= model.experts  # uneven ranks read more per step
    # A few experts touched: the busiest of 8 ranks holds well above an eighth of them, never all.
    assert ep8._expert_reads(1) < 3 * tp8._expert_reads(1)
    assert ep8._expert_reads(4096) == pytest.approx(model.experts)
    # Routed GEMM work: binomial share of the token-expert pairs, the fullest rank waits longest.
    assert tp8._routed_imbalance(1024) == 1.0
    assert 1.0 < ep8._routed_imbalance(8192) < ep8._routed_imbalance(64) < 2.0


def test_vllm_replays_piecewise_graphs_for_small_mixed_steps() -> None:
    e = engine(tp=4, weights="fp8", kv_dtype="fp8")
    assert VLLM.graph_tokens == 512
    small = e.decode_step_time(16, 2048, 256, 256 * 1024)  # 272 tokens: inside the captured sizes
    assert small < e.eager_floor
    assert e.decode_step_time(16, 2048, 1024, 1024 * 1024) >= e.eager_floor  # 1,040 tokens: eager
