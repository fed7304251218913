"""Queueing formulas for open-loop (Poisson) traffic: M/D/1 and M/D/c waits, Poisson percentiles,
Little's-law fixed points and the smallest server count a monotone target allows.

A prefill server with Poisson arrivals at rate ``lam`` and deterministic service ``d`` is M/D/1.
Its mean wait is ``rho d / (2 (1 - rho))``. For percentiles we use the Cramer-Lundberg asymptote
of the M/G/1 waiting time, exact in its exponent: ``P(W > t) ~ C exp(-theta t)`` where theta is the
positive root of ``lam (exp(theta d) - 1) = theta`` and ``C = (1 - rho) / (lam d exp(theta d) - 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

_BISECTION_STEPS = 60


def sample_percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p`` percentile of a sample (NaN for none): a value the sample holds, not an
    interpolation between two."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))
    return ordered[k]


def md1_mean_wait(lam: float, d: float) -> float:
    rho = lam * d
    if rho >= 1.0:
        return math.inf
    return rho * d / (2.0 * (1.0 - rho))


def md1_decay_rate(lam: float, d: float) -> float:
    """theta > 0 with lam (e^{theta d} - 1) = theta (requires rho = lam d < 1)."""
    if lam <= 0:
        return math.inf
    lo, hi = 0.0, 1.0 / d
    while lam * math.expm1(hi * d) < hi:  # grow until the root is bracketed
        hi *= 2.0
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if lam * math.expm1(mid * d) < mid:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def md1_wait_percentile(lam: float, d: float, p: float) -> float:
    """Waiting time (before service) not exceeded by a fraction ``p`` of requests."""
    rho = lam * d
    if rho <= 0:
        return 0.0
    if rho >= 1.0:
        return math.inf
    theta = md1_decay_rate(lam, d)
    const = (1.0 - rho) / (lam * d * math.exp(theta * d) - 1.0)
    const = min(const, rho)  # P(W > 0) = rho bounds the prefactor
    tail = 1.0 - p
    if const <= tail:
        return 0.0
    return math.log(const / tail) / theta


def normal_quantile(p: float) -> float:
    return NormalDist().inv_cdf(min(max(p, 1e-6), 1 - 1e-6))


def poisson_percentile(mean: float, p: float) -> float:
    """Normal approximation of a Poisson percentile (mean + z sqrt(mean)), never below the mean."""
    if mean <= 0:
        return 0.0
    return mean + max(0.0, normal_quantile(p)) * math.sqrt(mean)


def erlang_c(servers: int, offered: float) -> float:
    """Probability an arrival waits in M/M/c (used for M/D/c too: the waiting probability barely
    depends on the service distribution)."""
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return 1.0
    term = 1.0
    total = 1.0
    for k in range(1, servers):
        term *= offered / k
        total += term
    last = term * offered / servers
    rho = offered / servers
    tail = last / (1.0 - rho)
    return tail / (total + tail)


def mdc_wait_percentile(lam: float, d: float, servers: int, p: float) -> float:
    """Waiting-time percentile of a pooled M/D/c queue (a load-aware router in front of c replicas).

    Waiting happens with the Erlang-C probability; given a wait, it is close to exponential with mean
    ``d / (2 c (1 - rho))`` (the M/G/c heavy-traffic form with a deterministic service, Cs^2 = 0).
    """
    offered = lam * d
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return math.inf
    wait_prob = erlang_c(servers, offered)
    tail = 1.0 - p
    if wait_prob <= tail:
        return 0.0
    rho = offered / servers
    return math.log(wait_prob / tail) * d / (2.0 * servers * (1.0 - rho))


def balanced_percentile(mean_per_server: float, servers: int, p: float) -> float:
    """Per-server population percentile when a load-aware router spreads a Poisson population of mean
    ``mean_per_server * servers`` evenly over ``servers``: the percentile of the total, divided."""
    return poisson_percentile(mean_per_server * servers, p) / servers


def littles_law_population(
    lam: float, sojourn_per_unit: Callable[[float], float], units: int, limit: float
) -> float | None:
    """Mean population ``N`` solving Little's law ``N = lam * units * t(N)`` where ``t(N)`` is the time
    one of the ``units`` steps takes with ``N`` in the system (a decode batch: ``units`` output tokens, each
    a step whose time grows with the batch). ``None`` when no ``N <= limit`` solves it (unstable, or more
    than the system holds). Bisection on ``lam * units * t(N) - N``."""

    def excess(n: float) -> float:
        return lam * units * sojourn_per_unit(max(n, 1e-9)) - n

    if excess(limit) > 0:
        return None
    lo, hi = 0.0, limit
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    return hi


def min_servers(ok: Callable[[int], bool], lo: int, limit: int) -> int | None:
    """Smallest ``n >= lo`` with ``ok(n)`` for a predicate monotone in ``n`` (more servers never hurt):
    doubling from ``lo`` until it holds, then bisection. ``None`` when even ``limit`` fails. Each ``n`` is
    judged once (the predicate is a sizing evaluation, the planner's hot path)."""
    judged: dict[int, bool] = {}

    def ok_once(k: int) -> bool:
        if k not in judged:
            judged[k] = ok(k)
        return judged[k]

    return _min_servers(ok_once, lo, limit)


def _min_servers(ok: Callable[[int], bool], lo: int, limit: int) -> int | None:
    n = lo
    while not ok(n):
        if n >= limit:
            return None
        n = min(limit, n * 2)
    low = max(lo, n // 2)
    if low == n or ok(low):
        return low if ok(low) else n
    while n - low > 1:
        mid = (low + n) // 2
        if ok(mid):
            n = mid
        else:
            low = mid
    return n
