"""Scale-to-zero: pure decisions, and the reconcile pass that acts on them."""

from __future__ import annotations

import re
from typing import Any

import pytest

from disagg.api.spec import DisaggregatedModelSpec
from disagg.reconcile import reconcile
from disagg.scaling import Action, Queries, Signals, decide, queries
from disagg.settings import OperatorSettings
from tests.conftest import ROOT, MemoryCluster, load

LLAMA = ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml"


def spec(**zero: Any) -> DisaggregatedModelSpec:
    return DisaggregatedModelSpec.model_validate(
        {"model": {"name": "m"}, "scaleToZero": {"enabled": True, "idleAfter": "10m", **zero}}
    )


def signals(demand: float | None = 0.0, window: float | None = 0.0, busy: float | None = 0.0) -> Signals:
    return Signals(demand=demand, demand_window=window, busy_window=busy)


def test_default_queries_select_the_models_router_and_engines() -> None:
    q = queries(spec(), namespace="ns", name="llama")
    assert 'namespace="ns",pod=~"llama-router-.+"' in q.demand
    for series in ("llm_d_epp_request_total", "llm_d_epp_flow_control_queue_size", "llm_d_epp_info"):
        assert series in q.demand
    # requests counted over the idle window itself (no 1-minute rate tail), held ones at their peak
    assert 'increase(llm_d_epp_request_total{namespace="ns",pod=~"llama-router-.+"}[10m])' in q.demand_window
    assert "rate(" not in q.demand_window
    assert "max_over_time((sum(llm_d_epp_flow_control_queue_size" in q.demand_window
    assert "[10m:15s]" in q.demand_window
    assert "vllm:num_requests_running" in q.busy_window
    assert "llama-(prefill|decode|prefill-decode)-.+" in q.busy_window


def test_short_idle_windows_sample_more_often() -> None:
    assert "[20s:5s]" in queries(spec(idleAfter="20s"), namespace="ns", name="m").demand_window
    assert "[2s:1s]" in queries(spec(idleAfter="2s"), namespace="ns", name="m").busy_window


@pytest.mark.parametrize(
    ("idle_after", "window", "step"),
    [("30s", "30s", "7500ms"), ("1.5m", "90s", "15s"), ("1m30s", "1m30s", "15s"), ("2500ms", "2500ms", "1s")],
)
def test_windows_and_steps_are_durations_promql_parses(idle_after: str, window: str, step: str) -> None:
    """Prometheus 2.x refuses fractional durations (`7.5s` failed every query of idleAfter: 30s)."""
    q = queries(spec(idleAfter=idle_after), namespace="ns", name="m")
    assert f"[{window}:{step}]" in q.busy_window
    assert re.search(r"\[(\d+(ms|s|m|h))+(:(\d+(ms|s|m|h))+)?\]", q.demand_window)
    assert not re.search(r"\d\.\d+(ms|s|m|h)", q.demand_window + q.busy_window)


def test_queries_can_be_overridden() -> None:
    q = queries(spec(demandQuery="sum(my_queue)", idleQuery="sum(my_busy)"), namespace="ns", name="m")
    assert q.demand == "sum(my_queue)"
    assert q.demand_window == "max_over_time((sum(my_queue))[10m:15s])"
    assert q.busy_window == "max_over_time((sum(my_busy))[10m:15s])"


@pytest.mark.parametrize(
    ("at_zero", "sig", "awake", "action", "available"),
    [
        (False, signals(), 601, Action.SLEEP, True),
        (False, signals(), 30, Action.STAY, True),  # not awake long enough
        (False, signals(window=0.2), 601, Action.STAY, True),  # demand within the window
        (False, signals(busy=1), 601, Action.STAY, True),  # engines still working
        (False, signals(window=None), 601, Action.STAY, False),  # no router data is never idle
        (False, signals(busy=None), 601, Action.STAY, False),
        (True, signals(demand=0.5), 0, Action.WAKE, True),
        (True, signals(demand=0.0), 0, Action.STAY, True),
        (True, signals(demand=None), 0, Action.STAY, False),
    ],
)
def test_decide(at_zero: bool, sig: Signals, awake: float, action: Action, available: bool) -> None:
    decision = decide(spec(), at_zero=at_zero, signals=sig, awake_for_seconds=awake)
    assert decision.action == action
    assert decision.metrics_available == available


