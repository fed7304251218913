"""The serving side of the e2e suite: the pod runtime as a process, models whose pods it runs, a load generator.

Pods opt in to really running by the annotation ``kwok.x-k8s.io/status: custom`` (kwok then
leaves them to ``e2e/runtime``); ``running_model`` puts it on every role through the spec's own
``scheduling.podAnnotations``, so what runs is exactly what the operator renders for that spec.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from e2e.harness import ROOT, ClusterEnv, Kubectl, wait_for

if TYPE_CHECKING:
    from e2e.metrics import MetricsStack

RUN_ANNOTATION = {"kwok.x-k8s.io/status": "custom"}


class RuntimeProcess:
    """``python -m e2e.runtime.kubelet`` for one cluster (needs root)."""

    def __init__(self, cluster: ClusterEnv, workdir: Path, bin_dir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        ready = self.workdir / "ready"
        ready.unlink(missing_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "stderr.log").open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "e2e.runtime.kubelet",
                    f"--kubeconfig={self.cluster.kubeconfig}",
                    f"--bin-dir={self.bin_dir}",
                    f"--workdir={self.workdir}",
                    f"--ready-file={ready}",
                    *(
                        [f"--vllm-parser-python={os.environ['DISAGG_VLLM_PARSER_PYTHON']}"]
                        if os.environ.get("DISAGG_VLLM_PARSER_PYTHON")
                        else []
                    ),
                ],
                cwd=ROOT,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the e2e runtime exited ({self.proc.returncode}):\n{self.tail()}")
            return ready.exists()

        wait_for("the e2e pod runtime", up, timeout=timeout, interval=0.2)

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        out = []
        for name in ("stderr.log", "runtime.log"):
            path = self.workdir / name
            if path.exists():
                out += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    def pod_dir(self, namespace: str, pod: str) -> Path:
        return self.workdir / "pods" / f"{namespace}_{pod}"

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        path = self.pod_dir(namespace, pod) / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def container_pid(self, namespace: str, pod: str, container: str) -> int:
        return int((self.pod_dir(namespace, pod) / f"{container}.pid").read_text())


def running_model(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A DisaggregatedModel whose every pod the runtime runs (the annotation on each role)."""
    spec = json.loads(json.dumps(spec))
    for role in ("prefill", "decode", "router"):
        scheduling = spec.setdefault(role, {}).setdefault("scheduling", {})
        scheduling.setdefault("podAnnotations", {}).update(RUN_ANNOTATION)
    return {"apiVersion": "disagg.dev/v1alpha1", "kind": "DisaggregatedModel", "metadata": {"name": name}, "spec": spec}


def router_address(kubectl: Kubectl, namespace: str, model: str) -> str:
    service = kubectl.get("service", f"{model}-router", namespace)
    assert service is not None, "router Service missing"
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
    return f"http://{service['spec']['clusterIP']}:{port}"


def ready_pods(kubectl: Kubectl, namespace: str, role: str, model: str) -> list[dict[str, Any]]:
    pods = kubectl.items("pods", namespace, f"disagg.dev/model={model},disagg.dev/role={role}")
    return [
        p
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in (p.get("status") or {}).get("conditions") or [])
    ]


ENGINE_METRICS = {"prefill": "vllm_num_requests_waiting", "decode": "vllm_kv_cache_usage_perc"}
"""The custom metric each engine role's HPA reads (prometheus-adapter's names)."""


def serve_floors(
    kubectl: Kubectl,
    metrics_stack: MetricsStack,
    namespace: str,
    model: str,
    served_model: str,
    floors: dict[str, int],
    timeout: float = 180,
) -> str:
    """Until every role has ``floors[role]`` Ready pods, all of them scraped, the adapter serves
    each engine role's HPA metric, and the router answers a request. Returns the router's URL."""

    def up() -> list[str] | None:
        pods = {role: ready_pods(kubectl, namespace, role, model) for role in floors}
        if all(len(pods[r]) >= n for r, n in floors.items()):
            return [p["metadata"]["name"] for group in pods.values() for p in group]
        return None

    try:
        names = wait_for("every floor pod running and Ready", up, timeout=timeout)
    except AssertionError as exc:
        ready = {role: len(ready_pods(kubectl, namespace, role, model)) for role in floors}
        body = kubectl.get("disaggregatedmodel", model, namespace) or {}
        conditions = [
            (c["type"], c["status"], c["reason"], c.get("message", "")[:160])
            for c in (body.get("status") or {}).get("conditions") or []
        ]
        raise AssertionError(f"{exc}; Ready pods {ready} of floors {floors}; model conditions {conditions}") from None
    metrics_stack.wait_scraped(namespace, names)
    for role, metric in ENGINE_METRICS.items():
        if role in floors:
            wait_for(
                f"the adapter to serve {metric}",
                lambda role=role, metric=metric: (
                    metrics_stack.adapter.metric(namespace, metric, f"disagg.dev/role={role}") or None
                ),
                timeout=60,
            )
    url = router_address(kubectl, namespace, model)
    wait_for("the router to route", lambda: send(url, served_model, prompt="hi", max_tokens=2).ok, timeout=60)
    return url


