"""Status that tells the truth: Ready is the floor of the current generation, and every reason a
role cannot reach its floor reaches the model in the refusing component's own words."""

from __future__ import annotations

from typing import Any

from disagg.reconcile import reconcile
from disagg.settings import OperatorSettings
from tests.conftest import ROOT, MemoryCluster, load

LLAMA = ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml"
SETTINGS = OperatorSettings()


def run(cluster: MemoryCluster) -> dict[str, dict[str, Any]]:
    body = cluster.get_model("default", "llama-70b")
    assert body is not None
    reconcile(body, cluster, SETTINGS, now=lambda: "2026-11-28T00:00:00Z")
    status = cluster.models[("default", "llama-70b")]["status"]
    return {c["type"]: c for c in status["conditions"]}


def deployment(cluster: MemoryCluster, name: str) -> dict[str, Any]:
    return next(o for (_, k, _, n), o in cluster.objects.items() if k == "Deployment" and n == name)


def ready_model(cluster: MemoryCluster) -> None:
    cluster.add_model(load(LLAMA))
    run(cluster)
    cluster.roll_out()
    assert run(cluster)["Ready"]["status"] == "True"


def test_a_scale_up_above_the_floor_keeps_the_model_ready(cluster: MemoryCluster) -> None:
    ready_model(cluster)
    prefill = deployment(cluster, "llama-70b-prefill")
    floor = prefill["spec"]["replicas"]
    prefill["spec"]["replicas"] = floor + 2  # the HPA adds two pods that take minutes to load
    prefill["status"].update(replicas=floor + 2, updatedReplicas=floor + 2)
    conds = run(cluster)
    assert conds["Ready"]["status"] == "True"
    assert conds["Progressing"]["status"] == "False"
    assert conds["Degraded"]["status"] == "False"
    roles = {r["name"]: r for r in cluster.models[("default", "llama-70b")]["status"]["roles"]}
    assert roles["prefill"]["desired"] == floor + 2
    assert roles["prefill"]["ready"] == floor  # the scale-up shows here, not in Ready


def test_a_template_change_is_a_rollout_until_the_new_pods_hold_the_floor(cluster: MemoryCluster) -> None:
    ready_model(cluster)
    prefill = deployment(cluster, "llama-70b-prefill")
    floor = prefill["spec"]["replicas"]
    # one new-template pod surged, not available yet; the old pods still serve
    prefill["status"].update(replicas=floor + 1, updatedReplicas=1, availableReplicas=floor, readyReplicas=floor)
    conds = run(cluster)
    assert conds["Progressing"]["status"] == "True"
    assert conds["Ready"]["status"] == "False"
    assert "prefill 0/" in conds["Ready"]["message"]


def test_failed_create_under_a_quota_is_degraded_with_the_quota_message(cluster: MemoryCluster) -> None:
    cluster.add_model(load(LLAMA))
    run(cluster)
    cluster.roll_out()
    decode = deployment(cluster, "llama-70b-decode")
    quota = 'pods "llama-70b-decode-7d9-x" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=8'
    decode["status"] = {
        "observedGeneration": decode["metadata"]["generation"],
        "replicas": 0,
        "conditions": [
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": quota},
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"},
        ],
    }
    conds = run(cluster)
    assert conds["Degraded"]["status"] == "True"
    assert conds["Degraded"]["reason"] == "FailedCreate"
    assert quota in conds["Degraded"]["message"]
    assert "ProgressDeadlineExceeded" in conds["Degraded"]["message"]
    assert conds["Ready"]["status"] == "False"
    assert conds["Ready"]["reason"] == "FailedCreate"
    assert ("DegradedTrue", conds["Degraded"]["message"]) in cluster.events


def pod(role: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"disagg.dev/model": "llama-70b", "disagg.dev/role": role},
        },
        "status": status,
    }


