"""`kubectl disagg` through the real kubectl: it finds the plugin on PATH and passes it no flags of its own."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from disagg.describe import milliseconds, plan_fields
from disagg.planner.resolve import resolve_plan
from disagg.reconcile import parse_spec
from disagg.status import plan_summary
from e2e.harness import ClusterEnv, Kubectl, OperatorProcess, wait_for
from e2e.test_operator import model, sample, wait_ready

pytestmark = pytest.mark.e2e
VENV_BIN = Path(sys.executable).parent
NAME = "qwen3-32b"


def kubectl_disagg(
    cluster: ClusterEnv, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``kubectl disagg ARGS`` as a user runs it: the venv's bin on PATH, the cluster in KUBECONFIG."""
    plugin = VENV_BIN / "kubectl-disagg"
    assert plugin.exists(), f"{plugin} missing: the package's console script (pip install -e .)"
    base = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": cluster.kubeconfig,
    }
    return subprocess.run(
        [cluster.kubectl_path, "disagg", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def the_model() -> dict[str, Any]:
    """The rack-packed sample with every section switched on: autoscaled router, scale to zero, re-planning."""
    body = sample("qwen3-32b-rack-packed.yaml")
    body["spec"]["router"] = {"replicas": {"min": 1, "max": 2}}
    body["spec"]["scaleToZero"] = {"enabled": True, "idleAfter": "10m"}
    body["spec"]["planner"] = {"replan": {"enabled": True, "interval": "5m"}}
    return body


def squeezed(line: str) -> str:
    return " ".join(line.split())


def section(text: str, title: str) -> list[str]:
    blocks = [b.splitlines() for b in text.split("\n\n")]
    found = [b for b in blocks if b and b[0].startswith(title)]
    assert found, f"no section {title!r} in:\n{text}"
    return found[0]


def test_kubectl_finds_the_plugin_on_path(cluster: ClusterEnv) -> None:
    listed = subprocess.run(
        [cluster.kubectl_path, "plugin", "list", "--name-only"],
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert "kubectl-disagg" in listed.stdout.split(), listed.stdout + listed.stderr


def test_status_shows_plan_roles_placement_and_conditions(
    cluster: ClusterEnv, kubectl: Kubectl, operator: OperatorProcess, namespace: str
) -> None:
    kubectl.apply(the_model(), namespace)
    ready = wait_ready(kubectl, namespace, NAME)
    # every HPA exists and has been looked at by the controller (its conditions are set)
    wait_for(
        "the HPAs to be read by kube-controller-manager",
        lambda: all((h.get("status") or {}).get("conditions") for h in kubectl.items("hpa", namespace)) or None,
        timeout=60,
    )
    status = model(kubectl, namespace, NAME)["status"]
    assert status["observedGeneration"] == ready["metadata"]["generation"]

    result = kubectl_disagg(cluster, "status", NAME, "-n", namespace)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    print(text)  # shown when the test fails (and with -s: the README's sample)

    plan = status["plan"]
    plan_lines = section(text, "Plan:")
    assert (
        plan_lines[0]
        == f"Plan: planner, Planned=True ({next(c for c in status['conditions'] if c['type'] == 'Planned')['reason']})"
    )
    assert f"  Mode:       disaggregated, {status['ratio']} on {plan['gpus']} GPUs at the floor" in plan_lines
    prefill, decode = plan["prefill"], plan["decode"]
    assert (
        f"  Roles:      prefill TP{prefill['tensorParallel']} floor {prefill['replicas']} max {prefill['maxReplicas']};"
        f" decode TP{decode['tensorParallel']} floor {decode['replicas']} max {decode['maxReplicas']}"
    ) in plan_lines
    ttft, itl = milliseconds(plan["predictedTtftMs"]), milliseconds(plan["predictedItlMs"])
    # the sample sets no SLO: the spec's defaults are shown beside the predictions
    assert f"  Predicted:  TTFT {ttft} (SLO 2s p90), ITL {itl} (SLO 50ms p90): SLOs met" in plan_lines, plan_lines
    assert squeezed(" ".join(plan_lines)).endswith(squeezed(plan["reason"])[-60:])

    roles = section(text, "Roles:")
    assert squeezed(roles[1]) == "ROLE TP DESIRED READY UPDATED AUTOSCALER MIN MAX WANTS METRIC NOW/TARGET"
    rows = {line.split()[0]: line.split() for line in roles[2:] if line.startswith("  ") and not line.startswith("   ")}
    metrics = {"prefill": "vllm_num_requests_waiting", "decode": "vllm_kv_cache_usage_perc", "router": "cpu"}
    for role in status["roles"]:
        row = rows[role["name"]]
        hpa = kubectl.get("hpa", f"{NAME}-{role['name']}", namespace)
        assert hpa is not None
        assert row[2:6] == [str(role["desired"]), str(role["ready"]), str(role["updated"]), "HPA"], row
        assert row[6:8] == [str(hpa["spec"]["minReplicas"]), str(hpa["spec"]["maxReplicas"])], row
        assert row[9] == metrics[role["name"]], row
    # no metrics API on this cluster: the HPAs say so, and so does the plugin
    assert any("ScalingActive=False" in line for line in roles), roles

    placement = section(text, "Placement:")
    domain = status["placement"][0]
    assert squeezed(placement[2]) == f"rack {domain['domain']} required {domain['gpusNeeded']} topology.disagg.dev/rack"

    sleep = section(text, "Scale to zero:")
    assert sleep[0] == "Scale to zero: on, idle after 10m"
    assert sleep[1].startswith("  Now:    serving since "), sleep
    assert sleep[1].endswith("ScaledToZero=False (Serving)"), sleep
    assert section(text, "Re-plan:")[0] == "Re-plan: on, every 5m"

    conditions = section(text, "Conditions:")
    shown = {line.split()[0]: line.split()[1:3] for line in conditions[2:]}
    assert shown == {c["type"]: [c["status"], c["reason"]] for c in status["conditions"]}

    # --kubeconfig instead of KUBECONFIG, and a context that does not exist
    flagged = kubectl_disagg(
        cluster, "status", NAME, "-n", namespace, "--kubeconfig", cluster.kubeconfig, env={"KUBECONFIG": ""}
    )
    assert flagged.returncode == 0, flagged.stderr
    assert flagged.stdout.splitlines()[:2] == text.splitlines()[:2]
    wrong = kubectl_disagg(cluster, "status", NAME, "-n", namespace, "--context", "no-such-context")
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("error: no cluster credentials: "), wrong.stderr


def test_plan_shows_what_a_manifest_would_change(
    cluster: ClusterEnv, kubectl: Kubectl, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    body = the_model()
    # re-planning off: its floors stand until its next decision, so a raised replicas.min would not
    # show as a floor change (the plan says so in a note; tests/test_kubectl_plugin.py holds that)
    del body["spec"]["planner"]
    kubectl.apply(body, namespace)
    wait_ready(kubectl, namespace, NAME)
    live = model(kubectl, namespace, NAME)["status"]["plan"]
    manifest = tmp_path / "model.yaml"
    manifest.write_text(yaml.safe_dump(body))

    same = kubectl_disagg(cluster, "plan", "-f", str(manifest), "-n", namespace, "--detailed-exitcode")
    assert same.returncode == 0, same.stderr
    assert same.stdout.splitlines()[0] == (
        f"disaggregatedmodel/{NAME} in namespace {namespace}: no change (the live plan is what this manifest plans)"
    )

    changed = copy.deepcopy(body)
    changed["spec"]["prefill"]["replicas"] = {"min": 4, "max": 6}
    changed["spec"]["slo"] = {"ttft": "1s", "itl": "25ms", "percentile": 90}
    manifest.write_text(yaml.safe_dump(changed))
    result = kubectl_disagg(cluster, "plan", "-f", str(manifest), "-n", namespace)
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    gated = kubectl_disagg(cluster, "plan", "-f", str(manifest), "-n", namespace, "--detailed-exitcode")
    assert (gated.returncode, gated.stdout) == (2, result.stdout), gated.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"disaggregatedmodel/{NAME} in namespace {namespace}: ")
    assert lines[0].endswith(" would change"), lines[0]
    assert squeezed(lines[1]) == "FIELD LIVE MANIFEST"
    diff = {}
    for line in lines[2:]:
        if " -> " not in line:
            break
        field, _, rest = line.strip().partition("  ")
        old, _, new = rest.partition(" -> ")
        diff[field] = (old.strip(), new.strip())
    assert diff["prefill floor"] == (str(live["prefill"]["replicas"]), "4")
    assert diff["prefill ceiling"] == (str(live["prefill"]["maxReplicas"]), "6")
    # every other row is what the operator's planner makes of the changed spec
    resolution = resolve_plan(parse_spec(changed["spec"]))
    assert resolution.plan is not None
    expected = plan_fields(plan_summary(resolution.plan), resolution.reason)
    assert {field: new for field, (_, new) in diff.items()} == {
        field: value for field, value in expected.items() if field in diff
    }
    assert "predicted TTFT" in diff or "predicted ITL" in diff, "a tighter ITL SLO changes the plan's figures"

    # what the plugin predicted is what the operator does with the manifest
    kubectl.apply(changed, namespace)
    wait_ready(kubectl, namespace, NAME, generation=2)
    applied = kubectl_disagg(cluster, "plan", "-f", str(manifest), "-n", namespace)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines()[0].endswith(": no change (the live plan is what this manifest plans)"), (
        applied.stdout
    )

    # a model not applied yet, and without accelerator.type: planned for its nodes' GPU as the operator does
    missing = copy.deepcopy(changed)
    missing["metadata"]["name"] = "not-applied-yet"
    del missing["spec"]["accelerator"]["type"]
    manifest.write_text(yaml.safe_dump(missing))
    fresh = kubectl_disagg(cluster, "plan", "-f", str(manifest), "-n", namespace, "--detailed-exitcode")
    assert fresh.returncode == 2, fresh.stderr
    assert fresh.stdout.splitlines()[0] == (
        f"disaggregatedmodel/not-applied-yet in namespace {namespace}: not deployed; applying the manifest would plan:"
    )
    assert "from the nvidia.com/gpu.product label of the" in squeezed(fresh.stdout), fresh.stdout

    bad = copy.deepcopy(body)
    bad["spec"]["prefill"]["replicas"] = {"min": 5, "max": 2}
    manifest.write_text(yaml.safe_dump(bad))
    rejected = kubectl_disagg(cluster, "plan", "-f", str(manifest), "-n", namespace, "--detailed-exitcode")
    assert rejected.returncode == 1
    assert (
        rejected.stderr
        == f"error: {NAME}: invalid spec: prefill.replicas.min (5) must be <= prefill.replicas.max (2)\n"
    )


def test_status_errors_name_what_is_missing(
    cluster: ClusterEnv, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    gone = kubectl_disagg(cluster, "status", "no-such-model", "-n", namespace)
    assert (gone.returncode, gone.stderr) == (
        1,
        f'error: disaggregatedmodel "no-such-model" not found in namespace "{namespace}"\n',
    )
    nowhere = kubectl_disagg(cluster, "status", NAME, "-n", "no-such-namespace")
    assert (nowhere.returncode, nowhere.stderr) == (1, 'error: namespace "no-such-namespace" not found\n')
    # no kubeconfig anywhere (and not in a pod)
    lost = kubectl_disagg(cluster, "status", NAME, env={"KUBECONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)})
    assert lost.returncode == 1
    assert lost.stderr.startswith("error: no cluster credentials: "), lost.stderr
