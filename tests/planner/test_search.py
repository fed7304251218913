"""Open-loop planning, mode decision, crossover and the operator entry point."""

from __future__ import annotations

from typing import Any

import pytest

from disagg.api.spec import DisaggregatedModelSpec
from disagg.planner.catalog import PlanningError, get_gpu, get_model
from disagg.planner.from_spec import plan_for_spec
from disagg.planner.queueing import erlang_c, md1_mean_wait, md1_wait_percentile, mdc_wait_percentile
from disagg.planner.search import plan
from disagg.planner.sizing import Fabric, Workload
from disagg.planner.uncertainty import error_band
from tests.planner import LLAMA_8B_SHAPE

CASE = Workload(isl=4096, osl=300, rate=20.0, ttft_s=1.0, itl_s=0.05, percentile=90)


def test_acceptance_case_meets_slos() -> None:
    """(How fast it plans is measured by `make bench-planner`, not asserted here.)"""
    result = plan("llama-3.1-70b", "h100-sxm", CASE)
    c = result.chosen
    assert c.meets_slo
    assert c.ttft_ms <= 1000
    assert c.itl_ms <= 50
    assert result.runner_up is not None
    assert result.runner_up.mode != c.mode
    assert c.gpus >= 20  # 20 req/s of 4K prompts is ~1.2e16 FLOP/s of prefill alone
    assert "Runner-up" in result.reason
    assert "\n" not in result.reason


@pytest.mark.parametrize(("isl", "osl"), [(128, 64), (256, 150), (480, 190)])
def test_seed_crossover_short_requests_stay_aggregated(isl: int, osl: int) -> None:
    for rate in (5.0, 40.0):
        wl = Workload(isl=isl, osl=osl, rate=rate, ttft_s=1.0, itl_s=0.05)
        assert plan("llama-3.1-70b", "h100-sxm", wl, weights="fp8").chosen.mode == "aggregated"


def test_crossover_is_above_the_seed_threshold() -> None:
    wl = Workload(isl=2048, osl=150, rate=20.0, ttft_s=1.0, itl_s=0.05)
    result = plan("llama-3.1-70b", "h100-sxm", wl)
    assert result.crossover_isl is None or result.crossover_isl >= 512


def test_tight_itl_favours_disaggregation() -> None:
    # TaiChi / DistServe: tight TPOT targets favour disaggregation for long prompts.
    wl = Workload(isl=8192, osl=512, rate=10.0, ttft_s=3.0, itl_s=0.025)
    result = plan("llama-3.1-70b", "h100-sxm", wl, weights="fp8")
    assert result.chosen.mode == "disaggregated"
    assert result.chosen.decode_tp >= result.chosen.prefill_tp


def test_tcp_fabric_penalises_disaggregation() -> None:
    rdma = plan("llama-3.1-70b", "h100-sxm", CASE, mode="disaggregated", crossover=False)
    tcp = plan("llama-3.1-70b", "h100-sxm", CASE, mode="disaggregated", fabric=Fabric("tcp"), crossover=False)
    assert tcp.chosen.kv_transfer_ms > 10 * rdma.chosen.kv_transfer_ms


def test_forced_modes_and_tp() -> None:
    dis = plan("llama-3.1-70b", "h100-sxm", CASE, mode="disaggregated", prefill_tp=4, decode_tp=8, crossover=False)
    assert (dis.chosen.mode, dis.chosen.prefill_tp, dis.chosen.decode_tp) == ("disaggregated", 4, 8)
    agg = plan("llama-3.1-70b", "h100-sxm", CASE, mode="aggregated", crossover=False)
    assert agg.chosen.mode == "aggregated"
    assert agg.chosen.decode_replicas == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpu": "x100"}, "unknown GPU"),
        ({"model": "llama-3.1-405b", "gpu": "l40s"}, "does not fit"),
        ({"workload": Workload(4096, 300, 1.0, ttft_s=0.01, itl_s=0.05)}, "below the physical floor"),
        ({"workload": Workload(4096, 300, 1.0, ttft_s=2.0, itl_s=0.0005)}, "ITL target"),
        ({"mode": "hybrid"}, "unknown mode"),
    ],
)
def test_bad_input_is_a_one_line_error(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"model": "llama-3.1-70b", "gpu": "h100-sxm", "workload": CASE, **kwargs}
    with pytest.raises(PlanningError, match=message) as info:
        plan(args.pop("model"), args.pop("gpu"), args.pop("workload"), **args)
    assert "\n" not in str(info.value)


def test_zero_rate_is_rejected() -> None:
    with pytest.raises(PlanningError, match="rate must be > 0"):
        Workload(isl=1024, osl=128, rate=0.0, ttft_s=1.0, itl_s=0.05)


def test_queueing_formulas() -> None:
    assert md1_mean_wait(0.5, 1.0) == pytest.approx(0.5)
    assert md1_wait_percentile(0.05, 1.0, 0.9) == 0.0  # rho below the tail share: most never wait
    assert md1_wait_percentile(0.9, 1.0, 0.9) > md1_wait_percentile(0.5, 1.0, 0.9)
    assert erlang_c(1, 0.7) == pytest.approx(0.7)
    assert 0 < erlang_c(8, 6.0) < 1
    assert mdc_wait_percentile(10.0, 0.5, 8, 0.9) < mdc_wait_percentile(10.0, 0.5, 6, 0.9)


