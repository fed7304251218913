"""The few backend constants fitted to measured runs, and leave-one-group-out cross-validation.

Everything in the cost model is a datasheet figure or a per-generation efficiency (catalog.py), except
three constants per serving backend that no datasheet gives:

* ``request_overhead_ms``: the time to first token spent outside the GPU (HTTP, tokenisation, the
  streamed first chunk), which depends on the serving front end and the benchmark harness;
* ``moe_gemm_eta``: how close the engine's grouped MoE GEMMs come to a dense GEMM (kernel class);
* ``eager_layer_us``: the host time to dispatch one layer's operators in a step that runs outside a CUDA
  graph (any step carrying prefill tokens), which depends on how the engine's model code runs (PyTorch
  eager, torch.compile, C++).

They are fitted per backend on the rows given (bounded grids, a few seconds), starting from physical
priors that also stand in for a backend with no rows in the training set. One thing does carry over to such
a backend: the eager dispatch time is the same kind of host work in every engine (PyTorch operators issued
from Python on the same CPUs), so the factor by which the measured engines' fitted values exceed their own
priors scales the unseen engine's prior too (``transferred_eager_us``). The request overhead (each engine's
own front end and the harness) and the MoE kernel efficiency (each engine's own kernels) do not transfer.
``cross_validate`` holds out each GPU, each model and each backend in turn, fits on the rest and scores the
held-out rows, so its figures say how the planner does on hardware, models and engines it was not fitted on.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from disagg.planner.catalog import BACKEND_PROFILES, BackendProfile, get_backend, get_gpu, get_model
from disagg.planner.measured import Accuracy, Comparison, accuracy, compare_rows
from disagg.planner.queueing import sample_percentile
from disagg.planner.uncertainty import family

PRIORS: dict[str, tuple[float, float, float]] = {
    # (request overhead ms, MoE grouped-GEMM efficiency, eager host time per layer µs). Front ends: vLLM's
    # OpenAI server ~20-40 ms (tokenise, schedule, detokenise the first chunk), SGLang similar; TensorRT-LLM's
    # trtllm-serve the same order. Grouped GEMMs: Triton fused_moe ~0.5 of a dense cuBLAS/CUTLASS GEMM at
    # prefill sizes, CUTLASS grouped GEMM ~0.8. Eager dispatch: ~20 operators per decoder layer at ~10-15 µs
    # each in a PyTorch-eager model (SGLang, TensorRT-LLM's PyTorch flow), a third of that for vLLM's
    # torch.compile'd graph (Inductor fuses the element-wise operators and dispatches from C++).
    "vllm": (30.0, 0.5, 100.0),
    "sglang": (40.0, 0.5, 250.0),
    "trtllm": (30.0, 0.8, 250.0),
}
OVERHEAD_GRID_MS = tuple(float(v) for v in range(5, 155, 5))
"""Physically plausible front-end + harness overheads (a grid edge that wins says the model misses something):
from a loopback HTTP round trip with tokenisation and the first detokenised chunk (~5 ms) to a slow front end."""
MOE_ETA_GRID = (0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0)
"""Grouped expert GEMMs against a dense GEMM: from quarter-filled 128-row tiles (32 tokens per expert, block
scales loaded in the K loop) to a dense GEMM's own efficiency."""
EAGER_GRID_US = (0.0, 100.0, 200.0, 300.0, 450.0, 600.0)
"""Host time per layer of an eager step: from fully hidden (0) to ~30 operators of 20 µs (0.6 ms)."""


@dataclass(frozen=True)
class Fit:
    profiles: dict[str, BackendProfile]
    rows: dict[str, int]
    """Training rows per backend (0: the prior was kept)."""


