"""Reading scaling signals from Prometheus (prometheus-api-client), with short timeouts.

Every failure becomes "no answer" (``None``) plus a one-line reason, never an exception and never
a zero: the decision layer treats missing data as "keep things as they are".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect

from disagg.api.status import ObservedWorkload
from disagg.scaling import Queries, Signals, WorkloadQueries

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 3


class PrometheusMetrics:
    """Instant queries against one Prometheus; one client per URL, reused across reconciles."""

    def __init__(self, url: str, *, timeout: int = TIMEOUT_SECONDS) -> None:
        self.url = url
        self._client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout)

    def scalar(self, query: str) -> tuple[float | None, str | None]:
        """Sum of the query's vector result, or (None, why) on no data or error."""
        try:
            result: Any = self._client.custom_query(query)
        except (requests.RequestException, ValueError, OSError) as exc:
            return None, f"Prometheus at {self.url} unreachable: {type(exc).__name__}"
        except Exception as exc:
            return None, f"Prometheus at {self.url} failed the query: {str(exc)[:200]}"
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

    def get(self, url: str) -> PrometheusMetrics:
        if url not in self._by_url:
            self._by_url[url] = self._factory(url)
        return self._by_url[url]
