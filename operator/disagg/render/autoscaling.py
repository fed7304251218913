"""Per-role autoscalers, one backend per ``autoscaling.engine`` (:data:`BACKENDS`).

Prefill scales on queue depth per pod (``vllm:num_requests_waiting``), decode on KV-cache use
(``vllm:kv_cache_usage_perc``), the router on CPU. LLM pods take minutes to start, so scale-up
is immediate and generous while scale-down waits five minutes and removes one pod at a time.

A backend says what it renders for an engine role and for the router, whether it owns the
Deployments' replicas, how a role sleeps at zero (the operator writing ``/scale`` while the
autoscaler stands aside, or the scaler object itself paused at 0), which API it needs and what
RBAC that takes. Adding an engine is one class here, one enum value in ``api/spec.py`` and its
RBAC in the chart (docs/architecture.md); ``tests/test_autoscaling_backends.py`` fails for an
enum value without a backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from disagg.api.spec import AutoscalingEngine, DecodeRoleSpec, DisaggregatedModelSpec, EngineRoleSpec, PrefillRoleSpec
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
KEDA_PAUSED = "autoscaling.keda.sh/paused"
CHILD_VERBS = ("list", "watch", "create", "patch", "delete")
"""What the operator does with every kind it owns (watch: its caches, kube/cache.py)."""
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


@dataclass(frozen=True)
class ScalerInput:
    """What every backend is given to render one role's scaler."""

    spec: DisaggregatedModelSpec
    settings: OperatorSettings
    role: str
    plan_role: RolePlan
    meta: dict[str, Any]
    target_name: str
    namespace: str
    role_spec: EngineRoleSpec | None = None
    """The engine role's spec; None for the router."""


class AutoscalerBackend:
    """One autoscaling engine. Subclasses set the class attributes and render the scalers."""

    engine: ClassVar[AutoscalingEngine]
    api_version: ClassVar[str | None] = None
    """The API the scaler objects need (None: nothing rendered)."""
    owns_replicas: ClassVar[bool] = True
    """An autoscaler moves the Deployments' replicas, so the operator never renders them."""
    sleeps_through_scale: ClassVar[bool] = False
    """At zero the operator writes the Deployments' /scale (the autoscaler stands aside at 0)."""
    rbac: ClassVar[tuple[dict[str, Any], ...]] = ()
    """What the operator's role needs for this backend (the chart renders the same rules)."""

    def engine_scaler(self, given: ScalerInput) -> dict[str, Any] | None:
        raise NotImplementedError

    def router_scaler(self, given: ScalerInput) -> dict[str, Any] | None:
        raise NotImplementedError

    def asleep(self, scaler: dict[str, Any], *, pause_acknowledged: bool = False) -> dict[str, Any]:  # noqa: ARG002
        """The scaler of a role at zero (unchanged where the operator sleeps it through /scale).
        ``pause_acknowledged``: the live scaler already reports itself paused."""
        return scaler


class HpaBackend(AutoscalerBackend):
    """autoscaling/v2 HPAs on the engines' metrics through the custom metrics API."""

    engine = AutoscalingEngine.HPA
    api_version = "autoscaling/v2"
    sleeps_through_scale = True  # an HPA at minReplicas >= 1 leaves a Deployment at 0 alone
    rbac = (
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": list(CHILD_VERBS)},
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]},
    )

    def engine_scaler(self, given: ScalerInput) -> dict[str, Any]:
        names = given.settings.metric_names
        role = given.role_spec
        if isinstance(role, DecodeRoleSpec):
            metric_name, target = names.decode_kv_cache, _kv_target(role.autoscaling.target_kv_cache_percent)
        elif isinstance(role, PrefillRoleSpec):
            metric_name, target = names.prefill_queue, str(role.autoscaling.target_waiting_per_pod)
        else:
            raise TypeError(f"no engine role spec for {given.role}")
        metric = {
            "type": "Pods",
            "pods": {"metric": {"name": metric_name}, "target": {"type": "AverageValue", "averageValue": target}},
        }
        return _hpa(given.meta, given.target_name, given.plan_role, metric, given.spec)

    def router_scaler(self, given: ScalerInput) -> dict[str, Any]:
        percent = given.spec.router.autoscaling.target_cpu_percent
        metric = {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": percent}},
        }
        return _hpa(given.meta, given.target_name, given.plan_role, metric, given.spec)


class KedaBackend(AutoscalerBackend):
    """KEDA ScaledObjects with Prometheus triggers; paused at 0 while the model sleeps."""

    engine = AutoscalingEngine.KEDA
    api_version = "keda.sh/v1alpha1"
    rbac = ({"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": list(CHILD_VERBS)},)

    def engine_scaler(self, given: ScalerInput) -> dict[str, Any]:
        pods = f'namespace="{given.namespace}",pod=~"{given.target_name}-.*"'
        role = given.role_spec
        if isinstance(role, DecodeRoleSpec):
            query = f"avg(vllm:kv_cache_usage_perc{{{pods}}})"
            threshold, metric_type = str(role.autoscaling.target_kv_cache_percent / 100), "Value"
        elif isinstance(role, PrefillRoleSpec):
            query = f"sum(vllm:num_requests_waiting{{{pods}}})"
            threshold, metric_type = str(role.autoscaling.target_waiting_per_pod), "AverageValue"
        else:
            raise TypeError(f"no engine role spec for {given.role}")
        return _scaled_object(
            spec=given.spec,
            settings=given.settings,
            meta=given.meta,
            target_name=given.target_name,
            plan_role=given.plan_role,
            query=query,
            threshold=threshold,
            metric_type=metric_type,
        )

    def router_scaler(self, given: ScalerInput) -> dict[str, Any]:
        percent = given.spec.router.autoscaling.target_cpu_percent
        return {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": given.meta,
            "spec": {
                "scaleTargetRef": {"name": given.target_name},
                "minReplicaCount": _min_replicas(given.plan_role),
                "maxReplicaCount": max(given.plan_role.max_replicas, 1),
                "triggers": [{"type": "cpu", "metricType": "Utilization", "metadata": {"value": str(percent)}}],
            },
        }

    def asleep(self, scaler: dict[str, Any], *, pause_acknowledged: bool = False) -> dict[str, Any]:
        """Paused at 0 replicas. Once KEDA reports the pause, a second annotation follows: KEDA
        scales the target to the paused count only in a second reconcile, which the deletion of
        its HPA triggers; when that reconcile still reads the ScaledObject from before its Paused
        condition it stops there and the Deployment stays up (kedacore/keda#7446, seen in our
        e2e). The change of ``paused`` triggers that reconcile again after the condition is in
        KEDA's cache; with both annotations ``paused-replicas`` decides, so the count stays 0."""
        annotations = scaler["metadata"].setdefault("annotations", {})
        annotations[KEDA_PAUSED_REPLICAS] = "0"
        if pause_acknowledged:
            annotations[KEDA_PAUSED] = "true"
        return scaler


class NoAutoscaler(AutoscalerBackend):
    """Fixed replicas (the plan's floors); the operator renders them and sets 0 at zero."""

    engine = AutoscalingEngine.NONE
    owns_replicas = False

    def engine_scaler(self, _given: ScalerInput) -> None:
        return None

    def router_scaler(self, _given: ScalerInput) -> None:
        return None


BACKENDS: dict[AutoscalingEngine, AutoscalerBackend] = {
    backend.engine: backend for backend in (HpaBackend(), KedaBackend(), NoAutoscaler())
}


def backend_for(spec: DisaggregatedModelSpec) -> AutoscalerBackend:
    return BACKENDS[spec.autoscaling.engine]


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