def test_unschedulable_and_image_pull_pods_name_their_cause(cluster: MemoryCluster) -> None:
    ready_model(cluster)
    decode = deployment(cluster, "llama-70b-decode")
    decode["status"].update(readyReplicas=0, availableReplicas=0)
    unschedulable = "0/14 nodes are available: 14 Insufficient nvidia.com/gpu."
    cluster.pods = [
        pod(
            "decode",
            "llama-70b-decode-1",
            {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
                ],
            },
        ),
        pod(
            "decode",
            "llama-70b-decode-2",
            {
                "containerStatuses": [
                    {
                        "name": "vllm",
                        "image": "bad:tag",
                        "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling "bad:tag"'}},
                    }
                ]
            },
        ),
    ]
    conds = run(cluster)
    assert conds["Degraded"]["reason"] == "Unschedulable"
    assert unschedulable in conds["Degraded"]["message"]
    assert (
        "ImagePullBackOff: pod llama-70b-decode-2 container vllm: cannot pull image bad:tag"
        in conds["Degraded"]["message"]
    )
    # fixed: the model recovers and says so
    cluster.pods = []
    cluster.roll_out()
    conds = run(cluster)
    assert conds["Degraded"]["status"] == "False"
    assert conds["Ready"]["status"] == "True"


def test_pods_are_read_only_when_a_role_is_short(cluster: MemoryCluster) -> None:
    ready_model(cluster)
    calls: list[str] = []
    original = cluster.list_model_pods

    def counting(namespace: str, selector: Any) -> list[dict[str, Any]]:
        calls.append(namespace)
        return original(namespace, selector)

    cluster.list_model_pods = counting  # type: ignore[method-assign]
    run(cluster)
    assert calls == []


def test_a_missing_api_is_named_before_anything_is_applied(cluster: MemoryCluster) -> None:
    body = load(LLAMA)
    body["spec"]["autoscaling"] = {"engine": "keda"}
    cluster.add_model(body)
    cluster.missing_apis.add("keda.sh/v1alpha1")
    conds = run(cluster)
    assert not cluster.objects, "nothing is half-applied"
    assert conds["Degraded"]["status"] == "True"
    assert conds["Degraded"]["reason"] == "MissingAPI"
    assert conds["Degraded"]["message"] == (
        "keda.sh/v1alpha1 is not served by this cluster: autoscaling.engine: keda needs it (KEDA's ScaledObject);"
        " install KEDA or set autoscaling.engine: hpa"
    )
    assert ("DegradedTrue", conds["Degraded"]["message"]) in cluster.events
    cluster.missing_apis.clear()  # KEDA installed: the next pass applies everything
    run(cluster)
    assert any(kind == "ScaledObject" for (_, kind, _, _) in cluster.objects)


PACKED = ROOT / "manifests/samples/qwen3-32b-rack-packed.yaml"


def _gpu_node(name: str, rack: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"topology.disagg.dev/rack": rack}},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def _placed(cluster: MemoryCluster, name: str) -> str:
    return str(cluster.models[("default", name)]["status"]["placement"][0]["domain"])


def test_models_placed_together_never_claim_the_same_rack() -> None:
    """Two 14-GPU models, two 16-GPU racks, no pods bound yet: one rack each."""
    from disagg.reconcile import PlacementClaims

    cluster = MemoryCluster(nodes=[_gpu_node(f"{r}{i}", f"rack-{r}") for r in "ab" for i in range(2)])
    for name, uid in (("qwen-one", "u1"), ("qwen-two", "u2")):
        body = load(PACKED)
        body["metadata"]["name"] = name
        cluster.add_model(body, uid=uid)
    claims = PlacementClaims()
    for name in ("qwen-one", "qwen-two"):
        body = cluster.get_model("default", name)
        assert body is not None
        reconcile(body, cluster, SETTINGS, now=lambda: "2026-11-28T00:00:00Z", claims=claims)
    assert {_placed(cluster, "qwen-one"), _placed(cluster, "qwen-two")} == {"rack-a", "rack-b"}
    # without the shared ledger both would have chosen the same best-fit rack
    alone = MemoryCluster(nodes=cluster.nodes)
    for name, uid in (("qwen-one", "u1"), ("qwen-two", "u2")):
        body = load(PACKED)
        body["metadata"]["name"] = name
        alone.add_model(body, uid=uid)
        model = alone.get_model("default", name)
        assert model is not None
        reconcile(model, alone, SETTINGS, now=lambda: "2026-11-28T00:00:00Z")
    assert _placed(alone, "qwen-one") == _placed(alone, "qwen-two")


