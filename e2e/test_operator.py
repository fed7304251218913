"""The operator against a real API server, controllers, scheduler and kwok nodes."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness import (
    CHILD_KINDS,
    MANAGED,
    ROOT,
    ClusterEnv,
    Kubectl,
    OperatorProcess,
    assert_clean,
    operator_requests,
    operator_writes,
    wait_for,
)

SAMPLES = ROOT / "manifests" / "samples"
RACK = "topology.disagg.dev/rack"
pytestmark = pytest.mark.e2e


def sample(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return body


def model(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    body = kubectl.get("disaggregatedmodel", name, namespace)
    assert body is not None, f"{namespace}/{name} is gone"
    return body


def cond(body: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == ctype), None)


def wait_ready(
    kubectl: Kubectl, namespace: str, name: str, generation: int = 1, timeout: float = 120
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body = model(kubectl, namespace, name)
        ready = cond(body, "Ready")
        status = body.get("status") or {}
        if ready and ready["status"] == "True" and status.get("observedGeneration") == generation:
            return body
        return None

    return wait_for(f"{namespace}/{name} Ready at generation {generation}", probe, timeout=timeout)


def pods(kubectl: Kubectl, namespace: str, role: str | None = None) -> list[dict[str, Any]]:
    selector = MANAGED + (f",disagg.dev/role={role}" if role else "")
    return kubectl.items("pods", namespace, selector)


def resource_name(obj: dict[str, Any]) -> str:
    """kubectl's fully qualified resource for an object, e.g. ``deployment.apps``."""
    group = obj["apiVersion"].rpartition("/")[0]
    return f"{obj['kind'].lower()}.{group}" if group else obj["kind"].lower()


def node_racks(kubectl: Kubectl) -> dict[str, str]:
    return {n["metadata"]["name"]: n["metadata"]["labels"].get(RACK, "") for n in kubectl.items("nodes")}


def test_crd_rejects_invalid_specs_with_readable_messages(kubectl: Kubectl, namespace: str) -> None:
    expected = {
        "min-greater-than-max.yaml": "replicas.min must be <= replicas.max",
        "decode-tp-below-prefill.yaml": "decode tensor parallelism must be >= prefill tensor parallelism",
        "unknown-pack-domain.yaml": 'Unsupported value: "continent"',
    }
    for filename, message in expected.items():
        text = (ROOT / "tests" / "invalid" / filename).read_text()
        result = kubectl.run("apply", "--server-side", "-n", namespace, "-f", "-", stdin=text, check=False)
        assert result.returncode != 0, f"{filename} was accepted"
        assert message in result.stderr, result.stderr
    assert kubectl.items("disaggregatedmodels", namespace) == []


