"""Real :class:`~disagg.kube.Cluster` on the official Kubernetes client, speaking REST paths directly.

Server-side apply is a PATCH with ``application/apply-patch+yaml`` (JSON is valid YAML), one field
manager, ``force=true``: the operator is the single writer of every field it renders.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from disagg import __version__
from disagg.kube import (
    CHILD_KINDS,
    MODEL_KIND,
    NODE_KIND,
    POD_KIND,
    ApiError,
    ConflictError,
    Kind,
    NotFoundError,
    kind_of,
    selector_string,
)
from disagg.placement import gpu_usage

log = logging.getLogger(__name__)
BOUND_PODS = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
"""Pods that hold a node's resources (server-side field selectors)."""
TIMEOUT = (5.0, 30.0)
CONNECTIONS = 64
"""HTTP connections kept to the API server (the client's default, 5 per CPU, is below the watches)."""
USER_AGENT = f"disagg-operator/{__version__}"
MISSING_API_RECHECK = 60.0
SERVED_RECHECK = 15.0
"""Seconds a discovery answer is reused: a CRD installed later is noticed within this."""
BUILT_IN_APIS = frozenset(
    {"v1", "apps/v1", "rbac.authorization.k8s.io/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"}
)
FAILPOINT_ENV = "DISAGG_FAILPOINT"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
WRITE_PHASES = ("apply", "delete", "scale", "status")


def parse_failpoint(text: str | None) -> tuple[str, int] | None:
    """``PHASE:N`` (e.g. ``delete:1``): a fault-test hook that SIGKILLs the operator right after its
    N-th successful write of that phase, so every reconcile phase can be interrupted on purpose."""
    if not text:
        return None
    phase, _, count = text.partition(":")
    if phase not in WRITE_PHASES or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{FAILPOINT_ENV} must be PHASE:N with PHASE one of {', '.join(WRITE_PHASES)}, got {text!r}")
    return phase, int(count)


