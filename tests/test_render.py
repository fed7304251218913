"""The renderer: golden files for the samples, schema validity, and llm-d conventions."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from disagg.api.spec import DisaggregatedModelSpec
from disagg.placement import place
from disagg.planner.resolve import resolve_plan
from disagg.reconcile import pod_demands
from disagg.render import ModelRef, render, to_yaml
from disagg.settings import OperatorSettings
from tests.conftest import ROOT, SAMPLES, load
from tests.schema import validate_strict

GOLDEN = ROOT / "tests" / "golden"
SETTINGS = OperatorSettings()


def render_body(body: dict[str, Any], settings: OperatorSettings = SETTINGS) -> list[dict[str, Any]]:
    return render_with(body, settings=settings)


def render_with(body: dict[str, Any], settings: OperatorSettings = SETTINGS, **options: Any) -> list[dict[str, Any]]:
    spec = DisaggregatedModelSpec.model_validate(body["spec"])
    plan = resolve_plan(spec).plan
    assert plan is not None
    model = ModelRef(name=body["metadata"]["name"], namespace="default", uid="0000-uid")
    placement = place(spec.topology, pods=pod_demands(spec, plan), inventory=None, settings=settings, previous={})
    return render(model, spec, plan, settings, placement, **options)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_golden(sample: Path) -> None:
    rendered = to_yaml(render_body(load(sample)))
    golden = GOLDEN / f"{sample.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(rendered)
    assert golden.exists(), f"missing {golden}; run UPDATE_GOLDEN=1 pytest tests/test_render.py"
    assert rendered == golden.read_text()


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_samples_pass_strict_schema(sample: Path) -> None:
    objects = render_body(load(sample))
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= {o["kind"] for o in objects}
    for obj in objects:
        validate_strict(obj)


def test_strict_schema_check_can_fail() -> None:
    deployment = next(o for o in render_body(load(SAMPLES[0])) if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strict(deployment)


def test_autoscaled_deployments_carry_no_replicas() -> None:
    objects = render_body(load(ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml"))
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    deployments = by_kind(objects, "Deployment")
    assert set(hpas) == {"llama-70b-prefill", "llama-70b-decode", "llama-70b-router"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"]["name"] == name
        assert "replicas" not in deployments[name]["spec"]
    assert hpas["llama-70b-prefill"]["spec"]["minReplicas"] == 5  # the planner's floor, within [2, 6]
    assert hpas["llama-70b-prefill"]["spec"]["maxReplicas"] == 6


def test_fixed_roles_carry_replicas_and_no_autoscaler() -> None:
    body = load(ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml")
    body["spec"]["decode"]["replicas"] = {"min": 2, "max": 2}
    objects = render_body(body)
    assert by_kind(objects, "Deployment")["llama-70b-decode"]["spec"]["replicas"] == 2
    assert "llama-70b-decode" not in by_kind(objects, "HorizontalPodAutoscaler")


def test_hpa_metrics_per_role() -> None:
    hpas = by_kind(
        render_body(load(ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml")), "HorizontalPodAutoscaler"
    )
    prefill = hpas["llama-70b-prefill"]["spec"]
    decode = hpas["llama-70b-decode"]["spec"]
    router = hpas["llama-70b-router"]["spec"]
    assert prefill["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    assert prefill["metrics"][0]["pods"]["target"]["averageValue"] == "4"
    assert decode["metrics"][0]["pods"]["metric"]["name"] == "vllm_kv_cache_usage_perc"
    assert decode["metrics"][0]["pods"]["target"]["averageValue"] == "800m"
    assert router["metrics"][0]["resource"]["name"] == "cpu"
    for spec in (prefill, decode, router):
        assert spec["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
        assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def _container(deployment: dict[str, Any], name: str = "vllm") -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _arg(container: dict[str, Any], flag: str) -> str:
    return next(a.split("=", 1)[1] for a in container["args"] if a.startswith(f"{flag}="))


def test_llmd_conventions_disaggregated() -> None:
    deployments = by_kind(render_body(load(ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml")), "Deployment")
    prefill, decode = deployments["llama-70b-prefill"], deployments["llama-70b-decode"]
    labels = prefill["spec"]["template"]["metadata"]["labels"]
    assert labels["llm-d.ai/role"] == "prefill"
    assert labels["llm-d.ai/inference-serving"] == "true"
    assert decode["spec"]["template"]["metadata"]["labels"]["llm-d.ai/role"] == "decode"

    p, d = _container(prefill), _container(decode)
    assert _arg(p, "--port") == "8000"
    assert _arg(d, "--port") == "8200"
    assert _arg(p, "--tensor-parallel-size") == "4"
    assert _arg(d, "--tensor-parallel-size") == "8"
    assert p["resources"]["requests"]["nvidia.com/gpu"] == "4" == p["resources"]["limits"]["nvidia.com/gpu"]
    assert d["resources"]["limits"]["nvidia.com/gpu"] == "8"
    kv = json.loads(_arg(p, "--kv-transfer-config"))
    assert kv["kv_connector"] == "NixlConnector"
    assert kv["kv_load_failure_policy"] == "recompute"
    env = {e["name"]: e for e in p["env"]}
    assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"]["value"] == "5600"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}

    sidecars = decode["spec"]["template"]["spec"]["initContainers"]
    assert len(sidecars) == 1
    assert sidecars[0]["restartPolicy"] == "Always"
    assert "--model-server-port=8200" in sidecars[0]["args"]
    assert "--secure-proxy=false" in sidecars[0]["args"]
    assert "--port=8000" in sidecars[0]["args"]
    assert "initContainers" not in prefill["spec"]["template"]["spec"]


def test_router_config_uses_prefix_based_decider() -> None:
    objects = render_body(load(ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml"))
    config = yaml.safe_load(by_kind(objects, "ConfigMap")["llama-70b-router"]["data"]["config.yaml"])
    assert config["kind"] == "EndpointPickerConfig"
    decider = next(p for p in config["plugins"] if p["type"] == "prefix-based-pd-decider")
    assert decider["parameters"]["nonCachedTokens"] == 512
    handler = next(p for p in config["plugins"] if p["type"] == "disagg-profile-handler")
    assert handler["parameters"]["deciders"]["prefill"] == decider["name"]
    assert {p["name"] for p in config["schedulingProfiles"]} == {"prefill", "decode"}


def test_router_config_change_rolls_router() -> None:
    body = load(ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml")
    before = by_kind(render_body(body), "Deployment")["llama-70b-router"]
    body["spec"]["router"]["disaggThreshold"] = 2048
    after = by_kind(render_body(body), "Deployment")["llama-70b-router"]
    key = "disagg.dev/config-hash"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][key]
        != after["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_aggregated_renders_one_engine_role() -> None:
    objects = render_body(load(ROOT / "manifests/samples/llama-8b-aggregated.yaml"))
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == {"llama-8b-chat-prefill-decode", "llama-8b-chat-router"}
    engine = deployments["llama-8b-chat-prefill-decode"]
    assert engine["spec"]["template"]["metadata"]["labels"]["llm-d.ai/role"] == "prefill-decode"
    assert not any(a.startswith("--kv-transfer-config") for a in _container(engine)["args"])
    config = yaml.safe_load(by_kind(objects, "ConfigMap")["llama-8b-chat-router"]["data"]["config.yaml"])
    assert not any(p["type"] == "prefix-based-pd-decider" for p in config["plugins"])


def test_rack_packing_renders_required_affinity() -> None:
    deployments = by_kind(render_body(load(ROOT / "manifests/samples/qwen3-32b-rack-packed.yaml")), "Deployment")
    for role in ("prefill", "decode"):
        aff = deployments[f"qwen3-32b-{role}"]["spec"]["template"]["spec"]["affinity"]
        term = aff["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        assert term["matchExpressions"][0]["key"] == "topology.disagg.dev/rack"
        follow = aff["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
        assert follow["topologyKey"] == "topology.disagg.dev/rack"
        assert follow["labelSelector"]["matchLabels"] == {"disagg.dev/model": "qwen3-32b"}
    assert "affinity" not in deployments["qwen3-32b-router"]["spec"]["template"]["spec"]


def test_owner_references_and_labels_on_every_child() -> None:
    for obj in render_body(load(SAMPLES[0])):
        ref = obj["metadata"]["ownerReferences"][0]
        assert ref["kind"] == "DisaggregatedModel"
        assert ref["uid"] == "0000-uid"
        assert ref["controller"] is True
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "disagg-operator"


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("engine", ["hpa", "keda", "none"])
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_every_selector_picks_exactly_its_roles_pods(sample: Path, engine: str) -> None:
    """Each Service, budget and scaler target reaches the pods of its own role's Deployment and no
    other role's, with every child owned by the model -- even when a user's pod labels try to
    claim the operator's role and model labels."""
    body = load(sample)
    body["spec"]["autoscaling"] = {"engine": engine, "prometheus": {"url": "http://prom.monitoring:9090"}}
    hostile = {"disagg.dev/role": "router", "disagg.dev/model": "someone-else", "team": "a"}
    for role in ("prefill", "decode", "router"):
        body["spec"].setdefault(role, {}).setdefault("scheduling", {})["podLabels"] = hostile
    objects = render_body(body)
    deployments = by_kind(objects, "Deployment")
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}
    for name, deployment in deployments.items():
        assert _selects(deployment["spec"]["selector"]["matchLabels"], pods[name]), name
        assert pods[name]["team"] == "a", "a user's own label is kept"
    for obj in objects:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "0000-uid", obj["metadata"]["name"]
        kind, name = obj["kind"], obj["metadata"]["name"]
        selector = {
            "Service": lambda o: o["spec"].get("selector"),
            "PodDisruptionBudget": lambda o: o["spec"]["selector"]["matchLabels"],
        }.get(kind, lambda o: None)(obj)
        if selector is not None:
            picked = {d for d, labels in pods.items() if _selects(selector, labels)}
            assert picked == {name}, f"{kind}/{name} selects {picked}"
        if kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            assert obj["spec"]["scaleTargetRef"]["name"] == name, name
            assert name in deployments, name


