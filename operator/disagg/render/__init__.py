"""Pure renderer: (spec, plan, placement, operator settings) -> the complete desired object list.

Nothing here talks to the API server. The output is plain dicts ready for server-side apply; the
same function backs the operator and ``disagg render`` (offline review, GitOps diffs).
One writer per field: a Deployment whose replicas an autoscaler owns is rendered without
``replicas``.
"""

from __future__ import annotations

from typing import Any

import yaml

from disagg.api.spec import DisaggregatedModelSpec, EngineRoleSpec
from disagg.placement import Placement, affinity
from disagg.planner.plan import ENGINE_ROLES, ROLE_AGGREGATED, ROLE_DECODE, ROLE_ROUTER, Plan, RolePlan, engine_roles
from disagg.render import autoscaling, router
from disagg.render.engine import (
    DECODE_VLLM_PORT,
    NIXL_PORT,
    PREFILL_PORT,
    SIDECAR_PORT,
    engine_container,
    routing_sidecar,
)
from disagg.render.identity import RoleIdentity
from disagg.render.identity import model_labels as model_labels  # re-exported: reconcile selects with it
from disagg.render.names import ModelRef as ModelRef  # re-exported: callers name it from here
from disagg.render.names import label_value
from disagg.settings import OperatorSettings


def _identity(model: ModelRef, settings: OperatorSettings, role: str) -> RoleIdentity:
    return RoleIdentity(model, settings, role)


def _llmd_labels(spec: DisaggregatedModelSpec, plan: Plan, role: str) -> dict[str, str]:
    labels = {
        "llm-d.ai/role": role,
        "llm-d.ai/inference-serving": "true",
        "llm-d.ai/model": label_value(spec.model.name),
        "llm-d.ai/engine-type": "vllm",
        "llm-d.ai/accelerator-vendor": "nvidia"
        if spec.accelerator.resource_name.startswith("nvidia.com/")
        else label_value(spec.accelerator.resource_name.split("/")[0]),
    }
    gpu = plan.gpu or spec.accelerator.type
    if gpu:
        labels["llm-d.ai/accelerator-variant"] = label_value(gpu.replace("_", "-").lower())
    return labels


def _pod_scheduling(
    role: EngineRoleSpec | None,
    placement: Placement | None,
    model: ModelRef,
    settings: OperatorSettings,
    spec: DisaggregatedModelSpec,
) -> dict[str, Any]:
    pod: dict[str, Any] = {}
    scheduling = role.scheduling if role is not None else spec.router.scheduling
    if scheduling.node_selector:
        pod["nodeSelector"] = dict(sorted(scheduling.node_selector.items()))
    if scheduling.tolerations:
        pod["tolerations"] = [t.wire() for t in scheduling.tolerations]
    if scheduling.priority_class_name:
        pod["priorityClassName"] = scheduling.priority_class_name
    if role is not None and placement is not None:
        block = affinity(
            model_selector=model_labels(model, settings),
            required=placement.required,
            preferred=placement.preferred,
            follow_label=placement.follow_label,
        )
        if block:
            pod["affinity"] = block
    return pod


def _engine_deployment(
    model: ModelRef,
    spec: DisaggregatedModelSpec,
    plan: Plan,
    plan_role: RolePlan,
    role_spec: EngineRoleSpec,
    role: str,
    settings: OperatorSettings,
    placement: Placement | None,
    autoscaled: bool,
) -> dict[str, Any]:
    disaggregated = role != ROLE_AGGREGATED
    decode = role == ROLE_DECODE
    port = DECODE_VLLM_PORT if decode else PREFILL_PORT
    container = engine_container(
        spec,
        role_spec,
        settings,
        port=port,
        port_name="vllm" if decode else "http",
        plan_role=plan_role,
        engine=plan.engine,
        disaggregated=disaggregated,
    )
    if decode:
        container["args"].append("--shutdown-timeout=60")
    identity = _identity(model, settings, role)
    pod_labels = identity.labels(role_spec.scheduling.pod_labels, _llmd_labels(spec, plan, role))
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}],
        "terminationGracePeriodSeconds": 90 if decode else 60,
        "enableServiceLinks": False,
        **_pod_scheduling(role_spec, placement, model, settings, spec),
    }
    if decode:
        pod_spec["initContainers"] = [routing_sidecar(settings)]
    template_meta: dict[str, Any] = {"labels": pod_labels}
    if role_spec.scheduling.pod_annotations:
        template_meta["annotations"] = dict(sorted(role_spec.scheduling.pod_annotations.items()))
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": identity.selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if not autoscaled:
        deployment_spec["replicas"] = plan_role.replicas
    return identity.child("apps/v1", "Deployment", deployment_spec, _llmd_labels(spec, plan, role))