def load_api_client(
    kubeconfig: str | None = None, *, context: str | None = None, user_agent: str = USER_AGENT
) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG, which may list
    several files, or ~/.kube/config). A kubeconfig or context named explicitly is always used.
    Raises ``kubernetes.config.ConfigException`` when there are no credentials."""
    configuration = client.Configuration()
    in_cluster = False
    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            in_cluster = True
        except config.ConfigException:
            pass
    if not in_cluster:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    # every cache holds a watch open (kube/cache.py): room for those and the writes beside them
    configuration.connection_pool_maxsize = CONNECTIONS
    api = client.ApiClient(configuration)
    api.user_agent = user_agent  # lets audit logs tell the operator's requests apart
    return api


def default_namespace(kubeconfig: str | None = None, *, context: str | None = None) -> str:
    """The namespace kubectl would use: the context's, else the pod's own in a cluster, else ``default``."""
    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        contexts, active = [], None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    if namespace:
        return str(namespace)
    if chosen is None and kubeconfig is None and context is None:
        with contextlib.suppress(OSError):
            return IN_CLUSTER_NAMESPACE.read_text(encoding="utf-8").strip() or "default"
    return "default"


class KubeCluster:
    """Cluster access for reconcile; thread-safe (kopf runs sync handlers in a thread pool)."""

    def __init__(self, api: client.ApiClient, *, field_manager: str) -> None:
        self._api = api
        self._field_manager = field_manager
        self._missing_apis: dict[str, float] = {}
        """API versions found not served, with when: re-checked after MISSING_API_RECHECK seconds
        (a CRD installed later, e.g. KEDA, is noticed without a restart)."""
        self._served: dict[str, tuple[bool, float]] = {}
        self._lock = threading.Lock()
        self._failpoint = parse_failpoint(os.environ.get(FAILPOINT_ENV))
        if self._failpoint is not None:
            log.warning("%s is set: this process SIGKILLs itself after write %s:%d", FAILPOINT_ENV, *self._failpoint)
        self._writes = dict.fromkeys(WRITE_PHASES, 0)

    def _wrote(self, phase: str) -> None:
        """Count a successful write; die here if the fault-test failpoint says so."""
        with self._lock:
            self._writes[phase] += 1
            count = self._writes[phase]
        if self._failpoint == (phase, count):
            log.critical("failpoint %s:%d reached: SIGKILL", phase, count)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, Any]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        method, url, headers, payload, _ = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(method, url, header_params=headers, body=payload, _request_timeout=TIMEOUT)
            response.read()  # type: ignore[no-untyped-call]
        except ApiException as exc:  # transport-level failures surface as ApiException(status=0)
            raise ApiError(int(exc.status or 0), _message(exc.body, str(exc.reason))) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # API server down or restarting
            raise ApiError(0, f"API server unreachable: {type(exc).__name__}") from exc
        text = response.data.decode("utf-8") if response.data else ""
        if response.status >= 400:
            message = _message(text, response.reason or "")
            if response.status == 404:
                raise NotFoundError(message)
            if response.status == 409:
                raise ConflictError(message)
            raise ApiError(response.status, message)
        return json.loads(text) if text else {}

    def list_raw(self, kind: Kind, namespace: str | None, query: Mapping[str, str]) -> dict[str, Any]:
        """One LIST as the API server answers it (items and the list's resourceVersion)."""
        result: dict[str, Any] = self._call("GET", kind.path(namespace), query=list(query.items()))
        return result

    def watch_raw(
        self,
        kind: Kind,
        namespace: str | None,
        query: Mapping[str, str],
        stop: threading.Event,
        on_open: Callable[[Callable[[], None]], None] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One WATCH: its events, one JSON document per line, until the server ends it (or ``stop``)."""
        method, url, headers, _, _ = self._api.param_serialize(
            method="GET",
            resource_path=kind.path(namespace),
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        timeout = float(query.get("timeoutSeconds", "300")) + 30.0
        try:
            response = self._api.call_api(method, url, header_params=headers, _request_timeout=(5.0, timeout))
        except ApiException as exc:
            raise ApiError(int(exc.status or 0), _message(exc.body, str(exc.reason))) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, f"API server unreachable: {type(exc).__name__}") from exc
        raw = response.response
        if on_open is not None:
            on_open(raw.shutdown)  # another thread may end the blocking read
        try:
            if response.status >= 400:
                text = raw.read().decode("utf-8", errors="replace")
                raise ApiError(response.status, _message(text, response.reason or ""))
            pending = b""
            for chunk in raw.stream(64 * 1024, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
                if stop.is_set():
                    return
            if pending.strip():
                yield json.loads(pending)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:  # connection lost mid-stream: resume
            if stop.is_set():
                return
            raise ApiError(0, f"watch interrupted: {type(exc).__name__}") from exc
        finally:
            raw.release_conn()

    def _list(self, kind: Kind, namespace: str | None = None, **query: str) -> list[dict[str, Any]]:
        missing_since = self._missing_apis.get(kind.api_version)
        if missing_since is not None and time.monotonic() - missing_since < MISSING_API_RECHECK:
            return []
        try:
            result = self._call("GET", kind.path(namespace), query=list(query.items()))
        except NotFoundError:
            with self._lock:
                self._missing_apis[kind.api_version] = time.monotonic()
                self._served[kind.api_version] = (False, time.monotonic())
            log.info("API %s is not served; skipping %s", kind.api_version, kind.kind)
            return []
        items: list[dict[str, Any]] = result.get("items") or []
        for item in items:
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items

    def served(self, api_version: str) -> bool:
        """Whether the API server serves this group/version (discovery, cached briefly)."""
        if api_version in BUILT_IN_APIS:
            return True
        now = time.monotonic()
        with self._lock:
            cached = self._served.get(api_version)
        if cached is not None and now - cached[1] < SERVED_RECHECK:
            return cached[0]
        try:
            self._call("GET", f"/apis/{api_version}")
            answer = True
        except NotFoundError:
            answer = False
        with self._lock:
            self._served[api_version] = (answer, now)
            if answer:
                self._missing_apis.pop(api_version, None)
            else:
                self._missing_apis[api_version] = now
        return answer

    def get_object(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        """One object, or None when it (or its API) does not exist."""
        try:
            result: dict[str, Any] = self._call("GET", kind.path(namespace, name))
        except NotFoundError:
            return None
        result.setdefault("apiVersion", kind.api_version)
        result.setdefault("kind", kind.kind)
        return result

    def list_objects(self, kind: Kind, namespace: str | None = None, **query: str) -> list[dict[str, Any]]:
        """One LIST (``labelSelector``, ``fieldSelector``, ...); empty when the API is not served."""
        return self._list(kind, namespace, **query)

    def list_children(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        label_selector = selector_string(selector)
        children: list[dict[str, Any]] = []
        for kind in CHILD_KINDS:
            children += self._list(kind, namespace, labelSelector=label_selector)
        return children

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind = kind_of(obj)
        meta = obj["metadata"]
        result: dict[str, Any] = self._call(
            "PATCH",
            kind.path(meta.get("namespace"), meta["name"]),
            body=json.dumps(obj),
            query=[("fieldManager", self._field_manager), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        self._wrote("apply")
        return result

    def delete(self, obj: Mapping[str, Any]) -> None:
        kind = kind_of(obj)
        meta = obj["metadata"]
        with contextlib.suppress(NotFoundError):
            self._call(
                "DELETE",
                kind.path(meta.get("namespace"), meta["name"]),
                body={
                    "propagationPolicy": "Background",
                    "preconditions": {"uid": meta["uid"]} if meta.get("uid") else None,
                },
            )
            self._wrote("delete")

    def scale(self, obj: Mapping[str, Any], replicas: int) -> None:
        """Set replicas through the scale subresource (an Update, as autoscalers do; never in our apply)."""
        kind = kind_of(obj)
        meta = obj["metadata"]
        self._call(
            "PATCH",
            kind.path(meta.get("namespace"), meta["name"]) + "/scale",
            body={"spec": {"replicas": replicas}},
            query=[("fieldManager", self._field_manager)],
            content_type="application/merge-patch+json",
        )
        self._wrote("scale")

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = self._call(
                "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
            )
        except NotFoundError:
            return None
        return lease

    def write_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        """Create, or replace with optimistic concurrency (resourceVersion): a lost race is a 409."""
        meta = lease["metadata"]
        base = f"/apis/coordination.k8s.io/v1/namespaces/{meta['namespace']}/leases"
        if meta.get("resourceVersion"):
            result: dict[str, Any] = self._call("PUT", f"{base}/{meta['name']}", body=lease)
        else:
            result = self._call("POST", base, body=lease)
        return result

    def list_nodes(self) -> list[dict[str, Any]]:
        return self._list(NODE_KIND)

    def gpu_usage(self, resource: str, *, exclude_namespace: str, exclude_labels: Mapping[str, str]) -> dict[str, int]:
        """Uncached (one LIST of every bound pod): :class:`disagg.kube.cache.CachedCluster` keeps the sums."""
        pods = self._list(POD_KIND, None, fieldSelector=BOUND_PODS)
        return gpu_usage(pods, resource=resource, exclude_namespace=exclude_namespace, exclude_labels=exclude_labels)

    def inventory_version(self) -> int | None:
        return None  # uncached: every read is fresh, nothing to compare

    def bound_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        return self._list(POD_KIND, namespace, labelSelector=selector_string(selector), fieldSelector=BOUND_PODS)

    def list_model_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """One model's pods (read only when a role is short of its floor, to say why)."""
        return self._list(POD_KIND, namespace, labelSelector=selector_string(selector))

    def get_model(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call("GET", MODEL_KIND.path(namespace, name))
        except NotFoundError:
            return None
        return result

    def list_models(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self._list(MODEL_KIND, namespace)

    def patch_model_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        result: dict[str, Any] = self._call(
            "PATCH",
            MODEL_KIND.path(namespace, name) + "/status",
            body=body,
            query=[("fieldManager", self._field_manager)],
            content_type="application/merge-patch+json",
        )
        self._wrote("status")
        return result

    def event(self, model: Mapping[str, Any], *, reason: str, message: str, warning: bool = False) -> None:
        meta = model["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "eventTime": now,
            "reportingController": "disagg.dev/operator",
            "reportingInstance": self._field_manager,
            "action": "Reconcile",
            "reason": reason,
            "note": message[:1024],
            "type": "Warning" if warning else "Normal",
            "regarding": {
                "apiVersion": model.get("apiVersion", MODEL_KIND.api_version),
                "kind": MODEL_KIND.kind,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
        }
        try:
            self._call("POST", f"/apis/events.k8s.io/v1/namespaces/{meta['namespace']}/events", body=body)
        except (ApiError, NotFoundError, ConflictError) as exc:  # events are best effort
            log.warning("could not record event %s: %s", reason, exc)


def _message(body: str | bytes | None, fallback: str) -> str:
    try:
        payload = json.loads(body or "{}")
        return str(payload.get("message") or fallback)
    except (TypeError, ValueError):
        return fallback
