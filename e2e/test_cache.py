"""The operator's watch-fed caches (disagg/kube/cache.py) against the real API server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.harness import ClusterEnv, Kubectl, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def cache(cluster: ClusterEnv, kubectl: Kubectl) -> Iterator[Any]:
    from disagg.kube.cache import CachedCluster
    from disagg.kube.client import load_api_client

    events: list[tuple[str, str]] = []
    cached = CachedCluster(
        load_api_client(cluster.kubeconfig),
        field_manager="e2e-cache",
        on_child_event=lambda ns, n: events.append((ns, n)),
    )
    assert cached.start(timeout=60), "the caches did not list within 60 s"
    cached.events = events  # type: ignore[attr-defined]
    try:
        yield cached
    finally:
        cached.stop()


def test_gpu_sums_and_nodes_match_a_fresh_list(cache: Any, kubectl: Kubectl) -> None:
    from disagg.placement import gpu_usage

    def matches() -> bool:
        pods = kubectl.items("pods")
        fresh = gpu_usage(pods, resource="nvidia.com/gpu", exclude_labels={"no": "such"}, exclude_namespace="none")
        cached = cache.gpu_usage("nvidia.com/gpu", exclude_namespace="none", exclude_labels={"no": "such"})
        return {k: v for k, v in fresh.items() if v} == {k: v for k, v in cached.items() if v}

    wait_for("the cached GPU sums to equal a fresh LIST's", matches, timeout=20)
    assert sum(cache.gpu_usage("nvidia.com/gpu", exclude_namespace="none", exclude_labels={}).values()) >= 24, (
        "the fixture's occupied rack holds 3 x 8 GPUs"
    )
    names = {n["metadata"]["name"] for n in kubectl.items("nodes")}
    assert {n["metadata"]["name"] for n in cache.list_nodes()} == names


def test_a_bound_pod_is_counted_and_uncounted_as_it_comes_and_goes(
    cache: Any, kubectl: Kubectl, namespace: str
) -> None:
    node = "gpu-c-3"
    before = cache.gpu_usage("nvidia.com/gpu", exclude_namespace="none", exclude_labels={}).get(node, 0)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "holder", "labels": {"disagg.dev/model": "holder"}},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "c",
                    "image": "registry.example/holder:1",
                    "resources": {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}},
                }
            ],
        },
    }
    kubectl.apply(pod, namespace)

    def used() -> int:
        return int(cache.gpu_usage("nvidia.com/gpu", exclude_namespace="none", exclude_labels={}).get(node, 0))

    started = time.monotonic()
    wait_for("the pod's 2 GPUs in the cache", lambda: used() == before + 2, timeout=10, interval=0.05)
    print(f"bound pod visible in the cache after {time.monotonic() - started:.2f} s")
    (seen,) = cache.bound_pods(namespace, {"disagg.dev/model": "holder"})
    assert seen["spec"]["nodeName"] == node
    # its own pods are left out of a model's view of the node, as placement needs
    assert (
        cache.gpu_usage(
            "nvidia.com/gpu", exclude_namespace=namespace, exclude_labels={"disagg.dev/model": "holder"}
        ).get(node, 0)
        == before
    )
    kubectl.run("delete", "pod", "holder", "-n", namespace, "--grace-period=0", "--force", "--wait=true")
    wait_for("the pod's GPUs gone from the cache", lambda: used() == before, timeout=15, interval=0.05)


def test_children_are_cached_by_namespace_and_their_changes_reported(
    cache: Any, kubectl: Kubectl, private_namespace: str
) -> None:
    """In an ``op-*`` namespace, which the session's operator leaves alone: the owner is a real
    model (the garbage collector keeps the child) that nothing reconciles."""
    namespace = private_namespace
    owner = {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "DisaggregatedModel",
        "metadata": {"name": "owner"},
        "spec": {"model": {"name": "e2e/owner"}, "mode": "aggregated"},
    }
    kubectl.apply(owner, namespace)
    applied = kubectl.get("disaggregatedmodel", "owner", namespace)
    assert applied is not None
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "labels": {"app.kubernetes.io/managed-by": "disagg-operator", "disagg.dev/model": "owner"},
            "ownerReferences": [
                {
                    "apiVersion": "disagg.dev/v1alpha1",
                    "kind": "DisaggregatedModel",
                    "name": "owner",
                    "uid": applied["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "data": {"k": "v"},
    }
    kubectl.apply(config, namespace)

    def listed() -> list[dict[str, Any]]:
        return [c for c in cache.list_children(namespace, {"disagg.dev/model": "owner"}) if c["kind"] == "ConfigMap"]

    (child,) = wait_for("the child in the cache", listed, timeout=10, interval=0.05)
    assert child["data"] == {"k": "v"}
    assert "managedFields" not in child["metadata"]
    wait_for("its owner reported", lambda: (namespace, "owner") in cache.events, timeout=10, interval=0.05)
    assert cache.list_children("elsewhere", {"disagg.dev/model": "owner"}) == []
    kubectl.run("delete", "configmap", "child", "-n", namespace, "--wait=true")
    wait_for("the child gone from the cache", lambda: not listed() or None, timeout=10, interval=0.05)
