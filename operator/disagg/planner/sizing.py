"""Sizing one architecture for a Poisson workload: how many replicas of which tensor parallelism
an aggregated or a disaggregated deployment needs to meet the SLOs at a percentile, and what it is
predicted to deliver (:class:`Candidate`). :mod:`disagg.planner.search` compares the candidates.

Disaggregated: the router spreads prompts over the prefill replicas, a pooled M/D/c queue; the p-th
percentile TTFT is its waiting-time percentile plus the prompt's prefill, the KV transfer over the
declared fabric and the first decode step. Decode replicas hold ``B = rate * OSL * ITL`` sequences
(Little's law, solved as a fixed point with the cost model's step time); the ITL percentile is the
step time at the batch's Poisson percentile; the batch must fit the KV cache.

Aggregated: each replica runs chunked prefill: every step decodes the batch and carries up to a
chunk of prompt tokens. Prefill work stretches the mean step (TPOT), the prompts arriving while a
request decodes set its ITL tail, and prompts queue for the chunk budget (M/D/c on the prefill
work). The chunk size is searched too (smaller chunks: lower ITL tail, slower prefill).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Protocol

from disagg.api.spec import NetworkKind
from disagg.planner.catalog import GPU, BackendProfile, ModelShape, PlanningError, tp_candidates
from disagg.planner.costmodel import Engine
from disagg.planner.plan import ServingMode
from disagg.planner.queueing import (
    balanced_percentile,
    littles_law_population,
    mdc_wait_percentile,
    min_servers,
    poisson_percentile,
)

MAX_REPLICAS = 4096
AGG_CHUNKS = (512, 1024, 2048, 4096, 8192)
NETWORK_DEFAULTS = {NetworkKind.RDMA: (25.0, 0.5e-3), NetworkKind.TCP: (2.0, 2e-3)}
"""GB/s per pod and fixed setup latency of one KV transfer."""


@dataclass(frozen=True)
class Workload:
    isl: int
    osl: int
    rate: float
    """Requests per second (Poisson)."""
    ttft_s: float
    itl_s: float
    percentile: int = 90
    prefix_hit: float = 0.0
    """Share of prompt tokens already in the prefix cache (0..1)."""

    def __post_init__(self) -> None:
        if self.rate <= 0 or not math.isfinite(self.rate):
            raise PlanningError(f"request rate must be > 0 (got {self.rate})")
        if self.isl < 1 or self.osl < 1:
            raise PlanningError("input and output lengths must be >= 1 token")
        if self.ttft_s <= 0 or self.itl_s <= 0:
            raise PlanningError("TTFT and ITL targets must be > 0")
        if not 50 <= self.percentile <= 99:
            raise PlanningError(f"percentile must be within 50..99 (got {self.percentile})")
        if not 0.0 <= self.prefix_hit < 1.0:
            raise PlanningError("prefix cache hit share must be within [0, 1)")

    @property
    def p(self) -> float:
        return self.percentile / 100.0

    @property
    def new_tokens(self) -> int:
        return max(1, round(self.isl * (1.0 - self.prefix_hit)))

    @property
    def cached_tokens(self) -> int:
        return self.isl - self.new_tokens


@dataclass(frozen=True)
class Fabric:
    """The network KV moves over from prefill to decode pods."""

    network: NetworkKind = NetworkKind.RDMA
    bandwidth_gbps: float | None = None
    """Per-pod transfer bandwidth; None: the network kind's typical figure."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "network", NetworkKind(self.network))
        except ValueError:
            raise PlanningError(f"unknown network {self.network!r}; use rdma or tcp") from None

    def transfer_time(self, nbytes: float) -> float:
        bw, latency = NETWORK_DEFAULTS[self.network]
        return latency + nbytes / ((self.bandwidth_gbps or bw) * 1e9)


@dataclass(frozen=True, order=True)
class Layout:
    """The parallelism of one engine replica (one pod): ``dp`` attention ranks of ``tp`` GPUs each, the
    routed experts over all ``tp * dp`` GPUs, ``ep`` ranks of whole experts (1: every expert split over
    them). vLLM serves ``ep`` of 1 or ``tp * dp`` (``--enable-expert-parallel``)."""

    tp: int
    dp: int = 1
    ep: int = 1

    @property
    def gpus(self) -> int:
        return self.tp * self.dp

    @property
    def label(self) -> str:
        return f"TP{self.tp}" + (f"xDP{self.dp}" if self.dp > 1 else "") + (f" EP{self.ep}" if self.ep > 1 else "")


