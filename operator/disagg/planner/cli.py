"""``disagg estimate``, ``disagg plan`` and ``disagg simulate``: the planner on the command line.

Register with :func:`add_subcommands`; each subcommand's ``func`` takes the parsed arguments and
returns an exit code. Input errors raise :class:`~disagg.planner.catalog.PlanningError` (a ValueError)
with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from disagg.api.spec import Mode, NetworkKind
from disagg.planner.catalog import (
    BACKENDS,
    ModelShape,
    PlanningError,
    get_backend,
    get_gpu,
    get_model,
    load_model_config,
    normalise_dtype,
    preset_names,
)
from disagg.planner.costmodel import Engine
from disagg.planner.estimate import estimate_closed_loop
from disagg.planner.plan import ServingMode
from disagg.planner.search import CROSSOVER_GRID, PlanResult, plan
from disagg.planner.sizing import Fabric, Workload

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s)?\s*$")


def _seconds(text: str) -> float:
    """``1s``, ``50ms`` or a bare number of milliseconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use forms like 1s, 50ms or 50 (ms)")
    value = float(match.group(1))
    return value if match.group(2) == "s" else value / 1e3


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text}")
    return value


def _model(args: argparse.Namespace) -> ModelShape:
    if args.model_config:
        return load_model_config(args.model_config)
    if not args.model:
        raise PlanningError(f"pass --model (one of {', '.join(preset_names())}) or --model-config PATH")
    return get_model(args.model)


def _weights(args: argparse.Namespace, model: ModelShape) -> tuple[str, str]:
    weights = normalise_dtype(args.weights, default=model.native_dtype)
    kv = normalise_dtype(args.kv_cache, default="fp8" if weights == "fp8" else "bf16")
    if kv == "fp4":
        raise PlanningError("fp4 KV cache is not supported; use bf16 or fp8")
    return weights, kv


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help=f"model preset ({', '.join(preset_names())})")
    p.add_argument("--model-config", metavar="PATH", help="Hugging Face config.json instead of a preset")
    p.add_argument("--gpu", default="h100-sxm", help="GPU type (h100-sxm, h100_sxm, b200, l40s, ...)")
    p.add_argument("--backend", default="vllm", choices=BACKENDS, help="serving engine")
    p.add_argument("--weights", help="weight precision bf16|fp8|fp4 (default: the checkpoint's)")
    p.add_argument("--kv-cache", help="KV-cache precision bf16|fp8 (default: fp8 with fp8 weights, else bf16)")
    p.add_argument("--isl", type=_positive_int, default=4096, help="prompt tokens")
    p.add_argument("--osl", type=_positive_int, default=300, help="output tokens")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _open_loop(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=1.0, help="requests per second (Poisson)")
    p.add_argument("--ttft", type=_seconds, default=2.0, help="TTFT target (1s, 500ms)")
    p.add_argument("--itl", type=_seconds, default=0.05, help="inter-token latency target (50ms)")
    p.add_argument("--percentile", type=int, default=90, help="percentile at which both targets hold")
    p.add_argument("--prefix-hit", type=float, default=0.0, help="share of prompt tokens in the prefix cache (0..1)")
    p.add_argument("--network", default="rdma", choices=("rdma", "tcp"), help="KV fabric between pods")
    p.add_argument("--bandwidth", type=float, help="KV transfer GB/s per pod (default: 25 rdma, 2 tcp)")
    p.add_argument("--mode", default="auto", choices=("auto", "aggregated", "disaggregated"))
    p.add_argument("--prefill-tp", type=int, help="fix the prefill (or aggregated) tensor parallelism")
    p.add_argument("--decode-tp", type=int, help="fix the decode tensor parallelism")
    p.add_argument(
        "--prefill-dp",
        type=_positive_int,
        help="fix the prefill (or aggregated) attention data parallelism (MoE; EP = TP x DP). Default: searched",
    )
    p.add_argument("--decode-dp", type=_positive_int, help="fix the decode attention data parallelism (MoE)")
    p.add_argument(
        "--prefill-expert",
        action=argparse.BooleanOptionalAction,
        help="require (or, with --no-prefill-expert, forbid) expert parallelism for prefill (MoE). Default: searched",
    )
    p.add_argument("--decode-expert", action=argparse.BooleanOptionalAction, help="the same for decode")