def _balanced(comps: Sequence[Comparison], error: Callable[[Comparison], float]) -> float:
    """Mean over (model, GPU) settings of the median error in each: every setting counts once, however many
    rows its sweep has, so a constant is not pulled to whichever harness ran the longest sweep."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for c in comps:
        groups[c.key[0], c.key[1]].append(error(c))
    if not groups:
        return float("inf")
    return statistics.fmean(statistics.median(v) for v in groups.values())


def _median_error(comps: Sequence[Comparison]) -> float:
    return _balanced(comps, lambda c: c.ttft_error) + _balanced(comps, lambda c: c.tpot_error)


def _is_moe(row: Mapping[str, str]) -> bool:
    try:
        return get_model(row["model_path"]).is_moe
    except (ValueError, KeyError):
        return False


def _backend(row: Mapping[str, str]) -> str | None:
    try:
        return get_backend(row.get("backend", "")).name
    except ValueError:
        return None


def fit(rows: Sequence[dict[str, str]], moe_stride: int = 2, eager_stride: int = 2) -> Fit:
    """Fit each backend's three constants on ``rows``: the eager host time per layer (with the overhead that
    suits each trial value) on every ``eager_stride``-th row, the MoE efficiency on every ``moe_stride``-th MoE
    row (strides keep the search bounded), then the overhead on all of that backend's rows."""
    by_backend: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        name = _backend(row)
        if name is not None:
            by_backend[name].append(row)
    profiles: dict[str, BackendProfile] = {}
    counts: dict[str, int] = {}
    for name, base in BACKEND_PROFILES.items():
        overhead, eta, eager = PRIORS[name]
        prior = dataclasses.replace(base, request_overhead_ms=overhead, moe_gemm_eta=eta, eager_layer_us=eager)
        mine = by_backend.get(name, [])
        counts[name] = len(mine)
        if not mine:
            profiles[name] = prior
            continue
        scored_eager = []
        for value in EAGER_GRID_US:
            trial = dataclasses.replace(prior, eager_layer_us=value)
            comps, _ = compare_rows(mine[::eager_stride], backends={**profiles, name: trial})
            shift = _fit_overhead(comps, trial.request_overhead_ms) - trial.request_overhead_ms
            err = _balanced(comps, _shifted_ttft_error(shift)) + _balanced(comps, lambda c: c.tpot_error)
            scored_eager.append((err, value, trial.request_overhead_ms + shift))
        _, eager, overhead = min(scored_eager)
        prior = dataclasses.replace(prior, eager_layer_us=eager, request_overhead_ms=overhead)
        moe_rows = [r for r in mine if _is_moe(r)][::moe_stride]
        if moe_rows:
            scored = []
            for value in MOE_ETA_GRID:
                trial = dataclasses.replace(prior, moe_gemm_eta=value)
                comps, _ = compare_rows(moe_rows, backends={**profiles, name: trial})
                scored.append((_median_error(comps), value))
            prior = dataclasses.replace(prior, moe_gemm_eta=min(scored)[1])
        comps, _ = compare_rows(mine, backends={**profiles, name: prior})
        profiles[name] = dataclasses.replace(prior, request_overhead_ms=_fit_overhead(comps, prior.request_overhead_ms))
    measured = {n: (p.eager_layer_us, PRIORS[n][2]) for n, p in profiles.items() if counts[n]}
    for name in [n for n in profiles if not counts[n]]:
        eager = transferred_eager_us(PRIORS[name][2], measured)
        profiles[name] = dataclasses.replace(profiles[name], eager_layer_us=eager)
    return Fit(profiles, counts)


def transferred_eager_us(prior_us: float, measured: Mapping[str, tuple[float, float]]) -> float:
    """The eager host time per layer for an engine without measured rows: its physical prior scaled by the
    geometric mean of (fitted / prior) over the engines that have rows (``measured``: name -> (fitted,
    prior)), kept on the fitting grid. A fitted 0 (fully hidden) counts as the grid's smallest non-zero
    value, so one engine that hides its dispatch does not zero the others. With no measured engine the
    prior stands."""
    if not measured:
        return prior_us
    floor = min(v for v in EAGER_GRID_US if v > 0)
    logs = [math.log(max(fitted, floor) / max(prior, floor)) for fitted, prior in measured.values()]
    value = prior_us * math.exp(statistics.fmean(logs))
    return min(max(value, min(EAGER_GRID_US)), max(EAGER_GRID_US))


def _shifted_ttft_error(shift_ms: float) -> Callable[[Comparison], float]:
    return lambda c: abs(c.predicted_ttft_ms + shift_ms - c.measured_ttft_ms) / c.measured_ttft_ms


def _fit_overhead(comps: Sequence[Comparison], current_ms: float) -> float:
    """The overhead minimising the (setting-balanced) median TTFT error. It adds to every TTFT (the fixed
    point hardly moves for a few tens of ms), so the predictions are shifted rather than recomputed."""
    if not comps:
        return current_ms
    best = (float("inf"), current_ms)
    for value in OVERHEAD_GRID_MS:
        err = _balanced(comps, _shifted_ttft_error(value - current_ms))
        best = min(best, (err, value))
    return best[1]


GroupKey = Callable[[Comparison], str]
GROUPINGS: dict[str, GroupKey] = {
    "gpu": lambda c: c.key[1],
    "model": lambda c: c.key[0],
    "backend": lambda c: c.key[2],
}


@dataclass(frozen=True)
class HeldOut:
    grouping: str
    group: str
    accuracy: Accuracy
    profiles: dict[str, BackendProfile]


@dataclass(frozen=True)
class CrossValidation:
    folds: list[HeldOut]
    pooled: Accuracy
    """Every row scored by the fold that held it out, once per grouping, pooled."""
    by_grouping: dict[str, Accuracy]
    held_out: dict[str, list[Comparison]]
    """Per grouping, every row as predicted by the fold that held it out."""


