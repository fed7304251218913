"""What `kubectl disagg` prints (disagg/describe.py): pure, from objects as the API server returns them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from disagg.api.status import PlanSummary, RolePlanSummary
from disagg.describe import (
    ModelSnapshot,
    PlanChange,
    age,
    changed_fields,
    hpa_metrics,
    parse_time,
    plan_change_text,
    scaler_view,
    status_text,
    table,
)

NOW = dt.datetime(2026, 12, 2, 18, 0, 0, tzinfo=dt.UTC)
REASON = (
    "Disaggregated serving, 5P(TP4):1D(TP8), on 28x h100-sxm because disaggregated serving was requested. "
    "A 4096-token prefill takes 211 ms on TP4; 5 prefill replicas keep the p90 TTFT at 524 ms."
)


def cond(ctype: str, status: str, reason: str, message: str, at: str = "2026-12-02T17:57:00Z") -> dict[str, Any]:
    return {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": at}


def plan(prefill: int = 5, decode: int | None = 1, ttft: float = 524.3, itl: float = 12.02) -> PlanSummary:
    return PlanSummary(
        source="planner",
        mode="disaggregated" if decode is not None else "aggregated",
        prefill=RolePlanSummary(replicas=prefill, tensor_parallel=4, max_replicas=6),
        decode=RolePlanSummary(replicas=decode, tensor_parallel=8, max_replicas=3) if decode is not None else None,
        disagg_threshold=512 if decode is not None else None,
        gpus=prefill * 4 + (decode or 0) * 8,
        predicted_ttft_ms=ttft,
        predicted_itl_ms=itl,
        slo_met=True,
        reason=REASON,
    )


def model(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "DisaggregatedModel",
        "metadata": {"name": "llama-70b", "namespace": "prod", "uid": "u-1", "generation": 2},
        "spec": {
            "model": {"name": "meta-llama/Llama-3.3-70B-Instruct", "preset": "llama-3.3-70b"},
            "accelerator": {"type": "h100-sxm"},
            "slo": {"ttft": "1s", "itl": "50ms", "percentile": 90},
            **spec,
        },
        "status": {
            "observedGeneration": 2,
            "mode": "disaggregated",
            "ratio": "5P:1D",
            "conditions": [
                cond("Ready", "True", "Available", "prefill 5/5 ready, decode 1/1 ready, router 1/1 ready"),
                cond("Degraded", "False", "AsExpected", "spec accepted and children applied"),
                cond("Planned", "True", "SLOsMet", REASON, at="2026-12-02T16:00:00Z"),
            ],
            "roles": [
                {"name": "prefill", "desired": 5, "replicas": 5, "updated": 5, "ready": 5, "tensorParallel": 4},
                {"name": "decode", "desired": 1, "replicas": 1, "updated": 1, "ready": 0, "tensorParallel": 8},
                {"name": "router", "desired": 1, "replicas": 1, "updated": 1, "ready": 1},
            ],
            "plan": plan().wire(),
            "placement": [],
        },
    }


def hpa(min_replicas: int, max_replicas: int, metric: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "spec": {"minReplicas": min_replicas, "maxReplicas": max_replicas, "metrics": [metric]},
        "status": {
            "desiredReplicas": 6,
            "currentMetrics": [current] if current else [{"type": ""}],
            "conditions": [cond("ScalingActive", "True", "ValidMetricFound", "the HPA was able to compute")],
        },
    }


PREFILL_METRIC = {
    "type": "Pods",
    "pods": {"metric": {"name": "vllm_num_requests_waiting"}, "target": {"type": "AverageValue", "averageValue": "4"}},
}
ROUTER_METRIC = {
    "type": "Resource",
    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
}


def section(text: str, title: str) -> list[str]:
    """The lines of one blank-line-separated section, by its first line's start."""
    blocks = [b.splitlines() for b in text.split("\n\n")]
    found = [b for b in blocks if b and b[0].startswith(title)]
    assert found, f"no section {title!r} in:\n{text}"
    return found[0]


def columns(line: str) -> list[str]:
    return line.split()


def squeezed(line: str) -> str:
    """A table row with its padding collapsed to one space."""
    return " ".join(line.split())


def test_table_aligns_every_column_and_leaves_no_trailing_space() -> None:
    lines = table([["ROLE", "TP", "MESSAGE"], ["prefill-decode", "4", "x"], ["router", "-", ""]])
    assert lines == ["  ROLE            TP  MESSAGE", "  prefill-decode  4   x", "  router          -"]


