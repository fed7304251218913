"""Reconcile against the kube interface: idempotent, self-healing, never fights the autoscaler."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from disagg.kube import ApiError, identity
from disagg.reconcile import reconcile
from disagg.settings import OperatorSettings
from tests.conftest import ROOT, MemoryCluster, load

SETTINGS = OperatorSettings()
LLAMA = ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml"
PACKED = ROOT / "manifests/samples/qwen3-32b-rack-packed.yaml"
CLOCK = iter(f"2026-11-28T00:00:{i:02d}Z" for i in range(60))


def now() -> str:
    return next(CLOCK)


def run(cluster: MemoryCluster, name: str) -> Any:
    body = cluster.get_model("default", name)
    assert body is not None
    return reconcile(body, cluster, SETTINGS, now=lambda: "2026-11-28T00:00:00Z")


def conditions(cluster: MemoryCluster, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in cluster.models[("default", name)]["status"]["conditions"]}


def deployment(cluster: MemoryCluster, name: str) -> dict[str, Any]:
    return next(o for (_, k, _, n), o in cluster.objects.items() if k == "Deployment" and n == name)


def test_first_pass_applies_everything_then_a_second_pass_writes_nothing(cluster: MemoryCluster) -> None:
    cluster.add_model(load(LLAMA))
    first = run(cluster, "llama-70b")
    assert len(first.applied) == 17
    assert first.status_written
    cluster.writes.clear()
    second = run(cluster, "llama-70b")
    assert second.writes == 0
    assert cluster.writes == []


def test_ready_only_once_deployments_roll_out(cluster: MemoryCluster) -> None:
    cluster.add_model(load(LLAMA))
    run(cluster, "llama-70b")
    conds = conditions(cluster, "llama-70b")
    assert conds["Ready"]["status"] == "False"
    assert conds["Progressing"]["status"] == "True"
    cluster.roll_out()
    outcome = run(cluster, "llama-70b")
    conds = conditions(cluster, "llama-70b")
    assert outcome.ready
    assert conds["Ready"]["status"] == "True"
    assert conds["Progressing"]["status"] == "False"
    status = cluster.models[("default", "llama-70b")]["status"]
    assert status["observedGeneration"] == 1
    assert status["mode"] == "disaggregated"
    assert status["ratio"] == "5P:1D"
    assert (status["readyReplicas"], status["replicas"]) == (6, 6)
    assert {r["name"]: r["ready"] for r in status["roles"]} == {"prefill": 5, "decode": 1, "router": 1}
    assert conds["Planned"]["status"] == "True"
    assert conds["Planned"]["reason"] == "SLOsMet"
    assert status["plan"]["source"] == "planner"
    assert status["plan"]["predictedTtftMs"] < 1000
    assert status["plan"]["predictedItlMs"] < 50


def test_spec_change_is_not_ready_until_the_new_generation_rolls_out(cluster: MemoryCluster) -> None:
    cluster.add_model(load(LLAMA))
    run(cluster, "llama-70b")
    cluster.roll_out()
    run(cluster, "llama-70b")
    model = cluster.models[("default", "llama-70b")]
    model["spec"]["engine"] = {"image": "vllm/vllm-openai:v0.12.0"}
    model["metadata"]["generation"] = 2
    outcome = run(cluster, "llama-70b")
    assert "Deployment/llama-70b-prefill" in outcome.applied
    conds = conditions(cluster, "llama-70b")
    assert conds["Ready"]["status"] == "False"
    assert conds["Ready"]["observedGeneration"] == 2
    assert model["status"]["observedGeneration"] == 2
    cluster.roll_out()
    run(cluster, "llama-70b")
    assert conditions(cluster, "llama-70b")["Ready"]["status"] == "True"


def test_hand_edit_is_reverted_but_hpa_replicas_are_left_alone(cluster: MemoryCluster) -> None:
    cluster.add_model(load(LLAMA))
    run(cluster, "llama-70b")
    cluster.roll_out()
    run(cluster, "llama-70b")
    prefill = deployment(cluster, "llama-70b-prefill")
    prefill["spec"]["replicas"] = 5  # the HPA scaled it
    cluster.writes.clear()
    assert run(cluster, "llama-70b").applied == []
    prefill["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"  # a hand edit
    outcome = run(cluster, "llama-70b")
    assert outcome.applied == ["Deployment/llama-70b-prefill"]
    prefill = deployment(cluster, "llama-70b-prefill")
    assert prefill["spec"]["template"]["spec"]["containers"][0]["image"] != "evil:latest"
    assert prefill["spec"]["replicas"] == 5


def test_invalid_spec_degrades_and_leaves_children_untouched(cluster: MemoryCluster) -> None:
    cluster.add_model(load(LLAMA))
    run(cluster, "llama-70b")
    before = copy.deepcopy(cluster.objects)
    model = cluster.models[("default", "llama-70b")]
    model["spec"]["prefill"]["replicas"] = {"min": 4, "max": 2}
    model["metadata"]["generation"] = 2
    cluster.writes.clear()
    outcome = run(cluster, "llama-70b")
    assert outcome.error
    assert "prefill.replicas.min (4) must be <= prefill.replicas.max (2)" in outcome.error
    assert cluster.writes == ["status llama-70b"]
    assert cluster.objects == before
    conds = conditions(cluster, "llama-70b")
    assert conds["Degraded"]["status"] == "True"
    assert conds["Degraded"]["reason"] == "InvalidSpec"
    assert conds["Ready"]["status"] == "False"
    assert "must be <=" in conds["Ready"]["message"]
    assert ("DegradedTrue", conds["Degraded"]["message"]) in cluster.events


def test_switch_to_aggregated_makes_before_it_breaks(cluster: MemoryCluster) -> None:
    cluster.add_model(load(LLAMA))
    run(cluster, "llama-70b")
    cluster.roll_out()
    run(cluster, "llama-70b")
    model = cluster.models[("default", "llama-70b")]
    model["spec"]["mode"] = "aggregated"
    model["metadata"]["generation"] = 2
    outcome = run(cluster, "llama-70b")
    names = {identity(o)[3] for o in cluster.objects.values() if o["kind"] == "Deployment"}
    # the new role is applied, the old ones keep serving until it holds its floor
    assert names == {"llama-70b-prefill-decode", "llama-70b-prefill", "llama-70b-decode", "llama-70b-router"}
    assert not outcome.deleted
    conds = conditions(cluster, "llama-70b")
    assert conds["Progressing"]["reason"] == "SwitchingMode"
    assert (
        "decode, prefill keeps serving until prefill-decode hold their planned floor" in conds["Progressing"]["message"]
    )
    cluster.roll_out()
    outcome = run(cluster, "llama-70b")
    names = {identity(o)[3] for o in cluster.objects.values() if o["kind"] == "Deployment"}
    assert names == {"llama-70b-prefill-decode", "llama-70b-router"}
    assert "Deployment/llama-70b-decode" in outcome.deleted
    assert "HorizontalPodAutoscaler/llama-70b-decode" in outcome.deleted


def test_switch_with_replace_prunes_at_once(cluster: MemoryCluster) -> None:
    cluster.add_model(load(LLAMA))
    run(cluster, "llama-70b")
    model = cluster.models[("default", "llama-70b")]
    model["spec"]["mode"] = "aggregated"
    model["spec"]["modeSwitch"] = "replace"
    model["metadata"]["generation"] = 2
    outcome = run(cluster, "llama-70b")
    names = {identity(o)[3] for o in cluster.objects.values() if o["kind"] == "Deployment"}
    assert names == {"llama-70b-prefill-decode", "llama-70b-router"}
    assert "Deployment/llama-70b-decode" in outcome.deleted


def test_children_of_another_owner_are_not_touched(cluster: MemoryCluster) -> None:
    cluster.add_model(load(LLAMA))
    run(cluster, "llama-70b")
    foreign = copy.deepcopy(deployment(cluster, "llama-70b-decode"))
    foreign["metadata"]["name"] = "someone-elses"
    foreign["metadata"]["ownerReferences"] = [{"uid": "other", "controller": True}]
    cluster.objects[identity(foreign)] = foreign
    outcome = run(cluster, "llama-70b")
    assert "Deployment/someone-elses" not in outcome.deleted
    assert identity(foreign) in cluster.objects


def test_apply_failure_is_reported_and_raised(cluster: MemoryCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster.add_model(load(LLAMA))

    def refuse(obj: Any) -> Any:
        raise ApiError(422, "admission webhook denied the request")

    monkeypatch.setattr(cluster, "apply", refuse)
    with pytest.raises(ApiError):
        run(cluster, "llama-70b")
    conds = conditions(cluster, "llama-70b")
    assert conds["Degraded"]["reason"] == "ApplyFailed"
    assert "webhook denied" in conds["Degraded"]["message"]


def _gpu_node(name: str, rack: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"topology.disagg.dev/rack": rack}},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def _busy_pod(node: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "gpu-occupied", "labels": {}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": "8"}}}]},
        "status": {"phase": "Running"},
    }


def test_rack_choice_is_recorded_and_stable() -> None:
    cluster = MemoryCluster(
        nodes=[_gpu_node(f"a{i}", "rack-a") for i in range(4)] + [_gpu_node(f"b{i}", "rack-b") for i in range(4)],
        pods=[_busy_pod("a0"), _busy_pod("a1"), _busy_pod("a2")],
    )
    cluster.add_model(load(PACKED))
    run(cluster, "qwen3-32b")
    status = cluster.models[("default", "qwen3-32b")]["status"]
    assert status["placement"][0]["domain"] == "rack-b"
    assert status["placement"][0]["gpusNeeded"] == 14  # planned 3 x TP2 prefill + 2 x TP4 decode
    assert conditions(cluster, "qwen3-32b")["TopologySatisfied"]["status"] == "True"
    cluster.pods += [_busy_pod("a3")]  # rack-a fills up further; rack-b is still ours
    cluster.writes.clear()
    assert run(cluster, "qwen3-32b").writes == 0


def test_no_rack_with_room_sets_topology_unsatisfied() -> None:
    cluster = MemoryCluster(nodes=[_gpu_node("a0", "rack-a")])
    cluster.add_model(load(PACKED))
    run(cluster, "qwen3-32b")
    cond = conditions(cluster, "qwen3-32b")["TopologySatisfied"]
    assert cond["status"] == "False"
    assert cond["reason"] == "NoDomainWithRoom"
    assert "14 GPUs" in cond["message"]
    assert "rack-a 8 free" in cond["message"]


def test_model_without_shape_uses_the_spec_and_says_so(cluster: MemoryCluster) -> None:
    body = load(LLAMA)
    del body["spec"]["model"]["preset"]
    cluster.add_model(body)
    run(cluster, "llama-70b")
    conds = conditions(cluster, "llama-70b")
    assert conds["Planned"]["status"] == "False"
    assert conds["Planned"]["reason"] == "NoModelShape"
    assert cluster.models[("default", "llama-70b")]["status"]["ratio"] == "2P:1D"


def test_planning_failure_is_reported_and_renders_nothing(cluster: MemoryCluster) -> None:
    body = load(LLAMA)
    body["spec"]["accelerator"]["type"] = "tpu-v9"
    cluster.add_model(body)
    outcome = run(cluster, "llama-70b")
    assert not outcome.applied
    assert cluster.writes == ["status llama-70b"]
    conds = conditions(cluster, "llama-70b")
    assert conds["Planned"]["status"] == "False"
    assert conds["Planned"]["reason"] == "PlanningFailed"
    assert "tpu-v9" in conds["Planned"]["message"]
    assert conds["Degraded"]["status"] == "True"


def test_pod_demands_carry_each_roles_selector_and_tolerations() -> None:
    from disagg.planner.resolve import resolve_plan
    from disagg.reconcile import parse_spec, pod_demands

    body = load(LLAMA)
    body["spec"]["prefill"]["scheduling"] = {"nodeSelector": {"gpu": "h100"}}
    body["spec"]["decode"]["scheduling"] = {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}
    spec = parse_spec(body["spec"])
    plan = resolve_plan(spec).plan
    assert plan is not None
    assert plan.decode is not None
    pods = pod_demands(spec, plan)
    prefill, decode = pods[: plan.prefill.replicas], pods[plan.prefill.replicas :]
    assert len(decode) == plan.decode.replicas
    for pod in prefill:
        assert (pod.gpus, dict(pod.node_selector)) == (plan.prefill.tensor_parallel, {"gpu": "h100"})
        assert pod.tolerations == ()
    for pod in decode:
        assert (pod.gpus, dict(pod.node_selector)) == (plan.decode.tensor_parallel, {})
        assert pod.tolerations == ({"key": "nvidia.com/gpu", "operator": "Exists"},)


class VersionedCluster(MemoryCluster):
    """An in-memory cluster that reports an inventory version, as the watch-fed caches do."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = 1
        self.node_reads = 0

    def inventory_version(self) -> int | None:
        return self.version

    def list_nodes(self) -> list[dict[str, Any]]:
        self.node_reads += 1
        return super().list_nodes()