def _spec(**over: Any) -> DisaggregatedModelSpec:
    body: dict[str, Any] = {
        "model": {"name": "meta-llama/Llama-3.1-70B", "preset": "llama-3.1-70b", "dtype": "fp8"},
        "workload": {"inputTokens": {"mean": 8192}, "outputTokens": {"mean": 512}, "requestRate": 10},
        "slo": {"ttft": "3s", "itl": "25ms"},
        "accelerator": {"type": "h100-sxm"},
    }
    body.update(over)
    return DisaggregatedModelSpec.model_validate(body)


def test_plan_for_spec_resolves_auto_and_fills_open_fields() -> None:
    p = plan_for_spec(_spec())
    assert p.source == "planner"
    assert p.mode == "disaggregated"
    assert p.decode is not None
    assert p.decode.tensor_parallel >= p.prefill.tensor_parallel
    assert p.predicted_ttft_ms is not None
    assert p.predicted_ttft_ms <= 3000
    assert p.predicted_itl_ms is not None
    assert p.predicted_itl_ms <= 25
    assert p.slo_met is True
    assert p.reason
    assert p.decode_max_batch is not None
    assert p.decode_max_batch > 0
    assert isinstance(p.disagg_threshold, int)


def test_plan_for_spec_respects_the_spec() -> None:
    spec = _spec(
        mode="disaggregated",
        prefill={"parallelism": {"tensor": 2}, "replicas": {"min": 1, "max": 2}},
        decode={"parallelism": {"tensor": 8}, "replicas": {"min": 3}},
        router={"disaggThreshold": 1000},
    )
    p = plan_for_spec(spec)
    assert p.prefill.tensor_parallel == 2
    assert p.decode is not None
    assert p.decode.tensor_parallel == 8
    assert p.prefill.replicas <= 2
    assert p.prefill.max_replicas == 2
    assert p.decode.replicas >= 3
    assert p.disagg_threshold == 1000
    assert p.slo_met is False  # two prefill replicas cannot carry 10 req/s of 8K prompts at TP2


def test_plan_for_spec_aggregated_and_errors() -> None:
    p = plan_for_spec(_spec(mode="aggregated"))
    assert p.mode == "aggregated"
    assert p.decode is None
    with pytest.raises(PlanningError, match="unknown GPU"):
        plan_for_spec(_spec(accelerator={"type": "tpu-v5"}))
    with pytest.raises(PlanningError, match="preset or a config"):
        plan_for_spec(_spec(model={"name": "x"}))
    custom = _spec(
        model={
            "name": "x",
            "config": LLAMA_8B_SHAPE,
        }
    )
    assert plan_for_spec(custom).source == "planner"


def test_plan_for_spec_accepts_cluster_gpu_names() -> None:
    """spec.accelerator.type goes through the catalog's one normaliser: a GPU Feature Discovery product
    plans exactly as the catalog name does."""
    catalog = plan_for_spec(_spec(accelerator={"type": "h100-sxm"}))
    product = plan_for_spec(_spec(accelerator={"type": "NVIDIA-H100-80GB-HBM3"}))
    assert product == catalog
    assert plan_for_spec(_spec(accelerator={"type": "B200"})).predicted_ttft_ms is not None


def test_plans_state_their_cross_validated_error_and_coverage() -> None:
    wl = Workload(isl=4096, osl=300, rate=20.0, ttft_s=1.0, itl_s=0.05, percentile=90)
    seen = plan("llama-3.1-70b", "h100-sxm", wl, crossover=False)
    assert seen.error_band is not None
    assert seen.error_band.unmeasured == ()
    assert "in-sample" in seen.error_band.basis
    assert "Expected error: about" in seen.reason
    assert "No measured rows" not in seen.reason
    new_gpu = plan("llama-3.1-70b", "B200", wl, crossover=False)
    assert new_gpu.error_band is not None
    assert new_gpu.error_band.unmeasured == ("GPU b200, blackwell generation",)
    assert "held-out GPU" in new_gpu.error_band.basis
    assert "No measured rows for GPU b200" in new_gpu.reason
    assert new_gpu.as_dict()["error_band"]["ttft"] == new_gpu.error_band.ttft > 0
    # A model family without measured rows (DeepSeek-V3: MLA + MoE) on a measured GPU.
    ds = error_band(get_model("deepseek-v3"), get_gpu("h200-sxm"))
    assert ds.unmeasured == ("model family 'deepseek_v3'",)
    assert "held-out moe model" in ds.basis
    both = error_band(get_model("deepseek-v3"), get_gpu("b300"))
    assert len(both.unmeasured) == 2
    assert both.ttft >= ds.ttft


def test_a_floor_above_the_planned_count_is_explained_in_the_reason() -> None:
    """The rack-packed sample's decode floor is 2 while the planner needs 1: the ratio in status
    (what runs) and the reason (the planner's own count) must not read as a contradiction."""
    import yaml

    from tests.conftest import ROOT

    body = yaml.safe_load((ROOT / "manifests" / "samples" / "qwen3-32b-rack-packed.yaml").read_text())
    spec = DisaggregatedModelSpec.model_validate(body["spec"])
    result = plan_for_spec(spec)
    assert result.decode is not None
    assert result.decode.replicas == 2
    assert "replicas.min raises the planned count (decode 1 -> 2)" in result.reason
    unraised = DisaggregatedModelSpec.model_validate(
        {**body["spec"], "decode": {**body["spec"]["decode"], "replicas": {"min": 1, "max": 4}}}
    )
    assert "replicas.min raises" not in plan_for_spec(unraised).reason