@pytest.mark.parametrize(
    ("seconds", "printed"),
    [
        (0, "0s"),
        (-5, "0s"),
        (119, "119s"),
        (120, "2m"),
        (312, "5m12s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600 + 4 * 60, "3h4m"),
        (8 * 3600, "8h"),
        (30 * 3600, "30h"),
        (2 * 86_400 + 5 * 3600, "2d5h"),
        (20 * 86_400, "20d"),
        (3 * 365 * 86_400, "3y"),
    ],
)
def test_ages_read_as_kubectl_prints_them(seconds: float, printed: str) -> None:
    assert age(seconds) == printed


def test_times_with_and_without_fractions_parse() -> None:
    assert parse_time("2026-12-02T17:59:48Z") == dt.datetime(2026, 12, 2, 17, 59, 48, tzinfo=dt.UTC)
    assert parse_time("2026-12-02T17:59:48.889888Z") is not None
    assert parse_time("") is None
    assert parse_time("yesterday") is None


def test_hpa_metrics_pair_current_with_target_by_type_and_name() -> None:
    current = {
        "type": "Pods",
        "pods": {"metric": {"name": "vllm_num_requests_waiting"}, "current": {"averageValue": "7"}},
    }
    assert hpa_metrics(hpa(5, 6, PREFILL_METRIC, current)) == [("vllm_num_requests_waiting", "7/4")]
    assert hpa_metrics(hpa(5, 6, PREFILL_METRIC, None)) == [("vllm_num_requests_waiting", "<unknown>/4")]
    cpu = {
        "type": "Resource",
        "resource": {"name": "cpu", "current": {"averageUtilization": 35, "averageValue": "350m"}},
    }
    assert hpa_metrics(hpa(1, 3, ROUTER_METRIC, cpu)) == [("cpu", "35%/70%")]


def test_an_hpa_that_cannot_compute_shows_why_and_no_wanted_count() -> None:
    broken = hpa(5, 6, PREFILL_METRIC, None)
    broken["status"]["conditions"] = [
        cond("ScalingActive", "False", "FailedGetPodsMetric", "unable to get metric vllm_num_requests_waiting")
    ]
    view = scaler_view(broken, None)
    assert (view.kind, view.floor, view.ceiling, view.wants) == ("HPA", "5", "6", "-")
    assert view.notes == (
        "HPA ScalingActive=False (FailedGetPodsMetric): unable to get metric vllm_num_requests_waiting",
    )


def test_only_hpa_conditions_that_need_saying_are_shown() -> None:
    """ScalingLimited=False is the healthy state (shown by make demo before this test); True is not."""
    healthy = hpa(1, 3, PREFILL_METRIC, None)
    healthy["status"]["conditions"] = [
        cond("AbleToScale", "True", "ReadyForNewScale", ""),
        cond("ScalingActive", "True", "ValidMetricFound", ""),
        cond("ScalingLimited", "False", "DesiredWithinRange", "the desired count is within the acceptable range"),
    ]
    assert scaler_view(healthy, None).notes == ()
    healthy["status"]["conditions"][2] = cond("ScalingLimited", "True", "TooManyReplicas", "capped at 3")
    assert scaler_view(healthy, None).notes == ("HPA ScalingLimited=True (TooManyReplicas): capped at 3",)


def test_a_keda_role_shows_its_trigger_its_hpa_value_and_the_pause() -> None:
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"annotations": {"autoscaling.keda.sh/paused-replicas": "0"}},
        "spec": {
            "minReplicaCount": 1,
            "maxReplicaCount": 4,
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {"query": 'sum(vllm:num_requests_waiting{namespace="prod",pod=~"m-prefill-.*"})'},
                }
            ],
        },
        "status": {"conditions": [cond("Ready", "True", "ScaledObjectReady", "")]},
    }
    external = {
        "type": "External",
        "external": {"metric": {"name": "s0-prometheus"}, "target": {"type": "AverageValue", "averageValue": "4"}},
    }
    current = {"type": "External", "external": {"metric": {"name": "s0-prometheus"}, "current": {"averageValue": "2"}}}
    view = scaler_view(hpa(1, 4, external, current), scaled)
    assert view.kind == "KEDA"
    assert view.metric == "prometheus sum(vllm:num_requests_waiting)"
    assert (view.floor, view.ceiling, view.wants, view.value) == ("1", "4", "0", "2/4")
    assert view.notes == ("KEDA paused at 0 replicas (autoscaling.keda.sh/paused-replicas)",)


