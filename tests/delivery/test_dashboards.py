"""The shipped Grafana dashboards: generated from operator/disagg/dashboards.py, never edited by hand."""

from __future__ import annotations

import json
import re

from prometheus_client import CollectorRegistry

from disagg import dashboards
from disagg.telemetry import Telemetry


def test_committed_dashboards_match_the_generator() -> None:
    for name, text in dashboards.rendered().items():
        path = dashboards.OUT_DIR / name
        assert path.exists(), f"missing {path}: run `make dashboards`"
        assert path.read_text() == text, f"{path} drifted from operator/disagg/dashboards.py: run `make dashboards`"
    assert {p.name for p in dashboards.OUT_DIR.glob("*.json")} == set(dashboards.rendered())


def test_every_panel_queries_prometheus_and_every_operator_metric_exists() -> None:
    families = list(Telemetry(CollectorRegistry()).registry.collect())
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exported = {f"{f.name}{suffix}" for f in families for suffix in suffixes.get(f.type, ("",))}
    for name in dashboards.rendered():
        board = json.loads((dashboards.OUT_DIR / name).read_text())
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert panels, name
        for panel in panels:
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["type"] == "prometheus"
                for metric in re.findall(r"\b(disagg_[a-z_]+)", target["expr"]):
                    assert metric in exported, (
                        f"{name}: {panel['title']} reads {metric}, which the operator does not export"
                    )
