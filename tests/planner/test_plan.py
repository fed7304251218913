"""A Plan's engine roles: one mapping from mode to role names and the spec section configuring each."""

from __future__ import annotations

import dataclasses

import pytest

from disagg.api.spec import DisaggregatedModelSpec
from disagg.planner.plan import RolePlan, engine_roles, placeholder_plan
from tests.conftest import ROOT, load


def spec_of(sample: str) -> DisaggregatedModelSpec:
    return DisaggregatedModelSpec.model_validate(load(ROOT / "manifests/samples" / sample)["spec"])


def test_aggregated_role_is_configured_by_the_prefill_section() -> None:
    spec = spec_of("llama-8b-aggregated.yaml")
    roles = engine_roles(spec, placeholder_plan(spec))
    assert [(name, role) for name, _, role in roles] == [("prefill-decode", spec.prefill)]


def test_disaggregated_roles_pair_with_their_sections() -> None:
    spec = spec_of("llama-3.3-70b-disaggregated.yaml")
    plan = placeholder_plan(spec)
    assert [(name, role_plan, role) for name, role_plan, role in engine_roles(spec, plan)] == [
        ("prefill", plan.prefill, spec.prefill),
        ("decode", plan.decode, spec.decode),
    ]


def test_mode_and_decode_role_must_agree() -> None:
    spec = spec_of("llama-3.3-70b-disaggregated.yaml")
    plan = placeholder_plan(spec)
    with pytest.raises(ValueError, match="a disaggregated plan must have a decode role"):
        dataclasses.replace(plan, decode=None)
    with pytest.raises(ValueError, match="an aggregated plan must not have a decode role"):
        dataclasses.replace(plan, mode="aggregated", decode=RolePlan(replicas=1, max_replicas=1, tensor_parallel=8))
