"""Per-role autoscalers: autoscaling/v2 HPAs on engine metrics, or KEDA ScaledObjects.

Prefill scales on queue depth per pod (``vllm:num_requests_waiting``), decode on KV-cache use
(``vllm:kv_cache_usage_perc``), the router on CPU. LLM pods take minutes to start, so scale-up
is immediate and generous while scale-down waits five minutes and removes one pod at a time.
"""

from __future__ import annotations

from typing import Any

from disagg.api.spec import AutoscalingEngine, DisaggregatedModelSpec, EngineRoleSpec
from disagg.api.types import duration_seconds
from disagg.planner.plan import RolePlan
from disagg.settings import OperatorSettings

SCALE_UP = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [
        {"type": "Pods", "value": 2, "periodSeconds": 60},
        {"type": "Percent", "value": 100, "periodSeconds": 60},
    ],
}
SCALE_DOWN = {
    "stabilizationWindowSeconds": 300,
    "selectPolicy": "Min",
    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
}
KEDA_PAUSED_REPLICAS = "autoscaling.keda.sh/paused-replicas"
DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"


def behavior(spec: DisaggregatedModelSpec) -> dict[str, Any]:
    """HPA behavior: fast up, slow and stabilised down, windows from the spec."""
    up = int(duration_seconds(spec.autoscaling.scale_up_stabilization))
    down = int(duration_seconds(spec.autoscaling.scale_down_stabilization))
    return {
        "scaleUp": {**SCALE_UP, "stabilizationWindowSeconds": min(up, 3600)},
        "scaleDown": {**SCALE_DOWN, "stabilizationWindowSeconds": min(down, 3600)},
    }


def _kv_target(percent: int) -> str:
    """vllm:kv_cache_usage_perc is a 0-1 fraction; 80 % -> the quantity ``800m``."""
    return f"{percent * 10}m"


def _min_replicas(plan_role: RolePlan) -> int:
    """HPA minReplicas must be >= 1 (HPAScaleToZero is alpha); scale-to-zero is the operator's job."""
    return max(plan_role.replicas, 1)


def _target_ref(name: str) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}


def engine_scaler(
    *,
    spec: DisaggregatedModelSpec,
    settings: OperatorSettings,
    role: str,
    plan_role: RolePlan,
    role_spec: EngineRoleSpec,
    meta: dict[str, Any],
    target_name: str,
    namespace: str,
) -> dict[str, Any]:
    decode = role == "decode"
    if spec.autoscaling.engine == AutoscalingEngine.KEDA:
        return _scaled_object(
            spec=spec,
            settings=settings,
            meta=meta,
            target_name=target_name,
            plan_role=plan_role,
            query=(
                f'avg(vllm:kv_cache_usage_perc{{namespace="{namespace}",pod=~"{target_name}-.*"}})'
                if decode
                else f'sum(vllm:num_requests_waiting{{namespace="{namespace}",pod=~"{target_name}-.*"}})'
            ),
            threshold=(
                str(role_spec.autoscaling.target_kv_cache_percent / 100)
                if decode
                else str(role_spec.autoscaling.target_waiting_per_pod)
            ),
            metric_type="Value" if decode else "AverageValue",
        )
    metric_name = settings.metric_names.decode_kv_cache if decode else settings.metric_names.prefill_queue
    target = (
        _kv_target(role_spec.autoscaling.target_kv_cache_percent)
        if decode
        else str(role_spec.autoscaling.target_waiting_per_pod)
    )
    metric = {
        "type": "Pods",
        "pods": {"metric": {"name": metric_name}, "target": {"type": "AverageValue", "averageValue": target}},
    }
    return _hpa(meta, target_name, plan_role, metric, spec)


def router_scaler(
    *,
    spec: DisaggregatedModelSpec,
    plan_role: RolePlan,
    meta: dict[str, Any],
    target_name: str,
) -> dict[str, Any]:
    percent = spec.router.autoscaling.target_cpu_percent
    if spec.autoscaling.engine == AutoscalingEngine.KEDA:
        return {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": meta,
            "spec": {
                "scaleTargetRef": {"name": target_name},
                "minReplicaCount": _min_replicas(plan_role),
                "maxReplicaCount": max(plan_role.max_replicas, 1),
                "triggers": [{"type": "cpu", "metricType": "Utilization", "metadata": {"value": str(percent)}}],
            },
        }
    metric = {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": percent}},
    }
    return _hpa(meta, target_name, plan_role, metric, spec)


def _hpa(
    meta: dict[str, Any], target_name: str, plan_role: RolePlan, metric: dict[str, Any], spec: DisaggregatedModelSpec
) -> dict[str, Any]:
    """An autoscaling/v2 HPA on one metric, between the plan's floor and ceiling."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": _target_ref(target_name),
            "minReplicas": _min_replicas(plan_role),
            "maxReplicas": max(plan_role.max_replicas, 1),
            "metrics": [metric],
            "behavior": behavior(spec),
        },
    }


def _scaled_object(
    *,
    spec: DisaggregatedModelSpec,
    settings: OperatorSettings,
    meta: dict[str, Any],
    target_name: str,
    plan_role: RolePlan,
    query: str,
    threshold: str,
    metric_type: str,
) -> dict[str, Any]:
    server = settings.prometheus_for(spec.autoscaling.prometheus.url) or DEFAULT_PROMETHEUS
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {"name": target_name},
            "minReplicaCount": _min_replicas(plan_role),
            "maxReplicaCount": max(plan_role.max_replicas, 1),
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(spec)}},
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": metric_type,
                    "metadata": {"serverAddress": server, "query": query, "threshold": threshold},
                }
            ],
        },
    }
