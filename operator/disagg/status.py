"""Pure status computation: observed children + plan -> DisaggregatedModelStatus.

``Ready`` means the *current* generation is available: every role's Deployment has observed its
latest template, all its pods run that template, and enough of them are available. A
Deployment the operator has just written is never ready in the same pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from disagg.api.status import (
    Condition,
    ConditionType,
    DisaggregatedModelStatus,
    PlacementStatus,
    PlanSummary,
    RolePlan,
    RoleStatus,
    drop_conditions,
    set_condition,
)
from disagg.placement import PlacementDecision
from disagg.planner.plan import Plan


class ZeroVerdict(Protocol):
    @property
    def metrics_available(self) -> bool: ...

    @property
    def reason(self) -> str: ...

    @property
    def message(self) -> str: ...


class PlannedVerdict(Protocol):
    @property
    def planned(self) -> bool: ...

    @property
    def reason(self) -> str: ...

    @property
    def message(self) -> str: ...


@dataclass(frozen=True)
class RoleObservation:
    name: str
    deployment: Mapping[str, Any] | None
    planned: int
    tensor_parallel: int | None

    def desired(self) -> int:
        """The Deployment's replicas (an autoscaler may have raised them), never below the planned floor."""
        if self.deployment is None:
            return self.planned
        replicas = (self.deployment.get("spec") or {}).get("replicas")
        return max(int(replicas), self.planned) if replicas is not None else self.planned

    def status(self) -> RoleStatus:
        observed = (self.deployment or {}).get("status") or {}
        return RoleStatus(
            name=self.name,
            desired=self.desired(),
            replicas=int(observed.get("replicas") or 0),
            updated=int(observed.get("updatedReplicas") or 0),
            ready=int(observed.get("readyReplicas") or 0),
            tensor_parallel=self.tensor_parallel,
        )

    def rolled_out(self) -> bool:
        """The Deployment runs its latest template on every pod and all desired pods are available."""
        if self.deployment is None:
            return False
        meta = self.deployment.get("metadata") or {}
        observed = self.deployment.get("status") or {}
        if int(observed.get("observedGeneration") or 0) < int(meta.get("generation") or 1):
            return False
        want = self.desired()
        return (
            int(observed.get("updatedReplicas") or 0) >= want
            and int(observed.get("replicas") or 0) == want
            and int(observed.get("availableReplicas") or 0) >= want
        )


def plan_summary(plan: Plan) -> PlanSummary:
    def role(r: Any) -> RolePlan | None:
        if r is None:
            return None
        return RolePlan(replicas=r.replicas, tensor_parallel=r.tensor_parallel, max_replicas=r.max_replicas)

    return PlanSummary(
        source=plan.source,
        mode=plan.mode,
        prefill=role(plan.prefill),
        decode=role(plan.decode),
        disagg_threshold=plan.disagg_threshold if plan.mode == "disaggregated" else None,
        gpus=plan.gpus,
        predicted_ttft_ms=plan.predicted_ttft_ms,
        predicted_itl_ms=plan.predicted_itl_ms,
        slo_met=plan.slo_met,
        reason=plan.reason,
    )


def placement_status(decision: PlacementDecision) -> PlacementStatus:
    return PlacementStatus(
        level=decision.level,
        node_label=decision.node_label,
        domain=decision.domain,
        required=decision.required,
        gpus_needed=decision.gpus_needed,
    )


