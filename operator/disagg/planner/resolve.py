"""Which plan the operator renders for a spec, and what the ``Planned`` condition says about it.

- A spec with a model shape (``preset`` or ``config``) is planned analytically; the result is cached
  by the planning-relevant part of the spec, so periodic resyncs of many models cost no planner time.
- Without a model shape the planner cannot size anything: the spec's own replicas and tensor
  parallelism are used (the placeholder plan) and ``Planned=False, reason NoModelShape`` says so.
- When the planner rejects the input (unknown GPU, a model that fits no TP, an SLO below the
  physical floor), nothing is rendered from it: ``Planned=False, reason PlanningFailed``, and the
  operator leaves running children as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from disagg.api.spec import DisaggregatedModelSpec
from disagg.planner.catalog import PlanningError
from disagg.planner.from_spec import plan_for_spec
from disagg.planner.plan import Plan, placeholder_plan

PLANNING_FIELDS = ("model", "mode", "workload", "slo", "accelerator", "kv_transfer", "prefill", "decode", "router")


@dataclass(frozen=True)
class Resolution:
    plan: Plan | None
    """None when planning failed: render nothing new."""
    planned: bool
    reason: str
    message: str


def _key(spec: DisaggregatedModelSpec) -> str:
    return json.dumps(spec.model_dump(mode="json", include=set(PLANNING_FIELDS)), sort_keys=True)


@lru_cache(maxsize=4096)
def _plan_cached(key: str) -> Plan:
    return plan_for_spec(DisaggregatedModelSpec.model_validate(json.loads(key)))


def plan_cache_info() -> tuple[int, int]:
    """(plans served from the cache, plans computed) since the process started."""
    info = _plan_cached.cache_info()
    return info.hits, info.misses


def resolve_plan(spec: DisaggregatedModelSpec) -> Resolution:
    if spec.model.preset is None and spec.model.config is None:
        plan = placeholder_plan(spec)
        return Resolution(
            plan=plan,
            planned=False,
            reason="NoModelShape",
            message="set spec.model.preset or spec.model.config to let the planner size this model; "
            "using the spec's replicas and tensor parallelism",
        )
    try:
        plan = _plan_cached(_key(spec))
    except PlanningError as exc:
        return Resolution(plan=None, planned=False, reason="PlanningFailed", message=str(exc))
    if plan.slo_met:
        return Resolution(plan=plan, planned=True, reason="SLOsMet", message=plan.reason)
    return Resolution(plan=plan, planned=False, reason="SLOsAtRisk", message=plan.reason)