def scrape(url: str, timeout: float = 3) -> dict[str, float]:
    """One Prometheus text exposition as ``{'name{labels}': value}`` (HELP/TYPE skipped)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            values[key] = float(value)
        except ValueError:
            continue
    return values


def metric_sum(values: dict[str, float], name: str) -> float:
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


ENGINE_PORTS = {"decode": 8200, "prefill": 8000, "prefill-decode": 8000}
"""where vLLM itself listens: decode pods put the routing sidecar on 8000 in front of it"""


def engine_successes(kubectl: Kubectl, namespace: str, model: str, role: str) -> float:
    """``vllm:request_success_total`` summed over the role's ready pods, scraped from the pods."""
    total = 0.0
    for pod in ready_pods(kubectl, namespace, role, model):
        url = f"http://{pod['status']['podIP']}:{ENGINE_PORTS[role]}/metrics"
        total += metric_sum(scrape(url), "vllm:request_success_total")
    return total


# -- load ---------------------------------------------------------------------------------------


def prompt_of(tokens: int, seed: int = 0) -> str:
    """About ``tokens`` tokens of text no earlier request shares a prefix with (seed first)."""
    words = [f"w{seed}x{i}" for i in range(max(tokens, 1))]
    return " ".join(words)


def dense_prompt_of(tokens: int, seed: int = 0) -> str:
    """``tokens`` simulator tokens in about ``tokens`` characters: llm-d-inference-sim's tokenizer
    counts every comma as a token, while the endpoint picker estimates 4 characters per token. So
    a dense prompt of 950 tokens fills 7 KV blocks on a decode pod yet stays under a P/D threshold
    of 256 (estimated) tokens: decode-only load that fills KV caches, as long chats do."""
    return f"d{seed} " + "," * max(tokens - 1, 0)


@dataclass
class Result:
    ok: bool
    status: int
    started: float
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    total: float = 0.0
    text: str = ""
    error: str = ""


async def one_request(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    *,
    prompt: str,
    max_tokens: int,
    chat: bool = False,
    stream: bool = True,
    ignore_eos: bool = False,
    timeout: float = 120,
) -> Result:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": stream}
    if ignore_eos:
        body["ignore_eos"] = True  # vLLM's sampling extension: generate exactly max_tokens
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = prompt
        path = "/v1/completions"
    started = time.monotonic()
    result = Result(ok=False, status=0, started=time.time())
    last = None
    try:
        async with session.post(url + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            result.status = response.status
            if not stream or response.status != 200:
                result.text = await response.text()
                result.ttft = time.monotonic() - started
            else:
                async for raw in response.content:
                    line = raw.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    moment = time.monotonic()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    if "error" in chunk:  # an error inside a 200 stream (vLLM and the simulator do this)
                        result.error = str(chunk["error"].get("message") or chunk["error"])
                        break
                    choice = (chunk.get("choices") or [{}])[0]
                    piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                    if not piece:
                        continue
                    if result.ttft is None:
                        result.ttft = moment - started
                    elif last is not None:
                        result.itl.append(moment - last)
                    last = moment
                    result.text += piece
            result.ok = response.status == 200 and not result.error
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.total = time.monotonic() - started
    return result


def send(url: str, model: str, **kwargs: Any) -> Result:
    async def run() -> Result:
        async with aiohttp.ClientSession() as session:
            return await one_request(session, url, model, **kwargs)

    return asyncio.run(run())


class Load:
    """A bounded closed-loop load generator in a thread: ``concurrency`` clients, each sending
    the next request when its last one ends, until ``stop()`` or ``seconds``."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        concurrency: int,
        prompt_tokens: int,
        max_tokens: int,
        ignore_eos: bool = True,
        dense: bool = False,
        seconds: float = 600,
    ) -> None:
        self.url, self.model, self.ignore_eos, self.dense = url, model, ignore_eos, dense
        self.concurrency, self.prompt_tokens, self.max_tokens = concurrency, prompt_tokens, max_tokens
        self.deadline = time.monotonic() + seconds
        self.results: list[Result] = []
        self.stopped_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _client(self, session: aiohttp.ClientSession, index: int) -> None:
        sequence = 0
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            sequence += 1
            make = dense_prompt_of if self.dense else prompt_of
            prompt = make(self.prompt_tokens, seed=index * 100000 + sequence)
            result = await one_request(
                session, self.url, self.model, prompt=prompt, max_tokens=self.max_tokens, ignore_eos=self.ignore_eos
            )
            self.results.append(result)
            if not result.ok:
                await asyncio.sleep(0.5)

    async def _main(self) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(*(self._client(session, i) for i in range(self.concurrency)))

    def stop(self) -> None:
        """No new requests from now on (``stopped_at``); returns once the in-flight ones are answered."""
        if not self._stop.is_set():
            self.stopped_at = time.time()
        self._stop.set()
        self._thread.join(timeout=150)

    def failures(self) -> list[tuple[int, str]]:
        return [(r.status, (r.text or r.error)[:300]) for r in self.results if not r.ok]

    def summary(self) -> dict[str, float]:
        ok = [r for r in self.results if r.ok]
        ttft = [r.ttft for r in ok if r.ttft is not None]
        itl = [g for r in ok for g in r.itl]
        return {
            "requests": len(self.results),
            "ok": len(ok),
            "ttft_p50": statistics.median(ttft) if ttft else float("nan"),
            "itl_p50": statistics.median(itl) if itl else float("nan"),
        }


def runtime_bin_dir() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "e2e" / "tools.sh"), "--print-bin-dir"], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


def runtime_supported() -> str | None:
    """Why the runtime cannot run here, or None."""
    if os.geteuid() != 0:
        return "the e2e runtime needs root (network and mount namespaces)"
    return None
