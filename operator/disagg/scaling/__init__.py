"""Scale-to-zero decisions (pure): when prefill and decode sleep together, and when they wake.

The wake signal comes from the router, which stays up and holds requests while the engines are
at zero: engine metrics vanish with their pods, so they can only ever confirm idleness, never
demand. Missing data is never idleness: an empty answer or an unreachable Prometheus keeps the
model as it is and says why in ``MetricsAvailable``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from disagg.api.spec import DisaggregatedModelSpec
from disagg.api.types import duration_seconds

MAX_SUBQUERY_STEP = 15.0
MIN_RECHECK_SECONDS = 5.0
"""A busy model with a tiny idle window is looked at no more often than this."""


def promql_duration(seconds: float) -> str:
    """A duration PromQL accepts: whole seconds, else whole milliseconds (``7.5s`` and ``1.5m``,
    valid in the spec, are parse errors in Prometheus 2.x)."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(round(seconds * 1000), 1)}ms"


def _window(duration: str) -> str:
    """The spec's duration as written where PromQL takes it (``10m``, ``1m30s``), else normalised."""
    if re.fullmatch(r"([0-9]+(ms|s|m|h))+", duration):
        return duration
    return promql_duration(duration_seconds(duration))


def _step_seconds(idle_after_seconds: float, floor: float = 1.0) -> float:
    """A quarter of the idle window, at most 15 s and at least ``floor``."""
    return max(min(MAX_SUBQUERY_STEP, idle_after_seconds / 4), floor)


def _step(idle_after: str) -> str:
    """Subquery resolution: at most 15 s, and at least four samples inside the idle window
    (a window shorter than one step can hold no sample at all and reads as "no data")."""
    return promql_duration(_step_seconds(duration_seconds(idle_after)))


class Action(StrEnum):
    STAY = "stay"
    SLEEP = "sleep"
    WAKE = "wake"


@dataclass(frozen=True)
class Queries:
    demand: str
    """Router-side demand now (requests scheduled within the idle window, or held); > 0 wakes
    the model. A custom ``demandQuery`` must read 0 once the model is idle (no rate over a window
    longer than ``idleAfter``), or the model wakes right after it sleeps."""
    demand_window: str
    """Largest router demand over the idle window."""
    busy_window: str
    """Largest engine in-flight work over the idle window (evaluated only while awake)."""


def _selector(namespace: str, pods: str) -> str:
    return f'namespace="{namespace}",pod=~"{pods}"'


ROUTER_REQUESTS = "llm_d_epp_request_total"
"""Requests the llm-d router has scheduled (counted once an endpoint is picked)."""
ROUTER_HELD = "llm_d_epp_flow_control_queue_size"
"""Requests the llm-d router holds in its flow-control queue, e.g. while no engine is ready."""
ROUTER_INFO = "llm_d_epp_info"
"""Build info every llm-d router exports from start: proves the router is scraped at all."""


def _seen(router_selector: str) -> str:
    """0 while Prometheus scrapes the router at all (its info series), else no data."""
    return f"0 * sum({ROUTER_INFO}{{{router_selector}}})"


def router_demand_query(router_selector: str, window: str) -> str:
    """Requests the router scheduled within ``window`` (the idle window) or holds now; empty (no
    data) when the router is not scraped.

    The same window as the idle decision, counted with ``increase``: a model that went to sleep
    had none in it, so only a new request wakes it. (A 1-minute ``rate`` here woke a model one
    pass after it slept whenever it had served traffic in the minute before, and it slept and
    woke every idle window until the rate decayed.) The request and queue series appear only
    with the first request, so a router that has seen none reads 0 through its info series; a
    router Prometheus cannot see reads as no data, which never counts as idle.
    """
    seen = _seen(router_selector)
    return f"{_requests_within(router_selector, window)} + (sum({ROUTER_HELD}{{{router_selector}}}) or {seen})"