def layouts(
    model: ModelShape,
    gpu: GPU,
    tp: int | None = None,
    dp: int | None = None,
    expert: bool | None = None,
) -> list[Layout]:
    """Every layout within one scale-up domain that the constraints allow (None: any). Dense models run
    plain tensor parallelism; MoE models also attention data parallelism with EP = TP x DP (how vLLM and
    SGLang serve large MoE models), and EP = TP without DP when expert parallelism is asked for."""
    domain = gpu.scaleup_domain
    out: list[Layout] = []
    for t in tp_candidates(gpu):
        if tp is not None and t != tp:
            continue
        for d in (1, 2, 4, 8, 16, 32, 64):
            if t * d > domain or (dp is not None and d != dp) or (d > 1 and not model.is_moe):
                continue
            if d == 1 and expert is not True:
                out.append(Layout(t, 1, 1))
            wide = Layout(t, d, t * d)
            if model.is_moe and wide.ep > 1 and expert is not False and (d > 1 or expert is True):
                out.append(wide)
            elif d > 1 and expert is False:
                out.append(Layout(t, d, 1))
    return out


@dataclass(frozen=True)
class Candidate:
    """One sized deployment and what it is predicted to deliver."""

    mode: ServingMode
    prefill_tp: int
    prefill_replicas: int
    decode_tp: int
    decode_replicas: int
    """0 in aggregated mode (the prefill role serves both phases)."""
    chunk_tokens: int
    decode_batch: float
    """Mean sequences decoding per decode-capable replica."""
    max_batch: int
    """Sequences per replica the KV cache holds at full context (the engine's max-num-seqs floor)."""
    ttft_ms: float
    itl_ms: float
    mean_tpot_ms: float
    meets_slo: bool
    gpus: int
    kv_transfer_ms: float = 0.0
    prefill_ms: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    prefill_dp: int = 1
    prefill_ep: int = 1
    decode_dp: int = 1
    decode_ep: int = 1

    @property
    def prefill_layout(self) -> Layout:
        return Layout(self.prefill_tp, self.prefill_dp, self.prefill_ep)

    @property
    def decode_layout(self) -> Layout:
        return Layout(self.decode_tp, self.decode_dp, self.decode_ep)

    @property
    def ratio(self) -> str:
        if self.mode == ServingMode.AGGREGATED:
            return f"{self.prefill_replicas}x {self.prefill_layout.label} aggregated"
        return (
            f"{self.prefill_replicas}P({self.prefill_layout.label}):{self.decode_replicas}D({self.decode_layout.label})"
        )

    def summary(self) -> str:
        ok = "meets SLOs" if self.meets_slo else "misses SLOs"
        return f"{self.ratio} on {self.gpus} GPUs: p-TTFT {self.ttft_ms:.0f} ms, p-ITL {self.itl_ms:.1f} ms ({ok})"


class _Sized(Protocol):
    @property
    def ok(self) -> bool: ...


def _meets(evaluate: Callable[[int], _Sized]) -> Callable[[int], bool]:
    """The replica search's predicate over a sizing evaluation (cached by the caller, which reuses the
    evaluation of the count the search settles on)."""
    return lambda replicas: evaluate(replicas).ok


# ---------------------------------------------------------------------------------------- context
@dataclass(frozen=True)
class SizingContext:
    """What every sizing of one plan shares: the model, the hardware, the precisions, the workload."""

    model: ModelShape
    gpu: GPU
    backend: BackendProfile
    weights: str
    kv_dtype: str
    wl: Workload
    fabric: Fabric

    def engine(self, layout: Layout, chunk: int = 0) -> Engine:
        return Engine(
            self.model,
            self.gpu,
            self.backend,
            tp=layout.tp,
            dp=layout.dp,
            ep=layout.ep,
            weights=self.weights,
            kv_dtype=self.kv_dtype,
            chunk_tokens=chunk,
        )

    @property
    def overhead(self) -> float:
        return self.backend.request_overhead_ms / 1e3

    @property
    def full_ctx(self) -> int:
        return self.wl.isl + self.wl.osl

    @property
    def mean_ctx(self) -> float:
        return self.wl.isl + self.wl.osl / 2.0


def fitting(ctx: SizingContext, candidates: list[Layout]) -> list[Layout]:
    """The layouts whose engine holds one full-context sequence on every attention rank."""
    return [layout for layout in candidates if ctx.engine(layout).fits(ctx.full_ctx)]


# ---------------------------------------------------------------------------------------- decode
@dataclass(frozen=True)
class _DecodeSizing:
    replicas: int
    batch: float
    itl: float
    mean_step: float
    max_batch: int
    ok: bool


def _decode_eval(ctx: SizingContext, engine: Engine, replicas: int) -> _DecodeSizing:
    wl = ctx.wl
    max_batch = engine.max_batch(ctx.full_ctx)
    lam = wl.rate / replicas
    b = littles_law_population(lam, lambda n: engine.decode_step_time(n, ctx.mean_ctx), wl.osl, float(max_batch))
    if b is None:
        return _DecodeSizing(replicas, float(max_batch), math.inf, math.inf, max_batch, False)
    b_p = balanced_percentile(b, replicas, wl.p)
    itl = engine.decode_step_time(max(1.0, b_p), ctx.mean_ctx)
    mean_step = engine.decode_step_time(max(1.0, b), ctx.mean_ctx)
    ok = itl <= wl.itl_s and b_p <= max_batch
    return _DecodeSizing(replicas, b, itl, mean_step, max_batch, ok)