def test_status_shows_plan_roles_scalers_and_conditions_on_one_screen() -> None:
    snapshot = ModelSnapshot(
        model=model(),
        hpas={
            "prefill": hpa(
                5,
                6,
                PREFILL_METRIC,
                {
                    "type": "Pods",
                    "pods": {"metric": {"name": "vllm_num_requests_waiting"}, "current": {"averageValue": "7"}},
                },
            ),
            "router": hpa(1, 3, ROUTER_METRIC, None),
        },
    )
    text = status_text(snapshot, NOW)
    assert text.startswith("Name:        llama-70b\nNamespace:   prod\n")
    assert "Model:       meta-llama/Llama-3.3-70B-Instruct (preset llama-3.3-70b) on h100-sxm" in text
    assert "Ready:       True (Available) for 3m" in text
    assert "Generation:  2 (status observed 2)" in text
    plan_lines = section(text, "Plan:")
    assert plan_lines[0] == "Plan: planner, Planned=True (SLOsMet)"
    assert "  Mode:       disaggregated, 5P:1D on 28 GPUs at the floor" in plan_lines
    assert "  Roles:      prefill TP4 floor 5 max 6; decode TP8 floor 1 max 3" in plan_lines
    assert "  Predicted:  TTFT 524 ms (SLO 1s p90), ITL 12.0 ms (SLO 50ms p90): SLOs met" in plan_lines
    assert all(len(line) <= 100 for line in plan_lines), "the reason is wrapped"
    assert " ".join(" ".join(plan_lines).split()).endswith("keep the p90 TTFT at 524 ms.")

    roles = section(text, "Roles:")
    assert squeezed(roles[1]) == "ROLE TP DESIRED READY UPDATED AUTOSCALER MIN MAX WANTS METRIC NOW/TARGET"
    assert squeezed(roles[2]) == "prefill 4 5 5 5 HPA 5 6 6 vllm_num_requests_waiting 7/4"
    # decode has no HPA here: fixed at the plan's floor
    assert squeezed(roles[3]) == "decode 8 1 0 1 fixed 1 1 - - -"
    assert squeezed(roles[4]) == "router - 1 1 1 HPA 1 3 6 cpu <unknown>/70%"
    # columns line up: every row's METRIC starts where the header's does
    start = roles[1].index("METRIC")
    assert all(row[start - 2 : start] == "  " and row[start] != " " for row in roles[2:5])

    assert section(text, "Placement:") == ["Placement: not packed (spec.topology names no pack level)"]
    assert section(text, "Scale to zero:") == ["Scale to zero: off"]
    assert section(text, "Re-plan:") == ["Re-plan: off"]
    conditions = section(text, "Conditions:")
    assert columns(conditions[1]) == ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
    assert columns(conditions[2])[:4] == ["Ready", "True", "Available", "3m"]
    assert conditions[4].split(None, 4)[4] == "(the plan's reason above)"  # not printed twice
    assert columns(conditions[4])[3] == "120m"