def _requests_within(router_selector: str, window: str) -> str:
    """Requests the router scheduled within ``window``. ``increase`` alone misses the first
    request a router pod ever schedules: its counter series is born at 1 and ``increase`` has
    nothing to compare it with. So a series that did not exist ``window`` ago counts its whole
    value. (Found by the demo: a request routed to a decode pod that was shutting down was the
    freshly rolled router's first, read as no demand, and the model never woke.)"""
    requests = f"{ROUTER_REQUESTS}{{{router_selector}}}"
    seen = _seen(router_selector)
    fresh = f"sum({requests} unless {requests} offset {window})"
    return f"((sum(increase({requests}[{window}])) + ({fresh} or {seen})) or {seen})"


def router_demand_window_query(router_selector: str, window: str) -> str:
    """Requests the router scheduled or held at any time within ``window``.

    Counted with ``increase`` over the window itself rather than as the peak of the 1-minute
    rate: that rate stays above zero for a minute after the last request, which would stretch
    every idle window by a minute (``idleAfter: 20s`` sleeping after 80 s).
    """
    seen = _seen(router_selector)
    step = _step(window)
    return (
        f"{_requests_within(router_selector, window)}"
        f" + (max_over_time((sum({ROUTER_HELD}{{{router_selector}}}) or {seen})[{window}:{step}]))"
    )


def queries(spec: DisaggregatedModelSpec, *, namespace: str, name: str) -> Queries:
    """Default PromQL for the llm-d router and vLLM, or the spec's overrides."""
    router = _selector(namespace, f"{name}-router-.+")
    engines = _selector(namespace, f"{name}-(prefill|decode|prefill-decode)-.+")
    window = _window(spec.scale_to_zero.idle_after)
    custom = spec.scale_to_zero.demand_query
    demand = custom or router_demand_query(router, window)
    busy = spec.scale_to_zero.idle_query or (
        f"sum(vllm:num_requests_running{{{engines}}}) + sum(vllm:num_requests_waiting{{{engines}}})"
    )
    return Queries(
        demand=demand,
        demand_window=(
            f"max_over_time(({custom})[{window}:{_step(window)}])"
            if custom
            else router_demand_window_query(router, window)
        ),
        busy_window=f"max_over_time(({busy})[{window}:{_step(window)}])",
    )


@dataclass(frozen=True)
class Signals:
    """What Prometheus said; ``None`` means no answer (unreachable or no series)."""

    demand: float | None
    demand_window: float | None
    busy_window: float | None
    error: str | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    metrics_available: bool
    reason: str
    message: str
    recheck_seconds: float | None = None
    """When the answer may change without any event to say so (the idle window running out):
    the controller looks again then instead of at the next resync, which made a model with
    ``idleAfter: 30s`` sleep up to a minute late."""


def decide(
    spec: DisaggregatedModelSpec,
    *,
    at_zero: bool,
    signals: Signals,
    awake_for_seconds: float,
    ready: bool = True,
) -> Decision:
    """Sleep only on positive evidence of idleness for the whole window; wake on any demand.

    ``awake_for_seconds`` counts from when the model last became Ready, and a model that is not
    Ready does not sleep: the idle window is time the model could have served and was not asked
    to, so engines still loading weights (minutes for a large model) are never put back to sleep
    before they served once."""
    idle_after = duration_seconds(spec.scale_to_zero.idle_after)
    if at_zero:
        if signals.demand is None:
            why = signals.error or "the router's demand query returned no data"
            return Decision(Action.STAY, False, "DemandUnknown", f"staying at zero: {why}")
        if signals.demand > 0:
            return Decision(Action.WAKE, True, "Demand", f"router demand {signals.demand:g}: waking prefill and decode")
        return Decision(Action.STAY, True, "NoDemand", "no router demand: prefill and decode stay at zero")
    if signals.demand_window is None or signals.busy_window is None:
        missing = "router demand" if signals.demand_window is None else "engine load"
        why = signals.error or f"no {missing} data"
        return Decision(Action.STAY, False, "NoData", f"not scaling to zero without data: {why}")
    if not ready:
        return Decision(
            Action.STAY, True, "NotReady", "the idle clock starts once every role holds its floor (condition Ready)"
        )
    if awake_for_seconds < idle_after:
        return Decision(
            Action.STAY,
            True,
            "Warm",
            f"awake for {max(awake_for_seconds, 0):.0f}s, idle window is {idle_after:.0f}s",
            recheck_seconds=idle_after - max(awake_for_seconds, 0.0) + 1.0,
        )
    if signals.demand_window > 0 or signals.busy_window > 0:
        # the last request leaves the window at some moment no event marks: look once per step
        return Decision(
            Action.STAY,
            True,
            "Active",
            "demand or in-flight work within the idle window",
            recheck_seconds=_step_seconds(idle_after, floor=MIN_RECHECK_SECONDS),
        )
    return Decision(
        Action.SLEEP,
        True,
        "Idle",
        f"no router demand and no engine work for {spec.scale_to_zero.idle_after}: scaling prefill and decode to zero",
    )


