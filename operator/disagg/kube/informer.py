"""List-then-watch caches of one kind, so a reconcile pass reads memory instead of the API server.

The protocol is the API server's own (client-go's reflector does the same): LIST, then WATCH from
the list's ``resourceVersion`` with bookmarks, applying ADDED/MODIFIED/DELETED to the store; a
watch that ends is resumed from the last version seen, one that is too old (HTTP 410 Gone) is
replaced by a fresh LIST whose differences are delivered as events. What is stored is what
``transform`` keeps of each object, so a cache of 100,000 pods holds a few fields of each, not
their full specs. ``on_event`` runs on the informer's thread for every change (never for a
bookmark or a relist that changes nothing), which is how edits of children trigger reconciles.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from disagg.kube import ApiError, Kind, NotFoundError

log = logging.getLogger(__name__)
Key = tuple[str, str]
"""(namespace, name); namespace is "" for cluster-scoped kinds."""
Transform = Callable[[dict[str, Any]], dict[str, Any]]
EventHandler = Callable[[str, dict[str, Any]], None]
WATCH_SECONDS = 290
"""Server-side watch timeout: the watch ends and is resumed from its last version."""
MAX_BACKOFF = 30.0
MISSING_RECHECK_SECONDS = 30.0
"""How often an informer of a kind the API server does not serve asks discovery again."""


class WatchGoneError(Exception):
    """The version a watch resumed from is older than the API server keeps (HTTP 410)."""


class ListWatchApi(Protocol):
    """The two calls an informer makes (``disagg.kube.client.KubeCluster`` implements them)."""

    def list_raw(self, kind: Kind, namespace: str | None, query: Mapping[str, str]) -> dict[str, Any]: ...

    def watch_raw(
        self,
        kind: Kind,
        namespace: str | None,
        query: Mapping[str, str],
        stop: threading.Event,
        on_open: Callable[[Callable[[], None]], None] | None = None,
    ) -> Iterator[dict[str, Any]]: ...

    def served(self, api_version: str) -> bool: ...


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


@dataclass
class InformerStats:
    lists: int = 0
    watches: int = 0
    events: int = 0
    relists_after_gone: int = 0
    errors: int = 0


@dataclass
class Informer:
    """One kind (optionally one namespace, label and field selector) mirrored in memory."""

    api: ListWatchApi
    kind: Kind
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None
    transform: Transform | None = None
    on_event: EventHandler | None = None
    stats: InformerStats = field(default_factory=InformerStats)

    def __post_init__(self) -> None:
        self._store: dict[Key, dict[str, Any]] = {}
        self._by_namespace: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._version = ""
        self._missing = False
        self._interrupt: Callable[[], None] | None = None
        """Ends the open watch at once (its read blocks until the server sends something)."""

    # -- reading ------------------------------------------------------------------------------
    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._store.values())

    def items_in(self, namespace: str) -> list[dict[str, Any]]:
        """One namespace's objects (an index: the cost is that namespace's, not the cluster's)."""
        with self._lock:
            return list(self._by_namespace.get(namespace, {}).values())

    def get(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            return self._store.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    @property
    def missing(self) -> bool:
        """The API server does not serve this kind (e.g. KEDA not installed): the store stays empty."""
        return self._missing

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def observe(self, obj: Mapping[str, Any]) -> None:
        """Write-through: the object a write returned, so the next pass does not read an older one
        (the watch event that follows carries the same or a newer version)."""
        stored = self._keep(dict(obj))
        key = key_of(stored)
        with self._lock:
            current = self._store.get(key)
            if current is None or _newer_or_equal(stored, current):
                self._put(key, stored)

    def forget(self, obj: Mapping[str, Any]) -> None:
        """Write-through of a delete."""
        with self._lock:
            self._pop(key_of(obj))

    def _put(self, key: Key, obj: dict[str, Any]) -> None:
        self._store[key] = obj
        self._by_namespace.setdefault(key[0], {})[key[1]] = obj

    def _pop(self, key: Key) -> None:
        self._store.pop(key, None)
        names = self._by_namespace.get(key[0])
        if names is not None:
            names.pop(key[1], None)
            if not names:
                del self._by_namespace[key[0]]

    # -- running ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.kind.plural}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        interrupt = self._interrupt
        if interrupt is not None:
            try:
                interrupt()
            except Exception:  # already closed
                log.debug("%s informer: closing the watch failed", self.kind.plural, exc_info=True)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _query(self) -> dict[str, str]:
        query: dict[str, str] = {}
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        if self.field_selector:
            query["fieldSelector"] = self.field_selector
        return query

    def _keep(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("apiVersion", self.kind.api_version)
        obj.setdefault("kind", self.kind.kind)
        return self.transform(obj) if self.transform else obj

    def _emit(self, event: str, obj: dict[str, Any]) -> None:
        self.stats.events += 1
        if self.on_event is None:
            return
        try:
            self.on_event(event, obj)
        except Exception:  # a handler's bug must not stop the cache
            log.exception("%s informer: event handler failed", self.kind.plural)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if not self._version:
                    self._relist()
                self._watch()
                failures = 0
            except WatchGoneError:
                self.stats.relists_after_gone += 1
                self._version = ""
            except (ApiError, NotFoundError) as exc:
                self.stats.errors += 1
                failures += 1
                # not served: ask discovery (a GET) now and then, LIST again once a CRD appears
                if isinstance(exc, NotFoundError) or exc.status == 404:
                    self._missing = True
                    self._synced.set()
                    self._replace([])
                    self._version = ""
                    while not self._stop.wait(MISSING_RECHECK_SECONDS):
                        if self._served():
                            break
                    continue
                delay = min(2.0**failures, MAX_BACKOFF)
                log.warning("%s informer: %s; retrying in %.0fs", self.kind.plural, exc, delay)
                self._stop.wait(delay)
            except Exception as exc:  # the cache must outlive anything the stream throws
                self.stats.errors += 1
                failures += 1
                delay = min(2.0**failures, MAX_BACKOFF)
                log.warning("%s informer: %s: %s; retrying in %.0fs", self.kind.plural, type(exc).__name__, exc, delay)
                self._version = ""
                self._stop.wait(delay)

    def _served(self) -> bool:
        try:
            return self.api.served(self.kind.api_version)
        except Exception:  # unknown: keep waiting
            return False

    def _relist(self) -> None:
        result = self.api.list_raw(self.kind, self.namespace, self._query())
        self.stats.lists += 1
        self._missing = False
        self._replace(result.get("items") or [])
        self._version = str((result.get("metadata") or {}).get("resourceVersion") or "")
        self._synced.set()

    def _replace(self, items: Iterable[dict[str, Any]]) -> None:
        fresh = {key_of(kept): kept for kept in (self._keep(item) for item in items)}
        by_namespace: dict[str, dict[str, dict[str, Any]]] = {}
        for (namespace, name), obj in fresh.items():
            by_namespace.setdefault(namespace, {})[name] = obj
        with self._lock:
            old, self._store, self._by_namespace = self._store, fresh, by_namespace
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                self._emit("ADDED", obj)
            elif before.get("metadata", {}).get("resourceVersion") != obj.get("metadata", {}).get("resourceVersion"):
                self._emit("MODIFIED", obj)
        for key, obj in old.items():
            if key not in fresh:
                self._emit("DELETED", obj)

    def _watch(self) -> None:
        query = {
            **self._query(),
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": self._version,
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        self.stats.watches += 1

        def opened(interrupt: Callable[[], None]) -> None:
            self._interrupt = interrupt
            if self._stop.is_set():
                interrupt()

        for event in self.api.watch_raw(self.kind, self.namespace, query, self._stop, opened):
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise WatchGoneError(obj.get("message", ""))
                raise ApiError(int(obj.get("code") or 0), str(obj.get("message") or obj))
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                self._version = str(version)
            if kind == "BOOKMARK":
                continue
            kept = self._keep(obj)
            key = key_of(kept)
            with self._lock:
                before = self._store.get(key)
                if kind == "DELETED":
                    self._pop(key)
                else:
                    self._put(key, kept)
            if kind == "MODIFIED" and before is not None and _same_but_version(before, kept):
                continue  # e.g. a node heartbeat: nothing this cache keeps changed
            self._emit(str(kind), kept)
            if self._stop.is_set():
                return


def _same_but_version(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    def without(obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
        return {**obj, "metadata": meta}

    return without(a) == without(b)


def _newer_or_equal(candidate: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """resourceVersions are opaque, but etcd's are integers; where both parse, compare them."""
    a = (candidate.get("metadata") or {}).get("resourceVersion")
    b = (current.get("metadata") or {}).get("resourceVersion")
    try:
        return int(a) >= int(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True


def wait_all_synced(informers: Iterable[Informer], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    return all(i.wait_synced(max(deadline - time.monotonic(), 0.0)) for i in informers)
