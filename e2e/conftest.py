"""Fixtures for the e2e suite: one local cluster per session, one namespace per test, the operator process.

``DISAGG_E2E_CLUSTER=existing`` runs the suite against the cluster in ``KUBECONFIG`` (e.g. kind);
otherwise a private kwok cluster is started for the session and torn down afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.harness import ROOT, ClusterEnv, Kubectl, OperatorProcess, cluster_down, cluster_up, wait_for
from e2e.metrics import MetricsStack, free_port
from e2e.serving import RuntimeProcess, runtime_bin_dir, runtime_supported


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterEnv]:
    if os.environ.get("DISAGG_E2E_CLUSTER") == "existing":
        # `e2e/cluster.sh env` also names a local cluster's state dir: fault tests can then run too
        yield ClusterEnv(
            os.environ["KUBECONFIG"],
            os.environ.get("DISAGG_E2E_BIN_DIR"),
            os.environ.get("DISAGG_E2E_AUDIT_LOG"),
            os.environ.get("DISAGG_CLUSTER_NAME"),
            os.environ.get("DISAGG_E2E_CLUSTER_DIR"),
        )
        return
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    try:
        env = cluster_up(name)
        yield env
    finally:
        cluster_down(name)


@pytest.fixture(scope="session")
def kubectl(cluster: ClusterEnv) -> Kubectl:
    k = Kubectl(cluster)
    k.run("apply", "--server-side", "-f", str(ROOT / "crds"))
    k.wait_established("crd/disaggregatedmodels.disagg.dev")
    return k


@pytest.fixture(scope="session")
def operator(
    cluster: ClusterEnv, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    proc = OperatorProcess(cluster, log)
    proc.start()
    try:
        wait_for("the operator to start", lambda: "disagg operator started" in proc.log_tail(200) or None, timeout=60)
        yield proc
    finally:
        proc.stop()
        if os.environ.get("DISAGG_E2E_SHOW_LOG"):
            print(proc.log_tail(400))


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t-{request.node.name[:30].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(c for c in name if c.isalnum() or c == "-")[:60].strip("-")
    kubectl.run("create", "namespace", name)
    try:
        yield name
    finally:
        # wait, so the next test starts with the GPUs this one used free again
        kubectl.run("delete", "namespace", name, "--wait=true", "--timeout=90s", check=False, timeout=120)


@pytest.fixture
def private_namespace(kubectl: Kubectl) -> Iterator[str]:
    """A namespace the session operator leaves alone (``op-*``), for tests that run operators of their own."""
    name = f"op-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl.run("delete", "namespace", name, "--wait=true", "--timeout=90s", check=False, timeout=120)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def runtime(cluster: ClusterEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    """The pod runtime (e2e/runtime): pods annotated for it run their rendered containers."""
    reason = runtime_supported()
    if reason:
        pytest.fail(reason)  # CI runs as root; a run without root cannot prove serving
    proc = RuntimeProcess(cluster, tmp_path_factory.mktemp("runtime"), runtime_bin_dir())
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        if os.environ.get("DISAGG_E2E_SHOW_LOG"):
            print(proc.tail(200))


@pytest.fixture(scope="module")
def metrics_stack(cluster: ClusterEnv, kubectl: Kubectl) -> Iterator[MetricsStack]:
    """Prometheus scraping what the chart's PodMonitor selects, and prometheus-adapter serving the
    HPA's custom metrics API from it."""
    stack = MetricsStack(cluster, kubectl)
    stack.start()
    try:
        yield stack
    finally:
        if os.environ.get("DISAGG_E2E_SHOW_LOG"):
            print(stack.logs())
        stack.stop()


@pytest.fixture(scope="module")
def scaling_operator(operator: OperatorProcess, metrics_stack: MetricsStack) -> Iterator[OperatorProcess]:
    """The session operator (cluster-wide, so no second operator ever sees these namespaces),
    restarted with DISAGG_PROMETHEUS_URL pointing at the private Prometheus and its own metrics
    served on a loopback port that Prometheus scrapes (``job=disagg-operator``); restored afterwards."""
    previous = dict(operator.extra_env)
    address = f"127.0.0.1:{free_port()}"
    operator.metrics_address = address
    operator.restart(
        {**previous, "DISAGG_PROMETHEUS_URL": metrics_stack.prometheus.url, "DISAGG_METRICS_ADDRESS": address}
    )
    metrics_stack.prometheus.write_targets("operator", [{"targets": [address], "labels": {"job": "disagg-operator"}}])
    try:
        yield operator
    finally:
        metrics_stack.prometheus.remove_targets("operator")
        operator.metrics_address = None
        operator.restart(previous)
