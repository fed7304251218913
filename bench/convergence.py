"""Control-plane cost of the operator as the number of models grows, on the local cluster.

For each N (default 50, 200, 500): a fresh private cluster with extra fake nodes, N small
DisaggregatedModels created while the operator is stopped, then a cold operator start and the
time until every model reports Ready. Printed per N: convergence time, API writes per model at
creation (apiserver audit log, operator user agent), writes during a quiet window of several
resync periods (goal: 0), operator peak RSS, CPU-seconds per reconcile pass.

    .venv/bin/python bench/convergence.py            # 50 200 500
    .venv/bin/python bench/convergence.py 50 200     # a subset
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from e2e.harness import Kubectl, OperatorProcess, cluster_down, cluster_up, operator_writes  # noqa: E402

ACCEL = "bench.disagg.dev/accelerator"
RESYNC = 10
NODES = 20


def bench_nodes() -> str:
    """Fake nodes with plenty of a made-up accelerator, so N models never wait for capacity."""
    nodes = []
    for i in range(NODES):
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"bench-{i}",
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {"type": "kwok", "kubernetes.io/hostname": f"bench-{i}"},
                },
                "status": {
                    "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "1000", ACCEL: "1000"},
                    "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "1000", ACCEL: "1000"},
                },
            }
        )
    return "\n---\n".join(json.dumps(n) for n in nodes)


def model(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "DisaggregatedModel",
        "metadata": {"name": f"m{i:04d}"},
        "spec": {
            "model": {"name": f"bench/model-{i}"},
            "mode": "aggregated",
            "accelerator": {"type": "h100-sxm", "resourceName": ACCEL},
            "prefill": {"replicas": {"min": 1}, "parallelism": {"tensor": 1}},
            "autoscaling": {"engine": "none"},
        },
    }


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def stats(path: Path) -> dict[str, int]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {"reconciles": 0, "writes": 0, "failures": 0}


def run(n: int) -> dict[str, Any]:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    env = cluster_up(name)
    try:
        kubectl = Kubectl(env)
        kubectl.run("apply", "--server-side", "-f", str(ROOT / "crds"))
        kubectl.run("wait", "--for=condition=Established", "crd/disaggregatedmodels.disagg.dev", "--timeout=60s")
        kubectl.run("apply", "-f", "-", stdin=bench_nodes())
        kubectl.run("create", "namespace", "bench")
        documents = "\n---\n".join(json.dumps(model(i)) for i in range(n))
        kubectl.run("apply", "--server-side", "-n", "bench", "-f", "-", stdin=documents, timeout=600)
        workdir = Path(tempfile.mkdtemp(prefix="disagg-bench-"))
        stats_file = workdir / "stats.json"
        operator = OperatorProcess(
            env,
            workdir / "operator.log",
            extra_env={"DISAGG_RESYNC_SECONDS": str(RESYNC), "DISAGG_STATS_FILE": str(stats_file)},
        )
        started = time.time()
        operator.start()
        assert operator.proc is not None
        pid = operator.proc.pid
        deadline = started + 1800
        ready = 0
        while time.time() < deadline:
            items = kubectl.items("disaggregatedmodels", "bench")
            ready = sum(
                1
                for m in items
                if any(
                    c["type"] == "Ready" and c["status"] == "True" for c in m.get("status", {}).get("conditions", [])
                )
            )
            if ready == n:
                break
            time.sleep(2)
        converged = time.time() - started
        creation_writes = len(operator_writes(env.audit_log, started - 1))
        time.sleep(RESYNC)  # the echoes of the last status writes settle
        before = stats(stats_file)
        cpu_before = cpu_seconds(pid)
        quiet_start = time.time()
        time.sleep(3 * RESYNC)
        after = stats(stats_file)
        cpu_after = cpu_seconds(pid)
        quiet_writes = len(operator_writes(env.audit_log, quiet_start))
        passes = max(after["reconciles"] - before["reconciles"], 1)
        result = {
            "models": n,
            "ready": ready,
            "converged_s": round(converged, 1),
            "writes_per_model_at_creation": round(creation_writes / n, 1),
            "writes_in_quiet_window": quiet_writes,
            "quiet_reconciles": after["reconciles"] - before["reconciles"],
            "cpu_ms_per_reconcile": round((cpu_after - cpu_before) * 1000 / passes, 1),
            "peak_rss_mib": round(rss_peak_kib(pid) / 1024, 1),
        }
        operator.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        return result
    finally:
        cluster_down(name)


def main() -> int:
    sizes = [int(a) for a in sys.argv[1:]] or [50, 200, 500]
    results = []
    for n in sizes:
        result = run(n)
        results.append(result)
        print(json.dumps(result), flush=True)
    print()
    print(
        f"{'models':>7} {'ready':>6} {'converge s':>11} {'s/model':>8} {'writes/model':>13} "
        f"{'quiet writes':>13} {'cpu ms/pass':>12} {'peak RSS MiB':>13}"
    )
    for r in results:
        print(
            f"{r['models']:>7} {r['ready']:>6} {r['converged_s']:>11} {r['converged_s'] / r['models']:>8.3f} "
            f"{r['writes_per_model_at_creation']:>13} {r['writes_in_quiet_window']:>13} "
            f"{r['cpu_ms_per_reconcile']:>12} {r['peak_rss_mib']:>13}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