def add_subcommands(subparsers: Any) -> None:
    """Register ``estimate``, ``plan`` and ``simulate`` on an argparse subparsers object."""
    est = subparsers.add_parser("estimate", help="steady-state TTFT/TPOT of one engine under C closed-loop clients")
    _common(est)
    est.add_argument("--tp", type=_positive_int, default=1, help="tensor parallelism")
    est.add_argument("--pp", type=_positive_int, default=1, help="pipeline parallelism")
    est.add_argument(
        "--ep", type=_positive_int, default=1, help="expert parallelism (MoE): ranks holding whole experts"
    )
    est.add_argument(
        "--dp",
        type=_positive_int,
        help="attention data parallelism (MoE): ranks of --tp GPUs, each with its own sequences and KV cache, "
        "sharing the experts (EP = TP x DP). Default: 1, or (moe-tp x ep) / tp when that exceeds tp",
    )
    est.add_argument(
        "--moe-tp",
        type=_positive_int,
        help="MoE tensor parallelism (GPUs each expert is split over); with --ep it gives the MoE group "
        "moe-tp x ep = tp x dp",
    )
    est.add_argument("--concurrency", type=_positive_int, default=1, help="closed-loop clients")
    est.add_argument(
        "--waves",
        type=float,
        default=8.0,
        help="requests per client of the benchmark (clients start together, so the first wave is a burst); "
        "0 = pure steady state (default 8, the protocol of the measured data)",
    )
    est.add_argument(
        "--length-ratio",
        type=float,
        default=1.0,
        help="prompt and output lengths drawn uniformly from [ratio x length, length] per request, as "
        "benchmark_serving --random-range-ratio draws them (InferenceMAX: 0.8); 1 = fixed lengths (default)",
    )
    est.set_defaults(func=cmd_estimate)

    pl = subparsers.add_parser("plan", help="size aggregated vs disaggregated serving for a rate and SLOs")
    _common(pl)
    _open_loop(pl)
    pl.set_defaults(func=cmd_plan)

    sim = subparsers.add_parser("simulate", help="discrete-event simulation of the planned configuration")
    _common(sim)
    _open_loop(sim)
    sim.add_argument("--requests", type=_positive_int, default=3000, help="requests to simulate")
    sim.add_argument("--seed", type=int, default=1, help="random seed")
    sim.add_argument("--chart", metavar="PATH", help="also draw throughput/GPU and TTFT vs prompt length (PNG)")
    sim.set_defaults(func=cmd_simulate)


def attention_dp(tp: int, ep: int, dp: int | None, moe_tp: int | None) -> tuple[int, bool]:
    """(attention DP size, whether it was inferred). An MoE layer spreads its experts over ``moe_tp x ep``
    GPUs, which is ``tp x dp``: without an explicit ``dp``, a larger MoE group than ``tp`` means attention
    data parallelism (``--tp 1 --ep 16`` is TP1 x DP16 with EP16, as engines run wide-EP)."""
    if dp is not None:
        if moe_tp is not None and moe_tp * ep != tp * dp:
            raise PlanningError(f"moe-tp x ep ({moe_tp} x {ep}) must equal tp x dp ({tp} x {dp})")
        return dp, False
    group = (moe_tp or 1) * ep
    if group <= tp:
        if moe_tp is not None and group != tp:
            raise PlanningError(f"moe-tp x ep ({moe_tp} x {ep}) must equal tp x dp ({tp} x 1)")
        return 1, False
    if group % tp:
        raise PlanningError(f"moe-tp x ep ({group}) must be a multiple of tp ({tp}) (it is tp x dp)")
    return group // tp, True


def cmd_estimate(args: argparse.Namespace) -> int:
    model = _model(args)
    weights, kv = _weights(args, model)
    dp, inferred = attention_dp(args.tp, args.ep, args.dp, args.moe_tp) if model.is_moe else (args.dp or 1, False)
    engine = Engine(
        model,
        get_gpu(args.gpu),
        get_backend(args.backend),
        tp=args.tp,
        pp=args.pp,
        ep=args.ep,
        dp=dp,
        weights=weights,
        kv_dtype=kv,
    )
    if args.waves < 0:
        raise PlanningError("--waves must be >= 0")
    est = estimate_closed_loop(
        engine, args.concurrency, args.isl, args.osl, waves=args.waves, length_ratio=args.length_ratio
    )
    if args.json:
        out = est.as_dict()
        out["parallelism"] = {"tp": engine.tp, "dp": engine.dp, "pp": engine.pp, "ep": engine.ep}
        out["dp_inferred"] = inferred
        print(json.dumps(out, indent=2))
        return 0
    note = f" (attention DP {dp} inferred from EP {args.ep} over TP {args.tp})" if inferred else ""
    print(f"{est.engine}{note}, {args.concurrency} closed-loop clients, {args.isl} in / {args.osl} out tokens")
    print(
        f"  TTFT {est.ttft_ms:9.1f} ms   (prefill alone {est.prefill_ms:.1f} ms, "
        f"prefill share of steps {est.prefill_share:.0%})"
    )
    print(f"  TPOT {est.tpot_ms:9.2f} ms   (decode step {est.decode_step_ms:.2f} ms at batch {est.decode_batch:.1f})")
    print(
        f"  throughput {est.output_tokens_per_s:,.0f} output tok/s ({est.output_tokens_per_s_per_gpu:,.0f} per GPU), "
        f"KV holds {est.kv_capacity_sequences} sequences" + (" (KV-limited)" if est.kv_limited else "")
    )
    return 0


