"""The llm-d router (endpoint picker): its config, RBAC, Deployment, Service and InferencePool."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from disagg.api.spec import DisaggregatedModelSpec
from disagg.api.types import duration_seconds
from disagg.planner.plan import Plan
from disagg.render.engine import PREFILL_PORT
from disagg.render.identity import RoleIdentity
from disagg.render.names import ModelRef, content_hash
from disagg.settings import OperatorSettings

GRPC_PORT = 9002
HEALTH_PORT = 9003
METRICS_PORT = 9090
HTTP_PORT = 8081
"""Envoy's OpenAI-compatible HTTP listener in the router pod."""
SERVICE_HTTP_PORT = 80
ENVOY_ADMIN_PORT = 19000
ENVOY_READY_PORT = 19001
CONFIG_KEY = "config.yaml"
ENVOY_KEY = "envoy.yaml"
CONFIG_DIR = "/etc/disagg/router"
ENVOY_DIR = "/etc/envoy"
POOL_API = "inference.networking.k8s.io/v1"
POOL_GROUP = "inference.networking.k8s.io"
GATEWAY_API = "gateway.networking.k8s.io/v1"
EPP_CONFIG_API = "llm-d.ai/v1alpha1"
DESTINATION_HEADER = "x-gateway-destination-endpoint"
"""The endpoint the picker chose, as host:port; Envoy's original-destination cluster connects there."""
PREFILLER_HEADER = "x-prefiller-host-port"
"""The prefill endpoint the picker chose for the decode pod's P/D sidecar."""
DISAGG_BLOCK_TOKENS = 128
"""vLLM --block-size of disaggregated engines; the picker's prefix index hashes prompts in blocks this size."""
AGGREGATED_BLOCK_TOKENS = 64
"""Smallest prefix-index block the llm-d router accepts without overriding it (vLLM's own default is 16)."""


def endpoint_picker_config(mode: str, disagg_threshold: int, *, hold_requests_for: str | None = None) -> dict[str, Any]:
    """EndpointPickerConfig for the llm-d router release in ``disagg.upstream``.

    Disaggregated: decode is picked first; prefill only when the uncached part of the prompt is at
    least the plan's threshold (``prefix-based-pd-decider``). Aggregated: one profile with load-
    and prefix-aware scoring. ``hold_requests_for`` turns on flow control, whose queue holds
    requests while no engine is ready (scale-to-zero) for at most that long.
    """
    scorers = [
        {"pluginRef": "prefix-cache-scorer", "weight": 3},
        {"pluginRef": "queue-scorer", "weight": 2},
        {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
        {"pluginRef": "max-score-picker"},
    ]
    block_tokens = AGGREGATED_BLOCK_TOKENS if mode == "aggregated" else DISAGG_BLOCK_TOKENS
    common = [
        {"type": "approx-prefix-cache-producer", "parameters": {"blockSizeTokens": block_tokens}},
        {"type": "prefix-cache-scorer"},
        {"type": "queue-scorer"},
        {"type": "kv-cache-utilization-scorer"},
        {"type": "max-score-picker"},
    ]
    config: dict[str, Any] = {"apiVersion": EPP_CONFIG_API, "kind": "EndpointPickerConfig"}
    if hold_requests_for is not None:
        config["featureGates"] = ["flowControl"]
        config["flowControl"] = {"defaultRequestTTL": hold_requests_for}
    if mode == "aggregated":
        config["plugins"] = [{"type": "single-profile-handler"}, *common]
        config["schedulingProfiles"] = [{"name": "default", "plugins": scorers}]
        return config
    config["plugins"] = [
        {"type": "prefill-filter"},
        {"type": "decode-filter"},
        *common,
        {
            "name": "pd-decider",
            "type": "prefix-based-pd-decider",
            "parameters": {"nonCachedTokens": disagg_threshold},
        },
        {"type": "disagg-profile-handler", "parameters": {"deciders": {"prefill": "pd-decider"}}},
    ]
    config["schedulingProfiles"] = [
        {"name": "prefill", "plugins": [{"pluginRef": "prefill-filter"}, *scorers]},
        {"name": "decode", "plugins": [{"pluginRef": "decode-filter"}, *scorers]},
    ]
    return config


HTTP_MANAGER_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


def _socket(port: int, address: str = "0.0.0.0") -> dict[str, Any]:  # noqa: S104 - a pod's own listener
    return {"socket_address": {"address": address, "port_value": port}}


def _static_cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(port, "127.0.0.1")}}]}],
        },
        **extra,
    }


