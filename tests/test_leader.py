"""Leader election rounds against an in-memory Lease store with optimistic concurrency."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from disagg.kube import ConflictError
from disagg.leader import LeaderElector


class MemoryLeases:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.lease)

    def write_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        expected = lease["metadata"].get("resourceVersion")
        current = self.lease["metadata"]["resourceVersion"] if self.lease else None
        if expected != current:
            raise ConflictError("stale lease")
        self.version += 1
        self.lease = copy.deepcopy(lease)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


T0 = dt.datetime(2026, 11, 28, 3, 0, tzinfo=dt.UTC)


def test_exactly_one_leads_and_a_dead_leader_hands_over() -> None:
    store = MemoryLeases()
    started: list[str] = []
    a = LeaderElector(store, namespace="ns", identity="a", on_start=lambda: started.append("a"))
    b = LeaderElector(store, namespace="ns", identity="b", on_start=lambda: started.append("b"))
    assert a.try_acquire_or_renew(T0)
    assert not b.try_acquire_or_renew(T0 + dt.timedelta(seconds=1))
    assert a.try_acquire_or_renew(T0 + dt.timedelta(seconds=5))  # renews
    assert not b.try_acquire_or_renew(T0 + dt.timedelta(seconds=10))
    # a dies (stops renewing): after the lease duration b takes over
    assert b.try_acquire_or_renew(T0 + dt.timedelta(seconds=21))
    assert store.lease is not None
    assert store.lease["spec"]["holderIdentity"] == "b"
    assert store.lease["spec"]["leaseTransitions"] == 2
    assert not a.try_acquire_or_renew(T0 + dt.timedelta(seconds=22))  # a comes back as a standby
    assert not a.leading.is_set()
    assert b.leading.is_set()
    assert started == ["a", "b"]


def test_a_lost_race_is_not_leadership() -> None:
    store = MemoryLeases()
    a = LeaderElector(store, namespace="ns", identity="a")

    def racing_write(lease: dict[str, Any]) -> dict[str, Any]:
        raise ConflictError("someone else wrote first")

    store.write_lease = racing_write  # type: ignore[method-assign]
    assert not a.try_acquire_or_renew(T0)
    assert not a.leading.is_set()