def test_decisions_that_change_with_time_alone_say_when_to_look_again() -> None:
    """idleAfter is 10m here: warm for 30 s means the window ends in 570 s (+1 for whole-second
    stamps); a busy model is looked at once per subquery step; the rest wait for events."""
    warm = decide(spec(), at_zero=False, signals=signals(), awake_for_seconds=30)
    assert (warm.reason, warm.recheck_seconds) == ("Warm", 571.0)
    busy = decide(spec(), at_zero=False, signals=signals(busy=1), awake_for_seconds=601)
    assert (busy.reason, busy.recheck_seconds) == ("Active", 15.0)
    assert (
        decide(spec(idleAfter="8s"), at_zero=False, signals=signals(busy=1), awake_for_seconds=60).recheck_seconds
        == 5.0
    )
    for decision in (
        decide(spec(), at_zero=False, signals=signals(), awake_for_seconds=601),  # sleeps now
        decide(spec(), at_zero=False, signals=signals(), awake_for_seconds=601, ready=False),
        decide(spec(), at_zero=True, signals=signals(demand=0.0), awake_for_seconds=0),  # wake polls
    ):
        assert decision.recheck_seconds is None, decision


class FakeMetrics:
    """A metrics source whose answers the test sets (the decision inputs), recording the queries."""

    def __init__(self) -> None:
        self.answer = Signals(demand=0.0, demand_window=0.0, busy_window=0.0)
        self.seen: list[Queries] = []

    def signals(self, queries: Queries, *, at_zero: bool) -> Signals:
        self.seen.append(queries)
        return self.answer


def zero_model(engine: str = "hpa") -> dict[str, Any]:
    body = load(LLAMA)
    body["metadata"]["creationTimestamp"] = "2026-11-28T00:00:00Z"
    body["spec"]["scaleToZero"] = {"enabled": True, "idleAfter": "15m"}
    body["spec"]["autoscaling"] = {"engine": engine, "prometheus": {"url": "http://127.0.0.1:9"}}
    return body


def run(cluster: MemoryCluster, metrics: FakeMetrics, when: str) -> Any:
    body = cluster.get_model("default", "llama-70b")
    assert body is not None
    return reconcile(body, cluster, OperatorSettings(), now=lambda: when, metrics=lambda url: metrics)


def replicas(cluster: MemoryCluster, name: str) -> Any:
    return next(o for (_, k, _, n), o in cluster.objects.items() if k == "Deployment" and n == name)["spec"].get(
        "replicas"
    )


def conditions(cluster: MemoryCluster) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in cluster.models[("default", "llama-70b")]["status"]["conditions"]}


def test_idle_model_sleeps_together_and_wakes_on_router_demand() -> None:
    cluster, metrics = MemoryCluster(), FakeMetrics()
    cluster.add_model(zero_model())
    run(cluster, metrics, "2026-11-28T00:01:00Z")
    cluster.roll_out()
    run(cluster, metrics, "2026-11-28T00:02:00Z")
    assert conditions(cluster)["ScaledToZero"]["status"] == "False"
    assert conditions(cluster)["MetricsAvailable"]["status"] == "True"
    assert replicas(cluster, "llama-70b-prefill") == 5

    cluster.writes.clear()
    outcome = run(cluster, metrics, "2026-11-28T00:20:00Z")  # idle for longer than idleAfter
    assert sorted(outcome.scaled) == ["Deployment/llama-70b-decode", "Deployment/llama-70b-prefill"]
    assert replicas(cluster, "llama-70b-prefill") == 0
    assert replicas(cluster, "llama-70b-decode") == 0
    assert replicas(cluster, "llama-70b-router") == 1  # the router stays up, holding requests
    assert not [w for w in cluster.writes if w.startswith("apply")]  # replicas never enter our apply
    conds = conditions(cluster)
    assert conds["ScaledToZero"]["status"] == "True"
    assert ("ScaledToZeroTrue", conds["ScaledToZero"]["message"]) in cluster.events
    # scaling is not a rollout: the template did not change; the role counts show pods going away
    assert conds["Progressing"]["status"] == "False"
    roles = {r["name"]: r for r in cluster.models[("default", "llama-70b")]["status"]["roles"]}
    assert roles["prefill"]["desired"] == 0
    assert roles["prefill"]["replicas"] == 5

    run(cluster, metrics, "2026-11-28T00:20:30Z")  # the pass after the deployment controller converged
    assert conditions(cluster)["Ready"]["reason"] == "ScaledToZero"
    assert conditions(cluster)["Ready"]["status"] == "True"
    cluster.writes.clear()
    assert run(cluster, metrics, "2026-11-28T00:21:00Z").writes == 0  # asleep and quiet: no writes

    metrics.answer = Signals(demand=2.0, demand_window=None, busy_window=None)
    outcome = run(cluster, metrics, "2026-11-28T00:22:00Z")
    # decode first: the router releases a held request as soon as any engine joins its pool, and
    # only decode can answer it alone
    assert outcome.scaled == ["Deployment/llama-70b-decode"]
    assert replicas(cluster, "llama-70b-prefill") == 0
    assert replicas(cluster, "llama-70b-decode") == 1
    assert conditions(cluster)["ScaledToZero"]["status"] == "False"
    decode_status = next(
        o["status"] for k, o in cluster.objects.items() if k[1] == "Deployment" and k[3] == "llama-70b-decode"
    )
    decode_status["availableReplicas"] = 0  # its pod still starting
    assert run(cluster, metrics, "2026-11-28T00:22:01Z").scaled == [], "prefill waits for an available decode pod"
    decode_status["availableReplicas"] = 1
    outcome = run(cluster, metrics, "2026-11-28T00:22:05Z")
    assert outcome.scaled == ["Deployment/llama-70b-prefill"]
    assert replicas(cluster, "llama-70b-prefill") == 5
    assert replicas(cluster, "llama-70b-decode") == 1


