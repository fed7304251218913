"""The operator's own Prometheus metrics (``/metrics``), fed by the controller after every pass.

What a controller-runtime operator exports by default (reconcile duration by result, work-queue
depth and retries, API writes by kind and verb) plus what only this operator knows: plans computed
or served from the planner's cache, placement decisions and failures, scale-to-zero sleeps and
wakes with the wake latency, and per model the planned TTFT/ITL beside the observed ones and the
planned, desired and ready replicas per role.

Cardinality stays bounded: per model labels (namespace, model, role) and never per pod; a model's
series go when the model does (:meth:`Telemetry.forget_model`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from disagg.api.status import ConditionType, DisaggregatedModelStatus
from disagg.planner.resolve import plan_cache_info
from disagg.reconcile import Outcome
from disagg.scaling import Action

MODEL_LABELS = ("namespace", "model")
ROLE_LABELS = (*MODEL_LABELS, "role")
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WAKE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0)


class _PlanCache(Collector):
    """Plans computed by the planner vs served from its cache (the planner's own counters)."""

    def __init__(self, info: Callable[[], tuple[int, int]]) -> None:
        self._info = info

    def collect(self) -> Iterable[CounterMetricFamily]:
        hits, misses = self._info()
        family = CounterMetricFamily(
            "disagg_plans", "Plans the operator needed, by where they came from", labels=["source"]
        )
        family.add_metric(["computed"], misses)
        family.add_metric(["cache"], hits)
        yield family


PASS_RESULTS = ("success", "error", "conflict", "gone")
"""What a reconcile pass can end in (the controller's results)."""
PLACEMENT_RESULTS = ("placed", "reused", "failed")


class Telemetry:
    """Every metric of one operator process, in one registry (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._lock = threading.Lock()
        self._woken_at: dict[tuple[str, str], float] = {}
        self._series: dict[tuple[str, str], set[tuple[Gauge | Counter, tuple[str, ...]]]] = {}
        """Per model: the role- and direction-labelled series it has, removed with the model."""
        r = self.registry
        self.reconcile_seconds = Histogram(
            "disagg_reconcile_duration_seconds",
            "Wall time of one reconcile pass, by result (success, error, conflict, gone)",
            ["result"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("disagg_workqueue_depth", "Models waiting for a reconcile pass", registry=r)
        self.queue_busy = Gauge("disagg_workqueue_busy", "Models a worker is reconciling now", registry=r)
        self.retries = Counter(
            "disagg_workqueue_retries", "Passes scheduled again after a failure (with backoff)", registry=r
        )
        self.api_writes = Counter(
            "disagg_api_writes", "Writes to the API server, by kind and verb", ["kind", "verb"], registry=r
        )
        self.placements = Counter(
            "disagg_placement_decisions",
            "Topology placements of packed models: placed (computed), reused (inputs unchanged), failed",
            ["result"],
            registry=r,
        )
        self.transitions = Counter(
            "disagg_scale_to_zero_transitions",
            "Scale-to-zero decisions carried out: sleep or wake",
            [*MODEL_LABELS, "direction"],
            registry=r,
        )
        self.wake_seconds = Histogram(
            "disagg_wake_duration_seconds",
            "From a wake decision to every engine role of the model at its floor and Ready",
            buckets=WAKE_BUCKETS,
            registry=r,
        )
        self.predicted_ttft = Gauge(
            "disagg_model_predicted_ttft_seconds", "TTFT the plan predicts (p90 target)", MODEL_LABELS, registry=r
        )
        self.predicted_itl = Gauge(
            "disagg_model_predicted_itl_seconds", "Inter-token latency the plan predicts", MODEL_LABELS, registry=r
        )
        self.observed_ttft = Gauge(
            "disagg_model_observed_ttft_seconds",
            "TTFT p90 the last re-planning window observed (live re-planning on)",
            MODEL_LABELS,
            registry=r,
        )
        self.observed_itl = Gauge(
            "disagg_model_observed_itl_seconds",
            "Inter-token latency the last re-planning window observed (live re-planning on)",
            MODEL_LABELS,
            registry=r,
        )
        self.slo_ttft = Gauge("disagg_model_slo_ttft_seconds", "The spec's TTFT target", MODEL_LABELS, registry=r)
        self.slo_itl = Gauge(
            "disagg_model_slo_itl_seconds", "The spec's inter-token latency target", MODEL_LABELS, registry=r
        )
        self.replicas = Gauge(
            "disagg_model_replicas",
            "Replicas per role: planned (the plan's floor), desired (what the operator or autoscaler asks), ready",
            [*ROLE_LABELS, "kind"],
            registry=r,
        )
        self.asleep = Gauge(
            "disagg_model_asleep", "1 while the model's engines are scaled to zero", MODEL_LABELS, registry=r
        )
        self.ready = Gauge(
            "disagg_model_ready", "1 while the model's Ready condition is True", MODEL_LABELS, registry=r
        )
        r.register(_PlanCache(plan_cache_info))
        # Every known label value exported from the start at 0: a counter series born at 1 has no
        # earlier sample, so increase() and rate() read its first event as nothing (the dashboard's
        # placement panel stayed empty after a model's single placement).
        for result in PASS_RESULTS:
            self.reconcile_seconds.labels(result)
        for result in PLACEMENT_RESULTS:
            self.placements.labels(result)

    # -- from the controller ------------------------------------------------------------------
    def bind_queue(self, depth: Callable[[], int], busy: Callable[[], int]) -> None:
        """Read the work queue's depth and busy count at scrape time (no bookkeeping per event)."""
        self.queue_depth.set_function(depth)
        self.queue_busy.set_function(busy)

    def observe_pass(self, result: str, seconds: float) -> None:
        self.reconcile_seconds.labels(result).observe(seconds)

    def observe_write(self, kind: str, verb: str) -> None:
        self.api_writes.labels(kind, verb).inc()

    def observe_outcome(self, namespace: str, name: str, outcome: Outcome) -> None:
        """Everything a finished pass says about its model."""
        key = (namespace, name)
        if outcome.placement is not None:
            self.placements.labels("failed" if outcome.placement_failed else outcome.placement).inc()
        if outcome.zero is not None and outcome.zero.enabled:
            for direction in (Action.SLEEP, Action.WAKE):  # at 0 before the first transition (see __init__)
                self._own(key, self.transitions, (namespace, name, str(direction)))
        decision = outcome.zero.decision if outcome.zero is not None else None
        now = self._clock()
        if decision is not None and decision.action in (Action.SLEEP, Action.WAKE):
            self._own(key, self.transitions, (namespace, name, str(decision.action))).inc()
            with self._lock:
                if decision.action == Action.WAKE:
                    self._woken_at[key] = now
                else:
                    self._woken_at.pop(key, None)
        if outcome.zero is not None and outcome.zero.enabled:
            self.asleep.labels(namespace, name).set(1 if outcome.zero.at_zero else 0)
        if outcome.slo_seconds is not None:
            self.slo_ttft.labels(namespace, name).set(outcome.slo_seconds[0])
            self.slo_itl.labels(namespace, name).set(outcome.slo_seconds[1])
        if outcome.status is not None:
            self._observe_status(namespace, name, outcome.status, now)

    def _observe_status(self, namespace: str, name: str, status: DisaggregatedModelStatus, now: float) -> None:
        plan = status.plan
        _set(self.predicted_ttft, (namespace, name), _seconds(plan.predicted_ttft_ms if plan else None))
        _set(self.predicted_itl, (namespace, name), _seconds(plan.predicted_itl_ms if plan else None))
        observed = status.replan.observed if status.replan is not None else None
        _set(self.observed_ttft, (namespace, name), _seconds(observed.ttft_ms if observed else None))
        _set(self.observed_itl, (namespace, name), _seconds(observed.itl_ms if observed else None))
        planned = {"prefill": plan.prefill, "decode": plan.decode} if plan is not None else {}
        for role in status.roles:
            floor = planned.get(role.name)
            if floor is not None:
                self._own((namespace, name), self.replicas, (namespace, name, role.name, "planned")).set(floor.replicas)
            self._own((namespace, name), self.replicas, (namespace, name, role.name, "desired")).set(role.desired)
            self._own((namespace, name), self.replicas, (namespace, name, role.name, "ready")).set(role.ready)
        ready = next((c for c in status.conditions if c.type == ConditionType.READY.value), None)
        is_ready = ready is not None and ready.status == "True"
        self.ready.labels(namespace, name).set(1 if is_ready else 0)
        with self._lock:
            woken = self._woken_at.get((namespace, name))
            engines = [r for r in status.roles if r.name != "router"]
            if woken is not None and is_ready and engines and all(r.ready >= max(r.desired, 1) for r in engines):
                self.wake_seconds.observe(now - woken)
                del self._woken_at[(namespace, name)]

    def _own(self, key: tuple[str, str], metric: Any, labels: tuple[str, ...]) -> Any:
        with self._lock:
            self._series.setdefault(key, set()).add((metric, labels))
        return metric.labels(*labels)

    def forget_model(self, namespace: str, name: str) -> None:
        """Drop a deleted model's series (cardinality follows the models that exist)."""
        with self._lock:
            self._woken_at.pop((namespace, name), None)
        for gauge in (
            self.predicted_ttft,
            self.predicted_itl,
            self.observed_ttft,
            self.observed_itl,
            self.asleep,
            self.ready,
            self.slo_ttft,
            self.slo_itl,
        ):
            _remove(gauge, (namespace, name))
        with self._lock:
            owned = self._series.pop((namespace, name), set())
        for metric, labels in owned:
            _remove(metric, labels)

    def serve(self, address: str) -> Any:
        """``/metrics`` on ``host:port`` in a daemon thread; returns the server (``shutdown()``)."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)  # noqa: S104
        return server


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


def _set(gauge: Gauge, labels: tuple[str, ...], value: float | None) -> None:
    if value is None:
        _remove(gauge, labels)
    else:
        gauge.labels(*labels).set(value)


def _remove(metric: Gauge | Counter, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):  # never set: nothing to remove
        metric.remove(*labels)
