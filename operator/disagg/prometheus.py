"""Reading scaling signals from Prometheus: one attempt per query, short timeouts, fail fast.

Every failure becomes "no answer" (``None``) plus a one-line reason, never an exception and never
a zero: the decision layer treats missing data as "keep things as they are". A Prometheus that
did not answer is not asked again for ``RETRY_AFTER_SECONDS``: the reconciles of every model
pointing at it read "unreachable" at once instead of each waiting out its own timeouts, so one
dead Prometheus never slows the work queue down for other models.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from disagg.api.status import ObservedWorkload
from disagg.scaling import Queries, Signals, WorkloadQueries

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 3.0
RETRY_AFTER_SECONDS = 10.0


class PrometheusMetrics:
    """Instant queries against one Prometheus; one client per URL, reused across reconciles."""

    def __init__(
        self,
        url: str,
        *,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
        retry_after: float = RETRY_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._retry_after = retry_after
        self._clock = clock
        self._session = requests.Session()  # no retry adapter: one attempt, the model's backoff retries
        self._lock = threading.Lock()
        self._down: tuple[float, str] | None = None
        """(when, why) of the last failure to reach this Prometheus."""

    def scalar(self, query: str) -> tuple[float | None, str | None]:
        """Sum of the query's vector result, or (None, why) on no data or error."""
        with self._lock:
            down = self._down
        if down is not None and self._clock() - down[0] < self._retry_after:
            return None, down[1]
        try:
            response = self._session.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=self._timeout)
        except (requests.RequestException, OSError) as exc:
            why = f"Prometheus at {self.url} unreachable: {type(exc).__name__}"
            with self._lock:
                self._down = (self._clock(), why)
            return None, why
        with self._lock:
            self._down = None
        try:
            answer: Any = response.json()
        except ValueError:
            return None, f"Prometheus at {self.url} answered HTTP {response.status_code} without JSON"
        if not isinstance(answer, dict):
            return None, f"Prometheus at {self.url} answered HTTP {response.status_code} with no query result"
        if answer.get("status") != "success":
            return None, f"Prometheus at {self.url} failed the query: {str(answer.get('error'))[:200]}"
        result = (answer.get("data") or {}).get("result")
        if not isinstance(result, list) or not result:
            return None, None
        try:
            return sum(float(sample["value"][1]) for sample in result), None
        except (KeyError, IndexError, TypeError, ValueError):
            return None, "unexpected Prometheus answer"

    def signals(self, queries: Queries, *, at_zero: bool) -> Signals:
        demand, error = self.scalar(queries.demand)
        if at_zero:
            return Signals(demand=demand, demand_window=None, busy_window=None, error=error)
        window, error2 = self.scalar(queries.demand_window)
        busy, error3 = self.scalar(queries.busy_window)
        return Signals(demand=demand, demand_window=window, busy_window=busy, error=error or error2 or error3)

    def workload(self, queries: WorkloadQueries) -> ObservedWorkload:
        """Observed rate, mean lengths and latency percentiles; NaN (no traffic) reads as no data."""

        def value(query: str, scale: float = 1.0) -> float | None:
            found, _ = self.scalar(query)
            if found is None or math.isnan(found) or math.isinf(found):
                return None
            return round(found * scale, 3)

        return ObservedWorkload(
            request_rate=value(queries.request_rate),
            input_tokens=value(queries.input_tokens),
            output_tokens=value(queries.output_tokens),
            ttft_ms=value(queries.ttft, 1000.0),
            itl_ms=value(queries.itl, 1000.0),
        )


class MetricsSources:
    """One :class:`PrometheusMetrics` per URL (models may point at different Prometheus servers)."""

    def __init__(self, factory: Callable[[str], PrometheusMetrics] = PrometheusMetrics) -> None:
        self._factory = factory
        self._by_url: dict[str, PrometheusMetrics] = {}

        self._lock = threading.Lock()

    def get(self, url: str) -> PrometheusMetrics:
        with self._lock:
            if url not in self._by_url:
                self._by_url[url] = self._factory(url)
            return self._by_url[url]
