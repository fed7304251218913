"""accelerator.type unset: the GPU comes from the node labels of the nodes the model may use."""

from __future__ import annotations

from typing import Any

from disagg.api.spec import DisaggregatedModelSpec
from disagg.placement import PodDemand, gpu_products
from disagg.planner.catalog import GPU_PRODUCT_LABEL
from disagg.planner.resolve import resolve_plan
from disagg.reconcile import PlacementClaims

H100 = "NVIDIA-H100-80GB-HBM3"


def _node(
    name: str, product: str | None, *, gpus: str | None = "8", taint: bool = False, **labels: str
) -> dict[str, Any]:
    node_labels = dict(labels)
    if product is not None:
        node_labels[GPU_PRODUCT_LABEL] = product
    return {
        "metadata": {"name": name, "labels": node_labels},
        "spec": {"taints": [{"key": "gpu", "value": "x", "effect": "NoSchedule"}] if taint else []},
        "status": {"allocatable": {"nvidia.com/gpu": gpus} if gpus else {}, "conditions": []},
    }


def _spec(**over: Any) -> DisaggregatedModelSpec:
    body: dict[str, Any] = {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "preset": "llama-3.1-8b"},
        "mode": "aggregated",
        "workload": {"inputTokens": {"mean": 400}, "outputTokens": {"mean": 150}, "requestRate": 5},
        "slo": {"ttft": "500ms", "itl": "30ms"},
    }
    body.update(over)
    return DisaggregatedModelSpec.model_validate(body)


def test_only_nodes_a_role_may_use_count() -> None:
    nodes = [
        _node("a", H100, pool="x"),
        _node("b", H100, pool="x"),
        _node("c", "NVIDIA-B200", pool="y"),  # another pool
        _node("d", "NVIDIA-B200", pool="x", taint=True),  # tainted, not tolerated
        _node("e", None, pool="x"),  # no GFD label
        _node("f", "NVIDIA-B200", pool="x", gpus=None),  # offers no nvidia.com/gpu
    ]
    pods = [PodDemand(gpus=0, node_selector={"pool": "x"})]
    assert gpu_products(nodes, pods, resource="nvidia.com/gpu", label=GPU_PRODUCT_LABEL) == {H100: 2}
    tolerant = [PodDemand(gpus=0, node_selector={"pool": "x"}, tolerations=({"key": "gpu", "operator": "Exists"},))]
    assert gpu_products(nodes, tolerant, resource="nvidia.com/gpu", label=GPU_PRODUCT_LABEL) == {
        H100: 2,
        "NVIDIA-B200": 1,
    }


def test_the_plan_says_where_its_gpu_came_from() -> None:
    resolution = resolve_plan(_spec(), {H100: 3, f"{H100}-SHARED": 1})
    assert resolution.plan is not None
    assert resolution.plan.gpu == "h100-sxm"
    assert resolution.plan.reason.startswith(
        f"GPU h100-sxm from the {GPU_PRODUCT_LABEL} label of the 4 nodes the model may use ({H100} x3, "
    ), resolution.plan.reason
    named = resolve_plan(_spec(accelerator={"type": "h100-sxm"}), {"NVIDIA-B200": 2})
    assert named.plan is not None  # a named type wins; the nodes are not consulted
    assert named.plan.gpu == "h100-sxm"
    assert "label" not in named.plan.reason.split(".")[0]


def test_mixed_unknown_or_no_products_are_not_planned() -> None:
    for products, words in (
        ({H100: 2, "NVIDIA-B200": 1}, "mixed GPU products"),
        ({"NVIDIA-H100-PCIe": 1}, "not in the planner catalog"),
        ({}, "no GPU product"),
        (None, "no GPU product"),
    ):
        resolution = resolve_plan(_spec(), products)
        assert resolution.plan is None, products
        assert resolution.reason == "AcceleratorUnknown"
        assert words in resolution.message
        assert "\n" not in resolution.message


def test_products_are_counted_again_only_when_the_inventory_moves() -> None:
    claims = PlacementClaims()
    calls: list[int] = []

    def count() -> dict[str, int]:
        calls.append(1)
        return {H100: len(calls)}

    assert claims.node_products("k", 7, count) == {H100: 1}
    assert claims.node_products("k", 7, count) == {H100: 1}
    assert claims.node_products("k", 8, count) == {H100: 2}
    assert claims.node_products("k", None, count) == {H100: 3}  # no version: always counted
    assert len(calls) == 3
