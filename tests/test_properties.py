"""Property tests: every spec the API accepts renders objects a strict Kubernetes schema accepts."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from disagg.api.spec import DisaggregatedModelSpec, semantic_errors
from disagg.placement import place
from disagg.planner.plan import placeholder_plan
from disagg.reconcile import pod_demands
from disagg.render import ModelRef, render
from disagg.settings import OperatorSettings
from tests.schema import validate_strict

TP = st.sampled_from([1, 2, 4, 8])
NAMES = st.from_regex(r"[a-z]([a-z0-9-]{0,60}[a-z0-9])?", fullmatch=True)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@st.composite
def replicas(draw: st.DrawFn, floor: int = 1) -> dict[str, int]:
    low = draw(st.integers(floor, 5))
    result = {"min": low}
    if draw(st.booleans()):
        result["max"] = draw(st.integers(max(low, 1), 12))
    return result


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    prefill_tp = draw(TP)
    decode_tp = draw(st.sampled_from([t for t in (1, 2, 4, 8) if t >= prefill_tp]))
    scale_to_zero = draw(st.booleans())
    floor = 0 if scale_to_zero else 1
    spec: dict[str, Any] = {
        "model": {"name": draw(st.sampled_from(["meta-llama/Llama-3.3-70B-Instruct", "Qwen/Qwen3-32B", "x"]))},
        "mode": draw(st.sampled_from(["auto", "disaggregated", "aggregated"])),
        "prefill": {"replicas": draw(replicas(floor)), "parallelism": {"tensor": prefill_tp}},
        "decode": {"replicas": draw(replicas(floor)), "parallelism": {"tensor": decode_tp}},
        "router": {
            "replicas": draw(replicas(1)),
            "disaggThreshold": draw(st.one_of(st.just("auto"), st.integers(0, 10**6))),
        },
        "autoscaling": {"engine": draw(st.sampled_from(["hpa", "keda", "none"]))},
        "scaleToZero": {"enabled": scale_to_zero},
        "engine": {
            "args": draw(st.lists(TEXT, max_size=3)),
            "env": [
                {"name": n, "value": v}
                for n, v in draw(
                    st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), TEXT, max_size=3)
                ).items()
            ],
        },
        "kvTransfer": {
            "network": draw(st.sampled_from(["rdma", "tcp"])),
            "backends": draw(st.lists(st.sampled_from(["UCX", "UCCL", "LIBFABRIC"]), min_size=1, max_size=2)),
        },
        "accelerator": {"type": draw(st.sampled_from(["h100-sxm", "b200", "a100_80g"]))},
    }
    topology = draw(
        st.sampled_from(
            [
                None,
                {"packDomain": "rack"},
                {"pack": {"required": "zone", "preferred": "host"}},
                {"pack": {"preferred": "block"}},
            ]
        )
    )
    if topology:
        spec["topology"] = topology
    if draw(st.booleans()):
        spec["model"]["tokenSecretRef"] = {"name": "hf"}
    if draw(st.booleans()):
        spec["prefill"]["scheduling"] = {
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }
    return spec


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=specs(), name=NAMES)
def test_every_valid_spec_renders_schema_valid_objects(raw: dict[str, Any], name: str) -> None:
    spec = DisaggregatedModelSpec.model_validate(raw)
    assert semantic_errors(spec) == []
    plan = placeholder_plan(spec)
    settings_ = OperatorSettings()
    placement = place(spec.topology, pods=pod_demands(spec, plan), inventory=None, settings=settings_, previous={})
    objects = render(ModelRef(name=name, namespace="ns", uid="u"), spec, plan, settings_, placement)
    seen = set()
    for obj in objects:
        validate_strict(obj)
        assert len(obj["metadata"]["name"]) <= 63
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen
        seen.add(key)
        if obj["kind"] == "Deployment":
            scaled = any(
                o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
                and o["metadata"]["name"] == obj["metadata"]["name"]
                for o in objects
            )
            assert ("replicas" in obj["spec"]) != scaled
