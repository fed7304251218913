"""The one module that talks to the API server.

Reconcile depends on the :class:`Cluster` protocol, so its no-write-on-no-op promise is unit-tested
against an in-memory implementation, and proven live against a real API server in ``e2e/``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0] if "/" in self.api_version else ""

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/api/{self.api_version}" if not self.group else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        return base


CHILD_KINDS: tuple[Kind, ...] = (
    Kind("v1", "ServiceAccount", "serviceaccounts"),
    Kind("rbac.authorization.k8s.io/v1", "Role", "roles"),
    Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    Kind("v1", "ConfigMap", "configmaps"),
    Kind("apps/v1", "Deployment", "deployments"),
    Kind("v1", "Service", "services"),
    Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    Kind("keda.sh/v1alpha1", "ScaledObject", "scaledobjects"),
    Kind("inference.networking.k8s.io/v1", "InferencePool", "inferencepools"),
    Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    Kind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
)
"""Every kind the renderer can produce; children of kinds whose API is not served are skipped."""

MODEL_KIND = Kind("disagg.dev/v1alpha1", "DisaggregatedModel", "disaggregatedmodels")
NODE_KIND = Kind("v1", "Node", "nodes", namespaced=False)
POD_KIND = Kind("v1", "Pod", "pods")


def kind_of(obj: Mapping[str, Any]) -> Kind:
    for kind in (*CHILD_KINDS, MODEL_KIND, NODE_KIND, POD_KIND):
        if kind.api_version == obj.get("apiVersion") and kind.kind == obj.get("kind"):
            return kind
    raise KeyError(f"unknown kind {obj.get('apiVersion')}/{obj.get('kind')}")


class ConflictError(RuntimeError):
    """A write lost an optimistic-concurrency race (HTTP 409); re-read and retry."""


class NotFoundError(RuntimeError):
    """The object (or its API) does not exist (HTTP 404)."""


class ApiError(RuntimeError):
    """Any other API failure, with the server's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Cluster(Protocol):
    """What reconcile needs from the cluster: reads, server-side apply, delete, status patch."""

    def list_children(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]: ...

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...

    def delete(self, obj: Mapping[str, Any]) -> None: ...

    def scale(self, obj: Mapping[str, Any], replicas: int) -> None: ...

    def list_nodes(self) -> list[dict[str, Any]]: ...

    def gpu_usage(
        self, resource: str, *, exclude_namespace: str, exclude_labels: Mapping[str, str]
    ) -> Mapping[str, int]: ...

    def bound_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]: ...

    def inventory_version(self) -> int | None:
        """Changes whenever nodes or bound pods change as placement sees them; None: unknown
        (placement is then computed every pass)."""
        ...

    def list_model_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]: ...

    def served(self, api_version: str) -> bool: ...

    def get_model(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def patch_model_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any]: ...

    def event(self, model: Mapping[str, Any], *, reason: str, message: str, warning: bool = False) -> None: ...


def selector_string(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def identity(obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    return (str(obj.get("apiVersion")), str(obj.get("kind")), str(meta.get("namespace", "")), str(meta.get("name")))


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs: Iterable[Mapping[str, Any]] = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)