def test_keda_engine_renders_scaled_objects() -> None:
    body = load(ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml")
    body["spec"]["autoscaling"] = {"engine": "keda", "prometheus": {"url": "http://prom.monitoring:9090"}}
    objects = render_body(body)
    assert not by_kind(objects, "HorizontalPodAutoscaler")
    scaled = by_kind(objects, "ScaledObject")
    assert set(scaled) == {"llama-70b-prefill", "llama-70b-decode", "llama-70b-router"}
    trigger = scaled["llama-70b-prefill"]["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert "vllm:num_requests_waiting" in trigger["metadata"]["query"]
    assert trigger["metadata"]["serverAddress"] == "http://prom.monitoring:9090"
    assert "replicas" not in by_kind(objects, "Deployment")["llama-70b-prefill"]["spec"]


def test_autoscaling_none_fixes_replicas() -> None:
    body = load(ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml")
    body["spec"]["autoscaling"] = {"engine": "none"}
    objects = render_body(body)
    assert not by_kind(objects, "HorizontalPodAutoscaler")
    assert by_kind(objects, "Deployment")["llama-70b-prefill"]["spec"]["replicas"] == 5


def test_args_and_env_are_data_not_shell() -> None:
    body = load(SAMPLES[0])
    hostile = "$(rm -rf /); `id` && echo pwned"
    body["spec"]["engine"] = {"args": [f"--extra={hostile}"], "env": [{"name": "X", "value": hostile}]}
    deployment = next(
        o for o in render_body(body) if o["kind"] == "Deployment" and "router" not in o["metadata"]["name"]
    )
    container = _container(deployment)
    assert container["command"] == ["vllm", "serve"]
    assert f"--extra={hostile}" in container["args"]
    assert {"name": "X", "value": hostile} in container["env"]


def test_long_names_stay_within_limits_and_unique() -> None:
    body = load(SAMPLES[0])
    names = set()
    for suffix in ("a", "b"):
        body["metadata"]["name"] = "m" * 70 + suffix
        for obj in render_body(body):
            assert len(obj["metadata"]["name"]) <= 63
            for value in obj["metadata"]["labels"].values():
                assert len(value) <= 63
            names.add((obj["kind"], obj["metadata"]["name"]))
    assert len(names) == 2 * len(render_body(body))


def test_engine_security_defaults_and_overrides() -> None:
    body = load(ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml")
    prefill = _container(by_kind(render_body(body), "Deployment")["llama-70b-prefill"])
    security = prefill["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}  # RDMA pins memory
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    body["spec"]["kvTransfer"]["network"] = "tcp"
    body["spec"]["prefill"]["scheduling"] = {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000}}
    prefill = _container(by_kind(render_body(body), "Deployment")["llama-70b-prefill"])
    assert prefill["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert prefill["securityContext"]["runAsNonRoot"] is True
    validate_strict(by_kind(render_body(body), "Deployment")["llama-70b-prefill"])


def test_hub_token_is_only_referenced() -> None:
    body = load(ROOT / "manifests/samples/llama-3.3-70b-disaggregated.yaml")
    text = to_yaml(render_body(body))
    assert "secretKeyRef" in text
    assert "kind: Secret" not in text
