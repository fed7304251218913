"""Two operator replicas with leader election: exactly one acts; killing it hands over."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from e2e.harness import ROOT, ClusterEnv, Kubectl, OperatorProcess, wait_for

pytestmark = pytest.mark.e2e


def _replica(cluster: ClusterEnv, namespace: str, log: Path) -> OperatorProcess:
    election = {"DISAGG_LEADER_ELECTION": "1", "DISAGG_LEADER_NAMESPACE": namespace}
    proc = OperatorProcess.for_namespace(cluster, namespace, log, election)
    proc.start()
    return proc


def test_one_replica_acts_and_a_killed_leader_hands_over(
    cluster: ClusterEnv, kubectl: Kubectl, private_namespace: str, tmp_path: Path
) -> None:
    ns = private_namespace
    a = _replica(cluster, ns, tmp_path / "a.log")
    b = _replica(cluster, ns, tmp_path / "b.log")
    try:
        lease = wait_for(
            "a leader",
            lambda: (kubectl.get("lease", "disagg-operator", ns) or {}).get("spec", {}).get("holderIdentity"),
            timeout=60,
        )
        wait_for("the leader to log it", lambda: ("became leader" in a.log_tail(500) + b.log_tail(500)) or None)
        leader, standby = (a, b) if "became leader" in a.log_tail(500) else (b, a)
        assert "became leader" not in standby.log_tail(500)

        body = yaml.safe_load((ROOT / "manifests/samples/llama-8b-aggregated.yaml").read_text())
        kubectl.apply(body, ns)

        def ready(generation: int) -> bool:
            dm = kubectl.get("dm", "llama-8b-chat", ns) or {}
            conds = {c["type"]: c["status"] for c in dm.get("status", {}).get("conditions", [])}
            return dm.get("status", {}).get("observedGeneration") == generation and conds.get("Ready") == "True"

        wait_for("Ready under the first leader", lambda: ready(1) or None, timeout=120)
        assert re.search(r"applied \[", leader.log_tail(2000))
        assert not re.search(r"applied \[", standby.log_tail(2000)), "the standby wrote children"

        leader.kill()
        wait_for("the standby to take over", lambda: ("became leader" in standby.log_tail(500)) or None, timeout=60)
        new_holder = (kubectl.get("lease", "disagg-operator", ns) or {})["spec"]["holderIdentity"]
        assert new_holder != lease
        body["spec"]["engine"] = {"image": "vllm/vllm-openai:v0.12.0"}
        kubectl.apply(body, ns)
        wait_for("Ready under the new leader", lambda: ready(2) or None, timeout=120)
        deployment = kubectl.get("deployment", "llama-8b-chat-prefill-decode", ns)
        assert deployment is not None
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "vllm/vllm-openai:v0.12.0"
    finally:
        a.stop()
        b.stop()
