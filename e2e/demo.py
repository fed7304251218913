"""`make demo`: the operator on the embedded local cluster, end to end, with a readable report.

Starts (or reuses) the local kwok cluster, installs the CRD, runs `disagg run` in the background,
applies the Llama-3.3-70B sample and prints what a user wants to see: the plan, the objects, where
the pods landed, and the status conditions. The cluster and operator keep running afterwards.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

E2E = Path(__file__).resolve().parent
ROOT = E2E.parent
sys.path.insert(0, str(ROOT))

from e2e.harness import Kubectl, cluster_env, cluster_up, wait_for  # noqa: E402

NAME = os.environ.get("DISAGG_CLUSTER_NAME", "disagg")
NAMESPACE = "demo"
SAMPLE = ROOT / "manifests" / "samples" / "llama-3.3-70b-disaggregated.yaml"


def _pid_file(env: dict[str, str]) -> Path:
    """Registered where `cluster.sh down` stops it along with the cluster."""
    path = Path(env["DISAGG_E2E_CLUSTER_DIR"]) / "extra-pids" / "disagg-operator.pid"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def start_operator(env: dict[str, str]) -> int:
    pid_file = _pid_file(env)
    if pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, 0)
            return pid
        except ProcessLookupError:
            pid_file.unlink()
    log = open(Path(env["DISAGG_E2E_CLUSTER_DIR"]) / "disagg-operator.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "disagg.cli", "run"],
        env={**os.environ, "KUBECONFIG": env["KUBECONFIG"]},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop_operator() -> None:
    try:
        env = cluster_env(NAME)
    except subprocess.CalledProcessError:
        return
    pid_file = _pid_file(env)
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


def report(kubectl: Kubectl, body: dict[str, Any]) -> None:
    status = body.get("status") or {}
    plan = status.get("plan") or {}
    section("Plan")
    print(f"mode {status.get('mode')}, ratio {status.get('ratio')}, {plan.get('gpus')} GPUs at the floor")
    for role in ("prefill", "decode"):
        if plan.get(role):
            r = plan[role]
            print(f"  {role:8s} {r['replicas']} x TP{r['tensorParallel']} (autoscaler up to {r['maxReplicas']})")
    if plan.get("disaggThreshold") is not None:
        print(f"  router disaggregates prompts with >= {plan['disaggThreshold']} uncached tokens")
    print(f"  {plan.get('reason', '')}")
    section("Objects")
    print(kubectl.run("get", "dm,deploy,svc,hpa,pdb,cm", "-n", NAMESPACE).stdout.rstrip())
    section("Placement")
    for placement in status.get("placement") or []:
        where = f"{placement['level']} {placement['domain']} ({placement['nodeLabel']})"
        print(f"{where}: {placement['gpusNeeded']} GPUs needed")
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in kubectl.items("nodes")}
    for pod in kubectl.items("pods", NAMESPACE):
        node = pod["spec"].get("nodeName", "")
        labels = nodes.get(node, {})
        rack = labels.get("topology.disagg.dev/rack", "-")
        gpus = pod["spec"]["containers"][0].get("resources", {}).get("limits", {}).get("nvidia.com/gpu", "0")
        phase = pod["status"].get("phase", "")
        print(f"  {pod['metadata']['name']:45s} {phase:8s} {node:10s} rack={rack:7s} gpus={gpus}")
    section("Conditions")
    for c in status.get("conditions") or []:
        print(f"  {c['type']:18s} {c['status']:6s} {c['reason']:18s} {c.get('message', '')}")


def demo() -> None:
    env_facts = cluster_up(NAME)
    env = cluster_env(NAME)
    kubectl = Kubectl(env_facts)
    kubectl.run("apply", "--server-side", "-f", str(ROOT / "crds"))
    kubectl.run("wait", "--for=condition=Established", "crd/disaggregatedmodels.disagg.dev", "--timeout=60s")
    pid = start_operator(env)
    print(f"operator running (pid {pid}), log: {Path(env['DISAGG_E2E_CLUSTER_DIR']) / 'disagg-operator.log'}")
    if kubectl.get("namespace", NAMESPACE, "default") is None:
        kubectl.run("create", "namespace", NAMESPACE)
    if kubectl.get("secret", "hf-token", NAMESPACE) is None:
        kubectl.run("create", "secret", "generic", "hf-token", "--from-literal=token=demo-not-a-token", "-n", NAMESPACE)
    kubectl.run("apply", "--server-side", "-n", NAMESPACE, "-f", str(SAMPLE))

    def ready() -> dict[str, Any] | None:
        body = kubectl.get("disaggregatedmodel", "llama-70b", NAMESPACE)
        conds = {c["type"]: c["status"] for c in ((body or {}).get("status") or {}).get("conditions", [])}
        return body if conds.get("Ready") == "True" else None

    body = wait_for("llama-70b to become Ready", ready, timeout=180)
    report(kubectl, body)
    section("Next")
    print(f"export KUBECONFIG={env_facts.kubeconfig} PATH={Path(env_facts.kubectl_path).parent}:$PATH")
    print("kubectl get dm -A   # explore")
    print("make cluster-down   # stop the operator and the local cluster")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", nargs="?", default="demo", choices=["demo", "stop-operator"])
    args = parser.parse_args()
    if args.action == "stop-operator":
        stop_operator()
        return 0
    demo()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
