"""Status that tells the truth on a real cluster, and no outage caused by the operator's own changes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from e2e.harness import Kubectl, OperatorProcess, wait_for
from e2e.test_operator import _packed, assert_a_rack_each, cond, model, pods, sample, wait_ready

ENGINE_ROLES = ("prefill", "decode", "prefill-decode")


def condition_is(
    kubectl: Kubectl, namespace: str, name: str, ctype: str, status: str, reason: str | None = None
) -> Any:
    def probe() -> dict[str, Any] | None:
        found = cond(model(kubectl, namespace, name), ctype) or {}
        if found.get("status") == status and (reason is None or found.get("reason") == reason):
            return found
        return None

    return probe


def events(kubectl: Kubectl, namespace: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in kubectl.items("events", namespace) if e.get("reason") == reason]


def test_a_scale_up_above_the_floor_keeps_the_model_ready(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    body = sample("llama-8b-aggregated.yaml")
    body["spec"]["prefill"]["replicas"] = {"min": 1, "max": 200}
    kubectl.apply(body, namespace)
    wait_ready(kubectl, namespace, "llama-8b-chat")
    # an autoscaler adds pods far beyond what fits: most stay Pending, as loading vLLM pods would
    kubectl.run("scale", "deployment/llama-8b-chat-prefill-decode", "--replicas=200", "-n", namespace)
    wait_for(
        "the new pods to exist",
        lambda: len(pods(kubectl, namespace, "prefill-decode")) >= 150 or None,
        timeout=90,
    )
    deadline = time.monotonic() + 8  # bounded: ~16 samples over several of the operator's passes
    while time.monotonic() < deadline:
        body = model(kubectl, namespace, "llama-8b-chat")
        assert (cond(body, "Ready") or {}).get("status") == "True", cond(body, "Ready")
        assert (cond(body, "Progressing") or {}).get("status") == "False", cond(body, "Progressing")
        assert (cond(body, "Degraded") or {}).get("status") == "False", cond(body, "Degraded")
        time.sleep(0.5)
    roles = {r["name"]: r for r in model(kubectl, namespace, "llama-8b-chat")["status"]["roles"]}
    assert roles["prefill-decode"]["desired"] == 200  # the scale-up shows in the role's counts
    assert roles["prefill-decode"]["ready"] < 200


def test_a_quota_that_forbids_gpus_is_degraded_with_its_message(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-gpus"},
            "spec": {"hard": {"requests.nvidia.com/gpu": "0"}},
        },
        namespace,
    )
    kubectl.apply(sample("llama-8b-aggregated.yaml"), namespace)
    degraded = wait_for(
        "Degraded=True FailedCreate",
        condition_is(kubectl, namespace, "llama-8b-chat", "Degraded", "True", "FailedCreate"),
        timeout=90,
    )
    assert "exceeded quota: no-gpus" in degraded["message"]
    ready = cond(model(kubectl, namespace, "llama-8b-chat"), "Ready") or {}
    assert ready.get("status") == "False"
    assert ready.get("reason") == "FailedCreate"
    assert events(kubectl, namespace, "DegradedTrue"), "a Warning Event marks the flip"
    kubectl.run("delete", "resourcequota", "no-gpus", "-n", namespace)
    wait_ready(kubectl, namespace, "llama-8b-chat", timeout=180)  # the ReplicaSet retries; the model recovers
    assert (cond(model(kubectl, namespace, "llama-8b-chat"), "Degraded") or {}).get("status") == "False"


def test_unschedulable_pods_are_degraded_with_the_schedulers_message(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    body = sample("llama-8b-aggregated.yaml")
    body["spec"]["prefill"]["scheduling"] = {"nodeSelector": {"disagg.dev/e2e-no-such-node": "true"}}
    kubectl.apply(body, namespace)
    degraded = wait_for(
        "Degraded=True Unschedulable",
        condition_is(kubectl, namespace, "llama-8b-chat", "Degraded", "True", "Unschedulable"),
        timeout=90,
    )
    assert "nodes are available" in degraded["message"], degraded["message"]
    assert "node affinity/selector" in degraded["message"], degraded["message"]


def test_missing_keda_is_named_before_any_child_is_applied(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    assert kubectl.run("get", "crd", "scaledobjects.keda.sh", check=False).returncode != 0, "KEDA must be absent"
    body = sample("llama-8b-aggregated.yaml")
    body["spec"]["autoscaling"] = {"engine": "keda"}
    kubectl.apply(body, namespace)
    degraded = wait_for(
        "Degraded=True MissingAPI",
        condition_is(kubectl, namespace, "llama-8b-chat", "Degraded", "True", "MissingAPI"),
        timeout=60,
    )
    assert "keda.sh/v1alpha1 is not served by this cluster: autoscaling.engine: keda needs it" in degraded["message"]
    kinds = "deployments,services,configmaps,serviceaccounts,roles,rolebindings,pdb,networkpolicies"
    applied = kubectl.items(kinds, namespace, "app.kubernetes.io/managed-by=disagg-operator")
    assert applied == [], "children were applied although an API they need is missing"
    assert events(kubectl, namespace, "DegradedTrue")


@pytest.fixture
def hung_prometheus() -> Iterator[str]:
    """A Prometheus URL that accepts connections and never answers (bounded: closed after the test)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def test_a_hung_prometheus_on_some_models_leaves_another_models_revert_fast(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, hung_prometheus: str
) -> None:
    for index in range(4):  # as many as the operator has workers
        body = sample("llama-8b-aggregated.yaml")
        body["metadata"]["name"] = f"stuck-{index}"
        body["spec"]["prefill"]["replicas"] = {"min": 1, "max": 1}
        body["spec"]["scaleToZero"] = {"enabled": True, "idleAfter": "1m"}
        body["spec"]["autoscaling"] = {"prometheus": {"url": hung_prometheus}}
        kubectl.apply(body, namespace)
    healthy = sample("llama-8b-aggregated.yaml")
    kubectl.apply(healthy, namespace)
    wait_ready(kubectl, namespace, "llama-8b-chat")
    for index in range(4):
        wait_for(
            f"stuck-{index} MetricsAvailable=False",
            condition_is(kubectl, namespace, f"stuck-{index}", "MetricsAvailable", "False"),
            timeout=90,
        )
    reverts = []
    for attempt in range(3):
        kubectl.run(
            "set", "image", "deployment/llama-8b-chat-prefill-decode", f"vllm=hand/edited:{attempt}", "-n", namespace
        )
        edited = time.monotonic()

        def reverted() -> bool | None:
            live = kubectl.get("deployment", "llama-8b-chat-prefill-decode", namespace) or {}
            image = live["spec"]["template"]["spec"]["containers"][0]["image"]
            return (not image.startswith("hand/edited")) or None

        wait_for("the hand edit to be reverted", reverted, timeout=30, interval=0.1)
        reverts.append(time.monotonic() - edited)
    assert sorted(reverts)[1] < 5.0, f"hand-edit reverts took {reverts} s beside a hung Prometheus"
    message = (cond(model(kubectl, namespace, "stuck-0"), "MetricsAvailable") or {}).get("message", "")
    assert "unreachable" in message


