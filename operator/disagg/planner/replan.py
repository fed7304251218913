"""Live re-planning (pure): re-run the planner on observed traffic and move the autoscaler floors.

Inputs are what Prometheus shows for the model's engines: request rate, mean prompt and output
lengths, and TTFT/ITL at the SLO percentile. The cost model is corrected by the ratio of observed
to predicted latency at the running configuration, bounded to [0.5, 2] so one noisy window cannot
swing the plan; the correction tightens (or relaxes) the SLO targets the planner sizes against.
Floors rise at once but fall by at most one replica per interval, and only when the planner says
the lower count still meets the SLOs (the planner's count is the smallest that does, so any count
at or above it does too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from disagg.api.spec import DisaggregatedModelSpec, SLOSpec, TokenLength, WorkloadSpec
from disagg.api.status import ObservedWorkload, ReplanStatus
from disagg.api.types import duration_seconds
from disagg.planner.plan import Plan, RolePlan

CORRECTION_BOUNDS = (0.5, 2.0)


def _bounded(observed: float | None, predicted: float | None) -> float:
    if observed is None or predicted is None or predicted <= 0:
        return 1.0
    low, high = CORRECTION_BOUNDS
    return round(min(max(observed / predicted, low), high), 3)


def _ms(seconds: float) -> str:
    return f"{max(seconds * 1000.0, 1.0):.0f}ms"


def corrected_spec(
    spec: DisaggregatedModelSpec, observed: ObservedWorkload, ttft_correction: float, itl_correction: float
) -> DisaggregatedModelSpec:
    """The spec with the observed workload and SLO targets scaled by the model's observed error."""
    workload = spec.workload
    updates: dict[str, object] = {}
    if observed.request_rate is not None and observed.request_rate > 0:
        updates["request_rate"] = observed.request_rate
    if observed.input_tokens is not None and observed.input_tokens >= 1:
        updates["input_tokens"] = TokenLength(mean=round(observed.input_tokens))
    if observed.output_tokens is not None and observed.output_tokens >= 1:
        updates["output_tokens"] = TokenLength(mean=round(observed.output_tokens))
    new_workload: WorkloadSpec = workload.model_copy(update=updates)
    slo = SLOSpec(
        ttft=_ms(duration_seconds(spec.slo.ttft) / ttft_correction),
        itl=_ms(duration_seconds(spec.slo.itl) / itl_correction),
        percentile=spec.slo.percentile,
    )
    return spec.model_copy(update={"workload": new_workload, "slo": slo})


def _clamp(floor: int, low: int, high: int | None) -> int:
    """Floors stay inside the spec's replicas.min..max (an unset max: the plan may go anywhere up)."""
    floor = max(floor, low, 1)
    return min(floor, high) if high is not None else floor


def _step(
    role: RolePlan | None, planned: RolePlan | None, current_floor: int | None, bounds: tuple[int, int | None]
) -> RolePlan | None:
    if role is None or planned is None:
        return role
    target = planned.replicas
    if current_floor is not None and target < current_floor:
        target = current_floor - 1  # at most one replica down per interval
    target = _clamp(target, *bounds)
    return dataclasses.replace(
        role, replicas=target, max_replicas=max(role.max_replicas, target), autoscale=role.autoscaled
    )


def replan(
    spec: DisaggregatedModelSpec,
    running: Plan,
    observed: ObservedWorkload,
    previous: ReplanStatus | None,
    planner: Callable[[DisaggregatedModelSpec], Plan | None],
    now: str,
) -> tuple[Plan, ReplanStatus]:
    """The plan to run until the next interval, and the record of why.

    ``running`` is the spec's plan with ``previous``'s floors applied (:func:`apply_floors`).
    """
    ttft_c = _bounded(observed.ttft_ms, running.predicted_ttft_ms)
    itl_c = _bounded(observed.itl_ms, running.predicted_itl_ms)

    def unchanged(why: str) -> tuple[Plan, ReplanStatus]:
        record = ReplanStatus(
            time=now,
            observed=observed,
            ttft_correction=ttft_c,
            itl_correction=itl_c,
            prefill_floor=previous.prefill_floor if previous else None,
            decode_floor=previous.decode_floor if previous else None,
            disagg_threshold=previous.disagg_threshold if previous else None,
            decision=f"{why}: floors unchanged",
        )
        return apply_floors(running, record, spec), record

    if observed.request_rate is None or observed.request_rate <= 0:
        return unchanged("no observed traffic")
    fresh = planner(corrected_spec(spec, observed, ttft_c, itl_c))
    if fresh is None or fresh.mode != running.mode:
        return unchanged("re-planning failed or would change the serving mode")
    # ``running`` already carries the last decision's floors (apply_floors), so its counts are
    # the current floors: no need to consult ``previous`` again.
    current_decode = running.decode.replicas if running.decode else None
    prefill = _step(
        running.prefill,
        fresh.prefill,
        running.prefill.replicas,
        (spec.prefill.replicas.min, spec.prefill.replicas.max),
    )
    decode = _step(running.decode, fresh.decode, current_decode, (spec.decode.replicas.min, spec.decode.replicas.max))
    threshold = running.disagg_threshold if isinstance(spec.router.disagg_threshold, int) else fresh.disagg_threshold
    changes = []
    if prefill is not None and prefill.replicas != running.prefill.replicas:
        changes.append(f"prefill floor {running.prefill.replicas} -> {prefill.replicas}")
    if decode is not None and current_decode is not None and decode.replicas != current_decode:
        changes.append(f"decode floor {current_decode} -> {decode.replicas}")
    if threshold != running.disagg_threshold:
        changes.append(f"router threshold {running.disagg_threshold} -> {threshold}")
    record = ReplanStatus(
        time=now,
        observed=observed,
        ttft_correction=ttft_c,
        itl_correction=itl_c,
        prefill_floor=prefill.replicas if prefill else None,
        decode_floor=decode.replicas if decode else None,
        disagg_threshold=threshold,
        decision="; ".join(changes) if changes else "floors unchanged",
    )
    return apply_floors(running, record, spec), record


def apply_floors(plan: Plan, record: ReplanStatus | None, spec: DisaggregatedModelSpec | None = None) -> Plan:
    """The spec's plan with the floors and threshold of the last re-planning decision.

    With ``spec``, a kept floor is held inside the spec's current ``replicas.min..max``: a user who
    raises ``min`` (or lowers ``max``) between decisions sees it at once, not at the next decision.
    """
    if record is None:
        return plan

    def bounded(floor: int, role: str) -> int:
        if spec is None:
            return floor
        limits = spec.prefill.replicas if role == "prefill" else spec.decode.replicas
        floor = max(floor, limits.min)
        return min(floor, limits.max) if limits.max is not None else floor

    prefill = plan.prefill
    if record.prefill_floor is not None:
        floor = bounded(record.prefill_floor, "prefill")
        prefill = dataclasses.replace(
            prefill,
            replicas=floor,
            max_replicas=max(prefill.max_replicas, floor),
            autoscale=prefill.autoscaled,
        )
    decode = plan.decode
    if decode is not None and record.decode_floor is not None:
        floor = bounded(record.decode_floor, "decode")
        decode = dataclasses.replace(
            decode,
            replicas=floor,
            max_replicas=max(decode.max_replicas, floor),
            autoscale=decode.autoscaled,
        )
    threshold = record.disagg_threshold if record.disagg_threshold is not None else plan.disagg_threshold
    return dataclasses.replace(plan, prefill=prefill, decode=decode, disagg_threshold=threshold)