def cross_validate(
    rows: Sequence[dict[str, str]], groupings: Sequence[str] = ("gpu", "model", "backend")
) -> CrossValidation:
    """Leave one group out: for each GPU, model and backend, fit on every other group's rows and score the
    held-out ones (rows the estimator cannot express are left out, as in the all-rows figures)."""
    reference, _ = compare_rows(rows)
    by_id = {c.row_id: c for c in reference}
    keyed = [(row, by_id.get(row.get("id", ""))) for row in rows]
    supported = [(row, c) for row, c in keyed if c is not None]
    folds: list[HeldOut] = []
    pooled: list[Comparison] = []
    per_grouping: dict[str, list[Comparison]] = defaultdict(list)
    for grouping in groupings:
        key = GROUPINGS[grouping]
        for group in sorted({key(c) for _, c in supported}):
            train = [row for row, c in supported if key(c) != group]
            test = [row for row, c in supported if key(c) == group]
            fitted = fit(train)
            comps, _ = compare_rows(test, backends=fitted.profiles)
            folds.append(HeldOut(grouping, group, accuracy(comps), fitted.profiles))
            pooled.extend(comps)
            per_grouping[grouping].extend(comps)
    return CrossValidation(
        folds, accuracy(pooled), {g: accuracy(v) for g, v in per_grouping.items()}, dict(per_grouping)
    )


LOGO_GOALS = {"ttft": 0.20, "tpot": 0.12}
"""The leave-one-group-out median errors the planner is held to."""


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    within_goal: float
    """Share of the resamples whose median meets the goal (at or below it)."""


@dataclass(frozen=True)
class SettingBootstrap:
    settings: int
    """Measured settings resampled (one (model, GPU, backend) sweep each)."""
    draws: int
    level: float
    intervals: dict[str, Interval]
    """Per metric (``ttft``, ``tpot``): the ``level`` interval of the pooled median."""


def setting_bootstrap(
    held_out: Mapping[str, Sequence[Comparison]],
    draws: int = 2000,
    level: float = 0.9,
    goals: Mapping[str, float] | None = None,
    seed: int = 0,
) -> SettingBootstrap:
    """How much the pooled held-out medians owe to which sweeps happen to be in the file: resample the measured
    settings (one (model, GPU, backend) sweep each, with every fold's predictions of it) with replacement and
    take the ``level`` percentile interval of the pooled TTFT and TPOT medians. Settings, not rows, are drawn
    because the rows of one sweep share a harness and an engine build, so their errors move together; a row
    bootstrap would report the interval of a file with a thousand independent settings. ``goals``: the median
    each metric is held to (default ``LOGO_GOALS``)."""
    goals = dict(LOGO_GOALS if goals is None else goals)
    by_setting: dict[tuple[str, str, str], list[Comparison]] = defaultdict(list)
    for comps in held_out.values():
        for c in comps:
            by_setting[c.key].append(c)
    settings = [by_setting[k] for k in sorted(by_setting)]
    if not settings:
        raise ValueError("no held-out predictions to resample")
    rng = random.Random(seed)  # noqa: S311 - a reproducible resample, not a secret
    medians: dict[str, list[float]] = {"ttft": [], "tpot": []}
    for _ in range(draws):
        drawn = [c for _ in settings for c in settings[rng.randrange(len(settings))]]
        medians["ttft"].append(statistics.median(c.ttft_error for c in drawn))
        medians["tpot"].append(statistics.median(c.tpot_error for c in drawn))
    tail = (1.0 - level) / 2.0
    intervals = {
        metric: Interval(
            sample_percentile(values, tail),
            sample_percentile(values, 1.0 - tail),
            sum(v <= goals[metric] for v in values) / len(values),
        )
        for metric, values in medians.items()
    }
    return SettingBootstrap(len(settings), draws, level, intervals)


def error_bands(reference: Sequence[Comparison], cv: CrossValidation) -> dict[str, Any]:
    """The content of ``data/error_bands.json`` (see disagg.planner.uncertainty): coverage of the measured
    rows and, for dense and MoE models, the median errors in-sample, with the GPU held out and with the
    model held out."""

    def band(comps: Sequence[Comparison]) -> dict[str, float]:
        acc = accuracy(list(comps))
        return {"ttft": round(acc.ttft_median, 3), "tpot": round(acc.tpot_median, 3), "rows": acc.rows}

    def moe(c: Comparison) -> bool:
        return get_model(c.key[0]).is_moe

    bands: dict[str, dict[str, dict[str, float]]] = {}
    for kind, want in (("dense", False), ("moe", True)):
        bands[kind] = {
            "in_sample": band([c for c in reference if moe(c) == want]),
            "gpu_held_out": band([c for c in cv.held_out.get("gpu", []) if moe(c) == want]),
            "model_held_out": band([c for c in cv.held_out.get("model", []) if moe(c) == want]),
        }
    gpus = sorted({c.key[1] for c in reference})
    return {
        "generated_by": "python bench/planner_accuracy.py --write-bands",
        "measured_gpus": gpus,
        "measured_generations": sorted({get_gpu(g).generation for g in gpus}),
        "measured_families": sorted({family(get_model(c.key[0])) for c in reference}),
        "bands": bands,
    }
