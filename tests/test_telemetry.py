"""The operator's metrics: what a pass through the controller records, and what goes with a model."""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry

from disagg.api.status import Condition, DisaggregatedModelStatus, PlanSummary, RolePlanSummary, RoleStatus
from disagg.controller import Controller
from disagg.reconcile import Outcome, ZeroState
from disagg.scaling import Action, Decision
from disagg.settings import OperatorSettings
from disagg.telemetry import Telemetry
from tests.conftest import ROOT, MemoryCluster, load


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def value(telemetry: Telemetry, name: str, **labels: str) -> float:
    found = telemetry.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_a_pass_through_the_controller_records_duration_writes_and_model_figures() -> None:
    cluster, clock = MemoryCluster(), Clock()
    body = load(ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml")
    model = cluster.add_model(body)
    telemetry = Telemetry(CollectorRegistry())
    controller = Controller(cluster, OperatorSettings(resync_seconds=3600), clock=clock, telemetry=telemetry)
    key = ("default", model["metadata"]["name"])
    controller.trigger(key)
    assert value(telemetry, "disagg_workqueue_depth") == 1
    assert controller.run_due() == 1
    assert value(telemetry, "disagg_workqueue_depth") == 0
    assert value(telemetry, "disagg_reconcile_duration_seconds_count", result="success") == 1
    applies = value(telemetry, "disagg_api_writes_total", kind="Deployment", verb="apply")
    assert applies == 3  # prefill, decode, router
    assert value(telemetry, "disagg_api_writes_total", kind="DisaggregatedModel/status", verb="patch") == 1
    name = key[1]
    labels = {"namespace": "default", "model": name}
    assert value(telemetry, "disagg_model_predicted_ttft_seconds", **labels) > 0
    assert value(telemetry, "disagg_model_replicas", **labels, role="prefill", kind="planned") >= 1
    assert (
        value(telemetry, "disagg_plans_total", source="computed")
        + value(telemetry, "disagg_plans_total", source="cache")
        >= 1
    )

    # a quiet second pass writes nothing more
    controller.trigger(key)
    controller.run_due()
    assert value(telemetry, "disagg_api_writes_total", kind="Deployment", verb="apply") == applies
    assert value(telemetry, "disagg_reconcile_duration_seconds_count", result="success") == 2

    # a hand edit is reverted: one more apply of that kind
    deployment = next(o for k, o in cluster.objects.items() if k[1] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:1"
    controller.trigger(key)
    controller.run_due()
    assert value(telemetry, "disagg_api_writes_total", kind="Deployment", verb="apply") == applies + 1

    # the model is deleted: its series go
    del cluster.models[key]
    controller.trigger(key)
    controller.run_due()
    assert value(telemetry, "disagg_reconcile_duration_seconds_count", result="gone") == 1
    assert telemetry.registry.get_sample_value("disagg_model_predicted_ttft_seconds", labels) is None
    assert (
        telemetry.registry.get_sample_value("disagg_model_replicas", {**labels, "role": "prefill", "kind": "planned"})
        is None
    )


def _status(ready: bool, engine_ready: int) -> DisaggregatedModelStatus:
    return DisaggregatedModelStatus(
        plan=PlanSummary(
            source="planner",
            mode="disaggregated",
            prefill=RolePlanSummary(replicas=1, tensor_parallel=1, max_replicas=2),
            predicted_ttft_ms=250.0,
            predicted_itl_ms=20.0,
        ),
        roles=[
            RoleStatus(name="prefill", desired=1, ready=engine_ready),
            RoleStatus(name="decode", desired=1, ready=engine_ready),
            RoleStatus(name="router", desired=1, ready=1),
        ],
        conditions=[
            Condition(
                type="Ready",
                status="True" if ready else "False",
                reason="x",
                last_transition_time="2026-01-01T00:00:00Z",
            )
        ],
    )


def test_sleep_and_wake_are_counted_and_the_wake_latency_runs_until_the_floors_are_ready() -> None:
    clock = Clock()
    telemetry = Telemetry(CollectorRegistry(), clock=clock)
    sleep = Outcome(zero=ZeroState(enabled=True, at_zero=True, decision=Decision(Action.SLEEP, True, "Idle", "")))
    telemetry.observe_outcome("ns", "m", sleep)
    assert value(telemetry, "disagg_scale_to_zero_transitions_total", namespace="ns", model="m", direction="sleep") == 1
    assert value(telemetry, "disagg_model_asleep", namespace="ns", model="m") == 1
    wake = Outcome(
        zero=ZeroState(enabled=True, at_zero=False, decision=Decision(Action.WAKE, True, "Demand", "")),
        status=_status(ready=False, engine_ready=0),
    )
    telemetry.observe_outcome("ns", "m", wake)
    assert value(telemetry, "disagg_wake_duration_seconds_count") == 0
    clock.now += 7.5
    stay = Decision(Action.STAY, True, "Active", "")
    telemetry.observe_outcome(
        "ns", "m", Outcome(zero=ZeroState(enabled=True, decision=stay), status=_status(ready=False, engine_ready=1))
    )
    assert value(telemetry, "disagg_wake_duration_seconds_count") == 0  # Ready not yet True
    clock.now += 2.5
    telemetry.observe_outcome(
        "ns", "m", Outcome(zero=ZeroState(enabled=True, decision=stay), status=_status(ready=True, engine_ready=1))
    )
    assert value(telemetry, "disagg_wake_duration_seconds_count") == 1
    assert value(telemetry, "disagg_wake_duration_seconds_sum") == 10.0
    assert value(telemetry, "disagg_model_asleep", namespace="ns", model="m") == 0
    assert value(telemetry, "disagg_model_predicted_itl_seconds", namespace="ns", model="m") == 0.02


def test_placement_results_and_serving_over_http() -> None:
    telemetry = Telemetry(CollectorRegistry())
    telemetry.observe_outcome("ns", "a", Outcome(placement="placed"))
    telemetry.observe_outcome("ns", "a", Outcome(placement="reused"))
    telemetry.observe_outcome("ns", "b", Outcome(placement="placed", placement_failed=True))
    telemetry.observe_outcome("ns", "c", Outcome())  # not packed: nothing counted
    assert value(telemetry, "disagg_placement_decisions_total", result="placed") == 1
    assert value(telemetry, "disagg_placement_decisions_total", result="reused") == 1
    assert value(telemetry, "disagg_placement_decisions_total", result="failed") == 1
    server = telemetry.serve("127.0.0.1:0")
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'disagg_placement_decisions_total{result="failed"} 1.0' in text


def test_counters_exist_at_zero_before_their_first_event() -> None:
    """A counter series born at 1 reads as no increase (Prometheus has no earlier sample): every
    known label value starts at 0, the transitions as soon as a model has scale-to-zero on."""
    telemetry = Telemetry(CollectorRegistry())
    sample = telemetry.registry.get_sample_value
    for result in ("placed", "reused", "failed"):
        assert sample("disagg_placement_decisions_total", {"result": result}) == 0.0
    for result in ("success", "error", "conflict", "gone"):
        assert sample("disagg_reconcile_duration_seconds_count", {"result": result}) == 0.0
    telemetry.observe_outcome("ns", "m", Outcome(zero=ZeroState(enabled=True, at_zero=False)))
    for direction in ("sleep", "wake"):
        labels = {"namespace": "ns", "model": "m", "direction": direction}
        assert sample("disagg_scale_to_zero_transitions_total", labels) == 0.0
    telemetry.observe_outcome("ns", "quiet", Outcome())  # scale-to-zero off: no transition series
    assert (
        sample("disagg_scale_to_zero_transitions_total", {"namespace": "ns", "model": "quiet", "direction": "sleep"})
        is None
    )
    telemetry.forget_model("ns", "m")
    assert (
        sample("disagg_scale_to_zero_transitions_total", {"namespace": "ns", "model": "m", "direction": "wake"}) is None
    )
