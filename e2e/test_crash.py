"""The operator SIGKILLed in every reconcile phase (after its N-th apply, delete, scale or status write).

A failpoint (DISAGG_FAILPOINT=PHASE:N) makes the kill land at an exact point instead of wherever a
timer happens to fall. After each kill a fresh operator must converge: no duplicate or orphaned
children, status complete, nothing scaled down or deleted because of the interruption.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import (
    CHILD_KINDS,
    MANAGED,
    ClusterEnv,
    Kubectl,
    OperatorProcess,
    assert_clean,
    assert_floors_kept,
    wait_for,
)
from e2e.test_operator import sample, wait_ready

pytestmark = pytest.mark.e2e
NAME = "llama-70b"


def children(kubectl: Kubectl, namespace: str, kinds: str = CHILD_KINDS) -> list[dict[str, Any]]:
    return kubectl.items(kinds, namespace, MANAGED)


def crash_at(cluster: ClusterEnv, namespace: str, log: Path, failpoint: str) -> None:
    """Run an operator until the failpoint kills it; fail if it survives or dies of anything else."""
    op = OperatorProcess.for_namespace(cluster, namespace, log, {"DISAGG_FAILPOINT": failpoint})
    op.start()
    try:
        wait_for(f"the operator to die at {failpoint}", lambda: op.exit_code() is not None or None, timeout=90)
    finally:
        op.stop()
    assert op.exit_code() == -signal.SIGKILL, op.log_tail()
    assert f"failpoint {failpoint} reached" in op.log_tail(), op.log_tail()


@contextmanager
def operator_in(cluster: ClusterEnv, namespace: str, log: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess.for_namespace(cluster, namespace, log)
    op.start()
    try:
        yield op
    finally:
        op.stop()


def assert_converged(kubectl: Kubectl, namespace: str, generation: int = 1) -> dict[str, Any]:
    ready = wait_ready(kubectl, namespace, NAME, generation=generation, timeout=180)
    assert_floors_kept(kubectl, namespace, assert_clean(kubectl, namespace, NAME))
    return ready


@pytest.mark.parametrize("failpoint", ["apply:1", "apply:8", "apply:17", "status:1"])
def test_killed_while_creating(
    failpoint: str, cluster: ClusterEnv, kubectl: Kubectl, private_namespace: str, tmp_path: Path
) -> None:
    ns = private_namespace
    kubectl.apply(sample("llama-3.3-70b-disaggregated.yaml"), ns)
    crash_at(cluster, ns, tmp_path / "crashed.log", failpoint)
    phase, count = failpoint.split(":")
    left = children(kubectl, ns)
    status = (kubectl.get("dm", NAME, ns) or {}).get("status")
    if phase == "apply":
        assert len(left) == int(count), [c["metadata"]["name"] for c in left]
        assert not status, "no status is written before every child is applied"
    else:
        assert len(left) == 17
        assert status
        assert status["observedGeneration"] == 1
    with operator_in(cluster, ns, tmp_path / "fresh.log"):
        assert_converged(kubectl, ns)
        assert len(children(kubectl, ns)) == 17


def test_killed_while_deleting_stale_children(
    cluster: ClusterEnv, kubectl: Kubectl, private_namespace: str, tmp_path: Path
) -> None:
    ns = private_namespace
    body = sample("llama-3.3-70b-disaggregated.yaml")
    kubectl.apply(body, ns)
    with operator_in(cluster, ns, tmp_path / "first.log"):
        assert_converged(kubectl, ns)
    autoscalers = len(children(kubectl, ns, "hpa"))
    assert autoscalers >= 2
    body["spec"]["autoscaling"] = {"engine": "none"}  # the HPAs become stale children
    kubectl.apply(body, ns)
    crash_at(cluster, ns, tmp_path / "crashed.log", "delete:1")
    assert len(children(kubectl, ns, "hpa")) == autoscalers - 1
    with operator_in(cluster, ns, tmp_path / "fresh.log"):
        assert_converged(kubectl, ns, generation=2)
        assert children(kubectl, ns, "hpa") == []


def test_killed_after_scaling_a_role(
    cluster: ClusterEnv, kubectl: Kubectl, private_namespace: str, tmp_path: Path
) -> None:
    """Scale-to-zero on, no Prometheus: the operator lifts both roles from the Deployment default of
    1 to their floors through /scale, dies right after the first; the next one finishes the job
    (or finds the HPA did) without ever sleeping for lack of data."""
    ns = private_namespace
    body = sample("llama-3.3-70b-disaggregated.yaml")
    body["spec"]["scaleToZero"] = {"enabled": True, "idleAfter": "1m"}
    body["spec"]["decode"]["replicas"] = {"min": 2, "max": 3}  # so decode needs lifting too
    kubectl.apply(body, ns)
    crash_at(cluster, ns, tmp_path / "crashed.log", "scale:1")
    assert not (kubectl.get("dm", NAME, ns) or {}).get("status")
    with operator_in(cluster, ns, tmp_path / "fresh.log"):
        ready = assert_converged(kubectl, ns)
        conditions = {c["type"]: c for c in ready["status"]["conditions"]}
        assert conditions["ScaledToZero"]["status"] == "False"
        assert conditions["MetricsAvailable"]["status"] == "False"
        for role in ("prefill", "decode"):
            deployment = kubectl.get("deployment", f"{NAME}-{role}", ns)
            assert deployment is not None
            assert deployment["spec"]["replicas"] == ready["status"]["plan"][role]["replicas"]