def test_a_move_to_another_rack_records_an_event() -> None:
    cluster = MemoryCluster(nodes=[_gpu_node(f"{r}{i}", f"rack-{r}") for r in "ab" for i in range(2)])
    cluster.add_model(load(PACKED))
    body = cluster.get_model("default", "qwen3-32b")
    assert body is not None
    reconcile(body, cluster, SETTINGS, now=lambda: "2026-11-28T00:00:00Z")
    first = _placed(cluster, "qwen3-32b")
    for node in cluster.nodes:  # the rack is cordoned
        if node["metadata"]["labels"]["topology.disagg.dev/rack"] == first:
            node["spec"] = {"unschedulable": True}
    body = cluster.get_model("default", "qwen3-32b")
    assert body is not None
    reconcile(body, cluster, SETTINGS, now=lambda: "2026-11-28T00:00:01Z")
    second = _placed(cluster, "qwen3-32b")
    assert second != first
    moved = [m for reason, m in cluster.events if reason == "Moved"]
    assert moved == [f"rack {first} -> {second}: rack {second} holds the 14 GPUs needed"]


def test_a_switch_to_aggregated_drops_the_decode_plan_from_status(cluster: MemoryCluster) -> None:
    cluster.add_model(load(LLAMA))
    run(cluster)
    assert "decode" in cluster.models[("default", "llama-70b")]["status"]["plan"]
    model = cluster.models[("default", "llama-70b")]
    model["spec"]["mode"] = "aggregated"
    model["metadata"]["generation"] = 2
    run(cluster)
    plan = cluster.models[("default", "llama-70b")]["status"]["plan"]
    assert plan["mode"] == "aggregated"
    assert "decode" not in plan
    assert "disaggThreshold" not in plan


def test_a_crash_loop_reads_the_same_while_running_and_while_backing_off(cluster: MemoryCluster) -> None:
    """A crash-looping vLLM spends minutes loading between back-offs: the status must not flap."""
    ready_model(cluster)
    decode = deployment(cluster, "llama-70b-decode")
    decode["status"].update(readyReplicas=0, availableReplicas=0)
    last = {"terminated": {"exitCode": 1, "reason": "Error"}}
    running = {"name": "vllm", "ready": False, "restartCount": 3, "lastState": last, "state": {"running": {}}}
    waiting = {
        **running,
        "restartCount": 4,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
    }
    cluster.pods = [pod("decode", "llama-70b-decode-1", {"containerStatuses": [running]})]
    first = run(cluster)["Degraded"]
    assert first["reason"] == "CrashLoopBackOff"
    assert "keeps restarting (last exit code 1: Error)" in first["message"]
    cluster.pods = [pod("decode", "llama-70b-decode-1", {"containerStatuses": [waiting]})]
    cluster.writes.clear()
    assert run(cluster)["Degraded"] == first
    assert cluster.writes == [], "the same cause must not rewrite the status"


def test_a_new_model_is_progressing_until_its_pods_hold_the_floor(cluster: MemoryCluster) -> None:
    cluster.add_model(load(LLAMA))
    run(cluster)
    cluster.roll_out()
    prefill = deployment(cluster, "llama-70b-prefill")
    prefill["status"].update(readyReplicas=0, availableReplicas=0)  # created, still loading weights
    conds = run(cluster)
    assert conds["Progressing"]["status"] == "True"
    assert conds["Ready"]["status"] == "False"


def test_an_autoscaler_bumping_the_generation_is_not_a_rollout(cluster: MemoryCluster) -> None:
    """/scale writes bump metadata.generation; until the controller catches up, the template is
    still the one the operator wrote, so the model stays Ready."""
    ready_model(cluster)
    prefill = deployment(cluster, "llama-70b-prefill")
    prefill["metadata"]["generation"] += 1  # the HPA scaled; the controller has not observed it yet
    prefill["spec"]["replicas"] += 1
    cluster.writes.clear()
    conds = run(cluster)
    assert conds["Ready"]["status"] == "True"
    assert conds["Progressing"]["status"] == "False"


def test_a_stale_child_of_a_role_that_stays_goes_at_once(cluster: MemoryCluster) -> None:
    """Make-before-break keeps only roles the new mode lost, never e.g. an HPA no longer rendered."""
    ready_model(cluster)
    model = cluster.models[("default", "llama-70b")]
    model["spec"]["decode"]["replicas"] = {"min": 2, "max": 2}  # fixed size: decode's HPA goes
    model["metadata"]["generation"] = 2
    body = cluster.get_model("default", "llama-70b")
    assert body is not None
    outcome = reconcile(body, cluster, SETTINGS, now=lambda: "2026-11-28T00:00:00Z")
    assert "HorizontalPodAutoscaler/llama-70b-decode" in outcome.deleted
