"""Every autoscaling engine has exactly one backend, and what it declares is what it renders."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from disagg.api.spec import AutoscalingEngine
from disagg.render.autoscaling import BACKENDS, KEDA_PAUSED_REPLICAS
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
