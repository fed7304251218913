"""`make demo`: the operator on the embedded local cluster, end to end, with a readable report.

Starts (or reuses) the local kwok cluster, the pod runtime (e2e/runtime: the pods run their rendered
containers, engines played by llm-d-inference-sim behind the real llm-d router), Prometheus with
prometheus-adapter, and `disagg run`; applies the Llama-3.3-70B sample and prints what a user wants
to see: the plan, the objects, where the pods landed, the status conditions; then serves: a short
load run through the router by path (P->D vs decode only), a sleep/wake cycle, and the `curl` line.
Everything keeps running afterwards; `make cluster-down` stops it all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

E2E = Path(__file__).resolve().parent
ROOT = E2E.parent
sys.path.insert(0, str(ROOT))

from e2e.harness import Kubectl, cluster_env, cluster_up, wait_for  # noqa: E402
from e2e.serving import (  # noqa: E402
    Result,
    engine_successes,
    one_request,
    prompt_of,
    ready_pods,
    router_address,
    running_model,
    runtime_bin_dir,
    runtime_supported,
    send,
)

NAME = os.environ.get("DISAGG_CLUSTER_NAME", "disagg")
NAMESPACE = "demo"
SAMPLE = ROOT / "manifests" / "samples" / "llama-3.3-70b-disaggregated.yaml"
IDLE_AFTER_SECONDS = 30


def _pid_file(env: dict[str, str], label: str) -> Path:
    """Registered where `cluster.sh down` stops it along with the cluster."""
    path = Path(env["DISAGG_E2E_CLUSTER_DIR"]) / "extra-pids" / f"{label}.pid"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _alive(env: dict[str, str], label: str) -> int | None:
    pid_file = _pid_file(env, label)
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
        return pid
    except ProcessLookupError:
        pid_file.unlink()
        return None


def start_detached(env: dict[str, str], label: str, argv: list[str], extra_env: dict[str, str] | None = None) -> int:
    """A process beside the cluster, logging to <cluster dir>/<label>.log, in its own session."""
    log = open(Path(env["DISAGG_E2E_CLUSTER_DIR"]) / f"{label}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, "KUBECONFIG": env["KUBECONFIG"], **(extra_env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _pid_file(env, label).write_text(str(proc.pid))
    return proc.pid


def stop_detached(env: dict[str, str], label: str, timeout: float = 60) -> None:
    pid = _alive(env, label)
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _pid_file(env, label).unlink(missing_ok=True)


def _log_tail(env: dict[str, str], label: str, lines: int = 20) -> str:
    path = Path(env["DISAGG_E2E_CLUSTER_DIR"]) / f"{label}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def start_runtime(env: dict[str, str]) -> int:
    """The pod runtime (e2e/runtime): the demo's pods run their rendered containers."""
    pid = _alive(env, "runtime")
    if pid is not None:
        return pid
    workdir = Path(env["DISAGG_E2E_CLUSTER_DIR"]) / "runtime"
    ready = workdir / "ready"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "e2e.runtime.kubelet", f"--kubeconfig={env['KUBECONFIG']}"]
    argv += [f"--bin-dir={runtime_bin_dir()}", f"--workdir={workdir}", f"--ready-file={ready}"]
    pid = start_detached(env, "runtime", argv)

    def up() -> bool:
        if _alive(env, "runtime") is None:
            raise SystemExit(f"the pod runtime exited:\n{_log_tail(env, 'runtime')}")
        return ready.exists()

    wait_for("the pod runtime", up, timeout=90, interval=0.2)
    return pid


def start_metrics(env: dict[str, str]) -> str:
    """Prometheus + prometheus-adapter (e2e/metrics.py): the HPAs' metrics and scale-to-zero's."""
    url_file = Path(env["DISAGG_E2E_CLUSTER_DIR"]) / "prometheus-url"
    if _alive(env, "metrics") is None:
        url_file.unlink(missing_ok=True)
        start_detached(
            env, "metrics", [sys.executable, "-m", "e2e.metrics", f"--cluster={NAME}", f"--url-file={url_file}"]
        )

    def up() -> str | None:
        if _alive(env, "metrics") is None:
            raise SystemExit(f"the metrics stack exited:\n{_log_tail(env, 'metrics')}")
        return url_file.read_text().strip() if url_file.exists() else None

    return wait_for("Prometheus and prometheus-adapter", up, timeout=120)