def test_never_sleeps_before_the_whole_idle_window_has_passed() -> None:
    """Timestamps have whole seconds: 15m after a creation stamped 00:00:00 may be 14m59.x s later."""
    cluster, metrics = MemoryCluster(), FakeMetrics()
    cluster.add_model(zero_model())
    run(cluster, metrics, "2026-11-28T00:00:00Z")  # awake since the creation stamp
    cluster.roll_out()
    run(cluster, metrics, "2026-11-28T00:00:00Z")  # Ready in the same second
    assert run(cluster, metrics, "2026-11-28T00:15:00Z").scaled == []
    assert replicas(cluster, "llama-70b-prefill") == 5
    assert len(run(cluster, metrics, "2026-11-28T00:15:01Z").scaled) == 2


def test_the_idle_clock_starts_when_the_model_is_ready() -> None:
    """Engines loading weights for longer than idleAfter are not put to sleep before they served:
    the window counts from Ready, and a model that is not Ready stays up and says why."""
    cluster, metrics = MemoryCluster(), FakeMetrics()
    cluster.add_model(zero_model())
    run(cluster, metrics, "2026-11-28T00:00:00Z")  # created; no pod Ready yet
    outcome = run(cluster, metrics, "2026-11-28T00:40:00Z")  # far past idleAfter (15m), still loading
    assert outcome.scaled == []
    assert outcome.zero is not None
    assert outcome.zero.decision is not None
    assert outcome.zero.decision.reason == "NotReady"
    assert conditions(cluster)["Ready"]["status"] == "False"
    assert conditions(cluster)["ScaledToZero"]["status"] == "False"

    cluster.roll_out()
    run(cluster, metrics, "2026-11-28T00:41:00Z")  # Ready now
    assert conditions(cluster)["Ready"]["status"] == "True"
    outcome = run(cluster, metrics, "2026-11-28T00:55:00Z")  # 14 min after Ready, 55 after creation
    assert outcome.scaled == []
    assert outcome.zero is not None
    assert outcome.zero.decision is not None
    assert outcome.zero.decision.reason == "Warm"
    assert len(run(cluster, metrics, "2026-11-28T00:56:02Z").scaled) == 2


def test_missing_metrics_never_scale_to_zero() -> None:
    cluster, metrics = MemoryCluster(), FakeMetrics()
    cluster.add_model(zero_model())
    metrics.answer = Signals(demand=None, demand_window=None, busy_window=None, error="Prometheus unreachable")
    run(cluster, metrics, "2026-11-28T01:00:00Z")
    cluster.roll_out()
    outcome = run(cluster, metrics, "2026-11-28T02:00:00Z")
    assert outcome.scaled == []
    conds = conditions(cluster)
    assert conds["MetricsAvailable"]["status"] == "False"
    assert "Prometheus unreachable" in conds["MetricsAvailable"]["message"]
    assert conds["ScaledToZero"]["status"] == "False"


def test_without_a_prometheus_url_scale_to_zero_reports_why() -> None:
    cluster = MemoryCluster()
    body = zero_model()
    body["spec"]["autoscaling"] = {"engine": "hpa"}
    cluster.add_model(body)
    reconcile(cluster.get_model("default", "llama-70b") or {}, cluster, OperatorSettings(), metrics=None)
    assert conditions(cluster)["MetricsAvailable"]["reason"] == "NoPrometheus"


