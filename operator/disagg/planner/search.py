"""Open-loop planning: size both architectures for a Poisson request rate and SLOs at a percentile
(:mod:`disagg.planner.sizing`), choose the mode, and find the prompt length from which disaggregation
pays (the router's threshold). The operator's adapter from a spec is :mod:`disagg.planner.from_spec`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from disagg.api.spec import Mode, NetworkKind
from disagg.planner.catalog import (
    GPU,
    ModelShape,
    PlanningError,
    get_backend,
    get_gpu,
    get_model,
    model_from_config,
    normalise_dtype,
)
from disagg.planner.costmodel import Engine
from disagg.planner.plan import ServingMode
from disagg.planner.sizing import (
    Candidate,
    Fabric,
    Layout,
    SizingContext,
    Workload,
    best,
    fitting,
    layouts,
    size_aggregated,
    size_disaggregated,
)
from disagg.planner.uncertainty import ErrorBand, error_band

__all__ = ["CROSSOVER_GRID", "Candidate", "Fabric", "PlanResult", "Workload", "plan"]

CROSSOVER_GRID = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
DISAGG_MARGIN = 0.10
"""Disaggregation must save at least this share of GPUs to be chosen (it costs a KV fabric and a router hop)."""
SEED_SHORT_PROMPT = 512
SEED_SHORT_OUTPUT = 200
SEED_MIN_GPUS = 4


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
        ctx = SizingContext(
            self.shape,
            get_gpu(self.gpu),
            get_backend(self.backend),
            self.weights,
            self.kv_dtype,
            self.workload,
            self.fabric,
        )
        return ctx.engine(c.prefill_layout, c.chunk_tokens), ctx.engine(c.decode_layout)

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


# ---------------------------------------------------------------------------------------- driver
def _context(
    model: str | ModelShape | dict[str, Any],
    gpu: str | GPU,
    workload: Workload,
    backend: str,
    weights: str | None,
    kv_dtype: str | None,
    fabric: Fabric,
) -> SizingContext:
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
    return SizingContext(
        shape, gpu if isinstance(gpu, GPU) else get_gpu(gpu), get_backend(backend), w, kv, workload, fabric
    )


def _check_floors(ctx: SizingContext, candidates: list[Layout]) -> None:
    wl = ctx.wl
    fastest_prefill = min(ctx.engine(lay).prefill_time(wl.isl, cached=wl.cached_tokens) for lay in candidates)
    fastest_step = min(ctx.engine(lay).decode_step_time(1.0, ctx.mean_ctx) for lay in candidates)
    ttft_floor = ctx.overhead + fastest_prefill
    widest = max(lay.gpus for lay in candidates)
    if ttft_floor > wl.ttft_s:
        raise PlanningError(
            f"TTFT target {wl.ttft_s * 1e3:.0f} ms is below the physical floor of {ttft_floor * 1e3:.0f} ms "
            f"({wl.new_tokens}-token prefill of {ctx.model.name} on up to {widest}x {ctx.gpu.name})"
        )
    if fastest_step > wl.itl_s:
        raise PlanningError(
            f"ITL target {wl.itl_s * 1e3:.1f} ms is below the physical floor of {fastest_step * 1e3:.1f} ms "
            f"(one decode step of {ctx.model.name} on up to {widest}x {ctx.gpu.name})"
        )


def _decide(
    ctx: SizingContext, agg: Candidate | None, dis: Candidate | None, mode: Mode
) -> tuple[Candidate, Candidate | None, str]:
    """(chosen, runner-up, why) for the requested mode."""
    wl = ctx.wl
    if mode == Mode.AGGREGATED or dis is None:
        assert agg is not None
        return agg, dis, "aggregated serving was requested" if mode == Mode.AGGREGATED else "no disaggregated fit"
    if mode == Mode.DISAGGREGATED or agg is None:
        return dis, agg, "disaggregated serving was requested" if mode == Mode.DISAGGREGATED else "no aggregated fit"
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
    if ctx.fabric.network == NetworkKind.TCP and dis.kv_transfer_ms > 0.25 * wl.ttft_s * 1e3:
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


def _crossover(ctx: SizingContext, agg_ls: list[Layout], p_ls: list[Layout], d_ls: list[Layout]) -> int | None:
    """Smallest prompt length on the grid from which the disaggregated plan needs fewer GPUs."""
    for isl in CROSSOVER_GRID:
        wl = replace(ctx.wl, isl=isl, prefix_hit=0.0)
        sub = replace(ctx, wl=wl)
        fit_a, fit_p, fit_d = fitting(sub, agg_ls), fitting(sub, p_ls), fitting(sub, d_ls)
        if not fit_a or not fit_p or not fit_d:
            continue
        agg = best(size_aggregated(sub, fit_a))
        dis = best(size_disaggregated(sub, fit_p, fit_d))
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
    mode: Mode = Mode.AUTO,
    prefill_tp: int | None = None,
    decode_tp: int | None = None,
    crossover: bool = True,
    prefill_dp: int | None = None,
    decode_dp: int | None = None,
    prefill_expert: bool | None = None,
    decode_expert: bool | None = None,
) -> PlanResult:
    """Size both architectures for ``workload`` and choose (``mode``: auto picks the cheaper that meets the SLOs)."""
    start = time.perf_counter()
    try:
        mode = Mode(mode)
    except ValueError:
        raise PlanningError(f"unknown mode {mode!r}; use auto, aggregated or disaggregated") from None
    ctx = _context(model, gpu, workload, backend, weights, kv_dtype, fabric or Fabric())
    _check_layout_request(ctx.model, (prefill_dp, decode_dp), (prefill_expert, decode_expert))
    all_ls = fitting(ctx, layouts(ctx.model, ctx.gpu))
    if not all_ls:
        raise PlanningError(
            f"{ctx.model.name} ({ctx.model.total_params / 1e9:.0f}B params in {ctx.weights}) does not fit "
            f"{ctx.gpu.name} at any parallelism up to {ctx.gpu.scaleup_domain} GPUs with room for a "
            f"{ctx.full_ctx}-token sequence"
        )
    p_ls = fitting(ctx, layouts(ctx.model, ctx.gpu, prefill_tp, prefill_dp, prefill_expert))
    d_ls = fitting(ctx, layouts(ctx.model, ctx.gpu, decode_tp, decode_dp, decode_expert))
    if not p_ls or not d_ls:
        raise PlanningError(
            f"{ctx.model.name} does not fit {ctx.gpu.name} at the requested parallelism "
            f"(fits at {', '.join(sorted({lay.label for lay in all_ls}))})"
        )
    _check_floors(ctx, all_ls)
    agg_ls = p_ls
    agg = best(size_aggregated(ctx, agg_ls)) if mode != Mode.DISAGGREGATED else None
    dis = best(size_disaggregated(ctx, p_ls, d_ls)) if mode != Mode.AGGREGATED else None
    chosen, runner_up, why = _decide(ctx, agg, dis, mode)
    if runner_up is None and mode != Mode.AUTO:
        other = size_aggregated(ctx, agg_ls) if mode == Mode.DISAGGREGATED else size_disaggregated(ctx, p_ls, d_ls)
        runner_up = best(other)
    cross = _crossover(ctx, agg_ls, p_ls, d_ls) if crossover else None
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


def _check_layout_request(model: ModelShape, dps: tuple[int | None, ...], experts: tuple[bool | None, ...]) -> None:
    if model.is_moe:
        return
    if any(dp not in (None, 1) for dp in dps):
        raise PlanningError(
            f"attention data parallelism needs an MoE model; {model.name} is dense (for it, DP is just more replicas)"
        )
    if any(experts):
        raise PlanningError(f"expert parallelism needs an MoE model; {model.name} is dense")


def _replicas(count: int, role: str) -> str:
    return f"{count} {role} replica{'' if count == 1 else 's'}"


def _reason(ctx: SizingContext, r: PlanResult, why: str) -> str:
    wl, c = ctx.wl, r.chosen
    pct = f"p{wl.percentile}"
    parts = [
        f"{c.mode.capitalize()} serving, {c.ratio}, on {c.gpus}x {ctx.gpu.name} because {why}.",
        f"A {wl.new_tokens}-token prefill takes {c.prefill_ms:.0f} ms on {c.prefill_layout.label}",
    ]
    if c.mode == ServingMode.DISAGGREGATED:
        parts[-1] += (
            f"; {_replicas(c.prefill_replicas, 'prefill')} {'keeps' if c.prefill_replicas == 1 else 'keep'} the "
            f"{pct} TTFT at {c.ttft_ms:.0f} ms "
            f"(target {wl.ttft_s * 1e3:.0f} ms, KV transfer {c.kv_transfer_ms:.1f} ms over {ctx.fabric.network}), "
            f"and {_replicas(c.decode_replicas, 'decode')} at about {c.decode_batch:.0f} sequences each "
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
