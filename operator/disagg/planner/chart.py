"""The crossover chart: throughput per GPU and TTFT vs prompt length, aggregated vs disaggregated.

matplotlib is an optional extra (``pip install 'disagg[plot]'``); it is imported only when drawing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace

from disagg.api.spec import Mode
from disagg.planner.catalog import PlanningError
from disagg.planner.plan import ServingMode
from disagg.planner.search import CROSSOVER_GRID, PlanResult


@dataclass(frozen=True)
class CrossoverPoint:
    isl: int
    mode: ServingMode
    gpus: int
    tokens_per_s_per_gpu: float
    ttft_ms: float
    simulated_ttft_ms: float
    meets_slo: bool


def crossover_points(
    args: argparse.Namespace,
    planner: Callable[..., PlanResult],
    requests: int,
    seed: int,
    grid: tuple[int, ...] = CROSSOVER_GRID,
) -> list[CrossoverPoint]:
    """Plan (and simulate) both modes at every prompt length of ``grid``; other arguments as given."""
    from disagg.planner.simulate import simulate

    points: list[CrossoverPoint] = []
    for isl in grid:
        sub = argparse.Namespace(**{**vars(args), "isl": isl})
        for mode in (ServingMode.AGGREGATED, ServingMode.DISAGGREGATED):
            try:
                result = planner(sub, crossover=False, mode=Mode(mode.value))
            except PlanningError:
                continue
            c = result.chosen
            pe, de = result.engines(c)
            sim = simulate(c, pe, de, replace(result.workload), result.fabric, requests, seed)
            points.append(
                CrossoverPoint(isl, mode, c.gpus, result.tokens_per_s_per_gpu, c.ttft_ms, sim.ttft_p_ms, c.meets_slo)
            )
    return points


def draw_crossover(points: list[CrossoverPoint], path: str, title: str = "") -> None:
    """Write the two-panel PNG; PlanningError when matplotlib is not installed."""
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise PlanningError("drawing charts needs matplotlib: pip install 'disagg[plot]'") from exc
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {ServingMode.AGGREGATED: ("tab:blue", "o"), ServingMode.DISAGGREGATED: ("tab:orange", "s")}
    for mode, (color, marker) in styles.items():
        pts = [p for p in points if p.mode == mode]
        xs = [p.isl for p in pts]
        left.plot(xs, [p.tokens_per_s_per_gpu for p in pts], marker=marker, color=color, label=mode)
        right.plot(xs, [p.ttft_ms for p in pts], marker=marker, color=color, label=f"{mode} (plan)")
        right.plot(
            xs, [p.simulated_ttft_ms for p in pts], linestyle="--", marker="x", color=color, label=f"{mode} (simulated)"
        )
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt length (tokens)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    left.set_ylabel("output tokens/s per GPU (at SLO)")
    right.set_ylabel("p90 TTFT (ms)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
