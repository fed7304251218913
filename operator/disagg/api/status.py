"""Status of a DisaggregatedModel, and pure helpers for Kubernetes-style conditions.

Conditions follow the API conventions: one entry per type, CamelCase reasons, and a
``lastTransitionTime`` that moves only when the status flips, so a reconcile that observes
nothing new produces an identical status and therefore no write.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field

from disagg.api.types import CamelModel


def _list_map(key: str) -> dict[str, Any]:
    """A list whose items are keyed by ``key`` (server-side apply merges them item by item)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


class ConditionType(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    PLANNED = "Planned"
    TOPOLOGY_SATISFIED = "TopologySatisfied"
    METRICS_AVAILABLE = "MetricsAvailable"
    SCALED_TO_ZERO = "ScaledToZero"


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(CamelModel):
    type: Annotated[str, Field(max_length=316)]
    status: ConditionStatus
    reason: Annotated[str, Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
    message: Annotated[str, Field(max_length=32768)] = ""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    last_transition_time: str
    """RFC 3339 time of the last status flip."""


class RoleStatus(CamelModel):
    name: Annotated[str, Field(max_length=32)]
    """prefill, decode, prefill-decode or router."""
    desired: int = 0
    """Replicas the operator (or its autoscaler floor) wants."""
    replicas: int = 0
    """Pods that exist for the current Deployment."""
    updated: int = 0
    """Pods running the current template."""
    ready: int = 0
    """Pods ready to serve."""
    tensor_parallel: int | None = None
    """GPUs per pod."""
    template_generation: int | None = None
    """The Deployment's generation when the operator last changed its pod template: a controller
    that has not observed it is rolling out; a later generation only scaled (an autoscaler)."""


class RolePlanSummary(CamelModel):
    """Floor, tensor parallelism and autoscaler ceiling the plan gives one role."""

    replicas: int
    tensor_parallel: int
    max_replicas: int
    data_parallel: int | None = None
    """Attention data-parallel ranks per pod, when more than one (a pod has tensor x data GPUs)."""
    expert_parallel: bool | None = None
    """True when the experts are spread whole over the pod's GPUs (expert parallelism)."""
    max_num_seqs: int | None = None
    """Planned sequences per attention rank (the engine's --max-num-seqs)."""


class PlanSummary(CamelModel):
    source: Annotated[str, Field(max_length=32)]
    """Which planner produced this plan (placeholder until the analytical planner runs)."""
    mode: Annotated[str, Field(max_length=32)]
    prefill: RolePlanSummary | None = None
    decode: RolePlanSummary | None = None
    disagg_threshold: int | None = None
    """Uncached prompt tokens below which the router skips prefill."""
    gpus: int = 0
    """GPUs at the planned floor."""
    gpu: Annotated[str, Field(max_length=64)] | None = None
    """The catalog GPU the plan is for (spec.accelerator.type, or found on the nodes' labels)."""
    predicted_ttft_ms: float | None = None
    predicted_itl_ms: float | None = None
    slo_met: bool | None = None
    reason: Annotated[str, Field(max_length=4096)] = ""


class PlacementStatus(CamelModel):
    level: Annotated[str, Field(max_length=32)]
    """Topology level packed (rack, block, zone, host)."""
    node_label: Annotated[str, Field(max_length=317)]
    """Node label key that means this level in this cluster."""
    domain: Annotated[str, Field(max_length=63)] | None = None
    """Chosen domain (label value); stable across reconciles while it can hold the model."""
    required: bool
    """True for pack.required/packDomain, False for pack.preferred."""
    gpus_needed: int = 0
    """GPUs the planned floor of prefill and decode pods needs in one domain."""


class ObservedWorkload(CamelModel):
    """What Prometheus showed over the last window (None: no data for that figure)."""

    request_rate: float | None = None
    input_tokens: float | None = None
    output_tokens: float | None = None
    ttft_ms: float | None = None
    itl_ms: float | None = None


class ReplanStatus(CamelModel):
    """The last live re-planning decision and its inputs."""

    time: Annotated[str, Field(max_length=32)]
    """RFC 3339 time of the decision; the next one comes one planner.replan.interval later."""
    observed: ObservedWorkload
    ttft_correction: float = 1.0
    """Observed / predicted TTFT at the running configuration, bounded to [0.5, 2]."""
    itl_correction: float = 1.0
    """Observed / predicted ITL at the running configuration, bounded to [0.5, 2]."""
    prefill_floor: int | None = None
    decode_floor: int | None = None
    disagg_threshold: int | None = None
    decision: Annotated[str, Field(max_length=1024)] = ""


class DisaggregatedModelStatus(CamelModel):
    observed_generation: int | None = None
    """The spec generation the status describes."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=_list_map("type"))
    mode: Annotated[str, Field(max_length=32)] | None = None
    """Resolved serving mode (disaggregated or aggregated)."""
    ratio: Annotated[str, Field(max_length=32)] | None = None
    """Prefill:decode replica ratio, e.g. 2P:1D."""
    replicas: int | None = None
    """Engine pods the model wants now (prefill + decode, or aggregated; 0 at zero)."""
    ready_replicas: int | None = None
    """Engine pods Ready now (printer column Pods, beside Desired)."""
    roles: list[RoleStatus] = Field(default_factory=list, json_schema_extra=_list_map("name"))
    plan: PlanSummary | None = None
    placement: list[PlacementStatus] = Field(default_factory=list)
    replan: ReplanStatus | None = None


def condition(
    conditions: Sequence[Condition],
    ctype: str,
) -> Condition | None:
    """The condition of a type, if present."""
    return next((c for c in conditions if c.type == ctype), None)


def set_condition(
    conditions: Sequence[Condition],
    *,
    ctype: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[Condition]:
    """Return the list with one condition replaced; lastTransitionTime moves only on a flip."""
    previous = condition(conditions, ctype)
    transition = now if previous is None or previous.status != status else previous.last_transition_time
    updated = Condition(
        type=ctype,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=transition,
    )
    kept = [c for c in conditions if c.type != ctype]
    return sorted([*kept, updated], key=lambda c: _ORDER.get(c.type, len(_ORDER)))


def drop_conditions(conditions: Sequence[Condition], ctypes: Iterable[str]) -> list[Condition]:
    gone = set(ctypes)
    return [c for c in conditions if c.type not in gone]


_ORDER = {t.value: i for i, t in enumerate(ConditionType)}
