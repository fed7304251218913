"""Which plan the operator renders for a spec, and what the ``Planned`` condition says about it.

- A spec with a model shape (``preset`` or ``config``) is planned analytically; the result is cached
  by the planning-relevant part of the spec, so periodic resyncs of many models cost no planner time.
- Without a model shape the planner cannot size anything: the spec's own replicas and tensor
  parallelism are used (the placeholder plan) and ``Planned=False, reason NoModelShape`` says so.
- When the planner rejects the input (unknown GPU, a model that fits no TP, an SLO below the
  physical floor), nothing is rendered from it: ``Planned=False, reason PlanningFailed``, and the
  operator leaves running children as they are.
- Without ``spec.accelerator.type`` the GPU is the one the nodes the model may use carry in GPU
  Feature Discovery's ``nvidia.com/gpu.product`` label (the caller passes their products): the plan's
  reason says so; no labelled node, a product outside the catalog or two different GPUs is
  ``Planned=False, reason AcceleratorUnknown`` (nothing rendered, running children kept).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache

from disagg.api.spec import DisaggregatedModelSpec
from disagg.planner.catalog import GPU_PRODUCT_LABEL, PlanningError, gpu_for_products
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
def _plan_cached(key: str, gpu: str | None) -> Plan:
    return plan_for_spec(DisaggregatedModelSpec.model_validate(json.loads(key)), gpu=gpu)


def plan_cache_info() -> tuple[int, int]:
    """(plans served from the cache, plans computed) since the process started."""
    info = _plan_cached.cache_info()
    return info.hits, info.misses


def node_gpu(products: Mapping[str, int]) -> tuple[str, str]:
    """(catalog GPU, the sentence saying where it came from) for the GPU products of the nodes a model
    may use (product -> node count); PlanningError when there is none, an unknown one or several GPUs."""
    gpu = gpu_for_products(products)
    nodes = sum(products.values())
    names = ", ".join(f"{product} x{count}" for product, count in sorted(products.items()))
    return gpu, (
        f"GPU {gpu} from the {GPU_PRODUCT_LABEL} label of the {nodes} node{'s' if nodes != 1 else ''} "
        f"the model may use ({names}; spec.accelerator.type is not set)."
    )


def resolve_plan(spec: DisaggregatedModelSpec, node_products: Mapping[str, int] | None = None) -> Resolution:
    """``node_products``: GPU product -> count of the nodes the model may use (read by the caller from
    its node cache); only consulted when ``spec.accelerator.type`` is unset."""
    if spec.model.preset is None and spec.model.config is None:
        plan = placeholder_plan(spec)
        return Resolution(
            plan=plan,
            planned=False,
            reason="NoModelShape",
            message="set spec.model.preset or spec.model.config to let the planner size this model; "
            "using the spec's replicas and tensor parallelism",
        )
    gpu, source = None, ""
    if spec.accelerator.type is None:
        try:
            gpu, source = node_gpu(node_products or {})
        except PlanningError as exc:
            return Resolution(plan=None, planned=False, reason="AcceleratorUnknown", message=str(exc))
    try:
        plan = _plan_cached(_key(spec), gpu)
    except PlanningError as exc:
        return Resolution(plan=None, planned=False, reason="PlanningFailed", message=f"{source} {exc}".strip())
    if source:
        plan = replace(plan, reason=f"{source} {plan.reason}")
    if plan.slo_met:
        return Resolution(plan=plan, planned=True, reason="SLOsMet", message=plan.reason)
    return Resolution(plan=plan, planned=False, reason="SLOsAtRisk", message=plan.reason)