@dataclass(frozen=True)
class WorkloadQueries:
    """PromQL for what the engines actually serve (for live re-planning)."""

    request_rate: str
    input_tokens: str
    output_tokens: str
    ttft: str
    itl: str


def workload_queries(spec: DisaggregatedModelSpec, *, namespace: str, name: str, window: str = "5m") -> WorkloadQueries:
    """vLLM metrics of the pods that finish requests (decode, or prefill-decode when aggregated).

    TTFT is the exception. A decode engine whose prompt was prefilled remotely counts its first
    token from the moment the request reached it, so its TTFT is only the KV transfer; what the
    client waits for is the prefill engine's TTFT (queue + prefill, a one-token request) plus
    that. The query adds the prefill pods' quantile to the finishing pods' one: an upper bound of
    the quantile of the sum (exact for the mean), which errs towards more prefill capacity, and 0
    where no prefill pod served in the window (aggregated models, short prompts only).
    """
    window = _window(window)
    sel = _selector(namespace, f"{name}-(decode|prefill-decode)-.+")
    # a Deployment's pods are <name>-<pod-template-hash>-<suffix>: two segments after the role,
    # which keeps out <name>-prefill-decode-... (Prometheus regexes are RE2, no lookahead)
    prefill_sel = _selector(namespace, f"{name}-prefill-[a-z0-9]+-[a-z0-9]+")
    q = spec.slo.percentile / 100

    def mean(metric: str) -> str:
        return f"sum(rate({metric}_sum{{{sel}}}[{window}])) / sum(rate({metric}_count{{{sel}}}[{window}]))"

    def quantile(metric: str, selector: str = sel) -> str:
        return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{selector}}}[{window}])))"

    ttft = "vllm:time_to_first_token_seconds"
    return WorkloadQueries(
        request_rate=f"sum(rate(vllm:request_success_total{{{sel}}}[{window}]))",
        input_tokens=mean("vllm:request_prompt_tokens"),
        output_tokens=mean("vllm:request_generation_tokens"),
        # `>= 0` drops the NaN of a window without prefill requests, so `or vector(0)` applies
        ttft=f"{quantile(ttft)} + ({quantile(ttft, prefill_sel)} >= 0 or vector(0))",
        itl=quantile("vllm:inter_token_latency_seconds"),
    )


PREFILL = "prefill"


def held_asleep(*, waking: bool, prefill_replicas: int | None, decode_available: int | None) -> frozenset[str]:
    """Roles kept at zero for now while a model wakes: prefill, until a decode pod is available.

    The router releases a held request as soon as any engine pod joins its pool. A prefill pod
    alone cannot answer it (the picker fails it: no decode worker), while a decode pod alone can
    (the picker serves it without remote prefill). So decode wakes first and prefill follows as
    soon as one decode pod is available. Only a role still at zero is held: a decode outage in a
    model that is awake never takes prefill down.
    """
    if not waking or prefill_replicas is None or decode_available is None:
        return frozenset()
    if prefill_replicas == 0 and decode_available == 0:
        return frozenset({PREFILL})
    return frozenset()
