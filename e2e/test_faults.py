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
import yaml

from e2e.harness import ClusterEnv, Kubectl, OperatorProcess, assert_clean, assert_floors_kept, wait_for
from e2e.test_operator import model, node_racks, pods, sample, wait_ready

pytestmark = pytest.mark.e2e


def _pid(cluster: ClusterEnv, component: str) -> int:
    if not cluster.controls_processes or not cluster.cluster_dir:
        pytest.skip("needs the local cluster's processes (name and state dir)")
    path = Path(cluster.cluster_dir) / "pids" / f"{component}.pid"
    return int("".join(c for c in path.read_text() if c.isdigit()))


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
    assert_floors_kept(kubectl, namespace, assert_clean(kubectl, namespace, "llama-8b-chat"))


def test_apiserver_restarted_mid_reconcile(
    cluster: ClusterEnv, kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    """Eight models created at once keep the operator busy for seconds; the API server goes away
    (5 s down, then its start-up) while their children are being applied."""
    if not cluster.controls_processes:
        pytest.skip("needs the local cluster's processes (name and state dir)")
    names = [f"m-{i}" for i in range(8)]
    documents = []
    for name in names:
        body = sample("llama-8b-aggregated.yaml")
        body["metadata"]["name"] = name
        documents.append(yaml.safe_dump(body))
    log_start = len(operator.log_tail(1_000_000).splitlines())
    kubectl.apply("---\n".join(documents), namespace)
    wait_for("the first child", lambda: kubectl.items("deployments", namespace), timeout=60, interval=0.05)
    statuses = [(kubectl.get("dm", n, namespace) or {}).get("status") for n in names]
    cluster.restart_component("kube-apiserver", down_seconds=5)
    assert not all(statuses), "every model was reconciled before the restart: not mid-reconcile"
    assert operator.alive(), operator.log_tail()
    for name in names:
        wait_ready(kubectl, namespace, name, timeout=180)
        assert_floors_kept(kubectl, namespace, assert_clean(kubectl, namespace, name))
    since_restart = operator.log_tail(1_000_000).splitlines()[log_start:]
    interrupted = [line for line in since_restart if f"{namespace}/" in line and "reconcile failed" in line]
    assert interrupted, "no reconcile of these models met the outage"


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
    assert_floors_kept(kubectl, namespace, assert_clean(kubectl, namespace, "llama-70b"))


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


NODE_FAULT_TAINTS = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}


def _fault_taints(node: dict[str, Any]) -> set[str]:
    return {t["key"] for t in node["spec"].get("taints", [])} & NODE_FAULT_TAINTS


@pytest.mark.parametrize("fault", ["cordoned", "not-ready"])
def test_rack_going_away_moves_the_model(
    fault: str, cluster: ClusterEnv, kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    """A rack whose nodes are cordoned, or report NotReady (the node lifecycle controller then taints
    them), has no room any more: placement picks another rack and the model is Ready there."""
    if fault == "not-ready" and not cluster.controls_processes:
        pytest.skip("needs the local cluster (kwok set to leave annotated node status alone)")
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
        if fault == "not-ready":
            time.sleep(2)
            if any(_node_ready(_node(kubectl, n)) for n in rack_nodes):
                pytest.skip("kwok resets node status here: cluster made before kwok was told to leave it alone")
            wait_for(
                "the node lifecycle controller to taint every node of the rack",
                lambda: all(_fault_taints(_node(kubectl, n)) for n in rack_nodes) or None,
                timeout=60,
            )

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
        # the move changes the pod template (node affinity): a second ReplicaSet is expected
        assert_floors_kept(kubectl, namespace, assert_clean(kubectl, namespace, "qwen3-32b", one_rollout=False))
    finally:
        for node in rack_nodes:
            if fault == "cordoned":
                kubectl.run("uncordon", node, check=False)
            else:  # kwok takes the status back and reports Ready again
                kubectl.run("annotate", "node", node, "kwok.x-k8s.io/status-", check=False)
        if fault == "not-ready":  # later tests must find the rack usable: Ready and untainted
            wait_for(
                "the rack to be Ready and untainted again",
                lambda: (
                    all(_node_ready(nd) and not _fault_taints(nd) for nd in (_node(kubectl, n) for n in rack_nodes))
                    or None
                ),
                timeout=90,
            )
