"""Open-loop planning: size aggregated and disaggregated deployments for a Poisson request rate and
SLOs at a percentile, pick the cheaper one, and find the prompt length where disaggregation starts
to pay (the router's threshold).

Disaggregated: prefill replicas are M/D/1 servers (Poisson split by the router); the p-th percentile
TTFT is the M/D/1 waiting-time percentile plus the prompt's prefill, the KV transfer over the
declared fabric and the first decode step. Decode replicas hold ``B = rate * OSL * ITL`` sequences
(Little's law, solved as a fixed point with the cost model's step time); the ITL percentile is the
step time at the batch's Poisson percentile; the batch must fit the KV cache.

Aggregated: each replica runs chunked prefill: every step decodes the batch and carries up to a
chunk of prompt tokens. Prefill work stretches the mean step (TPOT), steps carrying a chunk set the
ITL tail when they are more common than 1 - p, and prompts queue for the chunk budget (M/D/1 on the
prefill work). The chunk size is searched too (smaller chunks: lower ITL tail, slower prefill).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from disagg.api.spec import DisaggregatedModelSpec, KVCacheDtype, Mode
from disagg.api.types import duration_seconds
from disagg.planner.catalog import (
    GPU,
    BackendProfile,
    ModelShape,
    PlanningError,
    get_backend,
    get_gpu,
    get_model,
    model_from_config,
    normalise_dtype,
    tp_candidates,
)
from disagg.planner.costmodel import Engine
from disagg.planner.plan import PLACEHOLDER_DISAGG_THRESHOLD, Plan, RolePlan
from disagg.planner.queueing import mdc_wait_percentile, poisson_percentile
from disagg.planner.uncertainty import ErrorBand, error_band

ServingModeName = Literal["aggregated", "disaggregated"]
MAX_REPLICAS = 4096
AGG_CHUNKS = (512, 1024, 2048, 4096, 8192)
CROSSOVER_GRID = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
DISAGG_MARGIN = 0.10
"""Disaggregation must save at least this share of GPUs to be chosen (it costs a KV fabric and a router hop)."""
SEED_SHORT_PROMPT = 512
SEED_SHORT_OUTPUT = 200
SEED_MIN_GPUS = 4
NETWORK_DEFAULTS = {"rdma": (25.0, 0.5e-3), "tcp": (2.0, 2e-3)}
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
    network: str = "rdma"
    bandwidth_gbps: float | None = None

    def __post_init__(self) -> None:
        if self.network not in NETWORK_DEFAULTS:
            raise PlanningError(f"unknown network {self.network!r}; use rdma or tcp")

    def transfer_time(self, nbytes: float) -> float:
        bw, latency = NETWORK_DEFAULTS[self.network]
        return latency + nbytes / ((self.bandwidth_gbps or bw) * 1e9)


@dataclass(frozen=True)
class Candidate:
    """One sized deployment and what it is predicted to deliver."""

    mode: ServingModeName
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

    @property
    def ratio(self) -> str:
        if self.mode == "aggregated":
            return f"{self.prefill_replicas}x TP{self.prefill_tp} aggregated"
        return f"{self.prefill_replicas}P(TP{self.prefill_tp}):{self.decode_replicas}D(TP{self.decode_tp})"

    def summary(self) -> str:
        ok = "meets SLOs" if self.meets_slo else "misses SLOs"
        return f"{self.ratio} on {self.gpus} GPUs: p-TTFT {self.ttft_ms:.0f} ms, p-ITL {self.itl_ms:.1f} ms ({ok})"


@dataclass(frozen=True)
class PlanResult:
    model: str
    gpu: str
    backend: str
    weights: str
    kv_dtype: str
    workload: Workload
    fabric: Fabric
    chosen: Candidate
    runner_up: Candidate | None
    crossover_isl: int | None
    """Smallest prompt (tokens) from which disaggregation needs fewer GPUs; None: not within 128..16K."""
    reason: str
    elapsed_ms: float
    throughput_tokens_per_s: float
    tokens_per_s_per_gpu: float
    usd_per_million_tokens: float
    error_band: ErrorBand | None = None
    """The cross-validated error of this kind of configuration, and what it rests on without measured rows."""
    shape: ModelShape | None = field(default=None, compare=False, repr=False)

    def engines(self, candidate: Candidate | None = None) -> tuple[Engine, Engine]:
        """(prefill or aggregated engine, decode engine) of ``candidate`` (default: the chosen one)."""
        c = candidate or self.chosen
        if self.shape is None:
            raise PlanningError("plan result carries no model shape")
        common = {"weights": self.weights, "kv_dtype": self.kv_dtype}
        backend, gpu = get_backend(self.backend), get_gpu(self.gpu)
        first = Engine(self.shape, gpu, backend, tp=c.prefill_tp, chunk_tokens=c.chunk_tokens, **common)  # type: ignore[arg-type]
        decode = Engine(self.shape, gpu, backend, tp=c.decode_tp, **common)  # type: ignore[arg-type]
        return first, decode

    def as_dict(self) -> dict[str, Any]:
        def clean(value: Any) -> Any:
            if isinstance(value, float):
                return round(value, 3)
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [clean(v) for v in value]
            return value

        out: dict[str, Any] = clean({k: v for k, v in asdict(self).items() if k != "shape"})
        out["ttft_ms"] = out["chosen"]["ttft_ms"]
        out["itl_ms"] = out["chosen"]["itl_ms"]
        out["mode"] = self.chosen.mode
        return out


# ---------------------------------------------------------------------------------------- context
@dataclass(frozen=True)
class _Ctx:
    model: ModelShape
    gpu: GPU
    backend: BackendProfile
    weights: str
    kv_dtype: str
    wl: Workload
    fabric: Fabric

    def engine(self, tp: int, chunk: int = 0) -> Engine:
        return Engine(
            self.model, self.gpu, self.backend, tp=tp, weights=self.weights, kv_dtype=self.kv_dtype, chunk_tokens=chunk
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


def _fitting_tps(ctx: _Ctx, allowed: list[int] | None = None) -> list[int]:
    tps = [t for t in tp_candidates(ctx.gpu) if allowed is None or t in allowed]
    return [t for t in tps if ctx.engine(t).fits(ctx.full_ctx)]


# ---------------------------------------------------------------------------------------- decode
def _decode_batch(engine: Engine, lam: float, osl: int, ctx: float, limit: float) -> float | None:
    """Mean batch B solving B = lam * OSL * T_step(B); None when it would exceed ``limit`` (unstable/KV)."""

    def excess(b: float) -> float:
        return lam * osl * engine.decode_step_time(max(b, 1e-9), ctx) - b

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


@dataclass(frozen=True)
class _DecodeSizing:
    replicas: int
    batch: float
    itl: float
    mean_step: float
    max_batch: int
    ok: bool


def _balanced_percentile(mean_per_replica: float, replicas: int, p: float) -> float:
    """Per-replica batch percentile when a load-aware router spreads a Poisson population evenly."""
    total = mean_per_replica * replicas
    return poisson_percentile(total, p) / replicas


def _decode_eval(ctx: _Ctx, engine: Engine, replicas: int) -> _DecodeSizing:
    wl = ctx.wl
    max_batch = engine.max_batch(ctx.full_ctx)
    lam = wl.rate / replicas
    b = _decode_batch(engine, lam, wl.osl, ctx.mean_ctx, float(max_batch))
    if b is None:
        return _DecodeSizing(replicas, float(max_batch), math.inf, math.inf, max_batch, False)
    b_p = _balanced_percentile(b, replicas, wl.p)
    itl = engine.decode_step_time(max(1.0, b_p), ctx.mean_ctx)
    mean_step = engine.decode_step_time(max(1.0, b), ctx.mean_ctx)
    ok = itl <= wl.itl_s and b_p <= max_batch
    return _DecodeSizing(replicas, b, itl, mean_step, max_batch, ok)


def _min_replicas(ok: Any, lo: int = 1) -> int | None:
    """Smallest n >= lo with ok(n) (ok is monotone in n); None when even MAX_REPLICAS fails."""
    n = lo
    while not ok(n):
        if n >= MAX_REPLICAS:
            return None
        n = min(MAX_REPLICAS, n * 2)
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


def _prefill_times(ctx: _Ctx, engine: Engine) -> _PrefillTimes:
    wl = ctx.wl
    alone = engine.prefill_time(wl.isl, cached=wl.cached_tokens)
    per_step = prefill_batch_limit(engine, wl.new_tokens)
    work = engine.prefill_time(wl.isl, batch=per_step, cached=wl.cached_tokens) / per_step if per_step > 1 else alone
    return _PrefillTimes(alone, work)


def _disagg_ttft(ctx: _Ctx, times: _PrefillTimes, replicas: int, transfer: float, first_step: float) -> float:
    wait = mdc_wait_percentile(ctx.wl.rate, times.per_prompt_work, replicas, ctx.wl.p)
    # The KV lands mid-step on the decode replica: half a step of residual, then its own first step.
    return ctx.overhead + wait + times.alone + transfer + 1.5 * first_step


def _disaggregated(ctx: _Ctx, p_tps: list[int], d_tps: list[int]) -> list[Candidate]:
    wl = ctx.wl
    out: list[Candidate] = []
    decode: dict[int, tuple[Engine, _DecodeSizing]] = {}
    for tp in d_tps:
        engine = ctx.engine(tp)
        n = _min_replicas(lambda n, e=engine: _decode_eval(ctx, e, n).ok)
        if n is None:
            n = MAX_REPLICAS
        decode[tp] = (engine, _decode_eval(ctx, engine, n))
    for ptp in p_tps:
        pengine = ctx.engine(ptp)
        times = _prefill_times(ctx, pengine)
        transfer = ctx.fabric.transfer_time(pengine.kv_transfer_bytes(wl.isl))
        for dtp in d_tps:
            if dtp < ptp:
                continue  # NixlConnector needs decode TP >= prefill TP
            _dengine, dsz = decode[dtp]
            first = dsz.mean_step if math.isfinite(dsz.mean_step) else wl.itl_s

            def ok(n: int, first: float = first, times: _PrefillTimes = times, transfer: float = transfer) -> bool:
                return _disagg_ttft(ctx, times, n, transfer, first) <= wl.ttft_s

            lo = max(1, math.ceil(wl.rate * times.per_prompt_work))
            n_p = _min_replicas(ok, lo)
            meets = n_p is not None and dsz.ok
            n_p = n_p or max(lo, 1)
            ttft = _disagg_ttft(ctx, times, n_p, transfer, first)
            out.append(
                Candidate(
                    mode="disaggregated",
                    prefill_tp=ptp,
                    prefill_replicas=n_p,
                    decode_tp=dtp,
                    decode_replicas=dsz.replicas,
                    chunk_tokens=pengine.chunk,
                    decode_batch=dsz.batch,
                    max_batch=dsz.max_batch,
                    ttft_ms=ttft * 1e3,
                    itl_ms=dsz.itl * 1e3,
                    mean_tpot_ms=dsz.mean_step * 1e3,
                    meets_slo=meets,
                    gpus=n_p * ptp + dsz.replicas * dtp,
                    kv_transfer_ms=transfer * 1e3,
                    prefill_ms=times.alone * 1e3,
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


def _agg_eval(ctx: _Ctx, engine: Engine, replicas: int) -> _AggSizing:
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
    b_p = _balanced_percentile(b, replicas, wl.p)
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


def _aggregated(ctx: _Ctx, tps: list[int], chunks: tuple[int, ...] = AGG_CHUNKS) -> list[Candidate]:
    out: list[Candidate] = []
    for tp in tps:
        best: Candidate | None = None
        for chunk in chunks:
            engine = ctx.engine(tp, chunk)
            n = _min_replicas(lambda n, e=engine: _agg_eval(ctx, e, n).ok)
            meets = n is not None
            if n is None:
                n = MAX_REPLICAS
            sz = _agg_eval(ctx, engine, n)
            cand = Candidate(
                mode="aggregated",
                prefill_tp=tp,
                prefill_replicas=n,
                decode_tp=tp,
                decode_replicas=0,
                chunk_tokens=chunk,
                decode_batch=sz.batch,
                max_batch=engine.max_batch(ctx.full_ctx),
                ttft_ms=sz.ttft * 1e3,
                itl_ms=sz.itl * 1e3,
                mean_tpot_ms=sz.tpot * 1e3,
                meets_slo=meets,
                gpus=n * tp,
                prefill_ms=engine.prefill_time(ctx.wl.isl, cached=ctx.wl.cached_tokens) * 1e3,
            )
            if best is None or _rank(cand) < _rank(best):
                best = cand
        if best is not None:
            out.append(best)
    return out


def _rank(c: Candidate) -> tuple[int, int, float, float]:
    """Feasible first, then fewest GPUs, then lowest latency headroom used."""
    return (0 if c.meets_slo else 1, c.gpus, c.ttft_ms / 1e3 + c.itl_ms, c.prefill_tp + c.decode_tp)


# ---------------------------------------------------------------------------------------- driver
def _context(
    model: str | ModelShape | dict[str, Any],
    gpu: str | GPU,
    workload: Workload,
    backend: str,
    weights: str | None,
    kv_dtype: str | None,
    fabric: Fabric,
) -> _Ctx:
    if isinstance(model, str):
        shape = get_model(model)
    elif isinstance(model, dict):
        shape = model_from_config(model)
    else:
        shape = model
    w = normalise_dtype(weights, default=shape.native_dtype if shape.native_dtype != "bf16" else "bf16")
    kv = normalise_dtype(kv_dtype, default="fp8" if w == "fp8" else "bf16")
    if kv == "fp4":
        raise PlanningError("fp4 KV cache is not supported; use bf16 or fp8")
    return _Ctx(shape, gpu if isinstance(gpu, GPU) else get_gpu(gpu), get_backend(backend), w, kv, workload, fabric)


def _check_floors(ctx: _Ctx, tps: list[int]) -> None:
    wl = ctx.wl
    fastest_prefill = min(ctx.engine(t).prefill_time(wl.isl, cached=wl.cached_tokens) for t in tps)
    fastest_step = min(ctx.engine(t).decode_step_time(1.0, ctx.mean_ctx) for t in tps)
    ttft_floor = ctx.overhead + fastest_prefill
    if ttft_floor > wl.ttft_s:
        raise PlanningError(
            f"TTFT target {wl.ttft_s * 1e3:.0f} ms is below the physical floor of {ttft_floor * 1e3:.0f} ms "
            f"({wl.new_tokens}-token prefill of {ctx.model.name} on up to {max(tps)}x {ctx.gpu.name})"
        )
    if fastest_step > wl.itl_s:
        raise PlanningError(
            f"ITL target {wl.itl_s * 1e3:.1f} ms is below the physical floor of {fastest_step * 1e3:.1f} ms "
            f"(one decode step of {ctx.model.name} on up to {max(tps)}x {ctx.gpu.name})"
        )


def _best(cands: list[Candidate]) -> Candidate | None:
    return min(cands, key=_rank) if cands else None


def _decide(
    ctx: _Ctx, agg: Candidate | None, dis: Candidate | None, mode: str
) -> tuple[Candidate, Candidate | None, str]:
    """(chosen, runner-up, why) for the requested mode."""
    wl = ctx.wl
    if mode == "aggregated" or dis is None:
        assert agg is not None
        return agg, dis, "aggregated serving was requested" if mode == "aggregated" else "no disaggregated fit"
    if mode == "disaggregated" or agg is None:
        return dis, agg, "disaggregated serving was requested" if mode == "disaggregated" else "no aggregated fit"
    if agg.meets_slo and not dis.meets_slo:
        return agg, dis, "only aggregated serving meets the SLOs"
    if dis.meets_slo and not agg.meets_slo:
        return dis, agg, "only disaggregated serving meets the SLOs"
    if wl.new_tokens < SEED_SHORT_PROMPT and wl.osl < SEED_SHORT_OUTPUT:
        return (
            agg,
            dis,
            (
                f"prompts under {SEED_SHORT_PROMPT} tokens with outputs under {SEED_SHORT_OUTPUT} tokens do not "
                "repay a KV transfer (seed guidance)"
            ),
        )
    if ctx.fabric.network == "tcp" and dis.kv_transfer_ms > 0.25 * wl.ttft_s * 1e3:
        return agg, dis, f"the KV transfer over tcp ({dis.kv_transfer_ms:.0f} ms) eats the TTFT budget"
    if dis.gpus < SEED_MIN_GPUS:
        return agg, dis, f"disaggregation needs at least {SEED_MIN_GPUS} GPUs to pay"
    if dis.gpus <= agg.gpus * (1.0 - DISAGG_MARGIN):
        return dis, agg, f"disaggregation needs {agg.gpus - dis.gpus} fewer GPUs ({dis.gpus} vs {agg.gpus})"
    return (
        agg,
        dis,
        (
            f"disaggregation would save too little ({dis.gpus} vs {agg.gpus} GPUs; it must save "
            f"{DISAGG_MARGIN:.0%} to repay the KV fabric and router hop)"
        ),
    )


def _crossover(ctx: _Ctx, agg_tps: list[int], p_tps: list[int], d_tps: list[int]) -> int | None:
    """Smallest prompt length on the grid from which the disaggregated plan needs fewer GPUs."""
    for isl in CROSSOVER_GRID:
        wl = replace(ctx.wl, isl=isl, prefix_hit=0.0)
        sub = replace(ctx, wl=wl)
        tps_a = [t for t in agg_tps if sub.engine(t).fits(sub.full_ctx)]
        tps_p = [t for t in p_tps if sub.engine(t).fits(sub.full_ctx)]
        tps_d = [t for t in d_tps if sub.engine(t).fits(sub.full_ctx)]
        if not tps_a or not tps_p or not tps_d:
            continue
        agg = _best(_aggregated(sub, tps_a))
        dis = _best(_disaggregated(sub, tps_p, tps_d))
        if agg is None or dis is None or not dis.meets_slo:
            continue
        if not agg.meets_slo or dis.gpus <= agg.gpus * (1.0 - DISAGG_MARGIN):
            return isl
    return None


def plan(
    model: str | ModelShape | dict[str, Any],
    gpu: str | GPU,
    workload: Workload,
    *,
    backend: str = "vllm",
    weights: str | None = None,
    kv_dtype: str | None = None,
    fabric: Fabric | None = None,
    mode: str = "auto",
    prefill_tp: int | None = None,
    decode_tp: int | None = None,
    crossover: bool = True,
) -> PlanResult:
    """Size both architectures for ``workload`` and choose (``mode`` auto|aggregated|disaggregated)."""
    start = time.perf_counter()
    if mode not in ("auto", "aggregated", "disaggregated"):
        raise PlanningError(f"unknown mode {mode!r}; use auto, aggregated or disaggregated")
    ctx = _context(model, gpu, workload, backend, weights, kv_dtype, fabric or Fabric())
    all_tps = _fitting_tps(ctx)
    if not all_tps:
        engine = ctx.engine(max(tp_candidates(ctx.gpu)))
        raise PlanningError(
            f"{ctx.model.name} ({ctx.model.total_params / 1e9:.0f}B params in {ctx.weights}) does not fit "
            f"{ctx.gpu.name} at any tensor parallelism up to {engine.tp} with room for a "
            f"{ctx.full_ctx}-token sequence"
        )
    p_tps = [t for t in all_tps if prefill_tp is None or t == prefill_tp]
    d_tps = [t for t in all_tps if decode_tp is None or t == decode_tp]
    if not p_tps or not d_tps:
        raise PlanningError(
            f"{ctx.model.name} does not fit {ctx.gpu.name} at the requested tensor parallelism "
            f"(fits at TP {', '.join(map(str, all_tps))})"
        )
    _check_floors(ctx, all_tps)
    agg_tps = p_tps
    agg = _best(_aggregated(ctx, agg_tps)) if mode != "disaggregated" else None
    dis = _best(_disaggregated(ctx, p_tps, d_tps)) if mode != "aggregated" else None
    chosen, runner_up, why = _decide(ctx, agg, dis, mode)
    if runner_up is None and mode != "auto":
        other = _aggregated(ctx, agg_tps) if mode == "disaggregated" else _disaggregated(ctx, p_tps, d_tps)
        runner_up = _best(other)
    cross = _crossover(ctx, agg_tps, p_tps, d_tps) if crossover else None
    rate_tokens = workload.rate * workload.osl
    usd = chosen.gpus * ctx.gpu.hourly_usd / 3600.0 / max(rate_tokens, 1e-9) * 1e6
    result = PlanResult(
        model=ctx.model.name,
        gpu=ctx.gpu.name,
        backend=ctx.backend.name,
        weights=ctx.weights,
        kv_dtype=ctx.kv_dtype,
        workload=workload,
        fabric=ctx.fabric,
        chosen=chosen,
        runner_up=runner_up,
        crossover_isl=cross,
        reason="",
        elapsed_ms=0.0,
        throughput_tokens_per_s=rate_tokens,
        tokens_per_s_per_gpu=rate_tokens / chosen.gpus,
        usd_per_million_tokens=usd,
        error_band=error_band(ctx.model, ctx.gpu),
        shape=ctx.model,
    )
    reason = _reason(ctx, result, why)
    return replace(result, reason=reason, elapsed_ms=(time.perf_counter() - start) * 1e3)


def _reason(ctx: _Ctx, r: PlanResult, why: str) -> str:
    wl, c = ctx.wl, r.chosen
    pct = f"p{wl.percentile}"
    parts = [
        f"{c.mode.capitalize()} serving, {c.ratio}, on {c.gpus}x {ctx.gpu.name} because {why}.",
        f"A {wl.new_tokens}-token prefill takes {c.prefill_ms:.0f} ms on TP{c.prefill_tp}",
    ]
    if c.mode == "disaggregated":
        parts[-1] += (
            f"; {c.prefill_replicas} prefill replicas keep the {pct} TTFT at {c.ttft_ms:.0f} ms "
            f"(target {wl.ttft_s * 1e3:.0f} ms, KV transfer {c.kv_transfer_ms:.1f} ms over {ctx.fabric.network}), "
            f"and {c.decode_replicas} decode replicas at about {c.decode_batch:.0f} sequences each "
            f"step in {c.mean_tpot_ms:.1f} ms ({pct} ITL {c.itl_ms:.1f} ms, target {wl.itl_s * 1e3:.0f} ms)."
        )
    else:
        parts[-1] += (
            f"; with {c.chunk_tokens}-token chunks riding decode steps, {c.prefill_replicas} replicas at about "
            f"{c.decode_batch:.0f} sequences each give a {pct} TTFT of {c.ttft_ms:.0f} ms "
            f"(target {wl.ttft_s * 1e3:.0f} ms) and a {pct} ITL of {c.itl_ms:.1f} ms "
            f"(target {wl.itl_s * 1e3:.0f} ms; mean TPOT {c.mean_tpot_ms:.1f} ms)."
        )
    if r.runner_up is not None:
        parts.append(f"Runner-up: {r.runner_up.summary()}.")
    if r.crossover_isl is not None:
        parts.append(f"For this model, rate and SLOs disaggregation pays from about {r.crossover_isl}-token prompts.")
    else:
        parts.append("Within 128-16K-token prompts disaggregation does not pay for this model, rate and SLOs.")
    if not c.meets_slo:
        parts.append("The SLOs are NOT predicted to be met even at the largest search bound.")
    if r.error_band is not None:
        parts.append(r.error_band.sentence())
    return " ".join(parts)


# ---------------------------------------------------------------------------------------- operator
def _role(planned: int, floor: int, ceiling: int | None, tp: int) -> tuple[RolePlan, bool]:
    """(role plan, capped) with the planned count clamped into the spec's replica bounds."""
    if ceiling is not None:
        count = min(max(planned, floor), ceiling)
        return RolePlan(replicas=count, max_replicas=max(ceiling, count), tensor_parallel=tp), count < planned
    count = max(floor, planned)
    return RolePlan(replicas=count, max_replicas=count, tensor_parallel=tp), False