def test_a_mode_switch_keeps_engine_pods_serving_throughout(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    body = sample("llama-8b-aggregated.yaml")
    kubectl.apply(body, namespace)
    wait_ready(kubectl, namespace, "llama-8b-chat")
    body["spec"]["mode"] = "disaggregated"
    body["spec"]["decode"] = {"replicas": {"min": 1, "max": 2}, "parallelism": {"tensor": 1}}
    kubectl.apply(body, namespace)
    lowest = 10**6
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # bounded: sample ready engine pods until the switch is done
        engine = [p for p in pods(kubectl, namespace) if p["metadata"]["labels"].get("disagg.dev/role") in ENGINE_ROLES]
        ready = [
            p
            for p in engine
            if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        ]
        lowest = min(lowest, len(ready))
        current = model(kubectl, namespace, "llama-8b-chat")
        done = (cond(current, "Ready") or {}).get("status") == "True" and current["status"].get(
            "observedGeneration"
        ) == 2
        if done and not kubectl.get("deployment", "llama-8b-chat-prefill-decode", namespace):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the mode switch did not finish in 120 s")
    assert lowest >= 1, "a moment with no ready engine pod: the switch broke before it made"
    # the operator kept the old role until the new ones held their floor, and said so
    switching = [e for e in events(kubectl, namespace, "ProgressingTrue") if "keeps serving until" in e["message"]]
    assert switching, "no SwitchingMode: the old role was removed before the new ones came up"
    assert "prefill-decode keeps serving until prefill, decode hold their planned floor" in switching[0]["message"]


def test_two_rack_models_applied_together_get_a_rack_each(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    both = [_packed("first", prefill=2, decode=1), _packed("second", prefill=2, decode=1)]  # 24 GPUs each
    kubectl.run("apply", "--server-side", "-n", namespace, "-f", "-", stdin="---\n".join(_yaml(b) for b in both))
    wait_ready(kubectl, namespace, "first", timeout=180)
    wait_ready(kubectl, namespace, "second", timeout=180)
    assert_a_rack_each(kubectl, namespace, "first", "second")
    assert not events(kubectl, namespace, "Moved"), "placed right the first time: no move"


def _yaml(body: dict[str, Any]) -> str:
    return yaml.safe_dump(body)
