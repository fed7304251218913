"""Every autoscaling engine has exactly one backend, and what it declares is what it renders."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from disagg.api.spec import AutoscalingEngine, DisaggregatedModelSpec
from disagg.planner.resolve import resolve_plan
from disagg.reconcile import pause_acknowledged
from disagg.render.autoscaling import BACKENDS, KEDA_PAUSED, KEDA_PAUSED_REPLICAS
from disagg.render.names import ModelRef
from tests.conftest import SAMPLES, load
from tests.test_render import render_body, render_with

SAMPLE = next(p for p in SAMPLES if p.name == "llama-3.3-70b-disaggregated.yaml")


def with_engine(engine: AutoscalingEngine, **extra: Any) -> dict[str, Any]:
    body = copy.deepcopy(load(SAMPLE))
    body["spec"]["autoscaling"] = {"engine": engine.value}
    body["spec"].update(extra)
    return body


def test_every_engine_has_a_backend_that_names_it() -> None:
    assert set(BACKENDS) == set(AutoscalingEngine)
    for engine, backend in BACKENDS.items():
        assert backend.engine is engine


@pytest.mark.parametrize("engine", list(AutoscalingEngine), ids=lambda e: e.value)
def test_backend_renders_what_it_declares(engine: AutoscalingEngine) -> None:
    backend = BACKENDS[engine]
    objects = render_body(with_engine(engine))
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    scalers = [o for o in objects if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert deployments
    if backend.api_version is None:
        assert scalers == []
    else:
        # one scaler per Deployment (prefill, decode, router), all of the backend's API
        assert {o["apiVersion"] for o in scalers} == {backend.api_version}
        assert sorted(o["spec"]["scaleTargetRef"]["name"] for o in scalers) == sorted(
            d["metadata"]["name"] for d in deployments
        )
    for deployment in deployments:
        # a backend that owns replicas never has them rendered (no fight with its controller)
        assert ("replicas" in deployment["spec"]) is not backend.owns_replicas, deployment["metadata"]["name"]


@pytest.mark.parametrize("engine", list(AutoscalingEngine), ids=lambda e: e.value)
def test_backend_sleeps_the_way_it_declares(engine: AutoscalingEngine) -> None:
    backend = BACKENDS[engine]
    body = with_engine(engine, scaleToZero={"enabled": True})
    awake = render_body(body)
    asleep = render_with(body, engines_at_zero=True)
    engines = {"llama-70b-prefill", "llama-70b-decode"}
    if not backend.owns_replicas:
        assert {o["metadata"]["name"]: o["spec"]["replicas"] for o in asleep if o["kind"] == "Deployment"} == {
            "llama-70b-prefill": 0,
            "llama-70b-decode": 0,
            "llama-70b-router": 1,
        }
    elif backend.sleeps_through_scale:
        assert asleep == awake, "the operator moves /scale; the rendered form must not change at zero"
    else:
        paused = {
            o["metadata"]["name"]
            for o in asleep
            if (o["metadata"].get("annotations") or {}).get(KEDA_PAUSED_REPLICAS) == "0"
        }
        assert paused == engines  # the router keeps scaling: it holds the requests that wake the model


def test_keda_pause_is_nudged_once_keda_reports_it() -> None:
    """KEDA may stop after deleting its HPA without scaling to the paused count
    (kedacore/keda#7446); once its Paused condition shows, a second annotation makes it reconcile
    again, and only for the roles that report the pause."""
    body = with_engine(AutoscalingEngine.KEDA, scaleToZero={"enabled": True})

    def annotations(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
        return {
            o["metadata"]["name"]: o["metadata"].get("annotations") or {}
            for o in objects
            if o["kind"] == "ScaledObject"
        }

    first = annotations(render_with(body, engines_at_zero=True))
    assert all(KEDA_PAUSED not in a for a in first.values()), first
    nudged = annotations(render_with(body, engines_at_zero=True, pause_acknowledged=frozenset({"decode"})))
    assert nudged["llama-70b-decode"][KEDA_PAUSED] == "true"
    assert nudged["llama-70b-decode"][KEDA_PAUSED_REPLICAS] == "0"
    assert KEDA_PAUSED not in nudged["llama-70b-prefill"]
    # awake, neither annotation stays, whatever the live scaler said
    awake = annotations(render_with(body, pause_acknowledged=frozenset({"decode", "prefill"})))
    assert all(KEDA_PAUSED not in a and KEDA_PAUSED_REPLICAS not in a for a in awake.values()), awake


def test_pause_acknowledged_reads_keda_s_paused_condition() -> None:
    plan = resolve_plan(DisaggregatedModelSpec.model_validate(with_engine(AutoscalingEngine.KEDA)["spec"])).plan
    assert plan is not None
    model = ModelRef(namespace="ns", name="llama-70b", uid="u")

    def scaled_object(name: str, annotated: bool, paused: str | None) -> dict[str, Any]:
        conditions = [{"type": "Ready", "status": "True"}]
        if paused is not None:
            conditions.append({"type": "Paused", "status": paused})
        annotations = {KEDA_PAUSED_REPLICAS: "0"} if annotated else {}
        return {"metadata": {"name": name, "annotations": annotations}, "status": {"conditions": conditions}}

    def live(*objs: dict[str, Any]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
        return {("keda.sh", "ScaledObject", "ns", o["metadata"]["name"]): o for o in objs}

    both = live(scaled_object("llama-70b-prefill", True, "True"), scaled_object("llama-70b-decode", True, "False"))
    assert pause_acknowledged(model, plan, both) == frozenset({"prefill"})
    # a Paused condition left from before, without the operator's annotation, is not this sleep's
    stale = live(scaled_object("llama-70b-prefill", False, "True"), scaled_object("llama-70b-decode", True, None))
    assert pause_acknowledged(model, plan, stale) == frozenset()