def test_placement_is_reused_while_the_inventory_is_unchanged() -> None:
    from disagg.reconcile import PlacementClaims

    cluster = VersionedCluster(
        nodes=[_gpu_node(f"a{i}", "rack-a") for i in range(4)] + [_gpu_node(f"b{i}", "rack-b") for i in range(4)],
        pods=[_busy_pod("a0"), _busy_pod("a1"), _busy_pod("a2")],
    )
    cluster.add_model(load(PACKED))
    claims = PlacementClaims()

    def run_with_claims() -> None:
        body = cluster.get_model("default", "qwen3-32b")
        assert body is not None
        reconcile(body, cluster, OperatorSettings(), now=now, claims=claims)

    run_with_claims()
    run_with_claims()  # placed again: the status now names the domain it keeps (an input)
    assert cluster.node_reads == 2
    run_with_claims()
    run_with_claims()
    assert cluster.node_reads == 2, "same inventory, same inputs: the last placement is reused"
    # rack-b fills up: the caches' version moves, and the model is placed again (still rack-b's pods
    # are its own, so it stays)
    cluster.pods += [_busy_pod("b3")]
    cluster.version += 1
    run_with_claims()
    assert cluster.node_reads == 3
    status = cluster.models[("default", "qwen3-32b")]["status"]
    assert status["placement"][0]["domain"] == "rack-b"
