"""The llm-d router (endpoint picker): its config, RBAC, Deployment, Service and InferencePool."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import yaml

from disagg.api.spec import DisaggregatedModelSpec
from disagg.planner.plan import Plan
from disagg.render.engine import PREFILL_PORT
from disagg.render.names import child_name, content_hash
from disagg.settings import OperatorSettings

GRPC_PORT = 9002
HEALTH_PORT = 9003
METRICS_PORT = 9090
CONFIG_KEY = "config.yaml"
CONFIG_DIR = "/etc/disagg/router"
POOL_API = "inference.networking.k8s.io/v1"


def endpoint_picker_config(plan: Plan) -> dict[str, Any]:
    """EndpointPickerConfig: decode first, then prefill only when the uncached prompt is long enough.

    Aggregated mode has one role, so a single profile with load- and prefix-aware scoring.
    """
    scorers = [
        {"pluginRef": "prefix-cache-scorer", "weight": 3},
        {"pluginRef": "queue-scorer", "weight": 2},
        {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
        {"pluginRef": "max-score-picker"},
    ]
    common = [
        {"type": "prefix-cache-scorer"},
        {"type": "queue-scorer"},
        {"type": "kv-cache-utilization-scorer"},
        {"type": "max-score-picker"},
    ]
    if plan.mode == "aggregated":
        return {
            "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
            "kind": "EndpointPickerConfig",
            "plugins": [{"type": "single-profile-handler"}, *common],
            "schedulingProfiles": [{"name": "default", "plugins": scorers}],
        }
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "disagg-headers-handler"},
            {"type": "prefill-filter"},
            {"type": "decode-filter"},
            *common,
            {
                "name": "pd-decider",
                "type": "prefix-based-pd-decider",
                "parameters": {"nonCachedTokens": plan.disagg_threshold},
            },
            {"type": "disagg-profile-handler", "parameters": {"deciders": {"prefill": "pd-decider"}}},
        ],
        "schedulingProfiles": [
            {"name": "prefill", "plugins": [{"pluginRef": "prefill-filter"}, *scorers]},
            {"name": "decode", "plugins": [{"pluginRef": "decode-filter"}, *scorers]},
        ],
    }


def render_router(
    *,
    model: Any,
    spec: DisaggregatedModelSpec,
    plan: Plan,
    settings: OperatorSettings,
    meta: Callable[[str, str], dict[str, Any]],
    pod_labels: Mapping[str, str],
    selector: Mapping[str, str],
    scheduling: Mapping[str, Any],
    autoscaled: bool,
    engine_selector: Mapping[str, str],
) -> list[dict[str, Any]]:
    name = child_name(model.name, "router")
    config_text = yaml.safe_dump(endpoint_picker_config(plan), sort_keys=False)
    requests = {"cpu": "500m", "memory": "512Mi", **spec.router.resources.requests}
    limits = dict(spec.router.resources.limits)
    resources: dict[str, Any] = {"requests": dict(sorted(requests.items()))}
    if limits:
        resources["limits"] = dict(sorted(limits.items()))
    container = {
        "name": "epp",
        "image": spec.router.image or settings.router_image,
        "args": [
            f"--pool-name={name}",
            f"--pool-namespace={model.namespace}",
            f"--config-file={CONFIG_DIR}/{CONFIG_KEY}",
            f"--grpc-port={GRPC_PORT}",
            f"--grpc-health-port={HEALTH_PORT}",
            f"--metrics-port={METRICS_PORT}",
            "--secure-serving=false",
        ],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "grpc-health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": resources,
        "readinessProbe": {"grpc": {"port": HEALTH_PORT, "service": "inference-extension"}, "periodSeconds": 5},
        "livenessProbe": {"grpc": {"port": HEALTH_PORT, "service": "inference-extension"}, "periodSeconds": 10},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(selector)},
        "template": {
            "metadata": {
                "labels": dict(pod_labels),
                "annotations": {f"{settings.prefix}/config-hash": content_hash(config_text)},
            },
            "spec": {
                "serviceAccountName": name,
                "containers": [container],
                "volumes": [{"name": "config", "configMap": {"name": name}}],
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                "enableServiceLinks": False,
                **scheduling,
            },
        },
    }
    if not autoscaled:
        deployment_spec["replicas"] = plan.router.replicas
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name, "router")},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta(name, "router"),
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                {
                    "apiGroups": ["inference.networking.k8s.io", "inference.networking.x-k8s.io"],
                    "resources": ["inferencepools", "inferenceobjectives"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta(name, "router"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": model.namespace}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(name, "router"), "data": {CONFIG_KEY: config_text}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(name, "router"), "spec": deployment_spec},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(name, "router"),
            "spec": {
                "type": "ClusterIP",
                "selector": dict(selector),
                "ports": [
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
    if settings.inference_pool:
        objects.append(
            {
                "apiVersion": POOL_API,
                "kind": "InferencePool",
                "metadata": meta(name, "router"),
                "spec": {
                    "selector": {"matchLabels": {**engine_selector, "llm-d.ai/inference-serving": "true"}},
                    "targetPorts": [{"number": PREFILL_PORT}],
                    "endpointPickerRef": {
                        "name": name,
                        "kind": "Service",
                        "port": {"number": GRPC_PORT},
                        "failureMode": "FailOpen",
                    },
                },
            }
        )
    return objects