def plan_for_spec(spec: DisaggregatedModelSpec, backend: str = "vllm") -> Plan:
    """The operator's entry point: resolve ``mode: auto``, fill open TP/replicas, set the router threshold.

    Raises :class:`PlanningError` (a ValueError with a one-line message) on input it cannot plan for.
    """
    model_spec = spec.model
    shape: ModelShape
    if model_spec.preset:
        shape = get_model(model_spec.preset)
    elif model_spec.config:
        shape = model_from_config(model_spec.config, name=model_spec.name)
    else:
        raise PlanningError("spec.model needs a preset or a config (Hugging Face config.json) to be planned")
    try:
        ttft = duration_seconds(spec.slo.ttft)
        itl = duration_seconds(spec.slo.itl)
    except ValueError as exc:
        raise PlanningError(str(exc)) from exc
    wl = spec.workload
    workload = Workload(
        isl=wl.input_tokens.mean,
        osl=wl.output_tokens.mean,
        rate=wl.request_rate,
        ttft_s=ttft,
        itl_s=itl,
        percentile=spec.slo.percentile,
        prefix_hit=wl.prefix_cache_hit_percent / 100.0 if wl.prefix_cache_hit_percent < 100 else 0.99,
    )
    kv = None if model_spec.kv_cache_dtype == KVCacheDtype.AUTO else model_spec.kv_cache_dtype.value
    fabric = Fabric(network=spec.kv_transfer.network.value, bandwidth_gbps=spec.kv_transfer.bandwidth_gbps)
    aggregated = spec.mode == Mode.AGGREGATED
    result = plan(
        shape,
        spec.accelerator.type,
        workload,
        backend=backend,
        weights=model_spec.dtype.value,
        kv_dtype=kv,
        fabric=fabric,
        mode=spec.mode.value,
        prefill_tp=spec.prefill.parallelism.tensor,
        decode_tp=None if aggregated else spec.decode.parallelism.tensor,
    )
    c = result.chosen
    prefill, capped_p = _role(c.prefill_replicas, spec.prefill.replicas.min, spec.prefill.replicas.max, c.prefill_tp)
    decode: RolePlan | None = None
    capped_d = False
    if c.mode == "disaggregated":
        decode, capped_d = _role(c.decode_replicas, spec.decode.replicas.min, spec.decode.replicas.max, c.decode_tp)
    router_floor = spec.router.replicas.min
    router = RolePlan(
        replicas=router_floor,
        max_replicas=max(spec.router.replicas.max or router_floor, router_floor),
        tensor_parallel=0,
    )
    threshold = spec.router.disagg_threshold
    if not isinstance(threshold, int):
        threshold = result.crossover_isl if result.crossover_isl is not None else PLACEHOLDER_DISAGG_THRESHOLD
    reason = result.reason
    slo_met = c.meets_slo
    if capped_p or capped_d:
        slo_met = False
        reason += " replicas.max caps a role below the planned count, so the SLOs are not predicted to hold."
    return Plan(
        mode=c.mode,
        prefill=prefill,
        decode=decode,
        router=router,
        disagg_threshold=threshold,
        source="planner",
        reason=reason,
        predicted_ttft_ms=round(c.ttft_ms, 1),
        predicted_itl_ms=round(c.itl_ms, 2),
        slo_met=slo_met,
        decode_max_batch=c.max_batch,
    )
