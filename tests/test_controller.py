"""The work queue: failures back off instead of spinning, bursts coalesce."""

from __future__ import annotations

import threading
from typing import Any

from disagg.controller import Controller
from disagg.settings import OperatorSettings


class FailingCluster:
    """Every model read fails, as when the API server is down."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def get_model(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            self.calls += 1
        raise OSError("connection refused")

    def list_models(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return []


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def controller_on(cluster: Any, clock: FakeClock, leading: threading.Event | None = None) -> Controller:
    """A controller whose workers are never started: the test runs its queue with run_due()."""
    return Controller(cluster, OperatorSettings(resync_seconds=3600), leading=leading, clock=clock)


def test_failures_back_off_instead_of_spinning() -> None:
    cluster, clock = FailingCluster(), FakeClock()
    controller = controller_on(cluster, clock)
    controller.trigger(("ns", "m"))
    assert controller.run_due() == 1  # fails: retry in 2 s
    clock.now += 1.9
    assert controller.run_due() == 0
    clock.now += 0.2
    assert controller.run_due() == 1  # fails again: retry in 4 s
    clock.now += 3.9
    assert controller.run_due() == 0
    clock.now += 0.2
    assert controller.run_due() == 1
    assert cluster.calls == 3


def test_standby_does_not_act() -> None:
    cluster, clock, leading = FailingCluster(), FakeClock(), threading.Event()
    controller = controller_on(cluster, clock, leading)
    controller.trigger(("ns", "m"))
    assert controller.run_due() == 0
    assert cluster.calls == 0
    leading.set()
    assert controller.run_due() == 1
    assert cluster.calls == 1


def test_child_events_do_not_cut_the_backoff_short() -> None:
    """A failing model's own Deployments keep changing; their events must not retry it at once."""
    cluster, clock = FailingCluster(), FakeClock()
    controller = controller_on(cluster, clock)
    controller.trigger(("ns", "m"))
    assert controller.run_due() == 1  # fails: backoff 2 s
    for _ in range(30):  # child events every 50 ms for 1.5 s
        clock.now += 0.05
        controller.trigger(("ns", "m"))
        assert controller.run_due() == 0
    controller.trigger(("ns", "m"), resource_version="42")  # the user edits the model: retried at once
    assert controller.run_due() == 1
    assert cluster.calls == 2


def test_a_burst_of_events_is_one_pass() -> None:
    cluster, clock = FailingCluster(), FakeClock()
    controller = controller_on(cluster, clock)
    for _ in range(50):
        controller.trigger(("ns", "m"))
    assert controller.run_due() == 1


class VanishingCluster:
    """The model exists when the pass starts and is gone when its status is written."""

    def __init__(self) -> None:
        self.reads = 0

    def get_model(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return {"metadata": {"namespace": namespace, "name": name}} if self.reads == 1 else None

    def list_models(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return []


def test_a_model_deleted_during_its_pass_is_not_a_failure(monkeypatch: Any, caplog: Any) -> None:
    from disagg import controller as module
    from disagg.kube import NotFoundError

    def deleted_meanwhile(*_: Any, **__: Any) -> Any:
        raise NotFoundError('disaggregatedmodels.disagg.dev "m" not found')

    monkeypatch.setattr(module, "reconcile", deleted_meanwhile)
    cluster = VanishingCluster()
    controller = controller_on(cluster, FakeClock())
    controller.trigger(("ns", "m"))
    assert controller.run_due() == 1
    assert controller.run_due() == 0, "nothing is retried"
    assert cluster.reads == 2, "read once to reconcile, once to see it is gone; never retried"
    assert controller.stats["failures"] == 0
    assert "reconcile failed" not in caplog.text
