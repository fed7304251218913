"""What ``kubectl disagg`` reads: one model, its roles' autoscalers and its Events (read only).

The operator itself never calls these; they are plain GETs and LISTs of a few objects, so the
plugin costs the API server about as much as ``kubectl describe``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from disagg.describe import ModelSnapshot
from disagg.kube import CHILD_KINDS, MODEL_KIND, Kind
from disagg.kube.client import KubeCluster
from disagg.render.names import child_name

NAMESPACE_KIND = Kind("v1", "Namespace", "namespaces", namespaced=False)
EVENT_KIND = Kind("events.k8s.io/v1", "Event", "events")
HPA_KIND = next(k for k in CHILD_KINDS if k.kind == "HorizontalPodAutoscaler")
SCALED_OBJECT_KIND = next(k for k in CHILD_KINDS if k.kind == "ScaledObject")
KEDA_HPA_PREFIX = "keda-hpa-"
"""KEDA names the HPA it creates for a ScaledObject ``keda-hpa-<name>`` (also in its status.hpaName)."""


class ModelLookupError(LookupError):
    """The model cannot be shown: the message says why (no CRD, no namespace, no model)."""


def find_model(cluster: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    """The model's body, or :class:`ModelLookupError` saying which of CRD, namespace or model is missing."""
    body = cluster.get_model(namespace, name)
    if body is not None:
        return body
    if not cluster.served(MODEL_KIND.api_version):
        raise ModelLookupError(
            f"this cluster does not serve {MODEL_KIND.api_version}: the DisaggregatedModel CRD is not installed"
        )
    if cluster.get_object(NAMESPACE_KIND, None, namespace) is None:
        raise ModelLookupError(f'namespace "{namespace}" not found')
    raise ModelLookupError(f'disaggregatedmodel "{name}" not found in namespace "{namespace}"')


def role_names(body: Mapping[str, Any]) -> list[str]:
    """The roles the status reports (engine roles and the router)."""
    roles = (body.get("status") or {}).get("roles") or []
    return [str(r["name"]) for r in roles if isinstance(r, Mapping) and r.get("name")]


def read_snapshot(cluster: KubeCluster, namespace: str, name: str) -> ModelSnapshot:
    """Everything ``kubectl disagg status`` shows, read once."""
    body = find_model(cluster, namespace, name)
    keda = cluster.served(SCALED_OBJECT_KIND.api_version)
    hpas: dict[str, dict[str, Any]] = {}
    scaled_objects: dict[str, dict[str, Any]] = {}
    for role in role_names(body):
        child = child_name(name, role)
        scaled = cluster.get_object(SCALED_OBJECT_KIND, namespace, child) if keda else None
        if scaled is not None:
            scaled_objects[role] = scaled
            hpa_name = str((scaled.get("status") or {}).get("hpaName") or f"{KEDA_HPA_PREFIX}{child}")
        else:
            hpa_name = child
        hpa = cluster.get_object(HPA_KIND, namespace, hpa_name)
        if hpa is not None:
            hpas[role] = hpa
    events = cluster.list_objects(
        EVENT_KIND,
        namespace,
        fieldSelector=f"regarding.kind={MODEL_KIND.kind},regarding.name={name}",
    )
    return ModelSnapshot(model=body, hpas=hpas, scaled_objects=scaled_objects, events=events)