def test_status_shows_placement_sleep_wake_and_the_last_replan() -> None:
    body = model(
        scaleToZero={"enabled": True, "idleAfter": "10m"},
        planner={"replan": {"enabled": True, "interval": "5m"}},
    )
    body["status"]["placement"] = [
        {
            "level": "rack",
            "nodeLabel": "topology.disagg.dev/rack",
            "domain": "rack-b",
            "required": True,
            "gpusNeeded": 28,
        }
    ]
    body["status"]["conditions"].append(
        cond("ScaledToZero", "False", "Serving", "prefill and decode are up", at="2026-12-02T17:55:00Z")
    )
    body["status"]["replan"] = {
        "time": "2026-12-02T17:58:00Z",
        "observed": {"requestRate": 4.0, "inputTokens": 7867, "outputTokens": 19.7, "ttftMs": 513, "itlMs": 9.1},
        "ttftCorrection": 1.2,
        "itlCorrection": 0.9,
        "prefillFloor": 2,
        "decodeFloor": 1,
        "decision": "prefill floor 1 -> 2",
    }
    regarding = {"kind": "DisaggregatedModel", "name": "llama-70b", "uid": "u-1"}
    events = [
        {
            "reason": "ScaledToZeroTrue",
            "note": "no demand",
            "eventTime": "2026-12-02T17:40:00.000000Z",
            "regarding": regarding,
        },
        {
            "reason": "ScaledToZeroTrue",
            "note": "older sleep",
            "eventTime": "2026-12-02T17:10:00.000000Z",
            "regarding": regarding,
        },
        {
            "reason": "ScaledToZeroFalse",
            "note": "prefill and decode are up",
            "eventTime": "2026-12-02T17:20:00.000000Z",
            "series": {"count": 2, "lastObservedTime": "2026-12-02T17:55:00.000000Z"},
            "regarding": regarding,
        },
        {  # a model of the same name deleted earlier: not this one
            "reason": "ScaledToZeroTrue",
            "note": "another incarnation",
            "eventTime": "2026-12-02T17:59:00.000000Z",
            "regarding": {**regarding, "uid": "u-0"},
        },
    ]
    text = status_text(ModelSnapshot(model=body, events=events), NOW)
    placement = section(text, "Placement:")
    assert columns(placement[1]) == ["LEVEL", "DOMAIN", "PACK", "GPUS", "NODE", "LABEL"]
    assert columns(placement[2]) == ["rack", "rack-b", "required", "28", "topology.disagg.dev/rack"]
    sleep = section(text, "Scale to zero:")
    assert sleep[0] == "Scale to zero: on, idle after 10m"
    assert sleep[1] == "  Now:    serving since 2026-12-02T17:55:00Z (5m ago), ScaledToZero=False (Serving)"
    assert sleep[2] == "  Slept:  2026-12-02T17:40:00.000000Z (20m ago): no demand"
    assert sleep[3] == "  Woke:   2026-12-02T17:55:00.000000Z (5m ago): prefill and decode are up"
    replan = section(text, "Re-plan:")
    assert replan == [
        "Re-plan: on, every 5m",
        "  Last:        2026-12-02T17:58:00Z (2m ago): prefill floor 1 -> 2",
        "  Observed:    4.00 req/s, 7867 in / 19.7 out tokens, TTFT 513 ms, ITL 9.1 ms",
        "  Correction:  TTFT x1.20, ITL x0.90",
        "  Floors:      prefill 2, decode 1",
    ]


def test_status_without_events_or_decisions_says_so() -> None:
    body = model(scaleToZero={"enabled": True}, planner={"replan": {"enabled": True}})
    text = status_text(ModelSnapshot(model=body), NOW)
    sleep = section(text, "Scale to zero:")
    assert sleep[1] == "  Now:    not decided yet (no ScaledToZero condition)"
    assert sleep[2] == "  Slept:  no ScaledToZeroTrue among the model's Events (kept 1h by default)"
    assert section(text, "Re-plan:") == ["Re-plan: on, every 5m; no decision yet"]
    body["status"]["replan"] = {"time": "", "observed": {}, "prefillFloor": 3, "decision": "floors read back"}
    assert section(status_text(ModelSnapshot(model=body), NOW), "Re-plan:") == [
        "Re-plan: on, every 5m",
        "  Last:    none yet (floors read back)",
        "  Floors:  prefill 3",
    ]


def test_defaults_of_the_spec_are_shown_and_an_invalid_spec_is_said_so() -> None:
    body = model(scaleToZero={"enabled": True})
    del body["spec"]["slo"]
    text = status_text(ModelSnapshot(model=body), NOW)
    assert "  Predicted:  TTFT 524 ms (SLO 2s p90), ITL 12.0 ms (SLO 50ms p90): SLOs met" in text
    assert section(text, "Scale to zero:")[0] == "Scale to zero: on, idle after 15m"
    body["spec"]["notAField"] = 1  # what the CRD schema would prune; a newer operator's field
    text = status_text(ModelSnapshot(model=body), NOW)
    assert "  Predicted:  TTFT 524 ms, ITL 12.0 ms: SLOs met" in text
    assert section(text, "Scale to zero:") == ["Scale to zero: unknown (the spec does not validate: see Conditions)"]


def test_a_model_the_planner_rejected_shows_why_and_its_conditions() -> None:
    body = model()
    del body["status"]["plan"]
    body["status"]["roles"] = []
    body["status"]["conditions"] = [cond("Planned", "False", "PlanningFailed", "unknown GPU 'h900'")]
    text = status_text(ModelSnapshot(model=body), NOW)
    assert section(text, "Plan:") == ["Plan: none, Planned=False (PlanningFailed)", "  Why: unknown GPU 'h900'"]
    assert section(text, "Roles:") == ["Roles: none reported yet"]
    assert "unknown GPU 'h900'" in section(text, "Conditions:")[2]