def envoy_config(*, hold_requests_for: str | None) -> dict[str, Any]:
    """The router pod's HTTP front, as llm-d's standalone deployment runs it.

    Every request goes through an ext_proc filter to the endpoint picker on localhost (TLS with
    the picker's self-signed certificate, bodies streamed both ways) and then to the endpoint the
    picker named in ``x-gateway-destination-endpoint``. Clients may not choose endpoints
    themselves: the routing headers are removed before the picker sets them. A second listener
    answers readiness on ``/ready``.
    """
    held = duration_seconds(hold_requests_for) if hold_requests_for else 0.0
    message_timeout = f"{int(max(held, 300)) + 60}s"
    http_manager = {
        "@type": HTTP_MANAGER_TYPE,
        "stat_prefix": "http",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        "route_config": {
            "name": "engines",
            "virtual_hosts": [
                {
                    "name": "engines",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            # no deadline: responses stream for as long as generation takes
                            "route": {"cluster": "picked_endpoint", "timeout": "0s", "idle_timeout": "3600s"},
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.header_mutation",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                    "mutations": {"request_mutations": [{"remove": DESTINATION_HEADER}, {"remove": PREFILLER_HEADER}]},
                },
            },
            {
                "name": "envoy.filters.http.ext_proc",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                    "grpc_service": {
                        "envoy_grpc": {"cluster_name": "endpoint_picker", "authority": f"localhost:{GRPC_PORT}"},
                        "timeout": "10s",
                    },
                    "failure_mode_allow": False,
                    "message_timeout": message_timeout,
                    "processing_mode": {
                        "request_header_mode": "SEND",
                        "response_header_mode": "SEND",
                        "request_body_mode": "FULL_DUPLEX_STREAMED",
                        "response_body_mode": "FULL_DUPLEX_STREAMED",
                        "request_trailer_mode": "SEND",
                        "response_trailer_mode": "SEND",
                    },
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "suppress_envoy_headers": True,
                },
            },
        ],
    }
    ready_manager = {
        "@type": HTTP_MANAGER_TYPE,
        "stat_prefix": "ready",
        "route_config": {
            "name": "ready",
            "virtual_hosts": [
                {
                    "name": "ready",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/stats/prometheus"}, "route": {"cluster": "admin"}}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.health_check",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
                    "pass_through_mode": False,
                    "headers": [{"name": ":path", "string_match": {"exact": "/ready"}}],
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    many = {"max_connections": 40000, "max_pending_requests": 40000, "max_requests": 40000}
    return {
        "admin": {"address": _socket(ENVOY_ADMIN_PORT, "127.0.0.1")},
        "static_resources": {
            "listeners": [
                {
                    "name": "http",
                    "address": _socket(HTTP_PORT),
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": http_manager}
                            ]
                        }
                    ],
                },
                {
                    "name": "ready",
                    "address": _socket(ENVOY_READY_PORT),
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": ready_manager}
                            ]
                        }
                    ],
                },
            ],
            "clusters": [
                _static_cluster(
                    "endpoint_picker",
                    GRPC_PORT,
                    lb_policy="ROUND_ROBIN",
                    circuit_breakers={"thresholds": [many]},
                    typed_extension_protocol_options={
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    # the picker serves TLS with a self-signed certificate (llm-d's default)
                    transport_socket={
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                            "common_tls_context": {"alpn_protocols": ["h2"]},
                        },
                    },
                ),
                {
                    "name": "picked_endpoint",
                    "type": "ORIGINAL_DST",
                    "lb_policy": "CLUSTER_PROVIDED",
                    "connect_timeout": "5s",
                    "circuit_breakers": {"thresholds": [many]},
                    "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION_HEADER},
                },
                _static_cluster("admin", ENVOY_ADMIN_PORT),
            ],
        },
    }


