"""The Argo CD health check (manifests/argocd/health.lua) in a real Lua interpreter.

Argo CD runs health checks in gopher-lua (Lua 5.1): the table runs under Lua 5.1 and 5.4 through
lupa, with ``obj`` set the way Argo CD sets it (the live object as a Lua table).
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

ARGOCD = Path(__file__).resolve().parents[2] / "manifests" / "argocd"
HEALTH_LUA = (ARGOCD / "health.lua").read_text()


def condition(ctype: str, status: str, reason: str, message: str = "", generation: int = 2) -> dict[str, Any]:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def model(status: dict[str, Any] | None, generation: int = 2) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "DisaggregatedModel",
        "metadata": {"name": "llama-70b", "namespace": "demo", "generation": generation},
        "spec": {"model": {"name": "meta-llama/Llama-3.3-70B-Instruct"}},
    }
    if status is not None:
        body["status"] = status
    return body


READY = condition("Ready", "True", "Available", "prefill 2/2 ready, decode 1/1 ready, router 1/1 ready")
ROLLED_OUT = condition("Progressing", "False", "RolloutComplete", "generation 2 rolled out")
NOT_DEGRADED = condition("Degraded", "False", "AsExpected", "spec accepted and children applied")


def observed(*conditions: dict[str, Any], generation: int = 2) -> dict[str, Any]:
    return {"observedGeneration": generation, "conditions": list(conditions)}


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no status yet", model(None), "Progressing", "Waiting for status"),
    ("empty status", model({}), "Progressing", "Waiting for the operator to observe generation 2"),
    (
        "generation not observed yet, old Ready ignored",
        model(observed(READY, ROLLED_OUT, generation=1), generation=2),
        "Progressing",
        "Waiting for the operator to observe generation 2",
    ),
    (
        "ready",
        model(observed(READY, ROLLED_OUT, NOT_DEGRADED)),
        "Healthy",
        "prefill 2/2 ready, decode 1/1 ready, router 1/1 ready",
    ),
    (
        "rollout under way",
        model(
            observed(
                condition("Ready", "False", "RollingOut", "prefill 1/2 ready"),
                condition("Progressing", "True", "RollingOut", "rolling out prefill; prefill 1/2 ready"),
                NOT_DEGRADED,
            )
        ),
        "Progressing",
        "rolling out prefill; prefill 1/2 ready",
    ),
    (
        "pods not ready (e.g. no GPUs) is Degraded with Ready's message",
        model(
            observed(
                condition("Ready", "False", "PodsNotReady", "prefill 0/2 ready, decode 1/1 ready"),
                ROLLED_OUT,
                NOT_DEGRADED,
            )
        ),
        "Degraded",
        "prefill 0/2 ready, decode 1/1 ready",
    ),
    (
        "spec the operator cannot act on wins over a stale rollout",
        model(
            observed(
                condition("Ready", "False", "PlanningFailed", "no TP fits 140 GB on h100-sxm"),
                condition("Progressing", "True", "RollingOut", "rolling out decode"),
                condition("Degraded", "True", "PlanningFailed", "no TP fits 140 GB on h100-sxm"),
            )
        ),
        "Degraded",
        "no TP fits 140 GB on h100-sxm",
    ),
    (
        "scaled to zero is Suspended",
        model(
            observed(
                condition("Ready", "True", "ScaledToZero", "prefill and decode at zero"),
                ROLLED_OUT,
                NOT_DEGRADED,
                condition("ScaledToZero", "True", "Idle", "no demand: prefill and decode at zero"),
            )
        ),
        "Suspended",
        "no demand: prefill and decode at zero",
    ),
    (
        "scale-to-zero on but serving is Healthy",
        model(observed(READY, ROLLED_OUT, condition("ScaledToZero", "False", "Serving", "prefill and decode are up"))),
        "Healthy",
        "prefill 2/2 ready, decode 1/1 ready, router 1/1 ready",
    ),
    (
        "observed but no conditions",
        model(observed()),
        "Progressing",
        "Waiting for the Ready condition",
    ),
    (
        "Ready without a message falls back to the reason",
        model(observed(condition("Ready", "False", "PodsNotReady", ""))),
        "Degraded",
        "PodsNotReady",
    ),
    (
        "Ready Unknown waits",
        model(observed(condition("Ready", "Unknown", "Reconciling"))),
        "Progressing",
        "Waiting for the Ready condition",
    ),
]


def run_health(runtime_module: str, obj: dict[str, Any]) -> dict[str, str]:
    lupa_runtime = importlib.import_module(f"lupa.{runtime_module}")
    lua = lupa_runtime.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(copy.deepcopy(obj), recursive=True)
    result = lua.execute(HEALTH_LUA)
    return {str(k): str(v) for k, v in result.items()}


@pytest.mark.parametrize("runtime_module", ["lua51", "lua54"])
@pytest.mark.parametrize(("case", "obj", "status", "message"), CASES, ids=[c[0] for c in CASES])
def test_health(runtime_module: str, case: str, obj: dict[str, Any], status: str, message: str) -> None:
    health = run_health(runtime_module, obj)
    assert health == {"status": status, "message": message}, case


def test_every_argo_health_status_the_check_promises_is_covered() -> None:
    assert {c[2] for c in CASES} == {"Progressing", "Healthy", "Degraded", "Suspended"}


def test_argocd_cm_embeds_the_tested_script_verbatim() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"]["resource.customizations.health.disagg.dev_DisaggregatedModel"] == HEALTH_LUA


def test_application_health_check_lets_sync_waves_wait() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    script = cm["data"]["resource.customizations.health.argoproj.io_Application"]
    lupa_runtime = importlib.import_module("lupa.lua51")
    lua = lupa_runtime.LuaRuntime()
    for app_status, expected in [(None, "Progressing"), ({"health": {"status": "Healthy"}}, "Healthy")]:
        obj: dict[str, Any] = {"metadata": {"name": "disagg-crds"}}
        if app_status:
            obj["status"] = app_status
        lua.globals().obj = lua.table_from(obj, recursive=True)
        assert lua.execute(script)["status"] == expected
