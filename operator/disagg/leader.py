"""Leader election on a coordination.k8s.io Lease, so several operator replicas run with one acting.

Every replica watches and queues work; only the holder of the Lease reconciles. kopf's own peering
would pause kopf's handlers but not our work queue (which runs outside kopf's handler machinery),
so the queue is gated on the Lease instead — the same mechanism kube-controller-manager uses.
A leader that stops renewing loses the Lease after ``lease_seconds``; a standby then takes it.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from disagg.kube import ConflictError, NotFoundError

log = logging.getLogger(__name__)
MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


class LeaseStore(Protocol):
    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def write_lease(self, lease: dict[str, Any]) -> dict[str, Any]: ...


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, MICRO).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


class LeaderElector:
    def __init__(
        self,
        store: LeaseStore,
        *,
        namespace: str,
        name: str = "disagg-operator",
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
        identity: str | None = None,
        leading: threading.Event | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.name = name
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.identity = identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.leading = leading or threading.Event()
        self._on_start = on_start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def try_acquire_or_renew(self, now: dt.datetime | None = None) -> bool:
        """One election round; returns whether this replica leads afterwards."""
        now = now or _now()
        stamp = now.strftime(MICRO)
        try:
            lease = self.store.get_lease(self.namespace, self.name)
        except NotFoundError:
            lease = None
        spec = (lease or {}).get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime"))
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        expired = renewed is None or (now - renewed).total_seconds() > duration
        if lease is not None and holder not in (None, "", self.identity) and not expired:
            self._set(False)
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.lease_seconds,
                "renewTime": stamp,
                "acquireTime": spec.get("acquireTime") if holder == self.identity else stamp,
                "leaseTransitions": transitions,
            },
        }
        if lease is not None:
            body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
        try:
            self.store.write_lease(body)
        except (ConflictError, NotFoundError):
            self._set(False)  # someone else won this round
            return False
        self._set(True)
        return True

    def _set(self, leading: bool) -> None:
        if leading and not self.leading.is_set():
            log.info("became leader (%s/%s as %s)", self.namespace, self.name, self.identity)
            self.leading.set()
            if self._on_start is not None:
                self._on_start()
        elif not leading and self.leading.is_set():
            log.warning("lost leadership (%s/%s)", self.namespace, self.name)
            self.leading.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="disagg-leader", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.try_acquire_or_renew()
            except Exception as exc:  # any API failure: stop acting until a round succeeds
                log.warning("leader election round failed: %s", exc)
                self._set(False)
            self._stop.wait(self.renew_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
