"""What one reconcile pass costs as the cluster grows (the work stays the same): `make bench-cluster-size`.

One private kwok cluster. The same 20 models (10 with ``topology.packDomain: rack``, 10 without,
1 GPU each, HPA-free) are reconciled by one operator (resync every RESYNC s) first on the fixture
cluster, then after growing it to >= 500 nodes and >= 5,000 bound pods (kwok nodes with 8 GPUs in
racks of 10; pods bound to them by ``spec.nodeName``, 4 of every 10 with one GPU). At each size,
over QUIET_RESYNCS quiet resyncs:

- operator CPU per pass (the worker thread's CPU time, recorded by the controller per model), for
  rack-packed and unpacked models;
- API requests and bytes per pass: LIST and GET requests and response bytes of every client, from
  the API server's own metrics (quiet: the controllers only watch), divided by the passes;
- operator RSS (current and peak), and the watch caches' size.

Printed: a table per size and the ratio large/small. Goal: per-pass cost independent of cluster
size (ratio <= 1.2).

    .venv/bin/python bench/cluster_size.py [--nodes 500] [--pods 5000] [--resyncs 5]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.convergence import cpu_seconds  # noqa: E402  (CPU-seconds of the whole operator process)

from e2e.harness import Kubectl, OperatorProcess, cluster_down, cluster_up, wait_for  # noqa: E402

RESYNC = 10
NAMESPACE = "bench"
RACK = "topology.disagg.dev/rack"
METRIC = re.compile(r"^(apiserver_request_total|apiserver_response_sizes_sum)\{([^}]*)\} ([0-9.e+-]+)$")


def model(i: int, packed: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": f"bench/model-{i}"},
        "mode": "aggregated",
        "accelerator": {"type": "h100-sxm"},
        "prefill": {"replicas": {"min": 1, "max": 1}, "parallelism": {"tensor": 1}},
        "autoscaling": {"engine": "none"},
    }
    if packed:
        spec["topology"] = {"packDomain": "rack"}
    name = f"{'rack' if packed else 'free'}-{i:02d}"
    return {"apiVersion": "disagg.dev/v1alpha1", "kind": "DisaggregatedModel", "metadata": {"name": name}, "spec": spec}


def bench_nodes(count: int) -> list[dict[str, Any]]:
    nodes = []
    for i in range(count):
        resources = {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8"}
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"big-{i:04d}",
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {
                        "type": "kwok",
                        "kubernetes.io/hostname": f"big-{i:04d}",
                        RACK: f"big-rack-{i // 10:03d}",
                        "topology.disagg.dev/block": f"big-block-{i // 100:02d}",
                    },
                },
                # a taint the bench models do not tolerate: the growth changes what the operator
                # reads, never where the bench models may go
                "spec": {"taints": [{"key": "bench.disagg.dev/filler", "effect": "NoSchedule"}]},
                "status": {"allocatable": resources, "capacity": resources},
            }
        )
    return nodes


def filler_pods(count: int, nodes: int) -> list[dict[str, Any]]:
    pods = []
    for i in range(count):
        requests: dict[str, str] = {"cpu": "100m"}
        if i % 10 < 4:
            requests["nvidia.com/gpu"] = "1"
        extended = {k: v for k, v in requests.items() if "/" in k}
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"filler-{i:05d}", "labels": {"app": "filler", "shard": str(i % 50)}},
                "spec": {
                    "nodeName": f"big-{i % nodes:04d}",
                    "tolerations": [{"key": "bench.disagg.dev/filler", "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "c",
                            "image": "registry.example/filler:1",
                            "resources": {"requests": requests, "limits": extended},
                        }
                    ],
                },
            }
        )
    return pods


def apply_many(kubectl: Kubectl, objects: list[dict[str, Any]], namespace: str | None, batch: int = 500) -> None:
    for start in range(0, len(objects), batch):
        chunk = {"apiVersion": "v1", "kind": "List", "items": objects[start : start + batch]}
        args = ["apply", "--server-side", "-f", "-"] + (["-n", namespace] if namespace else [])
        kubectl.run(*args, stdin=json.dumps(chunk), timeout=600)


def apiserver_reads(kubectl: Kubectl) -> dict[str, float]:
    """LIST/GET requests and response bytes so far, summed over every resource and client."""
    text = kubectl.run("get", "--raw", "/metrics", timeout=60).stdout
    totals = {"requests": 0.0, "bytes": 0.0}
    for line in text.splitlines():
        found = METRIC.match(line)
        if not found:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2)))
        if labels.get("verb") not in ("LIST", "GET"):
            continue
        key = "requests" if found.group(1) == "apiserver_request_total" else "bytes"
        totals[key] += float(found.group(3))
    return totals


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def read_stats(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {"reconciles": 0}


def running_fillers(kubectl: Kubectl) -> int:
    out = kubectl.run(
        "get", "pods", "-n", "filler", "--field-selector=status.phase=Running", "-o", "name", timeout=120
    ).stdout
    return len(out.split())


def all_reconciled(kubectl: Kubectl, count: int) -> bool:
    items = kubectl.items("disaggregatedmodels", NAMESPACE)
    done = [m for m in items if (m.get("status") or {}).get("observedGeneration") == 1]
    return len(done) == count


def measure(kubectl: Kubectl, operator: OperatorProcess, stats_file: Path, resyncs: int) -> dict[str, Any]:
    assert operator.proc is not None
    pid = operator.proc.pid
    time.sleep(RESYNC + 2)  # echoes of the last writes settle
    before, reads_before, cpu_before = read_stats(stats_file), apiserver_reads(kubectl), cpu_seconds(pid)
    time.sleep(resyncs * RESYNC + 1)
    after, reads_after, cpu_after = read_stats(stats_file), apiserver_reads(kubectl), cpu_seconds(pid)
    per_kind: dict[str, list[float]] = {"rack": [], "free": []}
    passes = 0
    for key, (count, cpu) in after.get("passes", {}).items():
        was = before["passes"].get(key, [0, 0.0])
        done = count - was[0]
        if not key.startswith(f"{NAMESPACE}/") or done <= 0:
            continue
        passes += done
        kind = key.split("/", 1)[1].split("-", 1)[0]
        per_kind[kind].append((cpu - was[1]) * 1000 / done)
    if not after.get("passes"):  # an operator without per-model records: count its passes
        passes = after["reconciles"] - before["reconciles"]
    nodes = len(kubectl.items("nodes"))
    pods = len(kubectl.items("pods"))
    status = proc_status(operator.proc.pid)
    return {
        "nodes": nodes,
        "pods": pods,
        "passes": passes,
        "cpu_ms_per_rack_pass": round(statistics.median(per_kind["rack"]), 2) if per_kind["rack"] else None,
        "cpu_ms_per_free_pass": round(statistics.median(per_kind["free"]), 2) if per_kind["free"] else None,
        "process_cpu_ms_per_pass": round((cpu_after - cpu_before) * 1000 / max(passes, 1), 2),
        "reads_per_pass": round((reads_after["requests"] - reads_before["requests"]) / max(passes, 1), 2),
        "read_kib_per_pass": round((reads_after["bytes"] - reads_before["bytes"]) / 1024 / max(passes, 1), 1),
        "rss_mib": round(status.get("VmRSS", 0) / 1024, 1),
        "peak_rss_mib": round(status.get("VmHWM", 0) / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=500, help="nodes added for the large size")
    parser.add_argument("--pods", type=int, default=5000, help="bound pods added for the large size")
    parser.add_argument("--resyncs", type=int, default=5, help="quiet resync periods measured per size")
    args = parser.parse_args()
    name = f"size-{uuid.uuid4().hex[:6]}"
    env = cluster_up(name)
    workdir = Path(tempfile.mkdtemp(prefix="disagg-bench-size-"))
    stats_file = workdir / "stats.json"
    operator = OperatorProcess(
        env,
        workdir / "operator.log",
        extra_env={"DISAGG_RESYNC_SECONDS": str(RESYNC), "DISAGG_STATS_FILE": str(stats_file)},
    )
    try:
        kubectl = Kubectl(env)
        kubectl.run("apply", "--server-side", "-f", str(ROOT / "crds"))
        kubectl.run("wait", "--for=condition=Established", "crd/disaggregatedmodels.disagg.dev", "--timeout=60s")
        kubectl.run("create", "namespace", NAMESPACE)
        models = [model(i, packed=i % 2 == 0) for i in range(20)]
        apply_many(kubectl, models, NAMESPACE)
        operator.start()
        wait_for("every model reconciled", lambda: all_reconciled(kubectl, len(models)), timeout=300, interval=2)
        small = measure(kubectl, operator, stats_file, args.resyncs)
        print(json.dumps({"size": "fixture", **small}), flush=True)
        started = time.monotonic()
        apply_many(kubectl, bench_nodes(args.nodes), None)
        kubectl.run("create", "namespace", "filler")
        apply_many(kubectl, filler_pods(args.pods, args.nodes), "filler")
        wait_for(
            f"{args.pods} filler pods Running",
            lambda: running_fillers(kubectl) >= args.pods,
            timeout=900,
            interval=5,
        )
        print(f"grew the cluster in {time.monotonic() - started:.0f} s", flush=True)
        large = measure(kubectl, operator, stats_file, args.resyncs)
        print(json.dumps({"size": "large", **large}), flush=True)
    finally:
        operator.stop()
        cluster_down(name)
    print()
    keys = [
        "cpu_ms_per_rack_pass",
        "cpu_ms_per_free_pass",
        "process_cpu_ms_per_pass",
        "reads_per_pass",
        "read_kib_per_pass",
        "rss_mib",
    ]
    print(f"{'':24s} {'fixture':>12s} {'large':>12s} {'ratio':>7s}")
    print(f"{'nodes / pods':24s} {small['nodes']:>5d} / {small['pods']:<5d} {large['nodes']:>5d} / {large['pods']:<5d}")
    for key in keys:
        a, b = small[key], large[key]
        ratio = f"{b / a:.2f}" if a and b is not None else "-"
        print(f"{key:24s} {a!s:>12s} {b!s:>12s} {ratio:>7s}")
    grown = large["pods"] - small["pods"]
    if grown > 0:
        per_thousand = (large["rss_mib"] - small["rss_mib"]) * 1000 / grown
        print(f"operator memory: {per_thousand:+.1f} MiB per 1,000 pods added (current RSS)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