def _service(model: ModelRef, settings: OperatorSettings, role: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    identity = _identity(model, settings, role)
    return identity.child("v1", "Service", {"type": "ClusterIP", "selector": identity.selector, "ports": ports})


def _pdb(model: ModelRef, settings: OperatorSettings, role: str) -> dict[str, Any]:
    identity = _identity(model, settings, role)
    return identity.child(
        "policy/v1", "PodDisruptionBudget", {"maxUnavailable": 1, "selector": {"matchLabels": identity.selector}}
    )


def _network_policy(model: ModelRef, settings: OperatorSettings) -> dict[str, Any]:
    """Only this model's router, its own engines and the metrics scrapers reach its engine pods.

    vLLM has no authentication, and the decode sidecar forwards to whatever prefill host a
    request names: neither may be reachable by any pod of the cluster. Engines of one model talk
    to each other on any port (NIXL side channel, UCX over TCP picks its ports).
    """
    policy = _identity(model, settings, "engines")
    model_selector = model_labels(model, settings)
    role_key = policy.role_key
    serving = [{"protocol": "TCP", "port": port} for port in sorted({PREFILL_PORT, SIDECAR_PORT, DECODE_VLLM_PORT})]
    router_pods = {"podSelector": {"matchLabels": {**model_selector, role_key: ROLE_ROUTER}}}
    own_engines = {
        "podSelector": {
            "matchLabels": dict(model_selector),
            # every engine role, not only this mode's: during a mode switch the old pods still serve
            "matchExpressions": [{"key": role_key, "operator": "In", "values": sorted(ENGINE_ROLES)}],
        }
    }
    ingress: list[dict[str, Any]] = [
        {"from": [router_pods, *settings.metrics_scrapers], "ports": serving},
        {"from": [own_engines]},
    ]
    if settings.engine_clients:
        ingress.append({"from": list(settings.engine_clients), "ports": [{"protocol": "TCP", "port": PREFILL_PORT}]})
    elif settings.inference_pool:
        # a Gateway routes straight to the pool's pods on the target port; its pods are unknown here
        ingress.append({"ports": [{"protocol": "TCP", "port": PREFILL_PORT}]})
    spec = {"podSelector": own_engines["podSelector"], "policyTypes": ["Ingress"], "ingress": ingress}
    return policy.child("networking.k8s.io/v1", "NetworkPolicy", spec)


def _autoscaled(spec: DisaggregatedModelSpec, plan_role: RolePlan) -> bool:
    """The autoscaler owns replicas when one is rendered for the role (a range to move in, or scale-to-zero)."""
    return autoscaling.backend_for(spec).owns_replicas and plan_role.autoscaled


def render(
    model: ModelRef,
    spec: DisaggregatedModelSpec,
    plan: Plan,
    settings: OperatorSettings,
    placement: Placement | None = None,
    *,
    engines_at_zero: bool = False,
    held_asleep: frozenset[str] = frozenset(),
    pause_acknowledged: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Every child object the model needs, in apply order (config before workloads before scalers).

    ``engines_at_zero``: prefill and decode sleep (scale-to-zero). Fixed-size roles render
    ``replicas: 0``; KEDA-scaled roles are paused at 0; HPA-scaled roles keep their rendered form
    (the operator moves them through the scale subresource, like an autoscaler).
    ``pause_acknowledged``: the roles whose live scaler already reports its pause (KEDA's
    ``Paused`` condition), see ``KedaBackend.asleep``.
    """
    objects: list[dict[str, Any]] = []
    roles = engine_roles(spec, plan)

    router_objects = router.render_router(
        model,
        spec,
        plan,
        settings,
        router.WorkloadShape(
            identity=_identity(model, settings, ROLE_ROUTER),
            scheduling=_pod_scheduling(None, None, model, settings, spec),
            autoscaled=_autoscaled(spec, plan.router),
            engine_selector=model_labels(model, settings),
        ),
    )
    objects += router_objects
    objects.append(_pdb(model, settings, ROLE_ROUTER))

    for role, plan_role, role_spec in roles:
        autoscaled = _autoscaled(spec, plan_role)
        deployment = _engine_deployment(model, spec, plan, plan_role, role_spec, role, settings, placement, autoscaled)
        if (engines_at_zero or role in held_asleep) and not autoscaled:
            deployment["spec"]["replicas"] = 0
        objects.append(deployment)
        if role == ROLE_DECODE:
            ports = [
                {"name": "http", "port": SIDECAR_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "vllm", "port": DECODE_VLLM_PORT, "targetPort": "vllm", "protocol": "TCP"},
            ]
        else:
            ports = [{"name": "http", "port": PREFILL_PORT, "targetPort": "http", "protocol": "TCP"}]
        if role != ROLE_AGGREGATED:
            ports.append({"name": "nixl", "port": NIXL_PORT, "targetPort": "nixl", "protocol": "TCP"})
        objects.append(_service(model, settings, role, ports))
        objects.append(_pdb(model, settings, role))

    if settings.network_policy:
        objects.append(_network_policy(model, settings))

    backend = autoscaling.backend_for(spec)

    def scaler_input(role: str, plan_role: RolePlan, role_spec: EngineRoleSpec | None) -> autoscaling.ScalerInput:
        return autoscaling.ScalerInput(
            spec=spec,
            settings=settings,
            role=role,
            plan_role=plan_role,
            meta=_identity(model, settings, role).meta(),
            target_name=_identity(model, settings, role).name,
            namespace=model.namespace,
            role_spec=role_spec,
        )

    for role, plan_role, role_spec in roles:
        if not _autoscaled(spec, plan_role):
            continue
        scaler = backend.engine_scaler(scaler_input(role, plan_role, role_spec))
        if scaler is not None:
            if engines_at_zero or role in held_asleep:
                scaler = backend.asleep(scaler, pause_acknowledged=role in pause_acknowledged)
            objects.append(scaler)
    if _autoscaled(spec, plan.router):
        router_scaler = backend.router_scaler(scaler_input(ROLE_ROUTER, plan.router, None))
        if router_scaler is not None:
            objects.append(router_scaler)
    return [_plain(obj) for obj in objects]


def _plain(value: Any) -> Any:
    """Plain JSON types all the way down: roles are a StrEnum, and YAML writers want exact ``str``."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and type(value) is not str:
        return str(value)
    return value


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, width=120)
