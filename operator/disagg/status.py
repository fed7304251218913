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
    RolePlanSummary,
    RoleStatus,
    drop_conditions,
    set_condition,
)
from disagg.placement import PlacementDecision
from disagg.planner.plan import Plan

READY_AT_ZERO_REASON = "ScaledToZero"
"""Ready's reason while the model sleeps at zero (reconcile reads it: that Ready says nothing is up)."""


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
class RoleProblem:
    """Why a role's pods do not come up, in the words of whoever refused them."""

    reason: str
    """FailedCreate, Unschedulable, ProgressDeadlineExceeded, ImagePullBackOff, CrashLoopBackOff, ..."""
    message: str


@dataclass(frozen=True)
class RoleObservation:
    name: str
    deployment: Mapping[str, Any] | None
    planned: int
    """The floor: what must be available for the role to count as up."""
    tensor_parallel: int | None
    pods: Sequence[Mapping[str, Any]] = ()
    """The role's pods (for the reasons they are not ready)."""
    template_generation: int | None = None
    """Generation of the operator's last template change (None: unknown, any lag counts)."""

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
            template_generation=self.template_generation if self.deployment is not None else None,
        )

    def _observed(self) -> dict[str, Any] | None:
        """The Deployment's status, if its controller has seen the current pod template.

        An autoscaler's /scale write bumps the generation too; when the operator knows the
        generation of its own last template change, a controller that has seen that one is current.
        """
        if self.deployment is None:
            return None
        meta = self.deployment.get("metadata") or {}
        observed: dict[str, Any] = dict(self.deployment.get("status") or {})
        needed = self.template_generation or int(meta.get("generation") or 1)
        if int(observed.get("observedGeneration") or 0) < needed:
            return None
        return observed

    def rolling(self) -> bool:
        """A template change is under way: not yet seen, old pods remain, or the new ones are short.

        Pods an autoscaler adds run the current template, so a scale-up is not a rollout.
        """
        observed = self._observed()
        if observed is None:
            return True
        old_pods_left = int(observed.get("updatedReplicas") or 0) < int(observed.get("replicas") or 0)
        return old_pods_left or self.current_available() < self.planned

    def current_available(self) -> int:
        """Available pods of the current template (a lower bound: old pods are assumed available)."""
        observed = self._observed()
        if observed is None:
            return 0
        old = int(observed.get("replicas") or 0) - int(observed.get("updatedReplicas") or 0)
        return max(int(observed.get("availableReplicas") or 0) - max(old, 0), 0)

    def floor_available(self) -> bool:
        """The current generation has at least the planned floor available."""
        return self.deployment is not None and self.current_available() >= self.planned

    def problems(self) -> list[RoleProblem]:
        """Causes that keep pods from existing, being scheduled, starting or staying up."""
        found: list[RoleProblem] = []
        for cond in ((self.deployment or {}).get("status") or {}).get("conditions") or []:
            if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
                found.append(RoleProblem(str(cond.get("reason") or "FailedCreate"), str(cond.get("message") or "")))
            elif cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                found.append(RoleProblem("ProgressDeadlineExceeded", str(cond.get("message") or "")))
        seen: set[str] = {p.reason for p in found}
        for pod in sorted(self.pods, key=lambda p: str((p.get("metadata") or {}).get("name", ""))):
            problem = pod_problem(pod)
            if problem is not None and problem.reason not in seen:
                seen.add(problem.reason)
                found.append(problem)
        return found