def healthy_status(
    previous: DisaggregatedModelStatus,
    *,
    generation: int,
    plan: Plan,
    planned: PlannedVerdict,
    roles: Sequence[RoleObservation],
    placements: Sequence[PlacementDecision],
    now: str,
    zero: tuple[bool, ZeroVerdict | None] | None = None,
) -> DisaggregatedModelStatus:
    """Status after a successful apply pass; ``zero`` is (at zero, decision) when scale-to-zero is on."""
    statuses = [r.status() for r in roles]
    engine = [s for s in statuses if s.name != "router"]
    lagging = [r.name for r in roles if not r.rolled_out()]
    short = [s for s in statuses if s.ready < s.desired]
    conditions = list(previous.conditions)

    def put(ctype: ConditionType, status: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(
            conditions,
            ctype=ctype.value,
            status="True" if status else "False",
            reason=reason,
            message=message,
            generation=generation,
            now=now,
        )

    counts = ", ".join(f"{s.name} {s.ready}/{s.desired} ready" for s in statuses)
    if lagging:
        put(ConditionType.PROGRESSING, True, "RollingOut", f"rolling out {', '.join(lagging)}; {counts}")
    else:
        put(ConditionType.PROGRESSING, False, "RolloutComplete", f"generation {generation} rolled out; {counts}")
    ready = not lagging and not short
    at_zero = zero is not None and zero[0]
    if ready and at_zero:
        put(
            ConditionType.READY,
            True,
            "ScaledToZero",
            f"prefill and decode at zero, the router holds requests; {counts}",
        )
    elif ready:
        put(ConditionType.READY, True, "Available", counts)
    else:
        reason = "RollingOut" if lagging else "PodsNotReady"
        put(ConditionType.READY, False, reason, counts)
    put(ConditionType.DEGRADED, False, "AsExpected", "spec accepted and children applied")
    put(ConditionType.PLANNED, planned.planned, planned.reason, planned.message)
    if zero is not None:
        # Stable wording while nothing flips, so a sleeping or busy model costs no status writes.
        verdict = zero[1]
        if at_zero:
            put(
                ConditionType.SCALED_TO_ZERO,
                True,
                "Idle",
                "no demand: prefill and decode at zero, the router holds requests and wakes them",
            )
        else:
            put(ConditionType.SCALED_TO_ZERO, False, "Serving", "prefill and decode are up")
        if verdict is not None and verdict.metrics_available:
            put(ConditionType.METRICS_AVAILABLE, True, "Readable", "router demand and engine load are readable")
        elif verdict is not None:
            put(ConditionType.METRICS_AVAILABLE, False, verdict.reason, verdict.message)
    else:
        conditions = drop_conditions(
            conditions, [ConditionType.SCALED_TO_ZERO.value, ConditionType.METRICS_AVAILABLE.value]
        )
    if placements:
        unsatisfied = [p for p in placements if not p.fits]
        put(
            ConditionType.TOPOLOGY_SATISFIED,
            not unsatisfied,
            "NoDomainWithRoom" if unsatisfied else "DomainHasRoom",
            "; ".join(p.message for p in placements),
        )
    else:
        conditions = drop_conditions(conditions, [ConditionType.TOPOLOGY_SATISFIED.value])
    ready_pods = sum(s.ready for s in engine)
    desired_pods = sum(s.desired for s in engine)
    return DisaggregatedModelStatus(
        observed_generation=generation,
        conditions=conditions,
        mode=plan.mode,
        ratio=plan.ratio,
        ready_replicas=f"{ready_pods}/{desired_pods}",
        roles=statuses,
        plan=plan_summary(plan),
        placement=[placement_status(p) for p in placements],
    )


def failed_status(
    previous: DisaggregatedModelStatus,
    *,
    generation: int,
    reason: str,
    message: str,
    now: str,
    planned: PlannedVerdict | None = None,
) -> DisaggregatedModelStatus:
    """Status for a spec we cannot act on (or an apply that failed): children are left as they are."""
    conditions: list[Condition] = list(previous.conditions)
    if planned is not None:
        conditions = set_condition(
            conditions,
            ctype=ConditionType.PLANNED.value,
            status="True" if planned.planned else "False",
            reason=planned.reason,
            message=planned.message,
            generation=generation,
            now=now,
        )
    conditions = set_condition(
        conditions,
        ctype=ConditionType.DEGRADED.value,
        status="True",
        reason=reason,
        message=message,
        generation=generation,
        now=now,
    )
    conditions = set_condition(
        conditions,
        ctype=ConditionType.READY.value,
        status="False",
        reason=reason,
        message=message,
        generation=generation,
        now=now,
    )
    return previous.model_copy(update={"observed_generation": generation, "conditions": conditions})
