"""The operator's entry point to the planner: a ``DisaggregatedModelSpec`` in, the :class:`Plan` the
renderer consumes out. Resolves ``mode: auto``, fills the parallelism the spec leaves open, clamps the
planned replica counts into the spec's bounds and sets the router's threshold.

What the plan assumes is what the engine is told: precisions the spec leaves at ``auto`` are the
checkpoint's, as vLLM 0.33 resolves them (weights from its ``quantization_config``, else 16-bit; the
KV cache from a declared KV quantisation, else the model's 16-bit dtype), and every figure the
planner relies on that differs from vLLM's default becomes a flag (:class:`EngineSettings`,
``RolePlan.max_num_seqs`` / ``max_model_len`` / data and expert parallelism).
"""

from __future__ import annotations

from dataclasses import replace

from disagg.api.spec import DisaggregatedModelSpec, Dtype, KVCacheDtype, Mode
from disagg.api.types import duration_seconds
from disagg.planner.catalog import GPU, ModelShape, PlanningError, get_model, model_from_config
from disagg.planner.costmodel import Engine
from disagg.planner.plan import (
    PLACEHOLDER_DISAGG_THRESHOLD,
    EngineSettings,
    Plan,
    RolePlan,
    ServingMode,
    clamped_role,
    router_plan,
)
from disagg.planner.search import PlanResult, plan
from disagg.planner.sizing import Fabric, Layout, Workload

_DTYPE_FLAGS = {Dtype.BF16: "bfloat16", Dtype.FP16: "float16"}


def model_shape(spec: DisaggregatedModelSpec) -> ModelShape:
    model_spec = spec.model
    if model_spec.preset:
        return get_model(model_spec.preset)
    if model_spec.config:
        return model_from_config(model_spec.config, name=model_spec.name)
    raise PlanningError("spec.model needs a preset or a config (Hugging Face config.json) to be planned")


def engine_settings(spec: DisaggregatedModelSpec, shape: ModelShape) -> EngineSettings:
    """The precisions to plan with and the flags that make the engine serve them.

    A quantised checkpoint is loaded as it is (vLLM reads its quantization_config): asking for another
    precision would plan for weights the engine never serves, so it is refused, as is fp4 on a wider
    checkpoint (vLLM quantises to fp8 at load time, not to fp4)."""
    asked, native = spec.model.dtype, shape.native_dtype
    if asked == Dtype.AUTO:
        weights = native
    else:
        weights = "bf16" if asked in (Dtype.BF16, Dtype.FP16) else asked.value
        if native not in ("bf16", weights):
            raise PlanningError(
                f"{spec.model.name}: the checkpoint's weights are {native} (its quantization_config) and vLLM "
                f"serves them so; dtype {asked.value} cannot be served: set spec.model.dtype to auto or {native}"
            )
        if weights == "fp4" and native != "fp4":
            raise PlanningError(
                f"{spec.model.name}: fp4 weights need an fp4 checkpoint (vLLM quantises a 16-bit checkpoint "
                "to fp8 at load time, never to fp4): set spec.model.dtype to auto or fp8"
            )
    kv_asked = spec.model.kv_cache_dtype
    kv_flag: str | None = None
    if kv_asked == KVCacheDtype.AUTO:
        kv = shape.native_kv_dtype or "bf16"
    elif kv_asked == KVCacheDtype.FP8:
        kv, kv_flag = "fp8", "fp8"
    else:  # 16-bit: only a checkpoint that declares a quantised KV cache needs telling
        kv = "bf16"
        if shape.native_kv_dtype is not None:
            kv_flag = "float16" if asked == Dtype.FP16 else "bfloat16"
    return EngineSettings(
        quantization="fp8" if weights == "fp8" and native == "bf16" else None,
        dtype=_DTYPE_FLAGS.get(asked) if native == "bf16" else None,
        kv_cache_dtype=kv_flag,
        weights=weights,
        kv_cache=kv,
    )


def _workload(spec: DisaggregatedModelSpec) -> Workload:
    try:
        ttft = duration_seconds(spec.slo.ttft)
        itl = duration_seconds(spec.slo.itl)
    except ValueError as exc:
        raise PlanningError(str(exc)) from exc
    wl = spec.workload
    return Workload(
        isl=wl.input_tokens.mean,
        osl=wl.output_tokens.mean,
        rate=wl.request_rate,
        ttft_s=ttft,
        itl_s=itl,
        percentile=spec.slo.percentile,
        prefix_hit=wl.prefix_cache_hit_percent / 100.0 if wl.prefix_cache_hit_percent < 100 else 0.99,
    )


