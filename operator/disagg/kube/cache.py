"""The cluster as reconcile reads it: watch-fed caches, so a pass costs the same in any cluster.

Three kinds of cache, each an :class:`~disagg.kube.informer.Informer`:

- the operator's own children, every kind it renders, selected by its ``managed-by`` label and
  indexed by namespace: a pass reads its model's children from memory, and an edit of any child
  (a hand-scaled HPA, a deleted Service) triggers the owning model at once;
- nodes, reduced to what placement reads (labels, allocatable, taints, Ready, cordon);
- pods bound to a node and not finished (``spec.nodeName!=``, phase not Succeeded/Failed, both
  server-side field selectors), reduced to namespace, name, labels, node, phase and extended
  resource requests; the GPUs requested per node are kept as running sums, updated per event.

Writes go to the API server as before (``KubeCluster``) and their results are written through to
the cache, so the next pass never acts on an older copy than its own last write.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from disagg.kube import CHILD_KINDS, NODE_KIND, POD_KIND, Kind, kind_of
from disagg.kube.client import BOUND_PODS, KubeCluster
from disagg.kube.informer import Informer, Key, key_of, wait_all_synced
from disagg.placement import holds_resources, is_own, pod_requests

log = logging.getLogger(__name__)
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=disagg-operator"
ChildHandler = Callable[[str, str], None]
"""(namespace, model name) of a child that changed."""


def slim_child(obj: dict[str, Any]) -> dict[str, Any]:
    """Children are kept whole but for managedFields (the bulk of a small object, never read)."""
    (obj.get("metadata") or {}).pop("managedFields", None)
    return obj


def slim_node(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": meta.get("name"),
            "labels": meta.get("labels") or {},
            "resourceVersion": meta.get("resourceVersion"),
        },
        "spec": {"unschedulable": bool(spec.get("unschedulable")), "taints": spec.get("taints") or []},
        "status": {
            "allocatable": status.get("allocatable") or {},
            "conditions": [
                {"type": c.get("type"), "status": c.get("status")}
                for c in status.get("conditions") or []
                if c.get("type") == "Ready"
            ],
        },
    }


def slim_pod(obj: dict[str, Any], label_prefixes: tuple[str, ...]) -> dict[str, Any]:
    """What placement reads of a pod: its extended-resource requests as one container, the labels
    that tell which model it belongs to, its node and phase."""
    meta = obj.get("metadata") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k.startswith(label_prefixes)}
    requests = {name: str(amount) for name, amount in pod_requests(obj).items()}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "labels": labels,
            "resourceVersion": meta.get("resourceVersion"),
        },
        "spec": {
            "nodeName": (obj.get("spec") or {}).get("nodeName"),
            "containers": [{"resources": {"requests": requests}}] if requests else [],
        },
        "status": {"phase": (obj.get("status") or {}).get("phase")},
    }


def _owner(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "DisaggregatedModel" and ref.get("controller"):
            return str(ref.get("name"))
    return None


class PodIndex:
    """Bound pods by namespace, and the extended resources they request summed per node."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_namespace: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self._requests: dict[Key, tuple[str, dict[str, int]]] = {}
        self._per_node: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def __call__(self, event: str, pod: dict[str, Any]) -> None:
        key = key_of(pod)
        with self._lock:
            self._remove(key)
            if event != "DELETED" and holds_resources(pod):
                self._by_namespace[key[0]][key[1]] = pod
                node = str((pod.get("spec") or {}).get("nodeName"))
                requests = pod_requests(pod)
                self._requests[key] = (node, requests)
                for name, amount in requests.items():
                    self._per_node[name][node] += amount

    def _remove(self, key: Key) -> None:
        self._by_namespace.get(key[0], {}).pop(key[1], None)
        previous = self._requests.pop(key, None)
        if previous is not None:
            node, requests = previous
            for name, amount in requests.items():
                self._per_node[name][node] -= amount
                if not self._per_node[name][node]:
                    del self._per_node[name][node]

    def in_namespace(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        with self._lock:
            pods = list(self._by_namespace.get(namespace, {}).values())
        return [copy.deepcopy(p) for p in pods if is_own(p, namespace, selector)]

    def usage(self, resource: str, *, exclude_namespace: str, exclude_labels: Mapping[str, str]) -> dict[str, int]:
        with self._lock:
            used = dict(self._per_node.get(resource, {}))
            own = list(self._by_namespace.get(exclude_namespace, {}).values())
        for pod in own:
            if is_own(pod, exclude_namespace, exclude_labels):
                node = str((pod.get("spec") or {}).get("nodeName"))
                used[node] = used.get(node, 0) - pod_requests(pod).get(resource, 0)
        return used


class CachedCluster(KubeCluster):
    """:class:`KubeCluster` whose reads come from watch-fed caches (call :meth:`start` first)."""

    def __init__(
        self,
        api: Any,
        *,
        field_manager: str,
        namespaces: tuple[str, ...] = (),
        label_prefix: str = "disagg.dev",
        on_child_event: ChildHandler | None = None,
    ) -> None:
        super().__init__(api, field_manager=field_manager)
        self._on_child_event = on_child_event
        self.pod_index = PodIndex()
        scopes: tuple[str | None, ...] = namespaces or (None,)
        self.children: dict[tuple[str, str | None], Informer] = {
            (kind.plural, scope): Informer(
                self,
                kind,
                namespace=scope,
                label_selector=MANAGED_SELECTOR,
                transform=slim_child,
                on_event=self._child_event,
            )
            for kind in CHILD_KINDS
            for scope in scopes
        }
        self._inventory_version = 0
        self.nodes = Informer(self, NODE_KIND, transform=slim_node, on_event=self._inventory_changed)
        prefixes = (f"{label_prefix}/", "app.kubernetes.io/")
        self.pods = Informer(
            self,
            POD_KIND,
            field_selector=BOUND_PODS,
            transform=lambda pod: slim_pod(pod, prefixes),
            on_event=self._pod_event,
        )
        self._scopes = scopes

    @property
    def informers(self) -> list[Informer]:
        return [*self.children.values(), self.nodes, self.pods]

    def set_child_handler(self, handler: ChildHandler) -> None:
        self._on_child_event = handler

    def start(self, timeout: float = 120) -> bool:
        """Start every cache and wait (bounded) until each has listed once."""
        for informer in self.informers:
            informer.start()
        synced = wait_all_synced(self.informers, timeout)
        if not synced:
            log.warning("caches not synced within %.0fs; passes read what they hold so far", timeout)
        return synced

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()

    def _inventory_changed(self, _event: str, _obj: dict[str, Any]) -> None:
        self._inventory_version += 1  # (one writer per informer thread; readers only compare)

    def _pod_event(self, event: str, pod: dict[str, Any]) -> None:
        self.pod_index(event, pod)
        self._inventory_changed(event, pod)

    def inventory_version(self) -> int | None:
        return self._inventory_version

    def _child_event(self, _event: str, obj: dict[str, Any]) -> None:
        owner = _owner(obj)
        namespace = (obj.get("metadata") or {}).get("namespace")
        if owner and namespace and self._on_child_event is not None:
            self._on_child_event(str(namespace), owner)

    def _child_informer(self, kind: Kind, namespace: str | None) -> Informer | None:
        # (not `a or b`: an Informer has a length, and an empty one is falsy)
        found = self.children.get((kind.plural, None))
        return found if found is not None else self.children.get((kind.plural, namespace))

    # -- reads ----------------------------------------------------------------------------------
    def list_children(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for kind in CHILD_KINDS:
            informer = self._child_informer(kind, namespace)
            if informer is None:  # a namespace outside the operator's scope: ask the API server
                out += super().list_children(namespace, selector)
                break
            for obj in informer.items_in(namespace):
                labels = (obj.get("metadata") or {}).get("labels") or {}
                if all(labels.get(k) == v for k, v in selector.items()):
                    out.append(copy.deepcopy(obj))
        return out

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.nodes.items()  # slim copies, never mutated by readers (placement only reads)

    def gpu_usage(self, resource: str, *, exclude_namespace: str, exclude_labels: Mapping[str, str]) -> dict[str, int]:
        return self.pod_index.usage(resource, exclude_namespace=exclude_namespace, exclude_labels=exclude_labels)

    def bound_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        return self.pod_index.in_namespace(namespace, selector)

    # -- writes, written through ----------------------------------------------------------------
    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        result = super().apply(obj)
        informer = self._child_informer(kind_of(obj), (obj.get("metadata") or {}).get("namespace"))
        if informer is not None:
            informer.observe(copy.deepcopy(result))
        return result

    def scale(self, obj: Mapping[str, Any], replicas: int) -> None:
        super().scale(obj, replicas)
        informer = self._child_informer(kind_of(obj), (obj.get("metadata") or {}).get("namespace"))
        cached = informer.get(key_of(obj)) if informer is not None else None
        if informer is not None and cached is not None:
            # same resourceVersion: the watch event of the scale, one version later, replaces it
            updated = copy.deepcopy(cached)
            updated.setdefault("spec", {})["replicas"] = replicas
            informer.observe(updated)

    def delete(self, obj: Mapping[str, Any]) -> None:
        super().delete(obj)
        informer = self._child_informer(kind_of(obj), (obj.get("metadata") or {}).get("namespace"))
        if informer is not None:
            informer.forget(obj)