def pod_problem(pod: Mapping[str, Any]) -> RoleProblem | None:
    """The first lasting reason a pod is not ready: unschedulable, image, crash loop, bad config.

    Worded to stay the same while the cause lasts (no restart counts, no back-off phase), so a
    broken model does not rewrite its status on every pass.
    """
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    name = meta.get("name", "")
    for cond in status.get("conditions") or []:
        unschedulable = cond.get("status") == "False" and cond.get("reason") == "Unschedulable"
        if cond.get("type") == "PodScheduled" and unschedulable:
            return RoleProblem("Unschedulable", f"pod {name}: {cond.get('message') or 'no node fits'}")
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        where = f"pod {name} container {container.get('name')}"
        if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
            return RoleProblem("ImagePullBackOff", f"{where}: cannot pull image {container.get('image', '')}")
        if reason in ("CreateContainerConfigError", "CreateContainerError"):
            return RoleProblem(reason, f"{where}: {waiting.get('message') or reason}")
        last = (container.get("lastState") or {}).get("terminated")
        # a crash-looping engine spends most of its time running (loading) between back-offs
        if int(container.get("restartCount") or 0) > 0 and last and not container.get("ready"):
            code, why = last.get("exitCode"), last.get("reason") or "Error"
            return RoleProblem("CrashLoopBackOff", f"{where} keeps restarting (last exit code {code}: {why})")
    return None


def plan_summary(plan: Plan) -> PlanSummary:
    def role(r: Any) -> RolePlanSummary | None:
        if r is None:
            return None
        return RolePlanSummary(
            replicas=r.replicas,
            tensor_parallel=r.tensor_parallel,
            max_replicas=r.max_replicas,
            data_parallel=r.data_parallel if r.data_parallel > 1 else None,
            expert_parallel=True if r.expert_parallel else None,
            max_num_seqs=r.max_num_seqs,
        )

    return PlanSummary(
        source=plan.source,
        mode=plan.mode,
        prefill=role(plan.prefill),
        decode=role(plan.decode),
        disagg_threshold=plan.disagg_threshold if plan.mode == "disaggregated" else None,
        gpus=plan.gpus,
        gpu=plan.gpu,
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
    switching_from: Sequence[str] = (),
) -> DisaggregatedModelStatus:
    """Status after a successful apply pass; ``zero`` is (at zero, decision) when scale-to-zero is on;
    ``switching_from``: old roles kept serving until the new mode's roles hold their floor."""
    statuses = [r.status() for r in roles]
    engine = [s for s in statuses if s.name != "router"]
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
    rolling = [r.name for r in roles if r.rolling()]
    short = [r for r in roles if not r.floor_available()]
    new_roles = ", ".join(r.name for r in roles if r.name != "router")
    switch = f"{', '.join(switching_from)} keeps serving until {new_roles} hold their planned floor"
    if switching_from:
        put(ConditionType.PROGRESSING, True, "SwitchingMode", f"{switch}; {counts}")
    elif rolling:
        put(ConditionType.PROGRESSING, True, "RollingOut", f"rolling out {', '.join(rolling)}; {counts}")
    else:
        put(ConditionType.PROGRESSING, False, "RolloutComplete", f"generation {generation} rolled out; {counts}")
    problems = [(r.name, p) for r in short for p in r.problems()]
    ready = not short
    at_zero = zero is not None and zero[0]
    if ready and at_zero:
        put(
            ConditionType.READY,
            True,
            READY_AT_ZERO_REASON,
            f"prefill and decode at zero, the router holds requests; {counts}",
        )
    elif ready:
        put(ConditionType.READY, True, "Available", counts)
    elif problems:
        role, first = problems[0]
        put(ConditionType.READY, False, first.reason, f"{role}: {first.message}; {counts}")
    elif switching_from:
        put(ConditionType.READY, False, "SwitchingMode", f"{switch}; {counts}")
    else:
        reason = "RollingOut" if rolling else "PodsNotReady"
        floors = ", ".join(f"{r.name} {r.current_available()}/{r.planned} available" for r in short)
        put(ConditionType.READY, False, reason, f"below the planned floor: {floors}; {counts}")
    if problems:
        role, first = problems[0]
        detail = "; ".join(f"{name}: {p.reason}: {p.message}" for name, p in problems)
        if switching_from:
            detail += f" ({switch}; modeSwitch: replace frees their GPUs first)"
        put(ConditionType.DEGRADED, True, first.reason, detail)
    else:
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
        replicas=desired_pods,
        ready_replicas=ready_pods,
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
