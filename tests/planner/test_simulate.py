"""The discrete-event simulator checks the planner's queueing maths on the same cost model."""

from __future__ import annotations

import pytest

from disagg.planner.catalog import PlanningError
from disagg.planner.search import plan
from disagg.planner.simulate import simulate
from disagg.planner.sizing import Workload

CASE = Workload(isl=4096, osl=300, rate=20.0, ttft_s=1.0, itl_s=0.05, percentile=90)


def test_simulation_agrees_with_plan_within_10_percent() -> None:
    result = plan("llama-3.1-70b", "h100-sxm", CASE, crossover=False)
    for cand in (result.chosen, result.runner_up):
        assert cand is not None
        prefill, decode = result.engines(cand)
        sim = simulate(cand, prefill, decode, CASE, result.fabric, requests=3000, seed=7)
        assert sim.ttft_p_ms == pytest.approx(cand.ttft_ms, rel=0.10), cand.summary()
        assert sim.itl_p_ms == pytest.approx(cand.itl_ms, rel=0.10), cand.summary()


def test_simulation_is_seeded() -> None:
    result = plan("llama-3.1-8b", "h100-sxm", Workload(1024, 128, 30.0, 1.0, 0.05), crossover=False)
    prefill, decode = result.engines()
    a = simulate(result.chosen, prefill, decode, result.workload, result.fabric, requests=400, seed=3)
    b = simulate(result.chosen, prefill, decode, result.workload, result.fabric, requests=400, seed=3)
    assert a == b
    assert a.requests == 360


def test_overload_shows_in_the_simulation() -> None:
    result = plan("llama-3.1-8b", "h100-sxm", Workload(2048, 128, 10.0, 1.0, 0.05), crossover=False, mode="aggregated")
    prefill, decode = result.engines()
    heavy = Workload(2048, 128, 200.0, 1.0, 0.05)
    sim = simulate(result.chosen, prefill, decode, heavy, result.fabric, requests=1500, seed=1)
    assert sim.ttft_p_ms > 3 * result.chosen.ttft_ms


def test_too_few_requests() -> None:
    result = plan("llama-3.1-8b", "h100-sxm", Workload(1024, 128, 1.0, 1.0, 0.05), crossover=False)
    prefill, decode = result.engines()
    with pytest.raises(PlanningError):
        simulate(result.chosen, prefill, decode, result.workload, requests=5)