def _plan(args: argparse.Namespace, crossover: bool = True, mode: Mode | None = None) -> PlanResult:
    model = _model(args)
    weights, kv = _weights(args, model)
    workload = Workload(
        isl=args.isl,
        osl=args.osl,
        rate=args.rate,
        ttft_s=args.ttft,
        itl_s=args.itl,
        percentile=args.percentile,
        prefix_hit=args.prefix_hit,
    )
    return plan(
        model,
        args.gpu,
        workload,
        backend=args.backend,
        weights=weights,
        kv_dtype=kv,
        fabric=Fabric(NetworkKind(args.network), args.bandwidth),
        mode=mode or Mode(args.mode),
        prefill_tp=args.prefill_tp,
        decode_tp=args.decode_tp,
        crossover=crossover,
        prefill_dp=args.prefill_dp,
        decode_dp=args.decode_dp,
        prefill_expert=args.prefill_expert,
        decode_expert=args.decode_expert,
    )


def cmd_plan(args: argparse.Namespace) -> int:
    result = _plan(args)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    c = result.chosen
    wl = result.workload
    print(
        f"{result.model} ({result.weights} weights, {result.kv_dtype} KV) on {result.gpu} with {result.backend}: "
        f"{wl.rate:g} req/s, {wl.isl} in / {wl.osl} out tokens, p{wl.percentile} TTFT <= {wl.ttft_s * 1e3:.0f} ms, "
        f"ITL <= {wl.itl_s * 1e3:.0f} ms"
    )
    print(f"chosen:    {c.summary()}")
    if c.mode == ServingMode.DISAGGREGATED:
        print(
            f"           prefill {c.prefill_layout.label} x{c.prefill_replicas}, "
            f"decode {c.decode_layout.label} x{c.decode_replicas}, "
            f"decode batch ~{c.decode_batch:.0f} (KV holds {c.max_batch}), KV transfer {c.kv_transfer_ms:.1f} ms"
        )
    else:
        print(
            f"           {c.prefill_layout.label} x{c.prefill_replicas}, prefill chunk {c.chunk_tokens} tokens, "
            f"batch ~{c.decode_batch:.0f} (KV holds {c.max_batch})"
        )
    print(
        f"           {result.tokens_per_s_per_gpu:,.0f} output tok/s per GPU, ${result.usd_per_million_tokens:.2f} "
        "per 1M output tokens"
    )
    if result.runner_up is not None:
        print(f"runner-up: {result.runner_up.summary()}")
    cross = f"{result.crossover_isl} tokens" if result.crossover_isl is not None else "none within 128-16K tokens"
    print(f"crossover: disaggregation pays from {cross}")
    if result.error_band is not None:
        band = result.error_band
        print(
            f"error:     TTFT {c.ttft_ms:.0f} ms ±{band.ttft:.0%}, ITL {c.itl_ms:.1f} ms ±{band.itl:.0%} "
            f"(cross-validated median error, {band.basis})"
        )
        if band.unmeasured:
            print(f"           no measured rows for {' or '.join(band.unmeasured)}: extrapolated")
    print(f"planned in {result.elapsed_ms:.0f} ms")
    print()
    print(result.reason)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from disagg.planner.simulate import simulate

    result = _plan(args, crossover=False)
    c = result.chosen
    prefill_engine, decode_engine = result.engines(c)
    sim = simulate(c, prefill_engine, decode_engine, result.workload, result.fabric, args.requests, args.seed)
    out: dict[str, Any] = {
        "configuration": c.summary(),
        "mode": c.mode,
        "plan": {"ttft_ms": round(c.ttft_ms, 2), "itl_ms": round(c.itl_ms, 3)},
        "simulated": sim.as_dict(),
        "ttft_ms": round(sim.ttft_p_ms, 2),
        "itl_ms": round(sim.itl_p_ms, 3),
        "ttft_agreement": round(sim.ttft_p_ms / c.ttft_ms - 1.0, 4),
        "itl_agreement": round(sim.itl_p_ms / c.itl_ms - 1.0, 4),
    }
    if args.chart:
        from disagg.planner.chart import crossover_points, draw_crossover

        points = crossover_points(args, _plan, min(args.requests, 1500), args.seed)
        draw_crossover(
            points, args.chart, title=f"{result.model} on {result.gpu}, {args.rate:g} req/s, {args.osl} output tokens"
        )
        out["chart"] = args.chart
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    pct = f"p{result.workload.percentile}"
    print(f"simulated {sim.requests} requests ({sim.simulated_s:.0f} s) of {c.summary()}")
    print(
        f"  {pct} TTFT  plan {c.ttft_ms:8.1f} ms   simulated {sim.ttft_p_ms:8.1f} ms   ({out['ttft_agreement']:+.1%})"
    )
    print(f"  {pct} ITL   plan {c.itl_ms:8.2f} ms   simulated {sim.itl_p_ms:8.2f} ms   ({out['itl_agreement']:+.1%})")
    print(f"  mean TTFT {sim.ttft_mean_ms:.1f} ms, mean TPOT {sim.tpot_mean_ms:.2f} ms")
    if args.chart:
        print(f"chart written to {args.chart}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m disagg.planner.cli``); the operator CLI registers the same commands."""
    parser = argparse.ArgumentParser(prog="disagg-planner")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:
        print(f"disagg: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["CROSSOVER_GRID", "add_subcommands", "main"]
