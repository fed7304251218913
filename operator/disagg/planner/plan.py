"""The plan the renderer consumes, and the placeholder planner used until the analytical one lands.

The renderer takes a :class:`Plan` as input, so a better planner changes the numbers, never the
renderer. The placeholder is deliberately simple and documented: replicas from ``replicas.min``,
tensor parallelism from the spec (1 when unset), ``mode: auto`` resolves to disaggregated, and the
router threshold is 512 uncached tokens (prompts shorter than that rarely repay a KV transfer).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from disagg.api.spec import DisaggregatedModelSpec, EngineRoleSpec, Mode, ReplicaRange

PLACEHOLDER_DISAGG_THRESHOLD = 512


class ServingMode(StrEnum):
    """How a plan serves: ``mode: auto`` in the spec resolves to one of these."""

    DISAGGREGATED = "disaggregated"
    AGGREGATED = "aggregated"


class Role(StrEnum):
    """The workloads of a model: Deployment suffixes, the disagg.dev/role label, status role names.
    (A StrEnum, so a role is still the string Kubernetes and PromQL see.)"""

    PREFILL = "prefill"
    DECODE = "decode"
    AGGREGATED = "prefill-decode"
    """Aggregated mode: one engine does prefill and decode."""
    ROUTER = "router"


ROLE_PREFILL = Role.PREFILL
ROLE_DECODE = Role.DECODE
ROLE_AGGREGATED = Role.AGGREGATED
ROLE_ROUTER = Role.ROUTER
ENGINE_ROLES = frozenset({Role.PREFILL, Role.DECODE, Role.AGGREGATED})
"""Every engine role any mode has (a mode switch briefly runs roles of both modes)."""


@dataclass(frozen=True)
class RolePlan:
    replicas: int
    """Floor: the autoscaler's minReplicas (or the fixed count without one)."""
    max_replicas: int
    tensor_parallel: int
    autoscale: bool | None = None
    """Keep the autoscaler even where the floor has reached the ceiling (a re-planned floor may;
    removing and re-creating the HPA would lose its state). None: autoscaled when there is a range."""

    @property
    def autoscaled(self) -> bool:
        return self.autoscale if self.autoscale is not None else self.max_replicas > self.replicas

    @property
    def gpus(self) -> int:
        return self.replicas * self.tensor_parallel


@dataclass(frozen=True)
class Plan:
    mode: ServingMode
    prefill: RolePlan
    """In aggregated mode, the single prefill-decode role."""
    decode: RolePlan | None
    router: RolePlan
    disagg_threshold: int
    source: str
    reason: str
    predicted_ttft_ms: float | None = None
    predicted_itl_ms: float | None = None
    slo_met: bool | None = None
    decode_max_batch: int | None = None
    """Sequences one decode-capable replica holds at full context (engine max-num-seqs), when planned."""

    def __post_init__(self) -> None:
        # engine_role_plans and everything built on it read the mode from ``decode`` alone
        if self.mode == ServingMode.AGGREGATED and self.decode is not None:
            raise ValueError("an aggregated plan must not have a decode role")
        if self.mode == ServingMode.DISAGGREGATED and self.decode is None:
            raise ValueError("a disaggregated plan must have a decode role")

    @property
    def gpus(self) -> int:
        return self.prefill.gpus + (self.decode.gpus if self.decode else 0)

    @property
    def ratio(self) -> str:
        if self.decode is None:
            return f"{self.prefill.replicas}PD"
        return f"{self.prefill.replicas}P:{self.decode.replicas}D"


def clamped_role(bounds: ReplicaRange, tensor_parallel: int, planned: int | None = None) -> tuple[RolePlan, bool]:
    """(role plan, capped): the planned count (default: the floor) clamped into the spec's replica
    bounds; without ``max`` the count is fixed (no autoscaling headroom). ``capped`` is true when
    ``max`` cuts the role below the planned count."""
    floor, ceiling = bounds.min, bounds.max
    wanted = floor if planned is None else planned
    if ceiling is None:
        count = max(floor, wanted)
        return RolePlan(replicas=count, max_replicas=count, tensor_parallel=tensor_parallel), False
    count = min(max(wanted, floor), ceiling)
    return RolePlan(replicas=count, max_replicas=max(ceiling, count), tensor_parallel=tensor_parallel), count < wanted


def router_plan(spec: DisaggregatedModelSpec) -> RolePlan:
    """The router's floor and ceiling come from the spec alone (it has no GPUs to plan)."""
    return clamped_role(spec.router.replicas, tensor_parallel=0)[0]


def _role_plan(role: EngineRoleSpec, default_tp: int = 1) -> RolePlan:
    return clamped_role(role.replicas, role.parallelism.tensor or default_tp)[0]


def placeholder_plan(spec: DisaggregatedModelSpec) -> Plan:
    """Replicas from the spec's min, TP from the spec; documented in the module docstring."""
    mode = ServingMode.AGGREGATED if spec.mode == Mode.AGGREGATED else ServingMode.DISAGGREGATED
    threshold = spec.router.disagg_threshold
    router = router_plan(spec)
    prefill = _role_plan(spec.prefill)
    decode = None
    if mode == ServingMode.DISAGGREGATED:
        decode = _role_plan(spec.decode, default_tp=prefill.tensor_parallel)
    return Plan(
        mode=mode,
        prefill=prefill,
        decode=decode,
        router=router,
        disagg_threshold=threshold if isinstance(threshold, int) else PLACEHOLDER_DISAGG_THRESHOLD,
        source="placeholder",
        reason=(
            "Placeholder plan: replicas from replicas.min, tensor parallelism from the spec"
            + (" (mode auto resolved to disaggregated)" if spec.mode == Mode.AUTO else "")
            + "; the analytical planner is not enabled yet."
        ),
    )


def engine_role_plans(plan: Plan) -> list[tuple[Role, RolePlan]]:
    """(role name, plan) of the engine roles the plan renders: prefill-decode, or prefill and decode."""
    if plan.decode is None:
        return [(ROLE_AGGREGATED, plan.prefill)]
    return [(ROLE_PREFILL, plan.prefill), (ROLE_DECODE, plan.decode)]


def engine_roles(spec: DisaggregatedModelSpec, plan: Plan) -> list[tuple[Role, RolePlan, EngineRoleSpec]]:
    """:func:`engine_role_plans` with each role's spec; the aggregated role is configured by ``spec.prefill``."""
    return [
        (name, role_plan, spec.decode if name == Role.DECODE else spec.prefill)
        for name, role_plan in engine_role_plans(plan)
    ]
