"""Thin kopf handlers: translate watch events into work-queue triggers.

kopf gives us watching (with reconnects and timeouts), logging and a liveness endpoint. No handler
here makes kopf persist anything on our objects (no finalizers, no last-handled annotations, no
progress in status), so a quiet model costs no writes; retries live in :mod:`disagg.controller`.
What the handlers share (settings, the cached cluster, the controller) lives in kopf's memo, which
the CLI creates with the validated settings and API client (:func:`memo_for`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf

from disagg.api.spec import GROUP, PLURAL, VERSION
from disagg.controller import Controller
from disagg.kube.cache import CachedCluster
from disagg.kube.client import load_api_client
from disagg.leader import LeaderElector
from disagg.settings import OperatorSettings, load_settings

log = logging.getLogger(__name__)


def memo_for(settings: OperatorSettings, api: Any, metrics_address: str = "") -> kopf.Memo:
    """The memo ``kopf.run`` hands to every handler: the CLI's settings, API client and where to
    serve the operator's metrics (empty: not served)."""
    return kopf.Memo(settings=settings, api=api, metrics_address=metrics_address)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours: OperatorSettings = memo.get("settings") or load_settings()
    prefix = ours.prefix
    settings.persistence.finalizer = f"{prefix}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    settings.posting.enabled = False  # our own Events mark condition flips; kopf's would be noise
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 4
    cluster = CachedCluster(
        memo.get("api") or load_api_client(),
        field_manager=ours.field_manager,
        namespaces=tuple(ours.namespaces),
        label_prefix=prefix,
    )
    leading = threading.Event() if ours.leader_election else None
    worker = Controller(cluster, ours, leading=leading)
    # an edit of any child (every kind the operator renders) reconciles its model at once
    cluster.set_child_handler(lambda namespace, name: worker.trigger((namespace, name)))
    cluster.start()
    worker.start()
    if memo.get("metrics_address"):
        memo["metrics_server"] = worker.telemetry.serve(memo["metrics_address"])
        log.info("operator metrics on http://%s/metrics", memo["metrics_address"])
    if leading is not None:
        # a new leader re-reconciles everything once
        elector = LeaderElector(cluster, namespace=ours.leader_namespace, leading=leading, on_start=worker.resync)
        elector.start()
        memo["elector"] = elector
    memo.update(settings=ours, cluster=cluster, controller=worker)
    log.info("disagg operator started (field manager %s, resync %ss)", ours.field_manager, ours.resync_seconds)


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for name in ("elector", "controller", "cluster"):
        part = memo.pop(name, None)
        if part is not None:
            part.stop()
    server = memo.pop("metrics_server", None)
    if server is not None:
        server.shutdown()
        server.server_close()


@kopf.on.event(GROUP, VERSION, PLURAL)
def model_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    meta = body.get("metadata") or {}
    key = (str(meta.get("namespace")), str(meta.get("name")))
    worker: Controller = memo["controller"]
    if type == "DELETED":
        worker.forget(key)
        return
    worker.trigger(key, resource_version=meta.get("resourceVersion"))
