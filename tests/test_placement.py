"""Placement picks the best-fitting domain that can really hold the pods, and stays put."""

from __future__ import annotations

from typing import Any

from disagg.api.spec import TopologySpec
from disagg.placement import (
    NodeInfo,
    PodDemand,
    Taint,
    affinity,
    choose_domain,
    gpu_usage,
    node_inventory,
    place,
    pod_requests,
    tolerates,
)
from disagg.settings import OperatorSettings

RACK = "topology.disagg.dev/rack"


def nodes(spec: dict[str, list[int]]) -> list[NodeInfo]:
    """{rack: [free GPUs per 8-GPU node]} -> inventory."""
    return [
        NodeInfo(name=f"{rack}-{i}", labels={RACK: rack}, allocatable_gpus=8, requested_gpus=8 - free)
        for rack, frees in spec.items()
        for i, free in enumerate(frees)
    ]


def demands(gpus: list[int]) -> list[PodDemand]:
    return [PodDemand(gpus=g) for g in gpus]


def decide(
    inventory: list[NodeInfo], pods: list[int] | list[PodDemand], previous: str | None = None, required: bool = True
) -> Any:
    wanted = [p if isinstance(p, PodDemand) else PodDemand(gpus=p) for p in pods]
    return choose_domain(inventory, level="rack", node_label=RACK, pods=wanted, required=required, previous=previous)


def test_best_fit_prefers_the_tightest_rack_that_holds_everything() -> None:
    inventory = nodes({"rack-a": [8, 0, 0, 0], "rack-b": [8, 8, 8, 8], "rack-c": [8, 8, 8, 0]})
    decision = decide(inventory, [4, 4, 8])
    assert decision.domain == "rack-c"
    assert decision.fits
    assert decision.gpus_needed == 16


def test_partly_occupied_rack_is_not_chosen_when_it_cannot_hold_the_model() -> None:
    inventory = nodes({"rack-a": [8, 0, 0, 0], "rack-b": [8, 8, 8, 8]})
    assert decide(inventory, [4, 4, 8]).domain == "rack-b"


def test_fit_is_per_node_not_just_the_sum() -> None:
    inventory = nodes({"rack-a": [4, 4, 4, 4], "rack-b": [8, 8, 0, 0]})
    decision = decide(inventory, [8])
    assert decision.domain == "rack-b"
    assert not decide(nodes({"rack-a": [4, 4, 4, 4]}), [8]).fits


def test_previous_domain_is_kept_while_it_still_fits() -> None:
    inventory = nodes({"rack-a": [8, 8, 8, 8], "rack-b": [8, 8, 0, 0]})
    assert decide(inventory, [8], previous="rack-a").domain == "rack-a"
    assert decide(inventory, [8, 8, 8], previous="rack-b").domain == "rack-a"


def test_no_room_reports_numbers_and_picks_the_roomiest() -> None:
    inventory = nodes({"rack-a": [8, 0, 0, 0], "rack-b": [8, 8, 0, 0]})
    decision = decide(inventory, [8, 8, 8, 8])
    assert not decision.fits
    assert decision.domain == "rack-b"
    assert "32 GPUs" in decision.message
    assert "rack-a 8 free" in decision.message
    assert "rack-b 16 free" in decision.message
    assert "Pending" in decision.message
    assert "spill" in decide(inventory, [8, 8, 8, 8], required=False).message


def test_unschedulable_nodes_offer_nothing() -> None:
    node = NodeInfo(name="n", labels={RACK: "r"}, allocatable_gpus=8, requested_gpus=0, schedulable=False)
    assert not decide([node], [1]).fits


def test_no_labelled_nodes() -> None:
    decision = decide([NodeInfo(name="n", labels={}, allocatable_gpus=8, requested_gpus=0)], [1])
    assert decision.domain is None
    assert not decision.fits
    assert RACK in decision.message


