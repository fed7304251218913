"""Serving-path benchmark on pods that really run (``make bench-serving``).

Starts a private kwok cluster, the e2e pod runtime (``e2e/runtime``: the real llm-d endpoint
picker and routing sidecar, llm-d-inference-sim behind the vLLM entry point, the Python Envoy
stand-in, a Python kube-proxy stand-in for ClusterIPs) and the operator, then measures:

(a) what the serving path adds to client-observed latency. A disaggregated model with exactly 1
    prefill and 1 decode pod; an open-loop client (one task per request, sent on a fixed
    schedule, bounded count) streams completions at the same rate with the same prompts to

      sim      the decode pod's simulator (pod IP, port 8200): the baseline,
      sidecar  the decode pod's routing sidecar (pod IP, port 8000),
      router   the router pod (pod IP): Envoy stand-in + real picker, then the sidecar,
      service  the router Service's ClusterIP, as a client in the cluster calls it,

    and prints p50/p99 TTFT and total latency of each and the differences of the medians. Then
    long prompts (over the disaggThreshold) go the P->D way: through the Service, through the
    sidecar with the prefill pod named in ``x-prefiller-host-port`` (the picker left out), and as
    the two legs the sidecar would issue, sent by this client straight to the two simulators.
(b) time from a request at zero to its first token: a model with ``scaleToZero`` goes to zero,
    one request is sent and held by the router until the engines are back; repeated ``--wakes``
    times. The operator's share (router queue visible in Prometheus -> decode ``/scale`` write)
    comes from Prometheus sample timestamps and the API server's audit log.

Everything is torn down at the end, pass or fail.

    .venv/bin/python bench/serving.py [--seconds 30] [--rate 10] [--pd-seconds 15] [--pd-rate 5]
                                      [--wakes 3] [--only latency|wake]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from e2e.harness import Kubectl, OperatorProcess, cluster_down, cluster_up, wait_for  # noqa: E402
from e2e.metrics import SCRAPE_INTERVAL_SECONDS, MetricsStack, first_visible, scale_writes  # noqa: E402
from e2e.serving import (  # noqa: E402
    Result,
    RuntimeProcess,
    metric_sum,
    one_request,
    prompt_of,
    ready_pods,
    router_address,
    running_model,
    runtime_bin_dir,
    runtime_supported,
    scrape,
    send,
)

SERVED = "bench/fake-model"
MODEL = "m"
THRESHOLD = 256
SHORT_TOKENS, SHORT_ANSWER = 20, 16
LONG_TOKENS, LONG_ANSWER = 1024, 16
OPERATOR_AGENTS = ("disagg-operator", "kopf")
PREFILLER_HEADER = "x-prefiller-host-port"


def model_body(*, idle_after: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": SERVED},
        "mode": "disaggregated",
        "prefill": {"replicas": {"min": 1, "max": 1}, "parallelism": {"tensor": 1}},
        "decode": {"replicas": {"min": 1, "max": 1}, "parallelism": {"tensor": 1}},
        "router": {"disaggThreshold": THRESHOLD},
        "autoscaling": {"engine": "none"},
    }
    if idle_after is not None:
        # as in e2e/test_scaling.py: autoscaled roles, which the operator moves through /scale
        # (with engine none it would set replicas in its apply, and the audit log shows no /scale)
        spec["prefill"]["replicas"]["max"] = spec["decode"]["replicas"]["max"] = 2
        spec["autoscaling"] = {"engine": "hpa", "scaleDownStabilization": "10s"}
        spec["scaleToZero"] = {"enabled": True, "idleAfter": idle_after}
    return running_model(MODEL, spec)


# -- statistics -----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(value: float) -> str:
    return "   -  " if value != value else f"{value * 1000:6.1f}"  # noqa: PLR0124 - nan check


# -- open-loop load -------------------------------------------------------------------------------


class Series:
    """Results of one open-loop run against one target."""

    def __init__(self, name: str, what: str, results: list[Result], lateness: list[float], extra: str = "") -> None:
        self.name, self.what, self.results, self.lateness, self.extra = name, what, results, lateness, extra
        self.ok = [r for r in results if r.ok and r.ttft is not None]

    @property
    def ttft(self) -> list[float]:
        return [r.ttft for r in self.ok if r.ttft is not None]

    @property
    def total(self) -> list[float]:
        return [r.total for r in self.ok]

    def row(self) -> str:
        return (
            f"  {self.name:<10} {len(self.ok):>4}/{len(self.results):<4} "
            f"{ms(pct(self.ttft, 50))} {ms(pct(self.ttft, 99))}   {ms(pct(self.total, 50))} {ms(pct(self.total, 99))}"
            f"   {ms(pct(self.lateness, 99))}  {self.what}{self.extra}"
        )

    def failures(self) -> list[str]:
        return [f"{r.status} {(r.text or r.error)[:160]}" for r in self.results if not r.ok][:3]

    def figures(self) -> dict[str, float]:
        return {
            "requests": len(self.results),
            "ok": len(self.ok),
            "ttft_p50_ms": round(pct(self.ttft, 50) * 1000, 2),
            "ttft_p99_ms": round(pct(self.ttft, 99) * 1000, 2),
            "total_p50_ms": round(pct(self.total, 50) * 1000, 2),
            "total_p99_ms": round(pct(self.total, 99) * 1000, 2),
            "send_lateness_p99_ms": round(pct(self.lateness, 99) * 1000, 2),
        }


Sender = Callable[[aiohttp.ClientSession, int], Awaitable[Result]]


async def _open_loop(
    sender: Sender, rate: float, seconds: float, headers: dict[str, str] | None, warmup: int
) -> tuple[list[Result], list[float]]:
    count = max(1, int(rate * seconds))
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        for i in range(warmup):  # connections and the picker's view warm, not counted
            await sender(session, -1 - i)
        start = loop.time() + 0.05
        tasks, lateness = [], []
        for i in range(count):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lateness.append(max(0.0, loop.time() - due))
            tasks.append(asyncio.create_task(sender(session, i)))
        results = list(await asyncio.gather(*tasks))
    return results, lateness


def open_loop(
    sender: Sender, rate: float, seconds: float, headers: dict[str, str] | None = None, warmup: int = 3
) -> tuple[list[Result], list[float]]:
    return asyncio.run(_open_loop(sender, rate, seconds, headers, warmup))


def completion(url: str, tokens: int, answer: int, seed_base: int) -> Sender:
    def sender(session: aiohttp.ClientSession, i: int) -> Awaitable[Result]:
        prompt = prompt_of(tokens, seed=seed_base + i + 1000)
        return one_request(session, url, SERVED, prompt=prompt, max_tokens=answer, ignore_eos=True)

    return sender


def two_legs(prefill_url: str, decode_url: str, tokens: int, answer: int, seed_base: int) -> Sender:
    """What the nixlv2 sidecar does, done by the client: a non-streamed 1-token prefill asking for
    remote decode, then the streamed request to decode with the prefill's ``kv_transfer_params``.
    TTFT and total count from before the prefill leg."""

    async def sender(session: aiohttp.ClientSession, i: int) -> Result:
        prompt = prompt_of(tokens, seed=seed_base + i + 1000)
        started = time.monotonic()
        result = Result(ok=False, status=0, started=time.time())
        legs = aiohttp.ClientTimeout(total=60)
        prefill_body = {
            "model": SERVED,
            "prompt": prompt,
            "max_tokens": 1,
            "stream": False,
            "kv_transfer_params": {
                "do_remote_decode": True,
                "do_remote_prefill": False,
                "remote_engine_id": None,
                "remote_block_ids": None,
                "remote_host": None,
                "remote_port": None,
            },
        }
        try:
            async with session.post(prefill_url + "/v1/completions", json=prefill_body, timeout=legs) as response:
                result.status = response.status
                prefilled = await response.json(content_type=None)
            params = prefilled.get("kv_transfer_params") if isinstance(prefilled, dict) else None
            if result.status != 200 or not params:
                result.error = f"prefill leg: {result.status} {str(prefilled)[:200]}"
                return result
            decode_body = {
                "model": SERVED,
                "prompt": prompt,
                "max_tokens": answer,
                "stream": True,
                "ignore_eos": True,
                "kv_transfer_params": params,
            }
            async with session.post(decode_url + "/v1/completions", json=decode_body, timeout=legs) as response:
                result.status = response.status
                if response.status != 200:
                    result.text = await response.text()
                    return result
                async for raw in response.content:
                    line = raw.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        result.error = str(chunk["error"])
                        return result
                    piece = ((chunk.get("choices") or [{}])[0]).get("text") or ""
                    if piece and result.ttft is None:
                        result.ttft = time.monotonic() - started
                    result.text += piece
            result.ok = True
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            result.total = time.monotonic() - started
        return result

    return sender


# -- cluster helpers --------------------------------------------------------------------------------


def cond(body: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == ctype), {})


def dm(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    return kubectl.get("disaggregatedmodel", MODEL, namespace) or {}


def wait_serving(kubectl: Kubectl, namespace: str, timeout: float = 240) -> str:
    def up() -> bool:
        return all(ready_pods(kubectl, namespace, role, MODEL) for role in ("prefill", "decode", "router"))

    wait_for("prefill, decode and router pods Ready", up, timeout=timeout, interval=1)
    url = router_address(kubectl, namespace, MODEL)
    wait_for("the router to route", lambda: send(url, SERVED, prompt="hi", max_tokens=2).ok, timeout=90, interval=1)
    return url


def pod_ip(kubectl: Kubectl, namespace: str, role: str) -> str:
    (pod,) = ready_pods(kubectl, namespace, role, MODEL)
    return str(pod["status"]["podIP"])


def router_pod_url(kubectl: Kubectl, namespace: str) -> str:
    service = kubectl.get("service", f"{MODEL}-router", namespace) or {}
    port = next(p for p in service["spec"]["ports"] if p["name"] == "http")
    target = port.get("targetPort", port["port"])
    (pod,) = ready_pods(kubectl, namespace, "router", MODEL)
    if isinstance(target, str):
        target = next(
            p["containerPort"]
            for c in [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
            for p in c.get("ports") or []
            if p.get("name") == target
        )
    return f"http://{pod['status']['podIP']}:{target}"


def prefill_served(prefill_ip: str) -> float:
    return metric_sum(scrape(f"http://{prefill_ip}:8000/metrics"), "vllm:request_success_total")


# -- (a) ---------------------------------------------------------------------------------------------


def bench_latency(kubectl: Kubectl, args: argparse.Namespace) -> dict[str, Any]:
    namespace = "bench-latency"
    kubectl.run("create", "namespace", namespace)
    kubectl.apply(model_body(), namespace)
    service = wait_serving(kubectl, namespace)
    decode, prefill = pod_ip(kubectl, namespace, "decode"), pod_ip(kubectl, namespace, "prefill")
    router = router_pod_url(kubectl, namespace)
    short = [
        ("sim", f"http://{decode}:8200", "decode simulator, direct"),
        ("sidecar", f"http://{decode}:8000", "routing sidecar -> simulator"),
        ("router", router, "router pod: Envoy stand-in + picker -> sidecar -> simulator"),
        ("service", service, "Service ClusterIP: kube-proxy stand-in -> router pod -> ..."),
    ]
    decode_only: dict[str, Series] = {}
    print(
        f"\n(a) decode-only: {SHORT_TOKENS}-token prompts, {SHORT_ANSWER} streamed tokens, "
        f"{args.rate:g} req/s open loop for {args.seconds:g}s per target",
        flush=True,
    )
    for name, url, what in short:
        before = prefill_served(prefill)
        results, lateness = open_loop(completion(url, SHORT_TOKENS, SHORT_ANSWER, 0), args.rate, args.seconds)
        extra = f" [prefill legs {prefill_served(prefill) - before:.0f}, 3 warm-up incl.]"
        decode_only[name] = Series(name, what, results, lateness, extra)
        print(f"    {name}: {len(decode_only[name].ok)}/{len(results)} ok", flush=True)
    pd: dict[str, Series] = {}
    long = [
        ("service", service, None, "Service ClusterIP -> router -> sidecar -> prefill, then decode"),
        ("sidecar", f"http://{decode}:8000", {PREFILLER_HEADER: f"{prefill}:8000"}, "sidecar told the prefill pod"),
        ("two-legs", None, None, "client sends both legs straight to the simulators"),
    ]
    print(
        f"\n(a') P->D: {LONG_TOKENS}-token prompts (over the threshold of {THRESHOLD}), {LONG_ANSWER} streamed "
        f"tokens, {args.pd_rate:g} req/s for {args.pd_seconds:g}s per path (fresh prompts per path: no cache hits)",
        flush=True,
    )
    for index, (name, url, headers, what) in enumerate(long):
        seed = (index + 1) * 1_000_000
        sender = (
            two_legs(f"http://{prefill}:8000", f"http://{decode}:8200", LONG_TOKENS, LONG_ANSWER, seed)
            if url is None
            else completion(url, LONG_TOKENS, LONG_ANSWER, seed)
        )
        before = prefill_served(prefill)
        results, lateness = open_loop(sender, args.pd_rate, args.pd_seconds, headers)
        extra = f" [prefill legs {prefill_served(prefill) - before:.0f}, 3 warm-up incl.]"
        pd[name] = Series(name, what, results, lateness, extra)
        print(f"    {name}: {len(pd[name].ok)}/{len(results)} ok", flush=True)
    kubectl.run("delete", "namespace", namespace, "--wait=true", "--timeout=120s", check=False, timeout=150)
    return {"decode_only": decode_only, "pd": pd}


def print_latency(found: dict[str, Any]) -> dict[str, Any]:
    head = f"  {'target':<10} {'ok/sent':<9} {'TTFT p50':>8} {'p99':>6}   {'total p50':>9} {'p99':>6}   {'late p99':>8}"
    out: dict[str, Any] = {}
    for key, title in (("decode_only", "decode-only (short prompts)"), ("pd", "P->D (long prompts)")):
        series: dict[str, Series] = found[key]
        print(f"\n{title}, milliseconds:\n{head}")
        for s in series.values():
            print(s.row())
            if s.failures():
                print(f"             failures: {s.failures()}")
        out[key] = {name: s.figures() for name, s in series.items()}

    def diff(a: Series, b: Series, attr: str) -> float:
        return pct(getattr(a, attr), 50) - pct(getattr(b, attr), 50)

    d = found["decode_only"]
    print("\nadded latency, difference of medians (TTFT / total), ms:")
    steps = [
        ("service", "sim", "the whole serving path (router overhead as a client sees it)"),
        ("sidecar", "sim", "routing sidecar (Go, real)"),
        ("router", "sidecar", "Envoy stand-in (Python) + endpoint picker (Go, real, ext_proc over gRPC/TLS)"),
        ("service", "router", "kube-proxy stand-in (Python TCP relay for the ClusterIP)"),
    ]
    out["added_ms"] = {}
    for a, b, what in steps:
        t, total = diff(d[a], d[b], "ttft"), diff(d[a], d[b], "total")
        print(f"  {a:>8} - {b:<8} {ms(t)} / {ms(total)}   {what}")
        out["added_ms"][f"{a}-{b}"] = {"ttft": round(t * 1000, 2), "total": round(total * 1000, 2)}
    p = found["pd"]
    for a, b, what in (
        ("service", "two-legs", "P->D through the whole serving path vs. the client doing both legs"),
        ("sidecar", "two-legs", "P->D sidecar vs. the client doing both legs"),
    ):
        t, total = diff(p[a], p[b], "ttft"), diff(p[a], p[b], "total")
        print(f"  {a:>8} - {b:<8} {ms(t)} / {ms(total)}   {what}")
        out["added_ms"][f"pd:{a}-{b}"] = {"ttft": round(t * 1000, 2), "total": round(total * 1000, 2)}
    print(
        "  Includes two Python stand-ins real clusters do not have (Envoy -> a C++ proxy; kube-proxy -> kernel\n"
        "  NAT), so these differences over-state what real Envoy and kube-proxy add. The client, the runtime and\n"
        "  every process share 2 cores; 'late p99' is how late the client sent (its own scheduling lag)."
    )
    return out


# -- (b) ---------------------------------------------------------------------------------------------


def replicas(kubectl: Kubectl, namespace: str, role: str) -> int:
    body = kubectl.get("deployment", f"{MODEL}-{role}", namespace) or {}
    return int((body.get("spec") or {}).get("replicas") or 0)


def wait_at_zero(kubectl: Kubectl, namespace: str, timeout: float) -> None:
    def asleep() -> bool:
        if cond(dm(kubectl, namespace), "ScaledToZero").get("status") != "True":
            return False
        if replicas(kubectl, namespace, "prefill") or replicas(kubectl, namespace, "decode"):
            return False
        engines = f"disagg.dev/model={MODEL},disagg.dev/role in (prefill,decode)"
        return not kubectl.items("pods", namespace, engines)

    wait_for("ScaledToZero=True and no engine pod left", asleep, timeout=timeout, interval=1)


def ready_since(kubectl: Kubectl, namespace: str, role: str, since: float) -> float | None:
    """When the role's first pod created after ``since`` turned Ready (the API's 1 s resolution)."""
    best = None
    for pod in ready_pods(kubectl, namespace, role, MODEL):
        for c in pod["status"].get("conditions") or []:
            if c["type"] == "Ready" and c["status"] == "True":
                when = dt.datetime.strptime(c["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
                stamp = when.timestamp()
                if stamp >= since - 1 and (best is None or stamp < best):
                    best = stamp
    return best


def one_wake(
    kubectl: Kubectl, stack: MetricsStack, audit_log: str | None, namespace: str, url: str
) -> dict[str, float]:
    """One request at zero, held by the router until the engines serve; its timings (seconds)."""
    sent = time.time()
    answer = send(url, SERVED, prompt=prompt_of(40, seed=int(sent)), max_tokens=4, timeout=240)
    if not answer.ok or answer.ttft is None:
        raise AssertionError(f"no answer to the request at zero: {answer}")
    first_token = answer.started + answer.ttft
    timings = {"sent_to_first_token": first_token - sent}
    selector = f'llm_d_epp_flow_control_queue_size{{namespace="{namespace}",pod=~"{MODEL}-router-.+"}}'
    visible = first_visible(stack.prometheus, selector, 1, sent)
    roles_up: dict[str, float] = {}
    for when, name, _ in scale_writes(audit_log, namespace, sent, OPERATOR_AGENTS):
        roles_up.setdefault(name, when)
    decode_up = roles_up.get(f"{MODEL}-decode")
    if visible is not None:
        timings["sent_to_visible"] = visible - sent
    if visible is not None and decode_up is not None:
        timings["visible_to_decode_scaled"] = decode_up - visible
    if decode_up is not None:
        timings["sent_to_decode_scaled"] = decode_up - sent
        prefill_up = roles_up.get(f"{MODEL}-prefill")
        if prefill_up is not None:
            timings["decode_to_prefill_scaled"] = prefill_up - decode_up
        ready = ready_since(kubectl, namespace, "decode", sent)
        if ready is not None:
            timings["decode_scaled_to_pod_ready"] = ready - decode_up
            timings["pod_ready_to_first_token"] = first_token - ready
    return timings


def bench_wake(kubectl: Kubectl, stack: MetricsStack, audit_log: str | None, args: argparse.Namespace) -> list[dict]:
    namespace = "bench-wake"
    kubectl.run("create", "namespace", namespace)
    kubectl.apply(model_body(idle_after=args.idle_after), namespace)
    url = wait_serving(kubectl, namespace)
    print(f"\n(b) wake from zero: idleAfter {args.idle_after}, {args.wakes} wakes", flush=True)
    out = []
    for i in range(args.wakes):
        started = time.time()
        wait_at_zero(kubectl, namespace, timeout=240)
        time.sleep(2)  # the last scrape before the request shows an empty queue
        timings = one_wake(kubectl, stack, audit_log, namespace, url)
        timings["cycle_s"] = time.time() - started
        print(f"    wake {i + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()), flush=True)
        out.append(timings)
    kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)
    return out


def print_wake(wakes: list[dict[str, float]]) -> dict[str, Any]:
    rows = [
        ("sent_to_first_token", "request at zero -> first token at the client (everything)"),
        ("sent_to_visible", "  request -> router queue > 0 in a Prometheus scrape (1 s scrape)"),
        ("visible_to_decode_scaled", "  visible -> operator's decode /scale write (operator side; 1 s wake poll)"),
        ("decode_to_prefill_scaled", "  decode /scale -> prefill /scale (prefill follows decode)"),
        ("decode_scaled_to_pod_ready", "  decode /scale -> decode pod Ready (ReplicaSet, scheduler, runtime, probes)"),
        ("pod_ready_to_first_token", "  decode pod Ready -> first token (picker sees it, releases the held request)"),
    ]
    print(f"\nwake from zero, seconds (n={len(wakes)}; Ready times have the API's 1 s resolution):")
    print(f"  {'median':>7} {'min':>6} {'max':>6}")
    out: dict[str, Any] = {}
    for key, what in rows:
        values = [w[key] for w in wakes if key in w]
        if not values:
            print(f"  {'-':>7} {'-':>6} {'-':>6}  {what} (not measured)")
            continue
        med = statistics.median(values)
        print(f"  {med:7.2f} {min(values):6.2f} {max(values):6.2f}  {what}")
        out[key] = {"median": round(med, 3), "min": round(min(values), 3), "max": round(max(values), 3)}
    print(
        f"  Prometheus scrapes every {SCRAPE_INTERVAL_SECONDS}s here (15-30 s is common in production, which adds\n"
        "  directly); pods start as local processes, so a real cold start (image pull, model load) is missing."
    )
    return out


# -- main --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30, help="decode-only run per target (s)")
    parser.add_argument("--rate", type=float, default=10, help="decode-only request rate (req/s)")
    parser.add_argument("--pd-seconds", type=float, default=15, help="P->D run per path (s)")
    parser.add_argument("--pd-rate", type=float, default=5, help="P->D request rate (req/s)")
    parser.add_argument("--wakes", type=int, default=3, help="wakes from zero")
    parser.add_argument("--idle-after", default="20s", help="scaleToZero.idleAfter of the wake model")
    parser.add_argument("--only", choices=("latency", "wake"), help="run one part")
    args = parser.parse_args()
    reason = runtime_supported()
    if reason:
        print(f"bench/serving.py: {reason}", file=sys.stderr)
        return 2
    began = time.time()
    name = f"bench-serving-{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="disagg-bench-serving-"))
    env = cluster_up(name)
    runtime = RuntimeProcess(env, workdir / "runtime", runtime_bin_dir())
    operator: OperatorProcess | None = None
    stack: MetricsStack | None = None
    figures: dict[str, Any] = {}
    latency: dict[str, Any] | None = None
    wakes: list[dict[str, float]] = []
    try:
        kubectl = Kubectl(env)
        kubectl.run("apply", "--server-side", "-f", str(ROOT / "crds"))
        kubectl.run("wait", "--for=condition=Established", "crd/disaggregatedmodels.disagg.dev", "--timeout=60s")
        runtime.start()
        operator = OperatorProcess(env, workdir / "operator.log")
        if args.only != "wake":
            operator.start()
            latency = bench_latency(kubectl, args)
            operator.stop()
        if args.only != "latency":
            # Prometheus only for (b): during (a) its discovery loop and scrapes would share the cores
            stack = MetricsStack(env, kubectl).start()
            operator.extra_env = {"DISAGG_PROMETHEUS_URL": stack.prometheus.url}
            operator.start()
            wakes = bench_wake(kubectl, stack, env.audit_log, args)
    except BaseException:
        print(f"--- runtime\n{runtime.tail()}", file=sys.stderr)
        if operator is not None:
            print(f"--- operator\n{operator.log_tail(60)}", file=sys.stderr)
        raise
    finally:
        if operator is not None:
            operator.stop()
        if stack is not None:
            stack.stop()
        runtime.stop()
        cluster_down(name)
        shutil.rmtree(workdir, ignore_errors=True)
    if latency is not None:
        figures["latency"] = print_latency(latency)
    if wakes:
        figures["wake"] = print_wake(wakes)
    figures["wall_s"] = round(time.time() - began, 1)
    print(f"\n{json.dumps(figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