def test_fixed_roles_render_zero_and_keda_pauses() -> None:
    cluster, metrics = MemoryCluster(), FakeMetrics()
    body = zero_model(engine="keda")
    body["spec"]["decode"]["replicas"] = {"min": 1, "max": 1}
    cluster.add_model(body)
    run(cluster, metrics, "2026-11-28T01:00:00Z")
    cluster.roll_out()
    run(cluster, metrics, "2026-11-28T01:00:30Z")  # Ready
    run(cluster, metrics, "2026-11-28T02:00:00Z")
    assert conditions(cluster)["ScaledToZero"]["status"] == "True"
    run(cluster, metrics, "2026-11-28T02:01:00Z")  # the pass after the decision renders the zero state
    assert replicas(cluster, "llama-70b-decode") == 0
    scaled = next(o for (_, k, _, n), o in cluster.objects.items() if k == "ScaledObject" and n == "llama-70b-prefill")
    assert scaled["metadata"]["annotations"]["autoscaling.keda.sh/paused-replicas"] == "0"


def test_waking_holds_prefill_until_a_decode_pod_is_available() -> None:
    from disagg.scaling import held_asleep

    # waking, both still at zero: decode first
    assert held_asleep(waking=True, prefill_replicas=0, decode_available=0) == {"prefill"}
    # one decode pod serves: prefill follows
    assert held_asleep(waking=True, prefill_replicas=0, decode_available=1) == frozenset()
    # prefill already up (awake model, decode outage): never taken down
    assert held_asleep(waking=True, prefill_replicas=2, decode_available=0) == frozenset()
    # asleep, or nothing known yet: nothing held
    assert held_asleep(waking=False, prefill_replicas=0, decode_available=0) == frozenset()
    assert held_asleep(waking=True, prefill_replicas=None, decode_available=0) == frozenset()


def test_a_held_fixed_size_role_renders_at_zero_and_a_held_keda_role_paused() -> None:
    from disagg.render.autoscaling import KEDA_PAUSED_REPLICAS
    from tests.conftest import ROOT, load
    from tests.test_render import by_kind, render_with

    body = load(ROOT / "manifests" / "samples" / "llama-3.3-70b-disaggregated.yaml")
    autoscaled = {role: dict(body["spec"][role]["replicas"]) for role in ("prefill", "decode")}
    for role in ("prefill", "decode"):
        body["spec"][role]["replicas"] = {"min": 2, "max": 2}  # fixed size: the operator owns replicas
    objects = render_with(body, held_asleep=frozenset({"prefill"}))
    deployments = by_kind(objects, "Deployment")
    assert deployments["llama-70b-prefill"]["spec"]["replicas"] == 0
    assert deployments["llama-70b-decode"]["spec"]["replicas"] >= 1
    for role, replicas in autoscaled.items():
        body["spec"][role]["replicas"] = replicas
    body["spec"]["autoscaling"] = {"engine": "keda", "prometheus": {"url": "http://prometheus:9090"}}
    scalers = by_kind(render_with(body, held_asleep=frozenset({"prefill"})), "ScaledObject")
    assert scalers["llama-70b-prefill"]["metadata"]["annotations"][KEDA_PAUSED_REPLICAS] == "0"
    assert KEDA_PAUSED_REPLICAS not in (scalers["llama-70b-decode"]["metadata"].get("annotations") or {})


def test_a_lost_status_does_not_wake_a_sleeping_model() -> None:
    """Where the model is comes from its Deployments (all at 0), not only from its own status."""
    cluster, metrics = MemoryCluster(), FakeMetrics()
    cluster.add_model(zero_model())
    run(cluster, metrics, "2026-11-28T00:01:00Z")
    cluster.roll_out()
    run(cluster, metrics, "2026-11-28T00:02:00Z")  # Ready
    run(cluster, metrics, "2026-11-28T00:20:00Z")
    assert replicas(cluster, "llama-70b-prefill") == 0
    cluster.models[("default", "llama-70b")]["status"] = {}
    cluster.writes.clear()
    outcome = run(cluster, metrics, "2026-11-28T00:20:30Z")  # still idle
    assert outcome.scaled == []
    assert conditions(cluster)["ScaledToZero"]["status"] == "True"
    assert replicas(cluster, "llama-70b-prefill") == 0
    metrics.answer = Signals(demand=1.0, demand_window=None, busy_window=None)
    assert run(cluster, metrics, "2026-11-28T00:21:00Z").scaled == ["Deployment/llama-70b-decode"]
