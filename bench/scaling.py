"""Scaling benchmark on the local control plane (``make bench-scaling``).

Starts a private kwok cluster, the metrics stack of the e2e suite (Prometheus scraping
llm-d-inference-sim stand-ins, prometheus-adapter, see e2e/metrics.py) and the operator, then measures:

(a) operator-side wake latency: from the first Prometheus scrape that shows a bumped router
    request counter to the later of the operator's two ``/scale`` writes (prefill and decode back
    above 0), both read from their sources (Prometheus sample timestamps, the API server's audit
    log); median of N wakes of N sleeping models (the others keep sleeping meanwhile);
(b) load step to HPA scale-up: from raising a model's simulated prefill queue (12 waiting at a
    target of 4 per pod) to the HPA controller's ``/scale`` write on its prefill Deployment
    (audit log), median of a few models;
(c) operator CPU per reconcile loop at M DisaggregatedModels with scale-to-zero enabled: the
    operator's utime+stime from /proc/<pid>/stat over P resync periods. A *loop* is one resync
    period, in which the operator reconciles every model once; a *reconcile* is one pass over one
    model (GET the model, list its children, 3 Prometheus queries, compare, no writes when nothing
    changed). Reconciles are counted on the API server (GETs of single DisaggregatedModels: only
    the operator's reconcile issues them) and Prometheus queries on Prometheus.

Everything is torn down at the end, pass or fail.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from e2e.harness import (  # noqa: E402
    ClusterEnv,
    Kubectl,
    OperatorProcess,
    cluster_down,
    cluster_up,
    operator_writes,
    wait_for,
)
from e2e.metrics import SCRAPE_INTERVAL_SECONDS, MetricsStack, PodMirror, first_visible, scale_writes  # noqa: E402

OPERATOR_AGENTS = ("disagg-operator", "kopf")


def model(
    name: str,
    *,
    idle_after: str | None = None,
    prefill: tuple[int, int] = (1, 4),
    decode: tuple[int, int] = (1, 2),
    queries: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "bench/fake-model"},
        "mode": "disaggregated",
        "prefill": {
            "replicas": {"min": prefill[0], "max": prefill[1]},
            "parallelism": {"tensor": 1},
            "autoscaling": {"targetWaitingPerPod": 4},
        },
        "decode": {"replicas": {"min": decode[0], "max": decode[1]}, "parallelism": {"tensor": 1}},
        "autoscaling": {"scaleDownStabilization": "10s"},
    }
    if idle_after:
        spec["scaleToZero"] = {"enabled": True, "idleAfter": idle_after, **(queries or {})}
    return {"apiVersion": "disagg.dev/v1alpha1", "kind": "DisaggregatedModel", "metadata": {"name": name}, "spec": spec}


def apply_all(kubectl: Kubectl, namespace: str, bodies: list[dict[str, Any]]) -> None:
    kubectl.run("create", "namespace", namespace)
    kubectl.run("apply", "--server-side", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(bodies), timeout=300)


def spec_replicas(kubectl: Kubectl, namespace: str) -> dict[str, int]:
    return {d["metadata"]["name"]: int(d["spec"].get("replicas") or 0) for d in kubectl.items("deployments", namespace)}


def wait_mirrored(mirror: PodMirror, names: list[str], stack: MetricsStack, namespace: str) -> None:
    def ready() -> bool:
        pods = mirror.running_pods()
        return all(
            any(p.startswith(f"{n}-{role}-") for p in pods) for n in names for role in ("prefill", "decode", "router")
        )

    wait_for("a stand-in for every pod", ready, timeout=300, interval=1)
    mirror.wait_scraped(mirror.running_pods(), timeout=120)
    wait_for(
        "the adapter to serve the prefill queue",
        lambda: stack.adapter.metric(namespace, "vllm_num_requests_waiting", "disagg.dev/role=prefill") or None,
        timeout=90,
    )


# -- (a) ------------------------------------------------------------------------------------------


def bench_wake(kubectl: Kubectl, env: ClusterEnv, stack: MetricsStack, wakes: int) -> dict[str, list[float]]:
    namespace = "bench-wake"
    names = [f"w{i}" for i in range(wakes)]
    apply_all(kubectl, namespace, [model(n, idle_after="20s", prefill=(1, 2)) for n in names])
    mirror = stack.mirror(namespace)
    wait_mirrored(mirror, names, stack, namespace)

    def all_asleep() -> bool:
        current = spec_replicas(kubectl, namespace)
        return all(current.get(f"{n}-{r}") == 0 for n in names for r in ("prefill", "decode"))

    wait_for(f"{wakes} models at zero", all_asleep, timeout=240, interval=1)
    time.sleep(3)
    out: dict[str, list[float]] = {"visible_to_scaled": [], "bump_to_scaled": [], "bump_to_visible": []}
    for name in names:
        bumped = max(mirror.bump_demand(1, model=name).values())
        bumped_at = time.time()

        def awake(name: str = name) -> bool:
            current = spec_replicas(kubectl, namespace)
            return current[f"{name}-prefill"] > 0 and current[f"{name}-decode"] > 0

        wait_for(f"{name} awake", awake, timeout=60, interval=0.2)
        time.sleep(1.5)  # let the audit log flush
        selector = f'llm_d_epp_flow_control_queue_size{{namespace="{namespace}",pod=~"{name}-router-.+"}}'
        visible = first_visible(stack.prometheus, selector, bumped, bumped_at)
        scaled: dict[str, float] = {}
        for when, deployment, _ in scale_writes(env.audit_log, namespace, bumped_at, OPERATOR_AGENTS):
            if deployment in (f"{name}-prefill", f"{name}-decode"):
                scaled.setdefault(deployment, when)
        if visible is None or len(scaled) != 2:
            print(f"  {name}: incomplete timing (visible={visible}, scale writes={scaled})", file=sys.stderr)
            continue
        both = max(scaled.values())
        out["visible_to_scaled"].append(both - visible)
        out["bump_to_scaled"].append(both - bumped_at)
        out["bump_to_visible"].append(visible - bumped_at)
        print(
            f"  wake {name}: demand visible -> both scaled {both - visible:.2f}s "
            f"(bump -> visible {visible - bumped_at:.2f}s)",
            file=sys.stderr,
        )
        time.sleep(2)
    stack.release(namespace)
    kubectl.run("delete", "namespace", namespace, "--wait=true", "--timeout=120s", check=False, timeout=150)
    return out


# -- (b) ------------------------------------------------------------------------------------------


def bench_hpa(kubectl: Kubectl, env: ClusterEnv, stack: MetricsStack, steps: int) -> dict[str, list[float]]:
    namespace = "bench-hpa"
    names = [f"h{i}" for i in range(steps)]
    apply_all(kubectl, namespace, [model(n) for n in names])
    mirror = stack.mirror(namespace)
    wait_mirrored(mirror, names, stack, namespace)
    time.sleep(6)  # the HPAs have seen the idle load at least once
    out: dict[str, list[float]] = {"step_to_scaled": [], "visible_to_scaled": []}
    for name in names:
        step_at = time.time()
        mirror.set_load("prefill", waiting=12, model=name)
        wait_for(
            f"{name}-prefill scaled up",
            lambda name=name: spec_replicas(kubectl, namespace)[f"{name}-prefill"] > 1,
            timeout=90,
            interval=0.2,
        )
        time.sleep(1.5)
        writes = [w for w in scale_writes(env.audit_log, namespace, step_at) if w[1] == f"{name}-prefill"]
        selector = f'vllm:num_requests_waiting{{namespace="{namespace}",pod=~"{name}-prefill-.+"}}'
        visible = first_visible(stack.prometheus, selector, 12, step_at)
        if not writes:
            print(f"  {name}: no /scale write in the audit log", file=sys.stderr)
            continue
        when, _, agent = writes[0]
        out["step_to_scaled"].append(when - step_at)
        if visible is not None:
            out["visible_to_scaled"].append(when - visible)
        print(
            f"  step {name}: load step -> HPA /scale write {when - step_at:.2f}s by {agent.split('/')[0]}",
            file=sys.stderr,
        )
    stack.release(namespace)
    kubectl.run("delete", "namespace", namespace, "--wait=true", "--timeout=120s", check=False, timeout=150)
    return out


# -- (c) ------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5), after "pid (comm)"
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def model_gets(kubectl: Kubectl) -> int:
    total = 0
    for line in kubectl.run("get", "--raw", "/metrics", timeout=60).stdout.splitlines():
        if (
            line.startswith("apiserver_request_total{")
            and 'resource="disaggregatedmodels"' in line
            and 'verb="GET"' in line
            and 'scope="resource"' in line
            and 'subresource=""' in line
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def prometheus_queries(stack: MetricsStack) -> int:
    """Instant queries Prometheus has answered (its own /metrics: it does not scrape itself here)."""
    import urllib.request

    with urllib.request.urlopen(f"{stack.prometheus.url}/metrics", timeout=5) as response:  # noqa: S310 (loopback)
        text = response.read().decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line
    )


def bench_cpu(
    kubectl: Kubectl,
    env: ClusterEnv,
    stack: MetricsStack,
    operator: OperatorProcess,
    models: int,
    periods: int,
    resync: float,
) -> dict[str, float]:
    namespace = "bench-cpu"
    # Real queries against the real Prometheus, answering "no demand, no load" for every model, with an
    # idle window longer than the run: every reconcile runs the full awake path (3 queries) and stays.
    queries = {"demandQuery": "sum(vector(0))", "idleQuery": "sum(vector(0))"}
    bodies = [model(f"c{i:03d}", idle_after="1h", queries=queries, prefill=(1, 2)) for i in range(models)]
    created = time.time()
    apply_all(kubectl, namespace, bodies)

    def all_reconciled() -> bool:
        items = kubectl.items("disaggregatedmodels", namespace)
        return len(items) == models and all((i.get("status") or {}).get("observedGeneration") == 1 for i in items)

    wait_for(f"{models} models reconciled once", all_reconciled, timeout=600, interval=2)
    settle = time.time() - created
    print(f"  {models} models created and reconciled in {settle:.0f}s; waiting for quiet", file=sys.stderr)

    # quiet: no operator write in the namespace for two resync periods (pods settling, Ready flips...)
    def quiet() -> bool:
        since = time.time() - 2 * resync
        return not [w for w in operator_writes(env.audit_log, since) if f"/namespaces/{namespace}/" in w]

    wait_for("the operator to go quiet", quiet, timeout=300, interval=resync)
    assert operator.proc is not None
    pid = operator.proc.pid
    cpu0, gets0, q0, t0 = cpu_seconds(pid), model_gets(kubectl), prometheus_queries(stack), time.time()
    time.sleep(periods * resync)
    cpu1, gets1, q1, t1 = cpu_seconds(pid), model_gets(kubectl), prometheus_queries(stack), time.time()
    writes = [w for w in operator_writes(env.audit_log, t0) if f"/namespaces/{namespace}/" in w]
    reconciles = gets1 - gets0
    cpu = cpu1 - cpu0
    return {
        "models": models,
        "periods": (t1 - t0) / resync,
        "resync": resync,
        "cpu": cpu,
        "reconciles": reconciles,
        "queries": q1 - q0,
        "writes": len(writes),
        "cpu_per_loop": cpu / ((t1 - t0) / resync),
        "cpu_per_reconcile": cpu / reconciles if reconciles else float("nan"),
        "wall": t1 - t0,
    }


# -- main -----------------------------------------------------------------------------------------


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}s" if values else "n/a"


def spread(values: list[float]) -> str:
    return f"min {min(values):.2f}s, max {max(values):.2f}s, n={len(values)}" if values else "no samples"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wakes", type=int, default=10, help="wakes for (a), one model each (default 10)")
    parser.add_argument("--steps", type=int, default=5, help="load steps for (b), one model each (default 5)")
    parser.add_argument("--models", type=int, default=100, help="models for (c) (default 100)")
    parser.add_argument("--periods", type=int, default=6, help="resync periods measured in (c) (default 6)")
    parser.add_argument("--resync", type=float, default=10.0, help="operator resync period, seconds (default 10)")
    parser.add_argument("--only", choices=["wake", "hpa", "cpu"], action="append", help="run only these parts")
    args = parser.parse_args(argv)
    parts = set(args.only or ["wake", "hpa", "cpu"])

    name = f"bench-{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="disagg-bench-scaling-"))
    stack: MetricsStack | None = None
    operator: OperatorProcess | None = None
    results: dict[str, Any] = {}
    try:
        env = cluster_up(name)
        kubectl = Kubectl(env)
        kubectl.run("apply", "--server-side", "-f", str(ROOT / "crds"))
        kubectl.run("wait", "--for=condition=Established", "crd/disaggregatedmodels.disagg.dev", "--timeout=60s")
        stack = MetricsStack(env, kubectl).start()
        operator = OperatorProcess(
            env,
            workdir / "operator.log",
            {"DISAGG_PROMETHEUS_URL": stack.prometheus.url, "DISAGG_RESYNC_SECONDS": f"{args.resync:g}"},
        )
        operator.start()
        wait_for("the operator to start", lambda: "disagg operator started" in operator.log_tail(200), timeout=60)
        if "wake" in parts:
            print(f"(a) wake latency, {args.wakes} wakes", file=sys.stderr)
            results["wake"] = bench_wake(kubectl, env, stack, args.wakes)
        if "hpa" in parts:
            print(f"(b) load step -> HPA scale-up, {args.steps} steps", file=sys.stderr)
            results["hpa"] = bench_hpa(kubectl, env, stack, args.steps)
        if "cpu" in parts:
            print(
                f"(c) operator CPU at {args.models} models, {args.periods} resync periods of {args.resync:g}s",
                file=sys.stderr,
            )
            results["cpu"] = bench_cpu(kubectl, env, stack, operator, args.models, args.periods, args.resync)
    finally:
        if operator is not None:
            operator.stop()
        if stack is not None:
            stack.stop()
        cluster_down(name)
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        "bench/scaling.py (make bench-scaling): kwok cluster, real HPA controller, Prometheus scrape every "
        f"{SCRAPE_INTERVAL_SECONDS}s, operator wake poll 1s"
    )
    if "wake" in results:
        w = results["wake"]
        budget = SCRAPE_INTERVAL_SECONDS + 2
        verdict = "OK" if w["visible_to_scaled"] and statistics.median(w["visible_to_scaled"]) <= budget else "OVER"
        print(
            f"(a) wake latency, demand visible in Prometheus -> prefill and decode replicas > 0: "
            f"median {median(w['visible_to_scaled'])} ({spread(w['visible_to_scaled'])}); "
            f"goal <= {budget}s: {verdict}"
        )
        print(f"    router counter bumped -> both replicas > 0: median {median(w['bump_to_scaled'])}")
    if "hpa" in results:
        h = results["hpa"]
        print(
            f"(b) load step (prefill queue 0 -> 12, target 4/pod) -> HPA scales the Deployment: "
            f"median {median(h['step_to_scaled'])} ({spread(h['step_to_scaled'])})"
        )
        print(f"    load visible in Prometheus -> HPA scale: median {median(h['visible_to_scaled'])}")
    if "cpu" in results:
        c = results["cpu"]
        print(
            f"(c) operator CPU at {c['models']} models with scale-to-zero: {c['cpu_per_loop']:.2f} CPU-s per loop "
            f"(one resync period of {c['resync']:g}s = every model reconciled once), "
            f"{c['cpu_per_reconcile'] * 1000:.1f} ms per reconcile"
        )
        print(
            f"    {c['cpu']:.2f} CPU-s over {c['wall']:.0f}s ({c['periods']:.1f} periods), "
            f"{c['reconciles']} reconciles (API GETs of single models), "
            f"{c['queries']} Prometheus queries, {c['writes']} operator writes"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