@pytest.mark.parametrize(
    "filename", ["llama-3.3-70b-disaggregated.yaml", "llama-8b-aggregated.yaml", "qwen3-32b-rack-packed.yaml"]
)
def test_sample_reaches_ready_with_all_children(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, filename: str
) -> None:
    body = sample(filename)
    name = body["metadata"]["name"]
    kubectl.run("create", "secret", "generic", "hf-token", "--from-literal=token=not-a-real-token", "-n", namespace)
    kubectl.apply(body, namespace)
    ready = wait_ready(kubectl, namespace, name)
    status = ready["status"]

    offline = subprocess.run(
        [sys.executable, "-m", "disagg.cli", "render", "-f", str(SAMPLES / filename), "-n", namespace],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for obj in yaml.safe_load_all(offline):
        live = kubectl.get(resource_name(obj), obj["metadata"]["name"], namespace)
        assert live is not None, f"{obj['kind']}/{obj['metadata']['name']} missing"
        assert live["metadata"]["ownerReferences"][0]["uid"] == ready["metadata"]["uid"]

    engine_roles = [r for r in status["roles"] if r["name"] != "router"]
    for role in status["roles"]:
        assert role["ready"] == role["desired"] >= 1, role
    for p in pods(kubectl, namespace):
        assert p["status"]["phase"] == "Running", p["metadata"]["name"]
        assert p["spec"]["nodeName"], p["metadata"]["name"]
    gpu_nodes = {n for n, rack in node_racks(kubectl).items() if rack}
    for role in engine_roles:
        for p in pods(kubectl, namespace, role["name"]):
            assert p["spec"]["nodeName"] in gpu_nodes
    assert "not-a-real-token" not in operator.log_tail(100_000), "the hub token leaked into the operator log"
    assert "not-a-real-token" not in str(ready), "the hub token leaked into the resource"
    printed = kubectl.run("get", "dm", name, "-n", namespace).stdout
    header, row = printed.splitlines()[:2]
    assert header.split() == ["NAME", "MODE", "RATIO", "READY", "PODS", "DESIRED", "AGE"]
    assert row.split()[:6] == [
        name,
        status["mode"],
        status["ratio"],
        "True",
        str(status["readyReplicas"]),
        str(status["replicas"]),
    ]


def test_spec_change_rolls_children_and_ready_waits_for_new_pods(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    body = sample("llama-8b-aggregated.yaml")
    name = body["metadata"]["name"]
    kubectl.apply(body, namespace)
    wait_ready(kubectl, namespace, name)
    changed = copy.deepcopy(body)
    changed["spec"]["engine"] = {"image": "vllm/vllm-openai:v0.12.0"}
    changed["spec"]["prefill"]["parallelism"] = {"tensor": 2}
    changed["spec"]["prefill"]["replicas"] = {"min": 2, "max": 5}
    kubectl.apply(changed, namespace)

    deadline = time.monotonic() + 120
    premature = []
    while time.monotonic() < deadline:
        current = model(kubectl, namespace, name)
        ready = cond(current, "Ready")
        if current["status"].get("observedGeneration") == 2 and ready and ready["status"] == "True":
            deployment = kubectl.get("deployment", f"{name}-prefill-decode", namespace)
            assert deployment is not None
            st = deployment["status"]
            if not (
                st.get("observedGeneration") == deployment["metadata"]["generation"]
                and st.get("updatedReplicas") == st.get("replicas") == st.get("availableReplicas") == 2
            ):
                premature.append(st)
            break
        time.sleep(0.2)
    else:
        raise AssertionError("never became Ready at generation 2")
    assert not premature, f"Ready=True before the new pods were available: {premature}"
    engine = pods(kubectl, namespace, "prefill-decode")
    assert len(engine) == 2
    for p in engine:
        container = p["spec"]["containers"][0]
        assert container["image"] == "vllm/vllm-openai:v0.12.0"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    hpa = kubectl.get("hpa", f"{name}-prefill-decode", namespace)
    assert hpa is not None
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["maxReplicas"] == 5


def _packed(name: str, prefill: int, decode: int, tp: int = 8, pack: dict[str, Any] | None = None) -> dict[str, Any]:
    body = sample("qwen3-32b-rack-packed.yaml")
    del body["spec"]["model"]["preset"]  # no model shape: the spec's replicas and TP, exactly
    body["metadata"]["name"] = name
    body["spec"]["prefill"] = {"replicas": {"min": prefill}, "parallelism": {"tensor": tp}}
    body["spec"]["decode"] = {"replicas": {"min": decode}, "parallelism": {"tensor": tp}}
    body["spec"]["topology"] = pack or {"packDomain": "rack"}
    return body


def _engine_racks(kubectl: Kubectl, namespace: str) -> dict[str, str]:
    racks = node_racks(kubectl)
    return {
        p["metadata"]["name"]: racks.get(p["spec"].get("nodeName", ""), "")
        for role in ("prefill", "decode")
        for p in pods(kubectl, namespace, role)
    }


def test_pack_domain_rack_lands_in_one_rack_with_room(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    body = sample("qwen3-32b-rack-packed.yaml")  # planned 3 x TP2 prefill + 2 x TP4 decode = 14 GPUs
    kubectl.apply(body, namespace)
    ready = wait_ready(kubectl, namespace, "qwen3-32b")
    placement = ready["status"]["placement"][0]
    racks = set(_engine_racks(kubectl, namespace).values())
    assert racks == {placement["domain"]}
    assert placement["gpusNeeded"] == 14
    assert placement["domain"] != "rack-a", "rack-a has only 8 free GPUs and cannot hold 14"
    assert cond(ready, "TopologySatisfied")["status"] == "True"  # type: ignore[index]


def test_required_without_room_stays_pending_and_says_why(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(_packed("too-big", prefill=3, decode=2), namespace)  # 40 GPUs: no rack holds that

    def unsatisfied() -> dict[str, Any] | None:
        body = model(kubectl, namespace, "too-big")
        return body if (cond(body, "TopologySatisfied") or {}).get("status") == "False" else None

    body = wait_for("TopologySatisfied=False", unsatisfied)
    message = cond(body, "TopologySatisfied")["message"]  # type: ignore[index]
    assert "40 GPUs" in message
    assert "rack-b 32 free" in message
    wait_for(
        "some engine pods Pending",
        lambda: [p for p in pods(kubectl, namespace) if p["status"].get("phase") == "Pending"],
    )
    racks = {r for r in _engine_racks(kubectl, namespace).values() if r}
    assert len(racks) == 1, f"required packing spilled: {racks}"
    assert cond(model(kubectl, namespace, "too-big"), "Ready")["status"] == "False"  # type: ignore[index]


def test_tainted_racks_are_left_out_until_the_roles_tolerate_the_taint(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    tainted = [n for n, rack in node_racks(kubectl).items() if rack in ("rack-b", "rack-c")]
    taint = "disagg.dev/e2e-maintenance=true:NoSchedule"
    for node in tainted:
        kubectl.run("taint", "node", node, taint, "--overwrite")
    try:
        body = sample("qwen3-32b-rack-packed.yaml")  # 14 GPUs; rack-a has only 8 free
        kubectl.apply(body, namespace)

        def unsatisfied() -> dict[str, Any] | None:
            current = model(kubectl, namespace, "qwen3-32b")
            return current if (cond(current, "TopologySatisfied") or {}).get("status") == "False" else None

        message = cond(wait_for("TopologySatisfied=False", unsatisfied), "TopologySatisfied")["message"]  # type: ignore[index]
        assert "rack-b 0 free" in message
        assert "8 node(s) with free GPUs not counted: untolerated taints or nodeSelector" in message

        tolerate = [{"key": "disagg.dev/e2e-maintenance", "operator": "Exists", "effect": "NoSchedule"}]
        for role in ("prefill", "decode"):
            body["spec"][role]["scheduling"] = {"tolerations": tolerate}
        kubectl.apply(body, namespace)
        ready = wait_ready(kubectl, namespace, "qwen3-32b", generation=2)
        domain = ready["status"]["placement"][0]["domain"]
        assert domain in ("rack-b", "rack-c")
        assert set(_engine_racks(kubectl, namespace).values()) == {domain}
    finally:
        for node in tainted:
            kubectl.run("taint", "node", node, "disagg.dev/e2e-maintenance:NoSchedule-", check=False)


def test_preferred_spills_over(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(_packed("spill", prefill=3, decode=2, pack={"pack": {"preferred": "rack"}}), namespace)
    wait_ready(kubectl, namespace, "spill")
    racks = set(_engine_racks(kubectl, namespace).values())
    assert len(racks) >= 2, f"expected pods in more than one rack, got {racks}"


def test_two_models_pack_into_different_racks(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(_packed("first", prefill=2, decode=1), namespace)  # 24 GPUs
    wait_ready(kubectl, namespace, "first")
    kubectl.apply(_packed("second", prefill=2, decode=1), namespace)  # 24 more: no longer fits beside the first
    wait_ready(kubectl, namespace, "second")
    assert_a_rack_each(kubectl, namespace, "first", "second")


def assert_a_rack_each(kubectl: Kubectl, namespace: str, first_name: str, second_name: str) -> None:
    """The two models were placed in different racks and every engine pod runs in its model's."""
    first = model(kubectl, namespace, first_name)["status"]["placement"][0]["domain"]
    second = model(kubectl, namespace, second_name)["status"]["placement"][0]["domain"]
    assert first != second
    racks = node_racks(kubectl)
    for p in pods(kubectl, namespace):
        if p["metadata"]["labels"].get("disagg.dev/role") in ("prefill", "decode"):
            owner = p["metadata"]["labels"]["disagg.dev/model"]
            assert racks[p["spec"]["nodeName"]] == (first if owner == first_name else second)


def test_delete_removes_every_child(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(sample("llama-8b-aggregated.yaml"), namespace)
    wait_ready(kubectl, namespace, "llama-8b-chat")
    kubectl.run("delete", "dm", "llama-8b-chat", "-n", namespace, "--wait=true", "--timeout=60s")
    kinds = "deployments,services,configmaps,hpa,pdb,serviceaccounts,roles,rolebindings,replicasets,pods"

    def gone() -> bool:
        return not kubectl.items(kinds, namespace, MANAGED)

    wait_for("garbage collection of every child", gone, timeout=90)


def test_hand_edit_is_reverted_and_scale_is_left_alone(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(sample("llama-3.3-70b-disaggregated.yaml"), namespace)
    wait_ready(kubectl, namespace, "llama-70b")
    deployment = kubectl.get("deployment", "llama-70b-prefill", namespace)
    assert deployment is not None
    # the real HPA controller raised the Deployment (rendered without replicas) to the plan's floor
    floor = model(kubectl, namespace, "llama-70b")["status"]["plan"]["prefill"]["replicas"]
    assert deployment["spec"]["replicas"] == floor == 5
    original = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    kubectl.run("set", "image", "deployment/llama-70b-prefill", "vllm=hand/edited:1", "-n", namespace)
    kubectl.run("scale", "deployment/llama-70b-prefill", "--replicas=6", "-n", namespace)  # as an autoscaler does

    def reverted() -> dict[str, Any] | None:
        live = kubectl.get("deployment", "llama-70b-prefill", namespace)
        image = live["spec"]["template"]["spec"]["containers"][0]["image"] if live else None
        return live if image == original else None

    live = wait_for("the hand edit to be reverted", reverted, timeout=60)
    time.sleep(4)  # a resync period or more
    live = kubectl.get("deployment", "llama-70b-prefill", namespace, managed_fields=True)
    assert live is not None
    assert live["spec"]["replicas"] == 6
    managers = {m["manager"] for m in live["metadata"]["managedFields"] if "f:replicas" in str(m.get("fieldsV1", {}))}
    assert "disagg-operator" not in managers


def test_sigkill_mid_reconcile_converges_without_duplicates(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    body = sample("llama-3.3-70b-disaggregated.yaml")
    kubectl.apply(body, namespace)
    wait_for("the first child", lambda: kubectl.items("deployments", namespace), timeout=60, interval=0.05)
    operator.kill()
    assert not operator.alive()
    operator.start()
    wait_ready(kubectl, namespace, "llama-70b")
    assert_clean(kubectl, namespace, "llama-70b")  # no duplicate, no orphan, one ReplicaSet per Deployment
    assert len(kubectl.items(CHILD_KINDS, namespace, MANAGED)) == 17
    replicasets = kubectl.items("replicasets", namespace)
    assert len(replicasets) == 3, [r["metadata"]["name"] for r in replicasets]


def test_noop_resync_issues_zero_writes(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    if not operator.env.audit_log:
        pytest.skip("no audit log for an existing cluster")
    kubectl.apply(sample("llama-3.3-70b-disaggregated.yaml"), namespace)
    wait_ready(kubectl, namespace, "llama-70b")
    time.sleep(4)  # let the last status write and its echo settle
    since = time.time()
    time.sleep(10)  # >= 3 resync periods of 3 s
    writes = [w for w in operator_writes(operator.env.audit_log, since) if f"/namespaces/{namespace}/" in w]
    assert writes == []
    # the passes read the operator's caches: the only LIST a resync makes is of the models
    lists = operator_requests(operator.env.audit_log, since, {"list"})
    assert lists, "the resyncs listed nothing: is the audit policy logging LISTs?"
    assert all("/disaggregatedmodels" in request for request in lists), [
        r for r in lists if "/disaggregatedmodels" not in r
    ]
    creation = operator_writes(operator.env.audit_log, 0)
    assert any(f"/namespaces/{namespace}/deployments/llama-70b-prefill" in w for w in creation), (
        "audit log sees no writes at all"
    )


def test_edit_or_delete_of_any_child_is_reverted_by_the_watch(
    cluster: ClusterEnv, kubectl: Kubectl, private_namespace: str, tmp_path: Path
) -> None:
    """An operator whose resync is 10 minutes away: only its watches can see these edits."""
    ns = private_namespace
    op = OperatorProcess.for_namespace(cluster, ns, tmp_path / "operator.log", {"DISAGG_RESYNC_SECONDS": "600"})
    op.start()
    try:
        kubectl.apply(sample("llama-3.3-70b-disaggregated.yaml"), ns)
        wait_ready(kubectl, ns, "llama-70b", timeout=180)
        children = kubectl.items(CHILD_KINDS, ns, MANAGED)
        kinds = sorted({c["kind"] for c in children})
        assert len(kinds) >= 6, kinds
        for kind in kinds:
            child = next(c for c in children if c["kind"] == kind)
            ref = f"{resource_name(child)}/{child['metadata']['name']}"
            kubectl.run("label", "--overwrite", ref, "app.kubernetes.io/part-of=hand-edited", "-n", ns)
            started = time.monotonic()

            def restored(ref: str = ref) -> bool:
                live = kubectl.run(
                    "get", ref, "-n", ns, "-o", "jsonpath={.metadata.labels.app\\.kubernetes\\.io/part-of}"
                )
                return live.stdout.strip() == "disagg"

            wait_for(f"{ref}'s hand-edited label to be reverted", restored, timeout=15, interval=0.2)
            print(f"{kind}: reverted {time.monotonic() - started:.1f}s after the edit")
        service = next(c for c in children if c["kind"] == "Service")
        kubectl.run("delete", "service", service["metadata"]["name"], "-n", ns, "--wait=true")
        wait_for(
            "the deleted Service to be recreated",
            lambda: kubectl.get("service", service["metadata"]["name"], ns) or None,
            timeout=15,
            interval=0.2,
        )
    finally:
        op.stop()