# ---------------------------------------------------------------------------------------- prefill
@dataclass(frozen=True)
class _PrefillTimes:
    alone: float
    per_prompt_work: float


def prefill_batch_limit(engine: Engine, new_tokens: int) -> int:
    """Prompts a prefill-only replica batches per step: short prompts share the token budget; from a
    quarter of the budget up a prompt is compute-bound alone, so batching would only add latency."""
    if new_tokens * 4 > engine.chunk:
        return 1
    return max(1, engine.chunk // new_tokens)


def _prefill_times(ctx: SizingContext, engine: Engine) -> _PrefillTimes:
    wl = ctx.wl
    alone = engine.prefill_time(wl.isl, cached=wl.cached_tokens)
    per_step = prefill_batch_limit(engine, wl.new_tokens)
    work = engine.prefill_time(wl.isl, batch=per_step, cached=wl.cached_tokens) / per_step if per_step > 1 else alone
    return _PrefillTimes(alone, work)


def _disagg_ttft(ctx: SizingContext, times: _PrefillTimes, replicas: int, transfer: float, first_step: float) -> float:
    wait = mdc_wait_percentile(ctx.wl.rate, times.per_prompt_work, replicas, ctx.wl.p)
    # The KV lands mid-step on the decode replica: half a step of residual, then its own first step.
    return ctx.overhead + wait + times.alone + transfer + 1.5 * first_step


def size_disaggregated(ctx: SizingContext, p_layouts: list[Layout], d_layouts: list[Layout]) -> list[Candidate]:
    """The smallest prefill and decode replica counts for every (prefill, decode) layout pair whose decode
    TP is at least the prefill TP."""
    wl = ctx.wl
    out: list[Candidate] = []
    decode: dict[Layout, tuple[Engine, _DecodeSizing]] = {}
    for layout in d_layouts:
        engine = ctx.engine(layout)
        sized = cache(partial(_decode_eval, ctx, engine))  # the search and the chosen count share evaluations
        n = min_servers(_meets(sized), 1, MAX_REPLICAS)
        if n is None:
            n = MAX_REPLICAS
        decode[layout] = (engine, sized(n))
    for pl in p_layouts:
        pengine = ctx.engine(pl)
        times = _prefill_times(ctx, pengine)
        transfer = ctx.fabric.transfer_time(pengine.kv_transfer_bytes(wl.isl))
        for dl in d_layouts:
            if dl.tp < pl.tp:
                continue  # NixlConnector needs decode TP >= prefill TP
            _dengine, dsz = decode[dl]
            first = dsz.mean_step if math.isfinite(dsz.mean_step) else wl.itl_s

            def ok(n: int, first: float = first, times: _PrefillTimes = times, transfer: float = transfer) -> bool:
                return _disagg_ttft(ctx, times, n, transfer, first) <= wl.ttft_s

            lo = max(1, math.ceil(wl.rate * times.per_prompt_work))
            n_p = min_servers(ok, lo, MAX_REPLICAS)
            meets = n_p is not None and dsz.ok
            n_p = n_p or max(lo, 1)
            ttft = _disagg_ttft(ctx, times, n_p, transfer, first)
            out.append(
                Candidate(
                    mode=ServingMode.DISAGGREGATED,
                    prefill_tp=pl.tp,
                    prefill_replicas=n_p,
                    decode_tp=dl.tp,
                    decode_replicas=dsz.replicas,
                    chunk_tokens=pengine.chunk,
                    decode_batch=dsz.batch,
                    max_batch=dsz.max_batch,
                    ttft_ms=ttft * 1e3,
                    itl_ms=dsz.itl * 1e3,
                    mean_tpot_ms=dsz.mean_step * 1e3,
                    meets_slo=meets,
                    gpus=n_p * pl.gpus + dsz.replicas * dl.gpus,
                    kv_transfer_ms=transfer * 1e3,
                    prefill_ms=times.alone * 1e3,
                    prefill_dp=pl.dp,
                    prefill_ep=pl.ep,
                    decode_dp=dl.dp,
                    decode_ep=dl.ep,
                )
            )
    return out


# ---------------------------------------------------------------------------------------- aggregated
@dataclass(frozen=True)
class _AggSizing:
    ttft: float
    itl: float
    tpot: float
    batch: float
    ok: bool


def _agg_eval(ctx: SizingContext, engine: Engine, replicas: int) -> _AggSizing:
    wl = ctx.wl
    lam = wl.rate / replicas
    max_batch = engine.max_batch(ctx.full_ctx)
    chunk = engine.chunk
    new = wl.new_tokens
    steps_per_prompt = new / chunk  # fractional: short prompts share a step's budget
    per_step_tokens = min(chunk, new)
    pairs_per_token = ctx.model.attention_context(wl.cached_tokens + new / 2.0)
    b = 1.0
    tpot = engine.decode_step_time(1.0, ctx.mean_ctx)
    u = 0.0
    for _ in range(60):
        t_dec = engine.decode_step_time(b, ctx.mean_ctx)
        t_mix = engine.decode_step_time(b, ctx.mean_ctx, per_step_tokens, per_step_tokens * pairs_per_token)
        extra = (t_mix - t_dec) * new / per_step_tokens  # prefill work one prompt adds
        u = lam * extra
        if u >= 0.98:
            return _AggSizing(math.inf, math.inf, math.inf, b, False)
        tpot = t_dec / (1.0 - u)
        nb = lam * wl.osl * tpot
        if nb > max_batch:
            return _AggSizing(math.inf, math.inf, math.inf, nb, False)
        if abs(nb - b) < 1e-4:
            b = nb
            break
        b = 0.5 * (b + nb)
    b_p = balanced_percentile(b, replicas, wl.p)
    t_dec_p = engine.decode_step_time(max(1.0, b_p), ctx.mean_ctx)
    t_mix_p = engine.decode_step_time(max(1.0, b_p), ctx.mean_ctx, per_step_tokens, per_step_tokens * pairs_per_token)
    extra_p = (t_mix_p - t_dec_p) * new / per_step_tokens
    # A request's TPOT is its decode steps plus the prefill work of the prompts that arrive at its
    # replica while it decodes (Poisson, mean lam * OSL * TPOT); take both at the percentile.
    arrivals_p = poisson_percentile(lam * wl.osl * tpot, wl.p)
    itl = t_dec_p + arrivals_p * extra_p / wl.osl
    # Prompts queue for the chunk budget (pooled M/D/c on the prefill work), then ride ceil(new/chunk) steps.
    t_mix = engine.decode_step_time(max(1.0, b), ctx.mean_ctx, per_step_tokens, per_step_tokens * pairs_per_token)
    work = steps_per_prompt * t_mix
    wait = mdc_wait_percentile(wl.rate, work, replicas, wl.p)
    own = math.ceil(new / chunk) * t_mix
    ttft = ctx.overhead + 0.5 * tpot + wait + own
    ok = ttft <= wl.ttft_s and itl <= wl.itl_s and b_p <= max_batch
    return _AggSizing(ttft, itl, tpot, b, ok)


def size_aggregated(
    ctx: SizingContext, candidates: list[Layout], chunks: tuple[int, ...] = AGG_CHUNKS
) -> list[Candidate]:
    """The smallest replica count for every layout, at the chunk size that ranks best for it."""
    out: list[Candidate] = []
    for layout in candidates:
        top: Candidate | None = None
        for chunk in chunks:
            engine = ctx.engine(layout, chunk)
            sized = cache(partial(_agg_eval, ctx, engine))  # the search and the chosen count share evaluations
            n = min_servers(_meets(sized), 1, MAX_REPLICAS)
            meets = n is not None
            if n is None:
                n = MAX_REPLICAS
            sz = sized(n)
            cand = Candidate(
                mode=ServingMode.AGGREGATED,
                prefill_tp=layout.tp,
                prefill_replicas=n,
                decode_tp=layout.tp,
                decode_replicas=0,
                chunk_tokens=chunk,
                decode_batch=sz.batch,
                max_batch=engine.max_batch(ctx.full_ctx),
                ttft_ms=sz.ttft * 1e3,
                itl_ms=sz.itl * 1e3,
                mean_tpot_ms=sz.tpot * 1e3,
                meets_slo=meets,
                gpus=n * layout.gpus,
                prefill_ms=engine.prefill_time(ctx.wl.isl, cached=ctx.wl.cached_tokens) * 1e3,
                prefill_dp=layout.dp,
                prefill_ep=layout.ep,
                decode_dp=layout.dp,
                decode_ep=layout.ep,
            )
            if top is None or rank(cand) < rank(top):
                top = cand
        if top is not None:
            out.append(top)
    return out


def rank(c: Candidate) -> tuple[int, int, float, float]:
    """Feasible first, then fewest GPUs, then lowest latency headroom used."""
    return (
        0 if c.meets_slo else 1,
        c.gpus,
        c.ttft_ms / 1e3 + c.itl_ms,
        c.prefill_layout.gpus + c.decode_layout.gpus,
    )


def best(cands: list[Candidate]) -> Candidate | None:
    """The best-ranked candidate, or None for none."""
    return min(cands, key=rank) if cands else None
