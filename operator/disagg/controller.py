"""The work queue behind the kopf handlers: coalesced, retried, periodically resynced reconciles.

kopf watches; this decides *when* to reconcile. A burst of events for one model (its Deployments
rolling, its status changing) collapses into one pending key; failures retry with capped
exponential backoff; a resync pass re-reconciles every model so drift and capacity changes are
seen even without events. Keys are (namespace, name); each key is reconciled by one worker at a time.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from disagg.kube import ConflictError, NotFoundError
from disagg.kube.client import KubeCluster
from disagg.prometheus import MetricsSources
from disagg.reconcile import Outcome, PlacementClaims, reconcile
from disagg.settings import OperatorSettings
from disagg.telemetry import Telemetry

log = logging.getLogger(__name__)
Key = tuple[str, str]
MAX_BACKOFF = 60.0


class Controller:
    def __init__(
        self,
        cluster: KubeCluster,
        settings: OperatorSettings,
        *,
        workers: int = 4,
        on_outcome: Callable[[Key, Outcome], None] | None = None,
        leading: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._clock = clock
        """Due times and backoffs are read from it (tests drive :meth:`run_due` on a fake clock)."""
        self._cluster = cluster
        self._settings = settings
        self._workers = workers
        self._on_outcome = on_outcome
        self._cond = threading.Condition()
        self._due: dict[Key, float] = {}
        self._busy: set[Key] = set()
        self._again: dict[Key, float] = {}
        self._failures: dict[Key, int] = {}
        self._backoff_until: dict[Key, float] = {}
        """After a failed pass: no retry before this, whatever child events or resyncs ask (a user's
        edit of the model itself still goes through at once)."""
        self._edited: set[Key] = set()
        """Models edited while their pass ran: the pass's failure must not hold the edit back."""
        self._own_versions: dict[Key, str] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._metrics = MetricsSources()
        self._claims = PlacementClaims()
        self.stats: dict[str, int] = {"reconciles": 0, "writes": 0, "failures": 0}
        """Counters for benchmarks and logs (changed under ``_cond``, like every shared field)."""
        self.pass_cpu: dict[Key, list[float]] = {}
        """Per model: [passes, CPU-seconds of the worker thread in them] (benchmarks read it)."""
        self._leading = leading
        """Set while this replica holds the leader Lease; None: no leader election, always act."""
        self._sleeping: dict[Key, tuple[str, str]] = {}
        """Models at zero: (Prometheus URL, demand query), polled fast so a wake is never a resync away."""
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        """The operator's own metrics (``/metrics`` when the CLI serves them)."""
        self.telemetry.bind_queue(self.queue_depth, self.queue_busy)

    # -- producers -------------------------------------------------------------------------
    def trigger(self, key: Key, *, delay: float = 0.0, resource_version: str | None = None) -> None:
        """Ask for a reconcile of ``key``; an event caused by our own status write is ignored."""
        if not self._settings.manages(key[0]):
            return
        with self._cond:
            if resource_version is not None and self._own_versions.get(key) == resource_version:
                return
            due = self._clock() + delay
            if resource_version is None:  # not an edit of the model: a failing model waits its backoff
                due = max(due, self._backoff_until.get(key, 0.0))
            elif key in self._busy:
                self._edited.add(key)  # survives the backoff a failing pass is about to set
            if key in self._busy:  # picked up again when the running pass ends, not before ``due``
                self._again[key] = min(self._again.get(key, due), due)
                return
            self._due[key] = min(self._due.get(key, due), due)
            self._cond.notify()

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._due)

    def queue_busy(self) -> int:
        with self._cond:
            return len(self._busy)

    def forget(self, key: Key) -> None:
        with self._cond:
            self._due.pop(key, None)
            self._failures.pop(key, None)
            self._backoff_until.pop(key, None)
            self._own_versions.pop(key, None)
            self._sleeping.pop(key, None)
            self.pass_cpu.pop(key, None)
        self._claims.release(key)
        self.telemetry.forget_model(*key)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for index in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"disagg-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        for target, name in ((self._resync_loop, "disagg-resync"), (self._wake_loop, "disagg-wake")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self._settings.stats_file:
            thread = threading.Thread(
                target=self._stats_loop, args=(self._settings.stats_file,), name="disagg-stats", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self._settings.resync_seconds):
            if not self.acting():
                continue
            try:
                self.resync()
            except Exception as exc:  # the loop must outlive any API outage; the next period retries
                log.warning("resync failed: %s", exc)

    def _wake_loop(self) -> None:
        while not self._stop.wait(self._settings.wake_poll_seconds):
            if self.acting():
                self.poll_sleepers()

    def poll_sleepers(self) -> None:
        """Trigger a reconcile for every sleeping model whose router shows demand."""
        with self._cond:
            sleeping = list(self._sleeping.items())
        for key, (url, query) in sleeping:
            value, _ = self._metrics.get(url).scalar(query)  # never raises: failures read as no data
            if value is not None and value > 0:
                log.info("%s/%s: router demand %g, waking", key[0], key[1], value)
                self.trigger(key)

    def _stats_loop(self, path: str) -> None:
        while not self._stop.wait(1.0):
            tmp = f"{path}.tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                with self._cond:
                    snapshot = {**self.stats, "passes": {f"{ns}/{n}": list(v) for (ns, n), v in self.pass_cpu.items()}}
                json.dump(snapshot, handle)
            os.replace(tmp, path)

    def resync(self) -> None:
        namespaces: list[str | None] = list(self._settings.namespaces) or [None]
        for namespace in namespaces:
            for body in self._cluster.list_models(namespace):
                meta = body["metadata"]
                self.trigger((meta["namespace"], meta["name"]))

    # -- consumers -------------------------------------------------------------------------
    def acting(self) -> bool:
        return self._leading is None or self._leading.is_set()

    def _next(self) -> Key | None:
        with self._cond:
            while not self._stop.is_set():
                if not self.acting():  # a standby keeps its queue but touches nothing
                    self._cond.wait(timeout=0.5)
                    continue
                now = self._clock()
                key = self._take_due(now)
                if key is not None:
                    return key
                wait = min((due - now for due in self._due.values()), default=1.0)
                self._cond.wait(timeout=max(min(wait, 1.0), 0.01))
        return None

    def _take_due(self, now: float) -> Key | None:
        """The key due longest ago that no worker holds, marked busy (call under ``_cond``)."""
        ready = [k for k, due in self._due.items() if due <= now and k not in self._busy]
        if not ready:
            return None
        key = min(ready, key=lambda k: self._due[k])
        del self._due[key]
        self._busy.add(key)
        return key

    def _work(self) -> None:
        while (key := self._next()) is not None:
            self._run(key)

    def _run(self, key: Key) -> None:
        try:
            self._reconcile_key(key)
        finally:
            with self._cond:
                self._busy.discard(key)
                again = self._again.pop(key, None)
                if again is not None:
                    self._due[key] = min(self._due.get(key, again), again)
                    self._cond.notify()

    def run_due(self) -> int:
        """Reconcile, on the calling thread, every key due at the clock's now; how many ran.
        (What the workers do, without threads: for tests on a fake clock.)"""
        ran = 0
        while self.acting():
            with self._cond:
                key = self._take_due(self._clock())
            if key is None:
                break
            self._run(key)
            ran += 1
        return ran

    def _reconcile_key(self, key: Key) -> None:
        started, wall = time.thread_time(), time.monotonic()
        result = "error"
        try:
            result = self._reconcile_once(key)
        finally:
            spent = time.thread_time() - started
            self.telemetry.observe_pass(result, time.monotonic() - wall)
            with self._cond:
                record = self.pass_cpu.setdefault(key, [0.0, 0.0])
                record[0] += 1
                record[1] += spent

    def _reconcile_once(self, key: Key) -> str:
        """One pass of ``key``; its result for the metrics: success, error, conflict or gone."""
        namespace, name = key
        with self._cond:
            self._edited.discard(key)  # this pass reads the model as it is now
        try:
            body = self._cluster.get_model(namespace, name)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                self.forget(key)
                return "gone"
            outcome = reconcile(
                body, self._patching_cluster(key), self._settings, metrics=self._metrics.get, claims=self._claims
            )
        except ConflictError as exc:
            log.info("%s/%s: conflict, retrying: %s", namespace, name, exc)
            self.trigger(key, delay=0.2)
            return "conflict"
        except NotFoundError as exc:
            if self._gone(key):  # deleted while the pass ran: nothing failed, nothing to retry
                log.debug("%s/%s: deleted during reconcile (%s)", namespace, name, exc)
                self.forget(key)
                return "gone"
            self._failed(key, exc)
            return "error"
        except Exception as exc:
            self._failed(key, exc)
            return "error"
        zero = outcome.zero
        with self._cond:
            self._failures.pop(key, None)
            self._backoff_until.pop(key, None)
            self.stats["reconciles"] += 1
            self.stats["writes"] += outcome.writes
            if zero is not None and zero.at_zero and zero.url and zero.queries:
                self._sleeping[key] = (zero.url, zero.queries.demand)
            else:
                self._sleeping.pop(key, None)
        if zero is not None and zero.decision is not None and zero.decision.recheck_seconds is not None:
            self.trigger(key, delay=zero.decision.recheck_seconds)
        self.telemetry.observe_outcome(namespace, name, outcome)
        if self._on_outcome is not None:
            self._on_outcome(key, outcome)
        return "error" if outcome.error else "success"

    def _gone(self, key: Key) -> bool:
        try:
            body = self._cluster.get_model(*key)
        except Exception:  # unknown: treat as a failure, retried on backoff
            return False
        return body is None or bool((body.get("metadata") or {}).get("deletionTimestamp"))

    def _failed(self, key: Key, exc: Exception) -> None:
        namespace, name = key
        with self._cond:
            self.stats["failures"] += 1
            self.telemetry.retries.inc()
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            delay = min(2.0**failures, MAX_BACKOFF)
            until = self._clock() + delay
            self._backoff_until[key] = until
            # the key is busy: child events that came during this pass asked for "now"; the backoff
            # wins over them, not over an edit of the model itself
            if key in self._edited:
                self._edited.discard(key)
            else:
                self._again[key] = until
            self._due.pop(key, None)
        log.warning("%s/%s: reconcile failed (attempt %d, retry in %.0fs): %s", namespace, name, failures, delay, exc)

    def _patching_cluster(self, key: Key) -> Any:
        """The cluster, remembering the resourceVersion our status write produced for ``key``."""
        controller = self

        telemetry = self.telemetry

        class _Recording:
            def __getattr__(self, attr: str) -> Any:
                return getattr(controller._cluster, attr)

            def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
                result: dict[str, Any] = controller._cluster.apply(obj)
                telemetry.observe_write(str(obj.get("kind")), "apply")
                return result

            def delete(self, obj: Mapping[str, Any]) -> None:
                controller._cluster.delete(obj)
                telemetry.observe_write(str(obj.get("kind")), "delete")

            def scale(self, obj: Mapping[str, Any], replicas: int) -> None:
                controller._cluster.scale(obj, replicas)
                telemetry.observe_write(f"{obj.get('kind')}/scale", "patch")

            def event(self, *args: Any, **kwargs: Any) -> None:
                controller._cluster.event(*args, **kwargs)
                telemetry.observe_write("Event", "create")

            def patch_model_status(
                self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
            ) -> dict[str, Any]:
                result = controller._cluster.patch_model_status(namespace, name, status, resource_version)
                telemetry.observe_write("DisaggregatedModel/status", "patch")
                version = (result.get("metadata") or {}).get("resourceVersion")
                if version:
                    with controller._cond:
                        controller._own_versions[key] = version
                return result

        return _Recording()
