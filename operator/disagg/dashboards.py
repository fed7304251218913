"""Grafana dashboards for a model and for the operator, built with Grafana's own typed builders.

``make dashboards`` writes them to ``charts/disagg-operator/dashboards/`` (the chart ships each as
a ConfigMap with Grafana's sidecar label); ``tests/delivery`` fails when the files drift from this
code, and the e2e suite runs every PromQL expression here against its Prometheus during the
scaling tests. The TTFT and ITL panels use the very queries the operator's live re-planning reads
(:func:`disagg.scaling.workload_queries`), so what a reader sees is what the operator acts on.

Build-time only: it needs ``grafana-foundation-sdk`` (a dev dependency), never the running operator.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as gm

from disagg.api.spec import DisaggregatedModelSpec
from disagg.scaling import workload_queries

DATASOURCE = gm.DataSourceRef(type_val="prometheus", uid="${datasource}")
NS, MODEL = "$namespace", "$model"
WINDOW = "5m"  # the windows the operator itself queries (workload_queries default)
OUT_DIR = Path(__file__).resolve().parents[2] / "charts" / "disagg-operator" / "dashboards"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


def _target(query: Query, ref: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref).datasource(DATASOURCE)


def _series(title: str, unit: str, *queries: Query, description: str = "") -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).height(8).span(12)
    if description:
        panel = panel.description(description)
    for index, query in enumerate(queries):
        panel = panel.with_target(_target(query, chr(ord("A") + index)))
    return panel


def _stat(title: str, unit: str, query: Query) -> stat.Panel:
    return (
        stat.Panel().title(title).unit(unit).datasource(DATASOURCE).height(4).span(6).with_target(_target(query, "A"))
    )


def _variables(*, model: bool) -> list[gd.DatasourceVariable | gd.QueryVariable]:
    out: list[gd.DatasourceVariable | gd.QueryVariable] = [
        gd.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
    ]
    if model:
        out += [
            gd.QueryVariable("namespace")
            .label("Namespace")
            .datasource(DATASOURCE)
            .query("label_values(disagg_model_ready, namespace)"),
            gd.QueryVariable("model")
            .label("Model")
            .datasource(DATASOURCE)
            .query('label_values(disagg_model_ready{namespace="$namespace"}, model)'),
        ]
    return out


def _pods(role: str) -> str:
    return f'namespace="{NS}",pod=~"{MODEL}-{role}-.+"'


def model_queries() -> dict[str, list[Query]]:
    """Every panel of the model dashboard, by title: what the e2e suite runs against Prometheus."""
    model = f'namespace="{NS}",model="{MODEL}"'
    router = _pods("router")
    observed = workload_queries(
        DisaggregatedModelSpec.model_validate({"model": {"name": "dashboard"}}), namespace=NS, name=MODEL, window=WINDOW
    )
    return {
        "Replicas per role": [
            Query(f'sum by (role) (disagg_model_replicas{{{model},kind="ready"}})', "{{role}} ready"),
            Query(f'sum by (role) (disagg_model_replicas{{{model},kind="desired"}})', "{{role}} desired"),
            Query(f'sum by (role) (disagg_model_replicas{{{model},kind="planned"}})', "{{role}} planned floor"),
        ],
        "Prefill queue (requests waiting)": [
            Query(f"sum by (pod) (vllm:num_requests_waiting{{{_pods('prefill')}}})", "{{pod}}"),
        ],
        "Decode KV-cache use": [
            Query(f"max by (pod) (vllm:kv_cache_usage_perc{{{_pods('decode')}}})", "{{pod}}"),
        ],
        "TTFT against the SLO": [
            Query(observed.ttft, "observed p90"),
            Query(f"disagg_model_predicted_ttft_seconds{{{model}}}", "planned"),
            Query(f"disagg_model_slo_ttft_seconds{{{model}}}", "SLO"),
        ],
        "ITL against the SLO": [
            Query(observed.itl, "observed p90"),
            Query(f"disagg_model_predicted_itl_seconds{{{model}}}", "planned"),
            Query(f"disagg_model_slo_itl_seconds{{{model}}}", "SLO"),
        ],
        "Router P/D decisions": [
            Query(
                f"sum by (decision_type) (rate(llm_d_epp_disagg_decision_total{{{router}}}[{WINDOW}]))",
                "{{decision_type}}",
            ),
        ],
        "Requests held by the router": [
            Query(f"sum(llm_d_epp_flow_control_queue_size{{{router}}})", "held"),
        ],
        "Asleep (scale to zero) and wakes": [
            Query(f"disagg_model_asleep{{{model}}}", "asleep"),
            Query(
                f"sum by (direction) (increase(disagg_scale_to_zero_transitions_total{{{model}}}[5m]))", "{{direction}}"
            ),
        ],
    }


UNITS = {
    "Replicas per role": "short",
    "Prefill queue (requests waiting)": "short",
    "Decode KV-cache use": "percentunit",
    "TTFT against the SLO": "s",
    "ITL against the SLO": "s",
    "Router P/D decisions": "reqps",
    "Requests held by the router": "short",
    "Asleep (scale to zero) and wakes": "short",
}


def operator_queries() -> dict[str, list[Query]]:
    """Every panel of the operator dashboard, by title."""
    return {
        "Reconcile passes by result": [
            Query("sum by (result) (rate(disagg_reconcile_duration_seconds_count[5m]))", "{{result}}"),
        ],
        "Reconcile duration p50 / p99": [
            Query("histogram_quantile(0.5, sum by (le) (rate(disagg_reconcile_duration_seconds_bucket[5m])))", "p50"),
            Query("histogram_quantile(0.99, sum by (le) (rate(disagg_reconcile_duration_seconds_bucket[5m])))", "p99"),
        ],
        "Work queue": [
            Query("disagg_workqueue_depth", "waiting"),
            Query("disagg_workqueue_busy", "in a pass"),
            Query("increase(disagg_workqueue_retries_total[5m])", "retries (5m)"),
        ],
        "API writes by kind and verb": [
            Query("sum by (kind, verb) (rate(disagg_api_writes_total[5m]))", "{{verb}} {{kind}}"),
        ],
        "Plans computed vs cached": [
            Query("sum by (source) (rate(disagg_plans_total[5m]))", "{{source}}"),
        ],
        "Placement decisions": [
            Query("sum by (result) (increase(disagg_placement_decisions_total[5m]))", "{{result}}"),
        ],
        "Scale to zero: sleeps and wakes": [
            Query("sum by (direction) (increase(disagg_scale_to_zero_transitions_total[5m]))", "{{direction}}"),
        ],
        "Wake duration p50 / p90": [
            Query("histogram_quantile(0.5, sum by (le) (rate(disagg_wake_duration_seconds_bucket[1h])))", "p50"),
            Query("histogram_quantile(0.9, sum by (le) (rate(disagg_wake_duration_seconds_bucket[1h])))", "p90"),
        ],
    }


OPERATOR_UNITS = {
    "Reconcile passes by result": "ops",
    "Reconcile duration p50 / p99": "s",
    "Work queue": "short",
    "API writes by kind and verb": "wps",
    "Plans computed vs cached": "ops",
    "Placement decisions": "short",
    "Scale to zero: sleeps and wakes": "short",
    "Wake duration p50 / p90": "s",
}


def model_dashboard() -> gd.Dashboard:
    board = (
        gd.Dashboard("disagg: model")
        .uid("disagg-model")
        .tags(["disagg", "llm-d", "vllm"])
        .description("One DisaggregatedModel: replicas per role, queues, KV cache, latency against the SLO")
        .refresh("30s")
        .time("now-1h", "now")
    )
    for variable in _variables(model=True):
        board = board.with_variable(variable)
    model = f'namespace="{NS}",model="{MODEL}"'
    board = board.with_row(gd.Row("Now"))
    for title, query, unit in (
        ("Ready", Query(f"disagg_model_ready{{{model}}}", "ready"), "bool"),
        ("Asleep", Query(f"disagg_model_asleep{{{model}}}", "asleep"), "bool"),
        ("Planned TTFT", Query(f"disagg_model_predicted_ttft_seconds{{{model}}}", "planned"), "s"),
        ("Planned ITL", Query(f"disagg_model_predicted_itl_seconds{{{model}}}", "planned"), "s"),
    ):
        board = board.with_panel(_stat(title, unit, query))
    board = board.with_row(gd.Row("Over time"))
    for title, queries in model_queries().items():
        board = board.with_panel(_series(title, UNITS[title], *queries))
    return board


def operator_dashboard() -> gd.Dashboard:
    board = (
        gd.Dashboard("disagg: operator")
        .uid("disagg-operator")
        .tags(["disagg", "operator"])
        .description("The disagg operator: reconcile passes, work queue, API writes, plans, placement, scale to zero")
        .refresh("30s")
        .time("now-1h", "now")
    )
    for variable in _variables(model=False):
        board = board.with_variable(variable)
    for title, queries in operator_queries().items():
        board = board.with_panel(_series(title, OPERATOR_UNITS[title], *queries))
    return board


def rendered() -> dict[str, str]:
    """File name -> dashboard JSON, as committed under charts/disagg-operator/dashboards/."""
    boards = {"disagg-model.json": model_dashboard(), "disagg-operator.json": operator_dashboard()}
    return {
        name: json.dumps(board.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        for name, board in boards.items()
    }


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (OUT_DIR / name).write_text(text)
        print(f"wrote {OUT_DIR / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
