"""The fitted backend constants and the leave-one-group-out cross-validation (calibrate.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from disagg.planner import calibrate
from disagg.planner.measured import Comparison, read_rows

CSV = Path(__file__).resolve().parents[2] / "data" / "serving-measurements" / "measured-dev.csv"


def _rows(backend: str, model: str = "Qwen/Qwen3-32B", every: int = 3) -> list[dict[str, str]]:
    rows = [r for r in read_rows(CSV) if r["backend"] == backend and r["model_path"] == model and r["mode"] == "agg"]
    return rows[::every]


def test_fit_stays_on_its_grids_and_keeps_priors_without_rows() -> None:
    fitted = calibrate.fit(_rows("vllm"))
    assert fitted.rows["vllm"] > 0
    assert fitted.rows["sglang"] == fitted.rows["trtllm"] == 0
    vllm = fitted.profiles["vllm"]
    assert vllm.request_overhead_ms in calibrate.OVERHEAD_GRID_MS
    assert vllm.eager_layer_us in calibrate.EAGER_GRID_US
    measured = {"vllm": (vllm.eager_layer_us, calibrate.PRIORS["vllm"][2])}
    for name in ("sglang", "trtllm"):  # no rows: the physical priors stand in, the eager one scaled like vLLM's
        overhead, eta, eager = calibrate.PRIORS[name]
        profile = fitted.profiles[name]
        assert (profile.request_overhead_ms, profile.moe_gemm_eta) == (overhead, eta)
        assert profile.eager_layer_us == pytest.approx(calibrate.transferred_eager_us(eager, measured))


def test_eager_time_of_an_unseen_engine_scales_its_prior_by_the_measured_engines_factor() -> None:
    # Two measured engines whose fitted values are 2x and 8x their priors: geometric mean 4x.
    assert calibrate.transferred_eager_us(100.0, {"a": (200.0, 100.0), "b": (800.0, 100.0)}) == pytest.approx(400.0)
    # A fitted 0 (dispatch fully hidden) counts as the grid's smallest step, not as "no host time anywhere".
    assert calibrate.transferred_eager_us(100.0, {"a": (0.0, 100.0)}) == pytest.approx(100.0)
    # Kept on the fitting grid, and the prior stands when nothing was measured.
    assert calibrate.transferred_eager_us(250.0, {"a": (600.0, 100.0)}) == max(calibrate.EAGER_GRID_US)
    assert calibrate.transferred_eager_us(250.0, {}) == 250.0


def test_cross_validation_never_fits_on_the_held_out_group(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _rows("vllm") + _rows("sglang")
    seen: list[set[str]] = []
    real_fit = calibrate.fit

    def spy(train: list[dict[str, str]], *args: int) -> calibrate.Fit:
        seen.append({r["backend"] for r in train})
        return real_fit(train, *args)

    monkeypatch.setattr(calibrate, "fit", spy)
    cv = calibrate.cross_validate(rows, groupings=("backend",))
    assert [f.group for f in cv.folds] == ["sglang", "vllm"]
    assert seen == [{"vllm"}, {"sglang"}]  # each fold trained on the other backend only
    # The held-out sglang fold used the sglang prior (no sglang rows in training), and every supported row
    # was scored exactly once in the grouping.
    sglang_fold = cv.folds[0]
    assert sglang_fold.profiles["sglang"].request_overhead_ms == calibrate.PRIORS["sglang"][0]
    assert cv.by_grouping["backend"].rows == len(cv.held_out["backend"]) == sum(f.accuracy.rows for f in cv.folds)
    assert 0 < cv.pooled.ttft_median < 1
    assert 0 < cv.pooled.tpot_median < 1


def _comparison(key: tuple[str, str, str], index: int, ttft_error: float, tpot_error: float) -> Comparison:
    return Comparison(key, f"{key[0]}-{index}", 100.0, 10.0, 100.0 * (1 + ttft_error), 10.0 * (1 - tpot_error))


def test_setting_bootstrap_draws_whole_sweeps() -> None:
    good = [_comparison(("qwen3-32b", "h100-sxm", "vllm"), i, 0.1, 0.05) for i in range(50)]
    bad = [_comparison(("llama-3.1-8b", "h100-sxm", "trtllm"), i, 0.5, 0.2) for i in range(50)]
    spread = calibrate.setting_bootstrap({"gpu": good, "backend": bad}, draws=4000)
    assert (spread.settings, spread.draws) == (2, 4000)
    interval = spread.intervals
    # Two sweeps drawn twice: both good (median 0.1), one of each (0.3) or both bad (0.5); only the first
    # meets the 20% TTFT goal, a quarter of the time. A row bootstrap would sit at 0.3 every time.
    assert interval["ttft"].low == pytest.approx(0.1)
    assert interval["ttft"].high == pytest.approx(0.5)
    assert 0.22 < interval["ttft"].within_goal < 0.28
    assert interval["tpot"].low == pytest.approx(0.05)
    assert interval["tpot"].high == pytest.approx(0.2)
    assert 0.22 < interval["tpot"].within_goal < 0.28  # 12.5% (mixed) misses the 12% goal too


def test_setting_bootstrap_of_one_sweep_is_its_median_and_needs_predictions() -> None:
    only = [_comparison(("qwen3-32b", "h100-sxm", "vllm"), i, 0.05 * (i % 5), 0.01) for i in range(25)]
    interval = calibrate.setting_bootstrap({"model": only}, draws=50, goals={"ttft": 0.05, "tpot": 0.12}).intervals
    assert interval["ttft"].low == interval["ttft"].high == pytest.approx(0.1)
    assert interval["ttft"].within_goal == 0.0
    assert interval["tpot"].within_goal == 1.0
    with pytest.raises(ValueError, match="no held-out predictions"):
        calibrate.setting_bootstrap({"gpu": []})
