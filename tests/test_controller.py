"""The work queue: failures back off instead of spinning, bursts coalesce."""

from __future__ import annotations

import threading
import time
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


def test_failures_back_off_instead_of_spinning() -> None:
    cluster = FailingCluster()
    controller = Controller(cluster, OperatorSettings(resync_seconds=3600), workers=2)  # type: ignore[arg-type]
    controller.start()
    try:
        controller.trigger(("ns", "m"))
        time.sleep(2.5)  # backoff 2 s after the first failure, then 4 s
    finally:
        controller.stop()
    assert 1 <= cluster.calls <= 3, f"{cluster.calls} attempts in 2.5 s: the retry loop spins"


def test_standby_does_not_act() -> None:
    cluster = FailingCluster()
    leading = threading.Event()
    controller = Controller(cluster, OperatorSettings(resync_seconds=3600), leading=leading)  # type: ignore[arg-type]
    controller.start()
    try:
        controller.trigger(("ns", "m"))
        time.sleep(1.0)
        assert cluster.calls == 0
        leading.set()
        deadline = time.monotonic() + 5
        while cluster.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        controller.stop()
    assert cluster.calls >= 1


def test_child_events_do_not_cut_the_backoff_short() -> None:
    """A failing model's own Deployments keep changing; their events must not retry it at once."""
    cluster = FailingCluster()
    controller = Controller(cluster, OperatorSettings(resync_seconds=3600), workers=2)  # type: ignore[arg-type]
    controller.start()
    try:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # bounded: 50 child events in 2.5 s
            controller.trigger(("ns", "m"))
            time.sleep(0.05)
        attempts_before_edit = cluster.calls
        controller.trigger(("ns", "m"), resource_version="42")  # the user edits the model: retried at once
        time.sleep(0.5)
    finally:
        controller.stop()
    assert 1 <= attempts_before_edit <= 2, f"{attempts_before_edit} attempts in 2.5 s with a 2 s then 4 s backoff"
    assert cluster.calls == attempts_before_edit + 1


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
    controller = Controller(cluster, OperatorSettings(resync_seconds=3600), workers=1)  # type: ignore[arg-type]
    controller.start()
    try:
        controller.trigger(("ns", "m"))
        deadline = time.monotonic() + 5
        while cluster.reads < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        controller.stop()
    assert cluster.reads == 2, "read once to reconcile, once to see it is gone; never retried"
    assert controller.stats["failures"] == 0
    assert "reconcile failed" not in caplog.text
