"""Accuracy of the analytical planner against measured serving runs, and how long a plan takes.

    python bench/planner_accuracy.py [--csv PATH] [--worst N] [--no-cv] [--fit] [--residuals] [--burst-weights]

Prints the median absolute percentage error of TTFT and TPOT over every measured-dev.csv row the
estimator supports (``mode=agg``: one engine, C closed-loop clients), overall and per
(model, GPU, backend), the share of rows within 20%, then the same figures under leave-one-group-out
cross-validation (each GPU, each model and each backend held out in turn; the fitted backend constants
of disagg/planner/calibrate.py refitted without it), and the latency of ``disagg plan`` for the
acceptance case (70B on H100, 4K prompts, 300 output tokens, 20 req/s, TTFT 1 s, ITL 50 ms).
The pooled figures come with the interval they span when the measured settings (one (model, GPU, backend)
sweep each) are resampled with replacement: how much the figure owes to which sweeps the file holds.
``--fit`` prints the backend constants fitted on every row (what catalog.py ships). ``--residuals`` prints
the median predicted/measured TTFT by measurement source, backend and concurrency (the table that shows the
harnesses pulling the fitted constants in opposite directions, docs/planner.md). ``--burst-weights`` prints the
share of the first wave's burst each row's TTFT implies (the harnesses' client phasing, docs/planner.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from disagg.planner.calibrate import LOGO_GOALS, cross_validate, error_bands, fit, setting_bootstrap  # noqa: E402
from disagg.planner.catalog import PlanningError  # noqa: E402
from disagg.planner.estimate import estimate_closed_loop  # noqa: E402
from disagg.planner.measured import (  # noqa: E402
    Comparison,
    accuracy,
    accuracy_by_group,
    compare_rows,
    engine_for_row,
    read_rows,
)
from disagg.planner.search import Workload, plan  # noqa: E402

DEFAULT_CSV = ROOT / "data" / "serving-measurements" / "measured-dev.csv"
BANDS = ROOT / "operator" / "disagg" / "planner" / "data" / "error_bands.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default=str(DEFAULT_CSV), help="measured runs (aiconfigurator silicon format)")
    parser.add_argument("--worst", type=int, default=0, help="also list the N worst rows by TPOT error")
    parser.add_argument("--no-cv", action="store_true", help="skip the cross-validation (about a minute)")
    parser.add_argument("--fit", action="store_true", help="print the backend constants fitted on every row")
    parser.add_argument(
        "--residuals", action="store_true", help="median predicted/measured TTFT by source, backend, concurrency"
    )
    parser.add_argument(
        "--implausible",
        type=float,
        nargs="?",
        const=0.7,
        default=None,
        metavar="SHARE",
        help="count rows per group whose measured throughput needs the prompts' weight GEMMs alone to run at more "
        "than SHARE (default 0.7) of the GPUs' dense peak: only prefix-cache hits make that possible",
    )
    parser.add_argument(
        "--burst-weights",
        action="store_true",
        help="the first-wave weight each row implies, (measured - steady state) / (burst - steady state), by "
        "source, backend, model and concurrency (the benchmark protocol assumes 1/8)",
    )
    parser.add_argument(
        "--write-bands",
        action="store_true",
        help=f"write the cross-validated error bands `disagg plan` reports to {BANDS.relative_to(ROOT)}",
    )
    args = parser.parse_args(argv)
    path = Path(args.csv)
    if not path.exists():
        print(f"planner_accuracy: {path} not found (pass --csv)", file=sys.stderr)
        return 1

    rows = list(read_rows(path))
    comparisons, skipped = compare_rows(rows)
    overall = accuracy(comparisons)
    print(
        f"rows replayed: {overall.rows} of {len(rows)} (skipped {skipped}: disagg rows, multi-node TP, no concurrency)"
    )
    print(
        f"overall  TTFT median |err| {overall.ttft_median:6.1%}  within 20%: {overall.ttft_within_20:5.1%}   "
        f"TPOT median |err| {overall.tpot_median:6.1%}  within 20%: {overall.tpot_within_20:5.1%}"
    )
    print()
    print(f"{'model':<18}{'gpu':<10}{'backend':<8}{'rows':>5}{'TTFT med':>10}{'<=20%':>7}{'TPOT med':>10}{'<=20%':>7}")
    for (model, gpu, backend), acc in accuracy_by_group(comparisons).items():
        print(
            f"{model:<18}{gpu:<10}{backend:<8}{acc.rows:>5}{acc.ttft_median:>10.1%}{acc.ttft_within_20:>7.0%}"
            f"{acc.tpot_median:>10.1%}{acc.tpot_within_20:>7.0%}"
        )
    if args.worst:
        print()
        for c in sorted(comparisons, key=lambda c: -c.tpot_error)[: args.worst]:
            print(
                f"{c.row_id[:70]:<72} ttft {c.measured_ttft_ms:8.1f}/{c.predicted_ttft_ms:8.1f}  "
                f"tpot {c.measured_tpot_ms:7.2f}/{c.predicted_tpot_ms:7.2f}"
            )

    if args.residuals:
        print_residuals(rows, comparisons)
    if args.implausible:
        print_implausible(rows, args.implausible)
    if args.burst_weights:
        print_burst_weights(rows)

    if args.fit:
        fitted = fit(rows)
        print()
        for name, profile in fitted.profiles.items():
            print(
                f"fitted {name:<7} request_overhead_ms={profile.request_overhead_ms:g} "
                f"moe_gemm_eta={profile.moe_gemm_eta:g} eager_layer_us={profile.eager_layer_us:g} "
                f"({fitted.rows[name]} rows)"
            )
    if args.write_bands and args.no_cv:
        parser.error("--write-bands needs the cross-validation")
    if not args.no_cv:
        cv = cross_validate(rows)
        if args.write_bands:
            BANDS.write_text(json.dumps(error_bands(comparisons, cv), indent=2) + "\n", encoding="utf-8")
            print(f"wrote {BANDS.relative_to(ROOT)}")
        print()
        print("leave-one-group-out (fitted constants refitted without the held-out group):")
        print(
            f"{'held out':<26}{'rows':>5}{'TTFT med':>10}{'<=20%':>7}{'TPOT med':>10}{'<=20%':>7}   "
            "fitted overhead ms / MoE eta / eager us per layer (vllm, sglang, trtllm)"
        )
        for fold in cv.folds:
            acc = fold.accuracy
            consts = ", ".join(
                f"{p.request_overhead_ms:g}/{p.moe_gemm_eta:g}/{p.eager_layer_us:g}" for p in fold.profiles.values()
            )
            print(
                f"{fold.grouping + ' ' + fold.group:<26}{acc.rows:>5}{acc.ttft_median:>10.1%}{acc.ttft_within_20:>7.0%}"
                f"{acc.tpot_median:>10.1%}{acc.tpot_within_20:>7.0%}   {consts}"
            )
        for grouping, acc in cv.by_grouping.items():
            print(
                f"LOGO by {grouping:<8} TTFT median |err| {acc.ttft_median:6.1%}   "
                f"TPOT median |err| {acc.tpot_median:6.1%}   ({acc.rows} rows)"
            )
        print(
            f"LOGO pooled   TTFT median |err| {cv.pooled.ttft_median:6.1%}   "
            f"TPOT median |err| {cv.pooled.tpot_median:6.1%}   "
            f"(all-rows, in-sample: {overall.ttft_median:.1%} / {overall.tpot_median:.1%})"
        )
        spread = setting_bootstrap(cv.held_out)
        print(
            f"LOGO pooled, {spread.settings} measured settings resampled ({spread.draws} draws): "
            f"{spread.level:.0%} interval "
            + "   ".join(
                f"{metric.upper()} {iv.low:.1%}-{iv.high:.1%} "
                f"(median <= {LOGO_GOALS[metric]:.0%} in {iv.within_goal:.0%})"
                for metric, iv in spread.intervals.items()
            )
        )

    workload = Workload(isl=4096, osl=300, rate=20.0, ttft_s=1.0, itl_s=0.05, percentile=90)
    plan("llama-3.1-70b", "h100-sxm", workload)  # warm caches (preset JSON) before timing
    runs = 20
    start = time.perf_counter()
    for _ in range(runs):
        result = plan("llama-3.1-70b", "h100-sxm", workload)
    elapsed_ms = (time.perf_counter() - start) / runs * 1e3
    print()
    print(
        f"plan latency (llama-3.1-70b, h100-sxm, 4096/300 tokens, 20 req/s, TTFT 1 s, ITL 50 ms): "
        f"{elapsed_ms:.1f} ms (mean of {runs}) -> {result.chosen.summary()}"
    )
    return 0


def measurement_source(row: dict[str, str]) -> str:
    """The harness a row came from: the project folder of a ``source_file=/.../<project>/data/...`` path, or the
    file name of a flat source."""
    value = row.get("silicon_data_source", "").split(";")[0].removeprefix("source_file=").strip()
    if "/data/" in value:
        return value.split("/data/")[0].rsplit("/", 1)[-1]
    return value.rsplit("/", 1)[-1] or "unknown"


CONCURRENCY_BANDS = ("c<=8", "c<=32", "c<=128", "c>128")


def concurrency_band(concurrency: int) -> str:
    for band, bound in zip(CONCURRENCY_BANDS, (8, 32, 128), strict=False):
        if concurrency <= bound:
            return band
    return CONCURRENCY_BANDS[-1]


def print_residuals(rows: list[dict[str, str]], comparisons: list[Comparison]) -> None:
    """Median predicted/measured TTFT (in-sample) per (source, backend, concurrency band)."""
    by_id = {row.get("id", ""): row for row in rows}
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for c in comparisons:
        row = by_id[c.row_id]
        band = concurrency_band(int(float(row.get("batch_size") or 0)))
        groups[measurement_source(row), c.key[2], band].append(c.predicted_ttft_ms / c.measured_ttft_ms)
    print()
    print(f"{'source':<28}{'backend':<8}{'clients':<9}{'rows':>5}{'TTFT pred/meas':>16}")
    order = sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], CONCURRENCY_BANDS.index(kv[0][2])))
    for (source, backend, band), ratios in order:
        print(f"{source[:27]:<28}{backend:<8}{band:<9}{len(ratios):>5}{statistics.median(ratios):>16.2f}")


def implied_burst_weight(row: dict[str, str]) -> tuple[str, float] | None:
    """(backend, w) with ``measured = steady + w * (burst - steady)``: how much of the first wave's burst
    (every client's prompt queued at once) the row's mean TTFT carries. The estimator assumes 1/8 (eight
    requests per client); a harness whose clients stay in phase shows more, one that staggers them less.
    None: not replayable, prefill-first (wave) scheduling, or a burst no longer than the steady state."""
    try:
        engine, clients, isl, osl = engine_for_row(row)
        steady = estimate_closed_loop(engine, clients, isl, osl, waves=0.0).ttft_ms
        burst = estimate_closed_loop(engine, clients, isl, osl, waves=1.0).ttft_ms
        measured = float(row["silicon_ttft_ms"])
    except (PlanningError, ValueError, KeyError):
        return None
    if engine.backend.lockstep == "wave" or burst - steady < 1.0:
        return None
    return engine.backend.name, (measured - steady) / (burst - steady)


def print_burst_weights(rows: list[dict[str, str]]) -> None:
    """Quartiles of the implied first-wave weight per (source, backend, model, concurrency band)."""
    groups: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for row in rows:
        implied = implied_burst_weight(row)
        if implied is None:
            continue
        band = concurrency_band(int(float(row.get("batch_size") or 0)))
        model = row.get("model_path", "").rsplit("/", 1)[-1]
        groups[measurement_source(row), implied[0], model, band].append(implied[1])
    print()
    print(f"{'source':<24}{'backend':<8}{'model':<22}{'clients':<9}{'rows':>5}{'w q1':>8}{'median':>8}{'q3':>8}")
    order = sorted(groups.items(), key=lambda kv: (*kv[0][:3], CONCURRENCY_BANDS.index(kv[0][3])))
    for (source, backend, model, band), ws in order:
        q1, med, q3 = statistics.quantiles(ws, n=4) if len(ws) > 1 else (ws[0], ws[0], ws[0])
        print(f"{source[:23]:<24}{backend:<8}{model[:21]:<22}{band:<9}{len(ws):>5}{q1:>8.3f}{med:>8.3f}{q3:>8.3f}")


def implied_prefill_share(row: dict[str, str]) -> float | None:
    """The share of the GPUs' dense peak that the row's prompt tokens need for their weight GEMMs
    alone (2 x active parameters per token; attention and decode come on top), at the throughput the
    row measured (Little's law over the closed loop: C / (TTFT + OSL x TPOT)). None: not replayable."""
    try:
        engine, clients, isl, osl = engine_for_row(row)
        ttft, tpot = float(row["silicon_ttft_ms"]) / 1e3, float(row["silicon_tpot_ms"]) / 1e3
    except (PlanningError, ValueError, KeyError):
        return None
    if ttft <= 0 or tpot <= 0:
        return None
    rate = clients / (ttft + osl * tpot)
    flops = rate * isl * 2.0 * engine.model.active_params
    peak = engine.gpus * engine.gpu.tflops[engine.gpu.compute_dtype(engine.weights)] * 1e12
    return flops / peak


def print_implausible(rows: list[dict[str, str]], share: float) -> None:
    """Rows no cost model without a prefix cache can match (the data does not say whether one was hit)."""
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        value = implied_prefill_share(row)
        if value is None:
            continue
        key = (row.get("model_path", "").rsplit("/", 1)[-1], row.get("system", ""), row.get("backend", ""))
        groups[key][1] += 1
        groups[key][0] += value > share
    print()
    print(f"rows whose prompts alone need > {share:.0%} of dense peak (prefix-cache hits, or a harness artefact):")
    print(f"{'model':<36}{'gpu':<11}{'backend':<8}{'rows':>6}{'implausible':>13}")
    for (model, gpu, backend), (bad, total) in sorted(groups.items()):
        if bad:
            print(f"{model[:35]:<36}{gpu:<11}{backend:<8}{total:>6}{bad:>13}")
    print(f"in all: {sum(b for b, _ in groups.values())} of {sum(t for _, t in groups.values())} rows")


if __name__ == "__main__":
    raise SystemExit(main())