def test_a_status_this_version_cannot_read_still_shows_the_conditions() -> None:
    body = model()
    body["status"]["fieldFromTheFuture"] = 1
    text = status_text(ModelSnapshot(model=body), NOW)
    assert "Status: not readable by this kubectl-disagg (status.fieldFromTheFuture:" in text
    assert section(text, "Conditions:")[2].split()[:3] == ["Ready", "True", "Available"]


def test_a_model_without_status_says_the_operator_may_not_run() -> None:
    body = model()
    del body["status"]
    text = status_text(ModelSnapshot(model=body), NOW)
    assert "Conditions: none yet (is the operator running?)" in text
    assert "Ready:       -" in text


def change(**kwargs: Any) -> PlanChange:
    base: dict[str, Any] = {
        "name": "llama-70b",
        "namespace": "prod",
        "plan": plan(),
        "verdict": "SLOsMet",
        "message": "Disaggregated serving.",
        "deployed": True,
        "live_plan": plan(),
        "live_verdict": "SLOsMet",
    }
    return PlanChange(**{**base, **kwargs})


def test_an_unchanged_plan_says_no_change() -> None:
    assert changed_fields(change()) == []
    # float noise below what is printed is no change
    assert changed_fields(change(plan=plan(ttft=524.31, itl=12.0201))) == []
    text = plan_change_text(change())
    head = "disaggregatedmodel/llama-70b in namespace prod: no change (the live plan is what this manifest plans)"
    assert text.splitlines()[0] == head
    assert text.splitlines()[1] == "  Planned: SLOsMet: Disaggregated serving."


def test_a_changed_plan_lists_each_field_old_and_new() -> None:
    new = plan(prefill=6, ttft=593.0, itl=15.3).model_copy(update={"slo_met": False})
    text = plan_change_text(change(plan=new, verdict="SLOsAtRisk", message="replicas.max caps a role"))
    lines = text.splitlines()
    assert lines[0] == "disaggregatedmodel/llama-70b in namespace prod: 7 fields would change"
    assert columns(lines[1]) == ["FIELD", "LIVE", "MANIFEST"]
    rows = {line[:21].strip(): columns(line[21:]) for line in lines[2:9]}
    assert rows == {
        "ratio": ["5P:1D", "->", "6P:1D"],
        "GPUs at the floor": ["28", "->", "32"],
        "prefill floor": ["5", "->", "6"],
        "predicted TTFT": ["524", "ms", "->", "593", "ms"],
        "predicted ITL": ["12.0", "ms", "->", "15.3", "ms"],
        "SLOs met": ["yes", "->", "no"],
        "verdict": ["SLOsMet", "->", "SLOsAtRisk"],
    }
    assert lines[9] == "  Planned: SLOsAtRisk: replicas.max caps a role"


def test_a_mode_switch_shows_the_roles_that_come_and_go() -> None:
    fields = {k: (old, new) for k, old, new in changed_fields(change(plan=plan(prefill=3, decode=None)))}
    assert fields["mode"] == ("disaggregated", "aggregated")
    assert fields["ratio"] == ("5P:1D", "3PD")
    assert fields["prefill-decode floor"] == ("-", "3")
    assert fields["decode floor"] == ("1", "-")
    assert fields["disagg threshold"] == ("512", "-")


def test_a_model_not_deployed_prints_the_plan_it_would_get() -> None:
    text = plan_change_text(change(deployed=False, live_plan=None, live_verdict=None))
    lines = text.splitlines()
    assert lines[0] == "disaggregatedmodel/llama-70b in namespace prod: not deployed; applying the manifest would plan:"
    assert columns(lines[1]) == ["FIELD", "PLAN"]
    assert "  prefill floor      5" in lines
    assert "  predicted TTFT     524 ms" in lines


def test_a_live_model_without_a_plan_shows_every_field_as_new() -> None:
    text = plan_change_text(change(live_plan=None, live_verdict="PlanningFailed", notes=("a note",)))
    lines = text.splitlines()
    assert lines[0].endswith("15 fields would change (the live model has no plan yet)")
    assert columns(lines[-3]) == ["verdict", "PlanningFailed", "->", "SLOsMet"]
    assert "  a note" in lines
