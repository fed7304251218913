"""Shared fixtures for unit tests: the samples, and an in-memory implementation of the kube interface."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from disagg.kube import identity
from disagg.placement import gpu_usage, holds_resources, is_own

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
INVALID = sorted((ROOT / "tests" / "invalid").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def _merge(live: Any, applied: Any) -> Any:
    """Server-side-apply-like merge: applied fields win, fields only the server/others set survive,
    and empty lists vanish as they do in the API server's stored objects."""
    if isinstance(live, dict) and isinstance(applied, dict):
        merged = dict(live)
        for key, value in applied.items():
            if value == []:
                merged.pop(key, None)
            else:
                merged[key] = _merge(live.get(key), value)
        return merged
    return copy.deepcopy(applied)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies a merge-patch+json /status write."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


class MemoryCluster:
    """The :class:`disagg.kube.Cluster` interface over dicts, counting every write."""

    def __init__(self, nodes: list[dict[str, Any]] | None = None, pods: list[dict[str, Any]] | None = None) -> None:
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.models: dict[tuple[str, str], dict[str, Any]] = {}
        self.nodes = nodes or []
        self.pods = pods or []
        self.writes: list[str] = []
        self.events: list[tuple[str, str]] = []
        self._versions = itertools.count(1)
        self.missing_apis: set[str] = set()

    def add_model(self, body: Mapping[str, Any], namespace: str = "default", uid: str = "uid-1") -> dict[str, Any]:
        model = copy.deepcopy(dict(body))
        meta = model.setdefault("metadata", {})
        meta.update(namespace=namespace, uid=uid, generation=meta.get("generation", 1))
        meta["resourceVersion"] = str(next(self._versions))
        self.models[(namespace, meta["name"])] = model
        return model

    def list_children(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj)
            for (_, _, ns, _), obj in self.objects.items()
            if ns == namespace and all(obj["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        key = identity(obj)
        self.writes.append(f"apply {obj['kind']}/{obj['metadata']['name']}")
        live = self.objects.get(key, {})
        merged = _merge(live, obj)
        meta = merged["metadata"]
        generation = live.get("metadata", {}).get("generation", 0)
        if live.get("spec") != merged.get("spec") or not live:
            generation += 1
        meta["generation"] = generation
        meta["resourceVersion"] = str(next(self._versions))
        meta.setdefault("uid", f"child-{len(self.objects)}")
        self.objects[key] = merged
        return copy.deepcopy(merged)

    def delete(self, obj: Mapping[str, Any]) -> None:
        self.writes.append(f"delete {obj['kind']}/{obj['metadata']['name']}")
        self.objects.pop(identity(obj), None)

    def scale(self, obj: Mapping[str, Any], replicas: int) -> None:
        """The scale subresource, with the deployment controller converging at once."""
        self.writes.append(f"scale {obj['kind']}/{obj['metadata']['name']}={replicas}")
        live = self.objects[identity(obj)]
        live["spec"]["replicas"] = replicas
        status = live.setdefault("status", {})
        for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"):
            status[key] = replicas

    def list_nodes(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.nodes)

    def gpu_usage(self, resource: str, *, exclude_namespace: str, exclude_labels: Mapping[str, str]) -> dict[str, int]:
        return gpu_usage(
            self.pods, resource=resource, exclude_namespace=exclude_namespace, exclude_labels=exclude_labels
        )

    def inventory_version(self) -> int | None:
        return None  # tests change nodes and pods in place: always compute placement

    def bound_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for p in self.pods if holds_resources(p) and is_own(p, namespace, selector)]

    def served(self, api_version: str) -> bool:
        return api_version not in self.missing_apis

    def list_model_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(p)
            for p in self.pods
            if p["metadata"].get("namespace") == namespace
            and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
        ]

    def get_model(self, namespace: str, name: str) -> dict[str, Any] | None:
        model = self.models.get((namespace, name))
        return copy.deepcopy(model) if model else None

    def patch_model_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        model = self.models[(namespace, name)]
        if resource_version and resource_version != model["metadata"]["resourceVersion"]:
            from disagg.kube import ConflictError

            raise ConflictError("the object has been modified")
        self.writes.append(f"status {name}")
        model["status"] = _merge_patch(model.get("status") or {}, copy.deepcopy(dict(status)))
        model["metadata"]["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(model)

    def event(self, model: Mapping[str, Any], *, reason: str, message: str, warning: bool = False) -> None:
        self.events.append((reason, message))

    # -- helpers that play the controllers' part ---------------------------------------------
    def roll_out(self) -> None:
        """Play the HPA or KEDA (raise to the floor) and deployment controllers (all pods available)."""
        floor_field = {"HorizontalPodAutoscaler": "minReplicas", "ScaledObject": "minReplicaCount"}
        floors = {
            obj["spec"]["scaleTargetRef"]["name"]: obj["spec"].get(floor_field[kind], 0)
            for (_, kind, _, _), obj in self.objects.items()
            if kind in floor_field
        }
        for (_, kind, _, name), obj in self.objects.items():
            if kind == "Deployment":
                replicas = max(obj["spec"].get("replicas", 1), floors.get(name, 0))
                obj["spec"]["replicas"] = replicas
                obj["status"] = {
                    "observedGeneration": obj["metadata"]["generation"],
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                }


@pytest.fixture
def cluster() -> MemoryCluster:
    return MemoryCluster()