@functools.lru_cache(maxsize=256)
def _picker_text(mode: str, threshold: int, hold: str | None) -> str:
    """The picker's config as YAML; a few inputs, rendered on every pass: cached (yaml is slow)."""
    return yaml.safe_dump(endpoint_picker_config(mode, threshold, hold_requests_for=hold), sort_keys=False)


@functools.lru_cache(maxsize=64)
def _envoy_text(hold: str | None) -> str:
    return yaml.safe_dump(envoy_config(hold_requests_for=hold), sort_keys=False)


def endpoint_selector(engine_selector: Mapping[str, str]) -> dict[str, str]:
    """Labels of the engine pods the picker routes to (the InferencePool's selector, or standalone's)."""
    return {**engine_selector, "llm-d.ai/inference-serving": "true"}


def _discovery_args(name: str, namespace: str, selector: Mapping[str, str], pool: bool) -> list[str]:
    """InferencePool discovery when the operator renders pools, else llm-d's standalone mode."""
    if pool:
        return [f"--pool-name={name}", f"--pool-namespace={namespace}"]
    labels = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
    return [f"--endpoint-selector={labels}", f"--endpoint-target-ports={PREFILL_PORT}"]


def _downward_env(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}} for name, path in pairs]


NON_ROOT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


@dataclass(frozen=True)
class WorkloadShape:
    """How the router's objects are named, labelled and scheduled (the model's conventions)."""

    identity: RoleIdentity
    """The router's name, labels, selector (its Deployment's and Service's) and owner."""
    scheduling: Mapping[str, Any]
    autoscaled: bool
    """An autoscaler owns the router's replicas (none rendered)."""
    engine_selector: Mapping[str, str]
    """Labels of the model's engine pods, which the picker routes to."""