def start_operator(env: dict[str, str], prometheus_url: str) -> int:
    """(Re)started, so it always reads the Prometheus this run started."""
    stop_detached(env, "disagg-operator")
    argv = [sys.executable, "-m", "disagg.cli", "run"]
    return start_detached(env, "disagg-operator", argv, {"DISAGG_PROMETHEUS_URL": prometheus_url})


def stop_operator() -> None:
    try:
        env = cluster_env(NAME)
    except subprocess.CalledProcessError:
        return
    stop_detached(env, "disagg-operator")


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


def demo_model() -> dict[str, Any]:
    """The sample as shipped, plus the runtime's annotation on each role so every pod runs
    (scale-to-zero is switched on later, on the running model)."""
    body = yaml.safe_load(SAMPLE.read_text())
    return running_model(body["metadata"]["name"], body["spec"])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _mixed_load(url: str, model: str, prompts: list[tuple[str, str]], concurrency: int) -> list[Result]:
    """Each prompt once, ``concurrency`` at a time (bounded: len(prompts) requests in all)."""
    results: list[Result] = [Result(ok=False, status=0, started=0.0)] * len(prompts)
    queue = list(enumerate(prompts))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client() -> None:
            while queue:
                index, (_, prompt) = queue.pop(0)
                results[index] = await one_request(session, url, model, prompt=prompt, max_tokens=32, ignore_eos=True)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


def serving(kubectl: Kubectl, body: dict[str, Any]) -> None:
    name = body["metadata"]["name"]
    served = body["spec"]["model"]["name"]
    threshold = int((body["status"].get("plan") or {}).get("disaggThreshold") or 0)
    url = router_address(kubectl, NAMESPACE, name)
    wait_for("the router to route", lambda: send(url, served, prompt="hi", max_tokens=2).ok, timeout=90)

    section("Serving: a short load run through the router")
    # the router estimates 4 characters per token; prompt_of's words are ~8 characters
    long_words, short_words = max(threshold, 256), 20
    prompts = [
        ("P->D" if i % 2 else "decode", prompt_of(long_words if i % 2 else short_words, seed=i)) for i in range(40)
    ]
    prefill_before = engine_successes(kubectl, NAMESPACE, name, "prefill")
    started = time.monotonic()
    results = asyncio.run(_mixed_load(url, served, prompts, concurrency=4))
    elapsed = time.monotonic() - started
    prefilled = engine_successes(kubectl, NAMESPACE, name, "prefill") - prefill_before
    failed = [r for r in results if not r.ok]
    print(f"{len(results)} requests in {elapsed:.1f} s, {len(failed)} failed; router threshold {threshold} tokens")
    print(f"  {'path':8s} {'sent':>5s} {'TTFT p50':>9s} {'TTFT p90':>9s} {'ITL p50':>8s} {'ITL p90':>8s}")
    for path in ("P->D", "decode"):
        group = [r for (p, _), r in zip(prompts, results, strict=True) if p == path and r.ok]
        ttft = [r.ttft * 1000 for r in group if r.ttft is not None]
        itl = [g * 1000 for r in group for g in r.itl]
        print(
            f"  {path:8s} {len(group):5d} {percentile(ttft, 0.5):7.0f}ms {percentile(ttft, 0.9):7.0f}ms"
            f" {percentile(itl, 0.5):6.1f}ms {percentile(itl, 0.9):6.1f}ms"
        )
    sent_long = sum(1 for p, _ in prompts if p == "P->D")
    print(f"  the prefill engines served {prefilled:.0f} requests (their vllm:request_success_total): the long")
    print(f"  prompts ({sent_long}) went prefill -> decode, the short ones decode only")
    if failed:
        print(f"  first failure: {failed[0].status} {(failed[0].text or failed[0].error)[:200]}")

    section("Scale to zero and back")
    zero = {"spec": {"scaleToZero": {"enabled": True, "idleAfter": f"{IDLE_AFTER_SECONDS}s"}}}
    kubectl.run("patch", "disaggregatedmodel", name, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(zero))
    print(
        f"scaleToZero enabled on the running model (idleAfter {IDLE_AFTER_SECONDS}s); the router rolls to hold requests"
    )
    quiet = time.monotonic()

    def asleep() -> dict[str, Any] | None:
        current = kubectl.get("disaggregatedmodel", name, NAMESPACE) or {}
        conds = {c["type"]: c for c in (current.get("status") or {}).get("conditions", [])}
        return current if conds.get("ScaledToZero", {}).get("status") == "True" else None

    wait_for("the idle model to sleep", asleep, timeout=IDLE_AFTER_SECONDS + 120)
    print(f"at zero {time.monotonic() - quiet:.0f} s after the last request (idleAfter {IDLE_AFTER_SECONDS}s)")
    sent = time.monotonic()
    held = send(url, served, prompt="Wake up and say hello", max_tokens=8, timeout=180)
    if held.ok and held.ttft is not None:
        print(f"a request sent at zero was held by the router and answered: first token after {held.ttft:.1f} s")
    else:
        print(f"the request sent at zero failed: {held.status} {(held.text or held.error)[:200]}")
    floors = {
        role: int((body["status"]["plan"].get(role) or {}).get("replicas") or 0) for role in ("prefill", "decode")
    }

    def back() -> bool:
        return all(len(ready_pods(kubectl, NAMESPACE, role, name)) >= n for role, n in floors.items())

    wait_for("every role back at its floor", back, timeout=120, interval=0.5)
    woke = time.monotonic() - sent
    print(f"  decode wakes first (it can answer alone); every floor {floors} Ready {woke:.1f} s after the request")

    section("Your own request")
    print(f"curl -s {url}/v1/completions -H 'Content-Type: application/json' \\")
    print(f'  -d \'{{"model": "{served}", "prompt": "Hello", "max_tokens": 16}}\'')
    print(f"(after {IDLE_AFTER_SECONDS} s idle the model sleeps again; a request wakes it, as above)")