def _node(name: str, rack: str, gpus: str = "8", ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {RACK: rack}},
        "status": {
            "allocatable": {"nvidia.com/gpu": gpus},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _pod(
    node: str, gpus: int, labels: dict[str, str], namespace: str = "default", phase: str = "Running"
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": phase},
    }


def test_inventory_counts_others_and_ignores_own_and_finished_pods() -> None:
    own = {"disagg.dev/model": "m"}
    pods = [
        _pod("n1", 4, {"app": "other"}),
        _pod("n1", 2, own),
        _pod("n1", 2, own, namespace="elsewhere"),
        _pod("n1", 8, {"app": "done"}, phase="Succeeded"),
        _pod("", 8, {"app": "pending"}),
    ]
    used = gpu_usage(pods, resource="nvidia.com/gpu", exclude_labels=own, exclude_namespace="default")
    inventory = node_inventory(
        [_node("n1", "r"), _node("n2", "r", ready=False), {"metadata": {"name": "cpu"}, "status": {}}],
        used,
        resource="nvidia.com/gpu",
    )
    by_name = {n.name: n for n in inventory}
    assert set(by_name) == {"n1", "n2"}
    assert by_name["n1"].requested_gpus == 6
    assert by_name["n1"].free_gpus == 2
    assert by_name["n2"].free_gpus == 0


def test_place_offline_requires_the_label_without_a_domain() -> None:
    placement = place(
        TopologySpec(pack_domain="rack"), pods=demands([8]), inventory=None, settings=OperatorSettings(), previous={}
    )
    assert placement is not None
    assert placement.required is not None
    assert placement.required.domain is None
    block = affinity(model_selector={"m": "x"}, required=placement.required, preferred=None, follow_label=RACK)
    expression = block["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert expression["matchExpressions"] == [{"key": RACK, "operator": "Exists"}]


def test_preferred_renders_preferences_and_host_follows_siblings() -> None:
    inventory = nodes({"rack-a": [8, 8]})
    placement = place(
        TopologySpec(pack={"required": "rack", "preferred": "host"}),
        pods=demands([8]),
        inventory=inventory,
        settings=OperatorSettings(),
        previous={},
    )
    assert placement is not None
    assert placement.follow_label == "kubernetes.io/hostname"
    preferred = place(
        TopologySpec(pack={"preferred": "rack"}),
        pods=demands([8]),
        inventory=inventory,
        settings=OperatorSettings(),
        previous={},
    )
    assert preferred is not None
    assert preferred.required is None
    assert preferred.preferred is not None
    block = affinity(model_selector={"m": "x"}, required=None, preferred=preferred.preferred, follow_label=RACK)
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in block["nodeAffinity"]
    assert block["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 100


def test_topology_labels_are_configurable() -> None:
    settings = OperatorSettings(topology_labels={"rack": "nvidia.com/gpu.clique", "host": "kubernetes.io/hostname"})
    placement = place(
        TopologySpec(pack_domain="rack"), pods=demands([8]), inventory=None, settings=settings, previous={}
    )
    assert placement is not None
    assert placement.required is not None
    assert placement.required.node_label == "nvidia.com/gpu.clique"


GPU_TAINT = Taint(key="nvidia.com/gpu", value="present", effect="NoSchedule")


def _tainted(rack: str, count: int, taint: Taint = GPU_TAINT) -> list[NodeInfo]:
    return [
        NodeInfo(name=f"{rack}-{i}", labels={RACK: rack}, allocatable_gpus=8, requested_gpus=0, taints=(taint,))
        for i in range(count)
    ]


def test_untolerated_taints_keep_a_rack_out_and_the_message_says_why() -> None:
    inventory = _tainted("rack-a", 4) + nodes({"rack-b": [8, 0, 0, 0]})
    decision = decide(inventory, [8, 8])
    assert not decision.fits
    assert {r.domain: r.free_gpus for r in decision.domains} == {"rack-a": 0, "rack-b": 8}
    assert "4 node(s) with free GPUs not counted: untolerated taints or nodeSelector" in decision.message
    tolerant = [PodDemand(gpus=8, tolerations=({"key": "nvidia.com/gpu", "operator": "Exists"},))] * 2
    assert decide(inventory, tolerant).domain == "rack-a"


def test_each_role_is_packed_onto_the_nodes_its_selector_allows() -> None:
    """Prefill on H100 nodes and decode on H200 nodes of the same rack: a per-pod fit, not a sum."""
    h100 = {"gpu": "h100"}
    h200 = {"gpu": "h200"}
    inventory = [
        NodeInfo(
            name=f"a-{i}", labels={RACK: "rack-a", **(h100 if i < 2 else h200)}, allocatable_gpus=8, requested_gpus=0
        )
        for i in range(3)
    ]
    prefill = [PodDemand(gpus=4, node_selector=h100)] * 4  # 16 GPUs on the two H100 nodes
    decode = [PodDemand(gpus=8, node_selector=h200)]
    assert decide(inventory, prefill + decode).fits
    assert not decide(inventory, [*prefill, PodDemand(gpus=4, node_selector=h100), *decode]).fits
    assert not decide(inventory, [*prefill, *decode, *decode]).fits


def test_toleration_matching_follows_kubernetes() -> None:
    taint = Taint(key="k", value="v", effect="NoExecute")
    assert tolerates([{"operator": "Exists"}], taint)  # empty key + Exists tolerates everything
    assert tolerates([{"key": "k", "operator": "Exists", "effect": "NoExecute"}], taint)
    assert tolerates([{"key": "k", "value": "v"}], taint)  # operator defaults to Equal
    assert not tolerates([{"key": "k", "value": "w"}], taint)
    assert not tolerates([{"key": "k", "operator": "Exists", "effect": "NoSchedule"}], taint)
    assert not tolerates([{"key": "other", "operator": "Exists"}], taint)
    assert not tolerates([], taint)


def test_inventory_keeps_only_hard_taints() -> None:
    node = _node("n1", "r")
    node["spec"] = {
        "taints": [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
            {"key": "soft", "effect": "PreferNoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
        ]
    }
    (info,) = node_inventory([node], {}, resource="nvidia.com/gpu")
    assert info.taints == (GPU_TAINT, Taint(key="node.kubernetes.io/not-ready", value="", effect="NoExecute"))


def test_pod_requests_counts_every_extended_resource_as_the_scheduler_does() -> None:
    pod = {
        "spec": {
            "containers": [
                {"resources": {"requests": {"nvidia.com/gpu": "2", "cpu": "4"}}},
                {"resources": {"requests": {"nvidia.com/gpu": "1", "rdma/ib": "1"}}},
            ],
            # a native sidecar adds to the containers; a plain init container counts only at its peak
            "initContainers": [
                {"restartPolicy": "Always", "resources": {"requests": {"rdma/ib": "1"}}},
                {"resources": {"requests": {"nvidia.com/gpu": "8"}}},
            ],
        }
    }
    assert pod_requests(pod) == {"nvidia.com/gpu": 8, "rdma/ib": 2}
    assert pod_requests({"spec": {"containers": [{}]}}) == {}
