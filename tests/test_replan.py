"""Live re-planning: observed traffic moves the floors, bounded corrections, one step down at a time."""

from __future__ import annotations

import re
from typing import Any

import pytest

from disagg.api.spec import DisaggregatedModelSpec
from disagg.api.status import ObservedWorkload, ReplanStatus
from disagg.planner.plan import Plan
from disagg.planner.replan import apply_floors, corrected_spec, replan
from disagg.planner.resolve import resolve_plan
from disagg.reconcile import reconcile
from disagg.scaling import Queries, Signals, WorkloadQueries, workload_queries
from disagg.settings import OperatorSettings
from tests.conftest import ROOT, MemoryCluster, load

LLAMA = ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml"


def llama_spec(**changes: Any) -> DisaggregatedModelSpec:
    raw = load(LLAMA)["spec"]
    raw["prefill"]["replicas"] = {"min": 1, "max": 12}
    raw["decode"]["replicas"] = {"min": 1, "max": 6}
    raw.update(changes)
    return DisaggregatedModelSpec.model_validate(raw)


def plan_of(spec: DisaggregatedModelSpec) -> Plan:
    plan = resolve_plan(spec).plan
    assert plan is not None
    return plan


def planner(spec: DisaggregatedModelSpec) -> Plan | None:
    return resolve_plan(spec).plan


def test_more_traffic_raises_floors_at_once() -> None:
    spec = llama_spec()
    running = plan_of(spec)
    observed = ObservedWorkload(request_rate=60.0, input_tokens=4096, output_tokens=300, ttft_ms=None, itl_ms=None)
    new, record = replan(spec, running, observed, None, planner, "2026-11-28T01:00:00Z")
    assert new.prefill.replicas > running.prefill.replicas
    assert record.prefill_floor == new.prefill.replicas
    assert "prefill floor" in record.decision


def test_less_traffic_lowers_floors_one_step_per_interval() -> None:
    spec = llama_spec()
    running = plan_of(spec)
    start = running.prefill.replicas
    assert start >= 3
    quiet = ObservedWorkload(request_rate=1.0, input_tokens=4096, output_tokens=300)
    first, record = replan(spec, running, quiet, None, planner, "t1")
    assert first.prefill.replicas == start - 1
    second, record2 = replan(spec, first, quiet, record, planner, "t2")
    assert second.prefill.replicas == start - 2
    assert record2.decision.startswith(f"prefill floor {start - 1} -> {start - 2}")


def test_slow_reality_is_corrected_within_bounds() -> None:
    spec = llama_spec()
    running = plan_of(spec)
    assert running.predicted_ttft_ms is not None
    observed = ObservedWorkload(
        request_rate=20.0, input_tokens=4096, output_tokens=300, ttft_ms=running.predicted_ttft_ms * 10
    )
    new, record = replan(spec, running, observed, None, planner, "t")
    assert record.ttft_correction == 2.0  # bounded
    assert new.prefill.replicas >= running.prefill.replicas
    tightened = corrected_spec(spec, observed, 2.0, 1.0)
    assert tightened.slo.ttft == "500ms"
    assert tightened.workload.request_rate == 20.0


def test_no_traffic_keeps_floors() -> None:
    spec = llama_spec()
    running = plan_of(spec)
    new, record = replan(spec, running, ObservedWorkload(), None, planner, "t")
    assert new == running
    assert record.decision == "no observed traffic: floors unchanged"


def test_floors_stay_within_the_spec_bounds() -> None:
    spec = llama_spec(prefill={"replicas": {"min": 1, "max": 6}, "parallelism": {"tensor": 4}})
    running = plan_of(spec)
    flood = ObservedWorkload(request_rate=500.0, input_tokens=4096, output_tokens=300)
    new, _ = replan(spec, running, flood, None, planner, "t")
    assert new.prefill.replicas == 6


def test_apply_floors() -> None:
    running = plan_of(llama_spec())
    record = ReplanStatus(time="t", observed=ObservedWorkload(), prefill_floor=9, decode_floor=2, disagg_threshold=1024)
    new = apply_floors(running, record)
    assert (new.prefill.replicas, new.decode.replicas if new.decode else None, new.disagg_threshold) == (9, 2, 1024)
    assert apply_floors(running, None) == running


def test_kept_floors_follow_a_spec_edit_between_decisions() -> None:
    """A user raises prefill min above the last decision's floor (and lowers decode max below it):
    the rendered floors follow at once, not at the next re-planning decision."""
    spec = llama_spec(
        prefill={"replicas": {"min": 4, "max": 12}, "parallelism": {"tensor": 4}},
        decode={"replicas": {"min": 1, "max": 2}, "parallelism": {"tensor": 4}},
    )
    record = ReplanStatus(time="t", observed=ObservedWorkload(), prefill_floor=3, decode_floor=5)
    new = apply_floors(plan_of(spec), record, spec)
    assert new.prefill.replicas == 4
    assert new.decode is not None
    assert new.decode.replicas == 2
    assert new.decode.max_replicas == 2, "the ceiling is not raised past the spec's max"


def test_workload_queries_use_the_slo_percentile() -> None:
    q = workload_queries(llama_spec(), namespace="ns", name="m")
    assert q.ttft.startswith("histogram_quantile(0.9,")
    assert 'pod=~"m-(decode|prefill-decode)-.+"' in q.request_rate