def _engine_limits(role: RolePlan, engine: Engine, shape: ModelShape, max_batch: int | None) -> RolePlan:
    """The planned per-rank batch limit, the step's token budget (the chunk the plan assumed, plus the
    decode tokens) and, where the KV cache cannot hold the checkpoint's whole context, the longest
    sequence it can (vLLM refuses to start when one max-length sequence does not fit)."""
    max_len = None
    if shape.max_context and engine.rank_capacity_tokens(shape.max_context) < shape.max_context:
        # the longest sequence one rank's KV cache holds (sliding-window layers make the per-token
        # size depend on the length, so search it); the plan already checked the workload's fits
        lo, hi = 1, shape.max_context
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if engine.rank_capacity_tokens(mid) >= mid else (lo, mid)
        max_len = lo
    seqs = max(1, max_batch // role.data_parallel) if max_batch is not None else None
    budget = engine.chunk + (seqs or 0)
    return replace(role, max_num_seqs=seqs, max_num_batched_tokens=budget, max_model_len=max_len)


def _with_layout(role: RolePlan, layout: Layout) -> RolePlan:
    return replace(role, data_parallel=layout.dp, expert_parallel=layout.ep > 1)


def plan_for_spec(spec: DisaggregatedModelSpec, backend: str = "vllm", gpu: str | GPU | None = None) -> Plan:
    """The operator's entry point: resolve ``mode: auto``, fill open parallelism/replicas, set the router
    threshold. ``gpu`` overrides ``spec.accelerator.type`` (the operator passes the GPU it found on the
    nodes when the spec names none).

    Raises :class:`PlanningError` (a ValueError with a one-line message) on input it cannot plan for.
    """
    shape = model_shape(spec)
    settings = engine_settings(spec, shape)
    return _to_plan(spec, shape, settings, search_for_spec(spec, backend, gpu))


def search_for_spec(spec: DisaggregatedModelSpec, backend: str = "vllm", gpu: str | GPU | None = None) -> PlanResult:
    """The planner's full answer for a spec (what :func:`plan_for_spec` turns into a :class:`Plan`): the
    precisions, layouts, chunk and batch limits it assumed."""
    shape = model_shape(spec)
    settings = engine_settings(spec, shape)
    gpu_type = gpu if gpu is not None else spec.accelerator.type
    if gpu_type is None:
        raise PlanningError("spec.accelerator.type is not set and no GPU type was found for the model's nodes")
    fabric = Fabric(network=spec.kv_transfer.network, bandwidth_gbps=spec.kv_transfer.bandwidth_gbps)
    aggregated = spec.mode == Mode.AGGREGATED
    prefill_par, decode_par = spec.prefill.parallelism, spec.decode.parallelism
    return plan(
        shape,
        gpu_type,
        _workload(spec),
        backend=backend,
        weights=settings.weights,
        kv_dtype=settings.kv_cache,
        fabric=fabric,
        mode=spec.mode,
        prefill_tp=prefill_par.tensor,
        decode_tp=None if aggregated else decode_par.tensor,
        prefill_dp=prefill_par.data,
        decode_dp=None if aggregated else decode_par.data,
        prefill_expert=prefill_par.expert,
        decode_expert=None if aggregated else decode_par.expert,
    )


def _to_plan(spec: DisaggregatedModelSpec, shape: ModelShape, settings: EngineSettings, result: PlanResult) -> Plan:
    c = result.chosen
    first_engine, decode_engine = result.engines(c)
    prefill, capped_p = clamped_role(spec.prefill.replicas, c.prefill_tp, c.prefill_replicas)
    prefill = _with_layout(prefill, c.prefill_layout)
    decode: RolePlan | None = None
    capped_d = False
    if c.mode == ServingMode.DISAGGREGATED:
        decode, capped_d = clamped_role(spec.decode.replicas, c.decode_tp, c.decode_replicas)
        decode = _engine_limits(_with_layout(decode, c.decode_layout), decode_engine, shape, c.max_batch)
        prefill = _engine_limits(prefill, first_engine, shape, None)
    else:
        prefill = _engine_limits(prefill, first_engine, shape, c.max_batch)
    threshold = spec.router.disagg_threshold
    if not isinstance(threshold, int):
        threshold = result.crossover_isl if result.crossover_isl is not None else PLACEHOLDER_DISAGG_THRESHOLD
    reason = result.reason
    raised = [
        f"{name} {planned} -> {role.replicas}"
        for name, planned, role in (("prefill", c.prefill_replicas, prefill), ("decode", c.decode_replicas, decode))
        if role is not None and role.replicas > planned
    ]
    if raised:
        # the ratio in status is what runs; say why it differs from the planner's own count above
        reason += f" replicas.min raises the planned count ({', '.join(raised)})."
    slo_met = c.meets_slo
    if capped_p or capped_d:
        slo_met = False
        reason += " replicas.max caps a role below the planned count, so the SLOs are not predicted to hold."
    return Plan(
        mode=c.mode,
        prefill=prefill,
        decode=decode,
        router=router_plan(spec),
        disagg_threshold=threshold,
        source="planner",
        reason=reason,
        predicted_ttft_ms=round(c.ttft_ms, 1),
        predicted_itl_ms=round(c.itl_ms, 2),
        slo_met=slo_met,
        decode_max_batch=c.max_batch,
        engine=settings,
        gpu=result.gpu,
    )