def plugin_status(kubectl_path: str, kubeconfig: str) -> str:
    """The model on one screen, through the real kubectl finding the installed ``kubectl-disagg``
    plugin on PATH (the package's console script beside this interpreter)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), str(Path(kubectl_path).parent), os.environ["PATH"]])
    done = subprocess.run(
        [kubectl_path, "disagg", "status", "llama-70b", "-n", NAMESPACE],
        env={**os.environ, "PATH": path, "KUBECONFIG": kubeconfig},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"kubectl disagg status failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.rstrip()


def demo() -> None:
    env_facts = cluster_up(NAME)
    env = cluster_env(NAME)
    kubectl = Kubectl(env_facts)
    kubectl.run("apply", "--server-side", "-f", str(ROOT / "crds"))
    kubectl.wait_established("crd/disaggregatedmodels.disagg.dev")
    why_not = runtime_supported()
    if why_not:
        raise SystemExit(f"make demo runs the model's pods for real and {why_not}: run it as root")
    start_runtime(env)
    prometheus = start_metrics(env)
    pid = start_operator(env, prometheus)
    cluster_dir = Path(env["DISAGG_E2E_CLUSTER_DIR"])
    print(f"operator running (pid {pid}), log: {cluster_dir / 'disagg-operator.log'}; Prometheus {prometheus}")
    if kubectl.get("namespace", NAMESPACE, "default") is None:
        kubectl.run("create", "namespace", NAMESPACE)
    if kubectl.get("secret", "hf-token", NAMESPACE) is None:
        kubectl.run("create", "secret", "generic", "hf-token", "--from-literal=token=demo-not-a-token", "-n", NAMESPACE)
    if kubectl.get("disaggregatedmodel", "llama-70b", NAMESPACE) is not None:
        # a fresh model each run: the report and the serving figures then describe this run only
        kubectl.run("delete", "disaggregatedmodel", "llama-70b", "-n", NAMESPACE, "--wait=true", timeout=180)
        wait_for("the old model's pods to go", lambda: not kubectl.items("pods", NAMESPACE) or None, timeout=120)
    kubectl.apply(demo_model(), NAMESPACE)

    def ready() -> dict[str, Any] | None:
        body = kubectl.get("disaggregatedmodel", "llama-70b", NAMESPACE)
        conds = {c["type"]: c["status"] for c in ((body or {}).get("status") or {}).get("conditions", [])}
        return body if conds.get("Ready") == "True" else None

    body = wait_for("llama-70b to become Ready", ready, timeout=300)
    report(kubectl, body)
    serving(kubectl, body)
    section("kubectl disagg status llama-70b -n demo")
    print(plugin_status(env_facts.kubectl_path, env_facts.kubeconfig))
    section("Next")
    print(f"export KUBECONFIG={env_facts.kubeconfig} PATH={Path(env_facts.kubectl_path).parent}:$PATH")
    print("kubectl get dm -A -o wide; kubectl disagg status llama-70b -n demo   # explore")
    print(f"logs: {cluster_dir}/{{disagg-operator,runtime,metrics}}.log; containers': {cluster_dir}/runtime/pods")
    print("make cluster-down   # stop the operator, the pod runtime, Prometheus and the local cluster")


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
