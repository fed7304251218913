"""Hostile input through the real API server: schema + CEL, then the operator's own parsing and renderer.

Property: whatever the API server accepts, the operator parses without a traceback and renders
objects that pass a strict Kubernetes schema check (or reports a planning error in one line);
whatever it rejects comes back as a readable message.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from disagg.placement import place
from disagg.planner.resolve import resolve_plan
from disagg.reconcile import parse_spec, pod_demands
from disagg.render import ModelRef, render
from disagg.settings import OperatorSettings
from e2e.harness import Kubectl
from tests.schema import validate_strict
from tests.test_properties import specs

pytestmark = pytest.mark.e2e

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
PATHS = [
    ("prefill", "replicas", "min"),
    ("decode", "parallelism", "tensor"),
    ("router", "disaggThreshold"),
    ("topology", "packDomain"),
    ("workload", "requestRate"),
    ("slo", "ttft"),
    ("model", "name"),
    ("engine", "args"),
    ("engine", "env"),
    ("accelerator", "resourceName"),
    ("kvTransfer", "backends"),
    ("scaleToZero", "idleAfter"),
    ("model", "tokenSecretRef"),
    ("mode",),
    ("prefill", "scheduling", "nodeSelector"),
]


@st.composite
def hostile(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = draw(specs())
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(PATHS))
        value = draw(
            JSON | st.text(min_size=200, max_size=5000) | st.lists(st.text(max_size=5), min_size=100, max_size=300)
        )
        node = spec
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[path[-1]] = value
    return spec


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(spec=hostile())
def test_api_server_and_operator_agree_on_hostile_specs(kubectl: Kubectl, namespace: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "DisaggregatedModel",
        "metadata": {"name": "fuzz"},
        "spec": spec,
    }
    result = kubectl.dry_run(json.dumps(body), "-o", "json", namespace=namespace)
    if result.returncode != 0:
        message = result.stderr.strip()
        assert message, "rejected without a message"
        assert "Traceback" not in message
        return
    accepted = json.loads(result.stdout)
    parsed = parse_spec(accepted["spec"])  # the CRD is at least as strict as the operator's model
    resolution = resolve_plan(parsed)
    if resolution.plan is None:
        assert "\n" not in resolution.message  # a one-line planning error, reported in conditions
        return
    plan = resolution.plan
    operator_settings = OperatorSettings()
    placement = place(
        parsed.topology, pods=pod_demands(parsed, plan), inventory=None, settings=operator_settings, previous={}
    )
    for obj in render(ModelRef("fuzz", namespace, "uid"), parsed, plan, operator_settings, placement):
        validate_strict(obj)
        assert len(obj["metadata"]["name"]) <= 63
