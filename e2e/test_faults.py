"""Faults on the local control plane: the operator converges with no duplicates, orphans or lost status."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import ClusterEnv, Kubectl, OperatorProcess, wait_for
from e2e.test_operator import model, node_racks, pods, sample, wait_ready

pytestmark = pytest.mark.e2e
CHILD_KINDS = "deployments,services,configmaps,hpa,pdb,serviceaccounts,roles,rolebindings"


def _pid(cluster: ClusterEnv, component: str) -> int:
    if not cluster.cluster_dir:
        pytest.skip("needs the private local cluster (process control)")
    path = Path(cluster.cluster_dir) / "pids" / f"{component}.pid"
    return int("".join(c for c in path.read_text() if c.isdigit()))


def _assert_clean(kubectl: Kubectl, namespace: str, name: str) -> None:
    body = model(kubectl, namespace, name)
    uid = body["metadata"]["uid"]
    children = kubectl.items(CHILD_KINDS, namespace, "app.kubernetes.io/managed-by=disagg-operator")
    names = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert len(names) == len(set(names)), "duplicate children"
    for child in children:
        assert [r["uid"] for r in child["metadata"]["ownerReferences"]] == [uid], "orphaned child"
    conditions = {c["type"] for c in body["status"]["conditions"]}
    assert {"Ready", "Progressing", "Degraded", "Planned"} <= conditions, "status lost"


def test_etcd_briefly_unavailable(
    cluster: ClusterEnv, kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    pid = _pid(cluster, "etcd")
    kubectl.apply(sample("llama-8b-aggregated.yaml"), namespace)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(6)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_ready(kubectl, namespace, "llama-8b-chat", timeout=180)
    _assert_clean(kubectl, namespace, "llama-8b-chat")


def test_apiserver_restarted_mid_reconcile(
    cluster: ClusterEnv, kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    if not cluster.cluster_dir:
        pytest.skip("needs the private local cluster (process control)")
    kubectl.apply(sample("llama-3.3-70b-disaggregated.yaml"), namespace)
    wait_for("the first child", lambda: kubectl.items("deployments", namespace), timeout=60, interval=0.05)
    cluster.restart_component("kube-apiserver", down_seconds=5)
    assert operator.alive(), operator.log_tail()
    ready = wait_ready(kubectl, namespace, "llama-70b", timeout=180)
    _assert_clean(kubectl, namespace, "llama-70b")
    plan = ready["status"]["plan"]
    roles = {r["name"]: r for r in ready["status"]["roles"]}
    for role in ("prefill", "decode"):  # nothing scaled down because of the outage
        assert roles[role]["ready"] == roles[role]["desired"] >= plan[role]["replicas"] >= 1, roles[role]


def test_conflicting_writer(kubectl: Kubectl, operator: OperatorProcess, namespace: str) -> None:
    kubectl.apply(sample("llama-3.3-70b-disaggregated.yaml"), namespace)
    stop = threading.Event()

    def meddle() -> None:
        for i in range(200):  # bounded: bumps the resourceVersion under the operator's status writes
            if stop.is_set():
                return
            kubectl.run("label", "dm", "llama-70b", f"meddler=v{i}", "--overwrite", "-n", namespace, check=False)
            time.sleep(0.05)

    writer = threading.Thread(target=meddle, daemon=True)
    writer.start()
    try:
        wait_ready(kubectl, namespace, "llama-70b", timeout=180)
    finally:
        stop.set()
        writer.join(timeout=30)
    _assert_clean(kubectl, namespace, "llama-70b")


def _node(kubectl: Kubectl, name: str) -> dict[str, Any]:
    node = kubectl.get("node", name, "default")
    assert node is not None, f"node {name} is gone"
    return node


def _node_ready(node: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))


def _set_not_ready(kubectl: Kubectl, node: str) -> None:
    """What a kubelet reports when its node breaks: Ready=False (kwok keeps its hands off the status)."""
    kubectl.run("annotate", "node", node, "kwok.x-k8s.io/status=custom", "--overwrite")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ready = {
        "type": "Ready",
        "status": "False",
        "reason": "KubeletNotReady",
        "message": "container runtime is down (fault test)",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }
    patch = json.dumps({"status": {"conditions": [ready]}})
    kubectl.run("patch", "node", node, "--subresource=status", "--type=strategic", "-p", patch)


@pytest.mark.parametrize("fault", ["cordoned", "not-ready"])
def test_rack_going_away_moves_the_model(
    fault: str, cluster: ClusterEnv, kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    """A rack whose nodes are cordoned, or report NotReady (the node lifecycle controller then taints
    them), has no room any more: placement picks another rack and the model is Ready there."""
    if fault == "not-ready" and not cluster.cluster_dir:
        pytest.skip("needs the private local cluster (kwok set to leave annotated node status alone)")
    body = sample("qwen3-32b-rack-packed.yaml")
    kubectl.apply(body, namespace)
    first = wait_ready(kubectl, namespace, "qwen3-32b")["status"]["placement"][0]["domain"]
    rack_nodes = [n for n, rack in node_racks(kubectl).items() if rack == first]
    try:
        for node in rack_nodes:
            if fault == "cordoned":
                kubectl.run("cordon", node)
            else:
                _set_not_ready(kubectl, node)

        def moved() -> Any:
            current = model(kubectl, namespace, "qwen3-32b")
            domain = current["status"]["placement"][0]["domain"]
            ready = next(c for c in current["status"]["conditions"] if c["type"] == "Ready")["status"]
            racks = {
                node_racks(kubectl).get(p["spec"].get("nodeName", ""), "")
                for r in ("prefill", "decode")
                for p in pods(kubectl, namespace, r)
                if not p["metadata"].get("deletionTimestamp")
            }
            return domain if domain != first and ready == "True" and racks == {domain} else None

        second = wait_for("the model to move to a rack with room", moved, timeout=180)
        assert second not in (first, "rack-a")
        if fault == "not-ready":
            taints = {t["key"] for n in rack_nodes for t in _node(kubectl, n)["spec"].get("taints", [])}
            assert "node.kubernetes.io/not-ready" in taints, "the node lifecycle controller never noticed"
        _assert_clean(kubectl, namespace, "qwen3-32b")
    finally:
        for node in rack_nodes:
            if fault == "cordoned":
                kubectl.run("uncordon", node, check=False)
            else:  # kwok takes the status back and reports Ready again
                kubectl.run("annotate", "node", node, "kwok.x-k8s.io/status-", check=False)
        if fault == "not-ready":
            wait_for(
                "the rack to be Ready again",
                lambda: all(_node_ready(_node(kubectl, n)) for n in rack_nodes) or None,
                timeout=60,
            )