def render_router(
    model: ModelRef, spec: DisaggregatedModelSpec, plan: Plan, settings: OperatorSettings, shape: WorkloadShape
) -> list[dict[str, Any]]:
    """The endpoint picker with Envoy in front of it, its config, RBAC, Service, pool and route."""
    identity = shape.identity
    pod_labels = identity.labels(spec.router.scheduling.pod_labels)
    selector = identity.selector
    scheduling, autoscaled, engine_selector = shape.scheduling, shape.autoscaled, shape.engine_selector
    name = identity.name
    hold = spec.scale_to_zero.hold_requests_for if spec.scale_to_zero.enabled else None
    config_text = _picker_text(plan.mode, plan.disagg_threshold, hold)
    envoy_text = _envoy_text(hold)
    pool = settings.inference_pool
    engines = endpoint_selector(engine_selector)
    requests = {"cpu": "500m", "memory": "512Mi", **spec.router.resources.requests}
    limits = dict(spec.router.resources.limits)
    resources: dict[str, Any] = {"requests": dict(sorted(requests.items()))}
    if limits:
        resources["limits"] = dict(sorted(limits.items()))
    health = {"grpc": {"port": HEALTH_PORT, "service": "inference-extension"}}
    picker = {
        "name": "epp",
        "image": spec.router.image or settings.router_image,
        "args": [
            *_discovery_args(name, model.namespace, engines, pool),
            f"--config-file={CONFIG_DIR}/{CONFIG_KEY}",
            f"--grpc-port={GRPC_PORT}",
            f"--grpc-health-port={HEALTH_PORT}",
            f"--metrics-port={METRICS_PORT}",
            # nothing collects traces by default, and the shipped monitors scrape without a token
            "--tracing=false",
            "--metrics-endpoint-auth=false",
            "--zap-encoder=json",
        ],
        "env": _downward_env(("POD_NAME", "metadata.name"), ("NAMESPACE", "metadata.namespace")),
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "grpc-health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": resources,
        "readinessProbe": {**health, "periodSeconds": 5},
        "livenessProbe": {**health, "periodSeconds": 10, "failureThreshold": 6},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
        "securityContext": dict(NON_ROOT),
    }
    envoy = {
        "name": "envoy",
        "image": settings.envoy_image,
        "command": ["envoy"],
        "args": [
            f"--config-path={ENVOY_DIR}/{ENVOY_KEY}",
            f"--service-cluster={model.namespace}/{name}",
            "--service-node=$(POD_NAME)",
            "--log-level=warn",
            "--drain-strategy=immediate",
            "--drain-time-s=30",
        ],
        "env": _downward_env(("POD_NAME", "metadata.name")),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "envoy-ready", "containerPort": ENVOY_READY_PORT, "protocol": "TCP"},
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": ENVOY_READY_PORT}, "periodSeconds": 5},
        "volumeMounts": [{"name": "envoy-config", "mountPath": ENVOY_DIR, "readOnly": True}],
        "securityContext": dict(NON_ROOT),
    }
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(selector)},
        "template": {
            "metadata": {
                "labels": dict(pod_labels),
                # the spec's extra annotations, then the operator's own (which win)
                "annotations": {
                    **dict(sorted(spec.router.scheduling.pod_annotations.items())),
                    f"{settings.prefix}/config-hash": content_hash([config_text, envoy_text]),
                },
            },
            "spec": {
                "serviceAccountName": name,
                "containers": [envoy, picker],
                "volumes": [
                    {"name": "config", "configMap": {"name": name, "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}]}},
                    {
                        "name": "envoy-config",
                        "configMap": {"name": name, "items": [{"key": ENVOY_KEY, "path": ENVOY_KEY}]},
                    },
                ],
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                "terminationGracePeriodSeconds": 60,
                "enableServiceLinks": False,
                **scheduling,
            },
        },
    }
    if not autoscaled:
        deployment_spec["replicas"] = plan.router.replicas
    rules: list[dict[str, Any]] = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    if pool:
        rules += [
            {"apiGroups": [POOL_GROUP], "resources": ["inferencepools"], "verbs": ["get", "list", "watch"]},
            {
                "apiGroups": ["llm-d.ai", "inference.networking.x-k8s.io"],
                "resources": ["inferenceobjectives", "inferencemodelrewrites"],
                "verbs": ["get", "list", "watch"],
            },
        ]
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": identity.meta()},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": identity.meta(),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": identity.meta(),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": model.namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": identity.meta(),
            "data": {CONFIG_KEY: config_text, ENVOY_KEY: envoy_text},
        },
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": identity.meta(), "spec": deployment_spec},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": identity.meta(),
            "spec": {
                "type": "ClusterIP",
                "selector": dict(selector),
                "ports": [
                    {
                        "name": "http",
                        "port": SERVICE_HTTP_PORT,
                        "targetPort": "http",
                        "protocol": "TCP",
                        "appProtocol": "http",
                    },
                    {
                        "name": "grpc",
                        "port": GRPC_PORT,
                        "targetPort": "grpc",
                        "protocol": "TCP",
                        "appProtocol": "http2",
                    },
                    {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
                ],
            },
        },
    ]
    if pool:
        objects.append(
            {
                "apiVersion": POOL_API,
                "kind": "InferencePool",
                "metadata": identity.meta(),
                "spec": {
                    "selector": {"matchLabels": engines},
                    "targetPorts": [{"number": PREFILL_PORT}],
                    "endpointPickerRef": {
                        "name": name,
                        "kind": "Service",
                        "port": {"number": GRPC_PORT},
                        "failureMode": "FailClose",
                    },
                },
            }
        )
    gateway = spec.router.gateway
    if gateway is not None:
        parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.name}
        if gateway.namespace:
            parent["namespace"] = gateway.namespace
        if gateway.section_name:
            parent["sectionName"] = gateway.section_name
        backend: dict[str, Any] = (
            {"group": POOL_GROUP, "kind": "InferencePool", "name": name}
            if pool
            else {"kind": "Service", "name": name, "port": SERVICE_HTTP_PORT}
        )
        objects.append(
            {
                "apiVersion": GATEWAY_API,
                "kind": "HTTPRoute",
                "metadata": identity.meta(),
                "spec": {
                    "parentRefs": [parent],
                    "rules": [
                        {
                            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                            "backendRefs": [backend],
                            # generation streams for minutes; the Gateway's default deadline would cut it
                            "timeouts": {"request": "0s"},
                        }
                    ],
                },
            }
        )
    return objects
