"""The operator's entry point to the planner: a ``DisaggregatedModelSpec`` in, the :class:`Plan` the
renderer consumes out. Resolves ``mode: auto``, fills tensor parallelism the spec leaves open,
clamps the planned replica counts into the spec's bounds and sets the router's threshold.
"""

from __future__ import annotations

from disagg.api.spec import DisaggregatedModelSpec, KVCacheDtype, Mode
from disagg.api.types import duration_seconds
from disagg.planner.catalog import ModelShape, PlanningError, get_model, model_from_config
from disagg.planner.plan import PLACEHOLDER_DISAGG_THRESHOLD, Plan, RolePlan, ServingMode, clamped_role, router_plan
from disagg.planner.search import plan
from disagg.planner.sizing import Fabric, Workload


def plan_for_spec(spec: DisaggregatedModelSpec, backend: str = "vllm") -> Plan:
    """The operator's entry point: resolve ``mode: auto``, fill open TP/replicas, set the router threshold.

    Raises :class:`PlanningError` (a ValueError with a one-line message) on input it cannot plan for.
    """
    model_spec = spec.model
    shape: ModelShape
    if model_spec.preset:
        shape = get_model(model_spec.preset)
    elif model_spec.config:
        shape = model_from_config(model_spec.config, name=model_spec.name)
    else:
        raise PlanningError("spec.model needs a preset or a config (Hugging Face config.json) to be planned")
    try:
        ttft = duration_seconds(spec.slo.ttft)
        itl = duration_seconds(spec.slo.itl)
    except ValueError as exc:
        raise PlanningError(str(exc)) from exc
    wl = spec.workload
    workload = Workload(
        isl=wl.input_tokens.mean,
        osl=wl.output_tokens.mean,
        rate=wl.request_rate,
        ttft_s=ttft,
        itl_s=itl,
        percentile=spec.slo.percentile,
        prefix_hit=wl.prefix_cache_hit_percent / 100.0 if wl.prefix_cache_hit_percent < 100 else 0.99,
    )
    kv = None if model_spec.kv_cache_dtype == KVCacheDtype.AUTO else model_spec.kv_cache_dtype.value
    fabric = Fabric(network=spec.kv_transfer.network, bandwidth_gbps=spec.kv_transfer.bandwidth_gbps)
    aggregated = spec.mode == Mode.AGGREGATED
    result = plan(
        shape,
        spec.accelerator.type,
        workload,
        backend=backend,
        weights=model_spec.dtype.value,
        kv_dtype=kv,
        fabric=fabric,
        mode=spec.mode,
        prefill_tp=spec.prefill.parallelism.tensor,
        decode_tp=None if aggregated else spec.decode.parallelism.tensor,
    )
    c = result.chosen
    prefill, capped_p = clamped_role(spec.prefill.replicas, c.prefill_tp, c.prefill_replicas)
    decode: RolePlan | None = None
    capped_d = False
    if c.mode == ServingMode.DISAGGREGATED:
        decode, capped_d = clamped_role(spec.decode.replicas, c.decode_tp, c.decode_replicas)
    threshold = spec.router.disagg_threshold
    if not isinstance(threshold, int):
        threshold = result.crossover_isl if result.crossover_isl is not None else PLACEHOLDER_DISAGG_THRESHOLD
    reason = result.reason
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
    )