def test_observed_ttft_adds_the_remote_prefill() -> None:
    """A decode engine's TTFT after a remote prefill is only the KV transfer: the prefill pods'
    TTFT is added, and its regex takes prefill pods but not an aggregated model's pods."""
    q = workload_queries(llama_spec(), namespace="ns", name="m")
    finishing, _, prefill = q.ttft.partition(" + ")
    assert 'pod=~"m-(decode|prefill-decode)-.+"' in finishing
    assert prefill.endswith(">= 0 or vector(0))")
    found = re.search(r'pod=~"([^"]+)"', prefill)
    assert found is not None
    pods = re.compile(found.group(1))  # RE2 and Python agree on this subset; Prometheus anchors it
    assert pods.fullmatch("m-prefill-7d9f8c6b5-x2x4q")
    assert not pods.fullmatch("m-prefill-decode-7d9f8c6b5-x2x4q")
    assert not pods.fullmatch("m-decode-7d9f8c6b5-x2x4q")
    assert not pods.fullmatch("other-prefill-7d9f8c6b5-x2x4q")


class ReplanMetrics:
    def __init__(self, observed: ObservedWorkload) -> None:
        self.observed = observed
        self.calls = 0
        self.queries: list[WorkloadQueries] = []

    def signals(self, queries: Queries, *, at_zero: bool) -> Signals:
        return Signals(demand=1.0, demand_window=1.0, busy_window=1.0)

    def workload(self, queries: WorkloadQueries) -> ObservedWorkload:
        self.calls += 1
        self.queries.append(queries)
        return self.observed


def replanning_model(max_prefill: int = 12) -> MemoryCluster:
    """The 70B sample with re-planning every 4 minutes and a prefill range of 1..max_prefill."""
    cluster = MemoryCluster()
    body = load(LLAMA)
    body["spec"]["planner"] = {"replan": {"enabled": True, "interval": "4m"}}
    body["spec"]["prefill"]["replicas"] = {"min": 1, "max": max_prefill}
    body["spec"]["autoscaling"] = {"engine": "hpa", "prometheus": {"url": "http://127.0.0.1:9"}}
    cluster.add_model(body)
    return cluster


def reconcile_at(cluster: MemoryCluster, metrics: ReplanMetrics, when: str) -> dict[str, Any]:
    """One pass at ``when``; the model's status afterwards."""
    reconcile(
        cluster.get_model("default", "llama-70b") or {},
        cluster,
        OperatorSettings(),
        now=lambda: when,
        metrics=lambda url: metrics,
    )
    return dict(cluster.models[("default", "llama-70b")]["status"])


@pytest.mark.parametrize("interval_passed", [False, True])
def test_reconcile_replans_once_per_interval(interval_passed: bool) -> None:
    cluster = replanning_model()
    metrics = ReplanMetrics(ObservedWorkload(request_rate=25.0, input_tokens=4096, output_tokens=300))

    def run(when: str) -> None:
        reconcile_at(cluster, metrics, when)

    run("2026-11-28T01:00:00Z")
    status = cluster.models[("default", "llama-70b")]["status"]
    assert status["replan"]["observed"]["requestRate"] == 25.0
    assert metrics.calls == 1
    # each decision reads the traffic of one interval
    assert "[4m]" in metrics.queries[0].request_rate
    assert "[4m]" in metrics.queries[0].ttft
    run("2026-11-28T01:06:00Z" if interval_passed else "2026-11-28T01:01:00Z")
    assert metrics.calls == (2 if interval_passed else 1)
    hpa = next(
        o for (_, k, _, n), o in cluster.objects.items() if k == "HorizontalPodAutoscaler" and n == "llama-70b-prefill"
    )
    assert hpa["spec"]["minReplicas"] == cluster.models[("default", "llama-70b")]["status"]["replan"]["prefillFloor"]


def test_lost_status_keeps_the_floors_the_autoscalers_run_with() -> None:
    """status.replan wiped (a restore, a hand edit): the floors are read back from the HPAs, so
    low traffic still brings them down one replica per interval, not at once."""
    cluster = replanning_model()
    metrics = ReplanMetrics(ObservedWorkload(request_rate=40.0, input_tokens=4096, output_tokens=300))

    def run(when: str) -> dict[str, Any]:
        return reconcile_at(cluster, metrics, when)

    high = run("2026-11-28T01:00:00Z")["replan"]["prefillFloor"]
    assert high >= 4, high
    cluster.models[("default", "llama-70b")]["status"] = {}
    metrics.observed = ObservedWorkload(request_rate=0.5, input_tokens=4096, output_tokens=300)
    status = run("2026-11-28T01:01:00Z")
    assert status["replan"]["prefillFloor"] == high - 1, status["replan"]
    assert f"prefill floor {high} -> {high - 1}" in status["replan"]["decision"]


def test_a_floor_raised_to_the_ceiling_keeps_the_autoscaler() -> None:
    """Floor == max after re-planning: the HPA stays (min == max), it is not swapped for a fixed
    Deployment count and re-created when the floor comes down (found on real traffic in e2e)."""
    cluster = replanning_model(max_prefill=6)
    metrics = ReplanMetrics(ObservedWorkload(request_rate=200.0, input_tokens=4096, output_tokens=300))
    assert reconcile_at(cluster, metrics, "2026-11-28T01:00:00Z")["replan"]["prefillFloor"] == 6
    children = {(k, n): o for (_, k, _, n), o in cluster.objects.items()}
    hpa = children[("HorizontalPodAutoscaler", "llama-70b-prefill")]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (6, 6)
    assert "replicas" not in children[("Deployment", "llama-70b-prefill")]["spec"]
