"""Without ``accelerator.type`` the operator plans for the GPU its nodes say they have (issue 13, item 1).

The nodes a model may use are those its roles' nodeSelector (and tolerations) admit; their GPU
Feature Discovery label ``nvidia.com/gpu.product`` names the GPU (read from the operator's node
cache). ``status.plan`` says which GPU and where it came from; nodes of two GPUs are an error the
model's conditions carry, and what already runs is left as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness import ROOT, Kubectl, OperatorProcess, wait_for

pytestmark = pytest.mark.e2e
PRODUCT = "nvidia.com/gpu.product"
POOL = "e2e.disagg.dev/gpu-pool"
SAMPLE = ROOT / "manifests" / "samples" / "llama-8b-aggregated.yaml"


def _cond(body: dict[str, Any], ctype: str) -> dict[str, Any]:
    found = next((c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == ctype), None)
    assert found is not None, f"no {ctype} condition in {body.get('status')}"
    return found


def _model(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    body = kubectl.get("disaggregatedmodel", name, namespace)
    assert body is not None
    return body


@pytest.fixture
def pool(kubectl: Kubectl, namespace: str) -> Iterator[list[str]]:
    """Two GPU nodes of one rack labelled as this test's pool; their product labels restored afterwards."""
    nodes = sorted(
        n["metadata"]["name"]
        for n in kubectl.items("nodes")
        if n["metadata"]["labels"].get("topology.disagg.dev/rack") == "rack-c"
    )[:2]
    assert len(nodes) == 2, nodes
    before = {n: _node_labels(kubectl, n).get(PRODUCT) for n in nodes}
    assert all(before.values()), before
    for n in nodes:
        kubectl.run("label", "node", n, f"{POOL}={namespace}", "--overwrite")
    try:
        yield nodes
    finally:
        for n, product in before.items():
            kubectl.run("label", "node", n, f"{POOL}-", f"{PRODUCT}={product}", "--overwrite")


def _node_labels(kubectl: Kubectl, name: str) -> dict[str, str]:
    node = kubectl.json("get", "node", name, "-o", "json")
    labels: dict[str, str] = node["metadata"]["labels"]
    return labels


def _body(namespace: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(Path(SAMPLE).read_text())
    body["metadata"]["name"] = "gpu-detect"
    del body["spec"]["accelerator"]
    body["spec"]["prefill"]["scheduling"] = {"nodeSelector": {POOL: namespace}}
    return body


def test_the_gpu_comes_from_the_nodes_the_model_may_use(
    kubectl: Kubectl, operator: OperatorProcess, namespace: str, pool: list[str]
) -> None:
    body = _body(namespace)
    kubectl.apply(body, namespace)

    def ready() -> dict[str, Any] | None:
        current = _model(kubectl, namespace, "gpu-detect")
        status = current.get("status") or {}
        ok = status.get("observedGeneration") == 1 and any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )
        return current if ok else None

    current = wait_for("gpu-detect Ready", ready, timeout=120)
    plan = current["status"]["plan"]
    assert plan["gpu"] == "h100-sxm", plan
    assert plan["reason"].startswith(
        f"GPU h100-sxm from the {PRODUCT} label of the 2 nodes the model may use (NVIDIA-H100-80GB-HBM3 x2;"
    ), plan["reason"]
    assert _cond(current, "Planned")["status"] == "True"
    engine = kubectl.get("deployment", "gpu-detect-prefill-decode", namespace)
    assert engine is not None
    labels = engine["spec"]["template"]["metadata"]["labels"]
    assert labels["llm-d.ai/accelerator-variant"] == "h100-sxm"
    pods = kubectl.items("pods", namespace, "disagg.dev/role=prefill-decode")
    assert pods
    assert {p["spec"].get("nodeName") for p in pods} <= set(pool)

    # One node of the pool becomes another GPU: the next pass (a spec change) cannot plan, says why,
    # and leaves the running engine and the last plan as they were.
    kubectl.run("label", "node", pool[1], f"{PRODUCT}=NVIDIA-B200", "--overwrite")
    changed = copy.deepcopy(body)
    changed["spec"]["workload"]["requestRate"] = 6
    kubectl.apply(changed, namespace)

    def refused() -> dict[str, Any] | None:
        current = _model(kubectl, namespace, "gpu-detect")
        status = current.get("status") or {}
        if status.get("observedGeneration") != 2:
            return None
        return current if _cond(current, "Planned")["status"] == "False" else None

    after = wait_for("gpu-detect refused at generation 2", refused, timeout=60)
    planned, degraded, ready_cond = _cond(after, "Planned"), _cond(after, "Degraded"), _cond(after, "Ready")
    assert planned["reason"] == "AcceleratorUnknown", planned
    assert "mixed GPU products" in planned["message"], planned
    assert "b200 (NVIDIA-B200)" in planned["message"], planned
    assert "h100-sxm (NVIDIA-H100-80GB-HBM3)" in planned["message"], planned
    assert (degraded["status"], degraded["reason"]) == ("True", "AcceleratorUnknown"), degraded
    assert ready_cond["status"] == "False"
    assert after["status"]["plan"] == plan  # the last good plan is kept
    still = kubectl.get("deployment", "gpu-detect-prefill-decode", namespace)
    assert still is not None
    assert still["metadata"]["generation"] == engine["metadata"]["generation"]  # not touched
    assert still["spec"]["template"] == engine["spec"]["template"]
    assert len(kubectl.items("pods", namespace, "disagg.dev/role=prefill-decode")) == len(pods)

    # Back to one GPU: planned again, from the nodes.
    kubectl.run("label", "node", pool[1], f"{PRODUCT}=NVIDIA-H100-80GB-HBM3", "--overwrite")
    changed["spec"]["workload"]["requestRate"] = 7
    kubectl.apply(changed, namespace)

    def planned_again() -> dict[str, Any] | None:
        current = _model(kubectl, namespace, "gpu-detect")
        status = current.get("status") or {}
        if status.get("observedGeneration") != 3:
            return None
        return current if _cond(current, "Planned")["status"] == "True" else None

    again = wait_for("gpu-detect planned at generation 3", planned_again, timeout=60)
    assert again["status"]["plan"]["gpu"] == "h100-sxm"
