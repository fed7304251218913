"""The router pod as rendered for llm-d router v0.10.0: discovery modes, Envoy front, pool, route, policy.

The Envoy config is parsed with Envoy's own API definitions (xds-protos, generated from
envoyproxy/data-plane-api): a misspelt field, a wrong enum or an unknown typed config fails. The
programs themselves (epp, pd-sidecar) run on these renders in e2e/test_router_programs.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

# imported for their side effect: they register the typed configs the bootstrap refers to
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2  # noqa: F401
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.health_check.v3 import health_check_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from disagg.render.router import DESTINATION_HEADER, PREFILLER_HEADER
from disagg.settings import OperatorSettings
from tests.conftest import ROOT, load
from tests.test_render import by_kind, render_body

LLAMA_70B = ROOT / "manifests" / "samples" / "llama-3.3-70b-disaggregated.yaml"
LLAMA_8B = ROOT / "manifests" / "samples" / "llama-8b-aggregated.yaml"
DEPRECATED_PLUGINS = {"disagg-headers-handler", "prefill-header-handler", "pd-profile-handler", "by-label"}


def objects_of(path: Any = LLAMA_70B, settings: OperatorSettings | None = None, **spec: Any) -> list[dict[str, Any]]:
    body = load(path)
    body["spec"].update(spec)
    return render_body(body, settings or OperatorSettings())


def router_parts(
    objects: list[dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-router"))
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    return deployment, containers["epp"], containers["envoy"], config_map


def arg(container: dict[str, Any], flag: str) -> str | None:
    return next((a.split("=", 1)[1] for a in container["args"] if a.startswith(flag + "=")), None)


@pytest.mark.parametrize("path", [LLAMA_70B, LLAMA_8B], ids=["disaggregated", "aggregated"])
@pytest.mark.parametrize("scale_to_zero", [False, True], ids=["awake", "scale-to-zero"])
def test_envoy_config_parses_with_envoys_own_api(path: Any, scale_to_zero: bool) -> None:
    spec = {"scaleToZero": {"enabled": True, "holdRequestsFor": "15m"}} if scale_to_zero else {}
    objects = objects_of(path, **spec)
    _, epp, envoy, config_map = router_parts(objects)
    config = yaml.safe_load(config_map["data"]["envoy.yaml"])
    bootstrap = json_format.ParseDict(config, bootstrap_pb2.Bootstrap())
    listeners = {listener.name: listener for listener in bootstrap.static_resources.listeners}
    clusters = {cluster.name: cluster for cluster in bootstrap.static_resources.clusters}
    # the wiring a wrong port would break: Envoy's listeners are the container's ports, ext_proc is the picker
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    assert listeners["http"].address.socket_address.port_value == ports["http"]
    assert listeners["ready"].address.socket_address.port_value == ports["envoy-ready"]
    assert envoy["readinessProbe"]["httpGet"]["port"] == ports["envoy-ready"]
    picker = clusters["endpoint_picker"].load_assignment.endpoints[0].lb_endpoints[0].endpoint
    assert picker.address.socket_address.port_value == int(arg(epp, "--grpc-port") or 0)
    assert picker.address.socket_address.address == "127.0.0.1"
    picked = clusters["picked_endpoint"]
    assert picked.original_dst_lb_config.use_http_header
    assert picked.original_dst_lb_config.http_header_name == DESTINATION_HEADER
    http_filters = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"
    ]
    names = [f["name"] for f in http_filters]
    # clients may not pick endpoints: the routing headers go before the picker sets them
    assert names == ["envoy.filters.http.header_mutation", "envoy.filters.http.ext_proc", "envoy.filters.http.router"]
    removed = [m["remove"] for m in http_filters[0]["typed_config"]["mutations"]["request_mutations"]]
    assert removed == [DESTINATION_HEADER, PREFILLER_HEADER]
    ext_proc = http_filters[1]["typed_config"]
    assert ext_proc["processing_mode"]["request_body_mode"] == "FULL_DUPLEX_STREAMED"
    if scale_to_zero:  # a held request must outlive its wait in the picker's queue
        assert int(ext_proc["message_timeout"].rstrip("s")) > 15 * 60


def test_standalone_discovery_without_a_pool() -> None:
    objects = objects_of()
    _, epp, _, _ = router_parts(objects)
    assert arg(epp, "--pool-name") is None
    assert arg(epp, "--endpoint-selector") == "disagg.dev/model=llama-70b,llm-d.ai/inference-serving=true"
    assert arg(epp, "--endpoint-target-ports") == "8000"
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in epp["env"]} == {
        "POD_NAME": "metadata.name",
        "NAMESPACE": "metadata.namespace",
    }
    assert arg(epp, "--tracing") == "false"
    assert arg(epp, "--metrics-endpoint-auth") == "false"
    assert "--secure-serving" not in " ".join(epp["args"]), "TLS stays on: Gateways and the Envoy front expect it"
    assert not by_kind(objects, "InferencePool")
    role = next(iter(by_kind(objects, "Role").values()))
    assert [r["resources"] for r in role["rules"]] == [["pods"]]


def test_pool_discovery_with_an_inference_pool() -> None:
    objects = objects_of(settings=OperatorSettings(inference_pool=True))
    _, epp, _, _ = router_parts(objects)
    assert arg(epp, "--pool-name") == "llama-70b-router"
    assert arg(epp, "--pool-namespace") == "default"
    assert arg(epp, "--endpoint-selector") is None
    (pool,) = by_kind(objects, "InferencePool").values()
    assert pool["spec"]["selector"]["matchLabels"] == {
        "disagg.dev/model": "llama-70b",
        "llm-d.ai/inference-serving": "true",
    }
    assert pool["spec"]["endpointPickerRef"]["port"] == {"number": 9002}
    role = next(iter(by_kind(objects, "Role").values()))
    granted = {resource for rule in role["rules"] for resource in rule["resources"]}
    assert {"pods", "inferencepools", "inferenceobjectives", "inferencemodelrewrites"} <= granted


@pytest.mark.parametrize("path", [LLAMA_70B, LLAMA_8B], ids=["disaggregated", "aggregated"])
def test_picker_config_is_current_llm_d(path: Any) -> None:
    _, _, _, config_map = router_parts(objects_of(path))
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["apiVersion"] == "llm-d.ai/v1alpha1"
    types = {p["type"] for p in config["plugins"]}
    assert not types & DEPRECATED_PLUGINS
    assert "featureGates" not in config, "flow control only where scale-to-zero needs it"


def test_scale_to_zero_turns_on_flow_control_with_the_hold_time() -> None:
    _, _, _, config_map = router_parts(objects_of(scaleToZero={"enabled": True, "holdRequestsFor": "7m"}))
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["featureGates"] == ["flowControl"]
    assert config["flowControl"] == {"defaultRequestTTL": "7m"}


def test_router_service_serves_openai_http_through_envoy() -> None:
    objects = objects_of()
    (service,) = (s for s in by_kind(objects, "Service").values() if s["metadata"]["name"].endswith("-router"))
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == 80
    assert ports["http"]["targetPort"] == "http"
    _, _, envoy, _ = router_parts(objects)
    assert "http" in {p["name"] for p in envoy["ports"]}


@pytest.mark.parametrize("pool", [False, True], ids=["standalone", "pool"])
def test_http_route_to_a_named_gateway(pool: bool) -> None:
    objects = objects_of(
        settings=OperatorSettings(inference_pool=pool),
        router={"gateway": {"name": "inference-gw", "namespace": "gateways", "sectionName": "http"}},
    )
    (route,) = by_kind(objects, "HTTPRoute").values()
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "inference-gw", "namespace": "gateways",
         "sectionName": "http"}
    ]  # fmt: skip
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    if pool:
        assert backend == {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "llama-70b-router"}
    else:
        assert backend == {"kind": "Service", "name": "llama-70b-router", "port": 80}
    assert not by_kind(objects_of(), "HTTPRoute")


def ingress_ports(rule: dict[str, Any]) -> set[int] | None:
    return {p["port"] for p in rule["ports"]} if "ports" in rule else None


def test_network_policy_lets_only_the_router_engines_and_scrapers_in() -> None:
    (policy,) = by_kind(objects_of(), "NetworkPolicy").values()
    selector = policy["spec"]["podSelector"]
    assert selector["matchLabels"] == {"disagg.dev/model": "llama-70b"}
    roles = ["decode", "prefill", "prefill-decode"]  # every engine role: old pods serve during a mode switch
    assert selector["matchExpressions"] == [{"key": "disagg.dev/role", "operator": "In", "values": roles}]
    serving, engines = policy["spec"]["ingress"]
    assert ingress_ports(serving) == {8000, 8200}
    assert serving["from"][0] == {
        "podSelector": {"matchLabels": {"disagg.dev/model": "llama-70b", "disagg.dev/role": "router"}}
    }
    assert serving["from"][1]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert engines == {"from": [{"podSelector": selector}]}  # NIXL and UCX between the model's own engines


def test_network_policy_with_a_pool_and_named_gateway_pods() -> None:
    (open_policy,) = by_kind(objects_of(settings=OperatorSettings(inference_pool=True)), "NetworkPolicy").values()
    assert open_policy["spec"]["ingress"][-1] == {"ports": [{"protocol": "TCP", "port": 8000}]}
    gateway = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateways"}}}
    settings = OperatorSettings(inference_pool=True, engine_clients=[gateway])
    (policy,) = by_kind(objects_of(settings=settings), "NetworkPolicy").values()
    assert policy["spec"]["ingress"][-1] == {"from": [gateway], "ports": [{"protocol": "TCP", "port": 8000}]}
    assert not by_kind(objects_of(settings=OperatorSettings(network_policy=False)), "NetworkPolicy")


def test_router_pods_carry_the_specs_extra_labels_and_annotations() -> None:
    """``router.scheduling.podLabels/podAnnotations`` reach the router pods as they reach engine
    pods; the operator's own keys win over a spec that names them too."""
    body = load(ROOT / "manifests" / "samples" / "llama-3.3-70b-disaggregated.yaml")
    body["spec"].setdefault("router", {})["scheduling"] = {
        "podLabels": {"team": "search", "disagg.dev/role": "mine"},
        "podAnnotations": {"example.com/owner": "search", "disagg.dev/config-hash": "mine"},
    }
    (router,) = [
        d for d in by_kind(render_body(body), "Deployment").values() if d["metadata"]["name"].endswith("-router")
    ]
    meta = router["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "search"
    assert meta["labels"]["disagg.dev/role"] == "router"
    assert meta["annotations"]["example.com/owner"] == "search"
    assert meta["annotations"]["disagg.dev/config-hash"] != "mine"
    assert set(router["spec"]["selector"]["matchLabels"].items()) <= set(meta["labels"].items())
