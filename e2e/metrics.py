"""Metrics side of the scaling e2e tests: a private Prometheus, fake engine/router endpoints, prometheus-adapter.

Pods on kwok nodes run no processes, so the harness stands in for them on the loopback interface:

- one ``llm-d-inference-sim`` process per running prefill/decode pod (it exports the real
  ``vllm:*`` series; the queue depth and KV-cache use it reports are set through its
  ``--fake-metrics`` flag and ``POST /admin/config``, so tests drive load deterministically);
- one tiny in-process HTTP server per running router pod exposing the llm-d router's
  ``llm_d_epp_info``, ``llm_d_epp_flow_control_queue_size`` and ``llm_d_epp_request_total``
  series; a test "sends" requests, which are held in the queue for a while, then counted. kwok
  pods run no containers, so the real endpoint picker is not behind these pods; its series names
  are checked on the real program in e2e/test_router_programs.py;
- a private Prometheus (Debian's, ``e2e/ensure-prometheus.sh``) scraping them every second through
  file_sd target files that carry each pod's ``namespace`` and ``pod`` labels;
- prometheus-adapter (built by ``e2e/tools.sh``) with ``manifests/prometheus-adapter/rules.yaml``,
  registered as ``v1beta1.custom.metrics.k8s.io`` through an ``ExternalName 127.0.0.1`` Service, so
  the real HPA controller reads the simulated engine metrics.

Everything listens on 127.0.0.1 (except llm-d-inference-sim, which has no bind-address flag and
listens on all IPv4 interfaces of its port; all traffic to it goes to 127.0.0.1). Every wait is
bounded; :meth:`MetricsStack.stop` stops every process and thread and removes every temp dir,
and is safe to call on a half-started stack.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from e2e.harness import MANAGED, ROOT, ClusterEnv, Kubectl, wait_for

log = logging.getLogger(__name__)
RULES = ROOT / "manifests" / "prometheus-adapter" / "rules.yaml"
ENGINE_ROLES = ("prefill", "decode", "prefill-decode")
ROUTER_ROLE = "router"
ROLE_LABEL = "disagg.dev/role"
SCRAPE_INTERVAL_SECONDS = 1
APISERVICE = "v1beta1.custom.metrics.k8s.io"
ADAPTER_NAMESPACE = "disagg-e2e-metrics"
IDLE = {"waiting": 0.0, "kv": 0.0, "running": 0.0}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_json(url: str, data: dict[str, Any] | None = None, timeout: float = 3) -> Any:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def bin_dir() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "e2e" / "tools.sh"), "--print-bin-dir"], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


class Process:
    """A child process in its own session, logging to a file; stop() is idempotent and bounded."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as handle:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(self.env or {})},
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# -- Prometheus ------------------------------------------------------------------------------


def _snake(label: str) -> str:
    """A label name as Prometheus' Kubernetes discovery spells it in ``__meta_*`` names."""
    return "".join(c if c.isalnum() else "_" for c in label)


def chart_pod_monitor() -> dict[str, Any]:
    """The chart's PodMonitor, rendered by the real helm with the monitor switched on."""
    helm = bin_dir() / "helm"
    out = subprocess.run(
        [
            str(helm),
            "template",
            "e2e",
            str(ROOT / "charts" / "disagg-operator"),
            "--set",
            "metrics.podMonitor.enabled=true",
            "-s",
            "templates/monitors.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return next(d for d in yaml.safe_load_all(out) if d and d.get("kind") == "PodMonitor")


class PodMonitorDiscovery:
    """The chart's PodMonitor turned into file_sd targets, once a second.

    Debian's Prometheus is built without Kubernetes service discovery (``kubernetes_sd_configs``
    is not a known field), and the Prometheus Operator cannot run here, so this loop does what the
    two do together for a PodMonitor: pods matching the selector, not Failed/Succeeded, with a
    pod IP; for each endpoint the container ports (init/sidecar containers included) whose name
    matches; the endpoint's ``keep``/``drop`` relabelings on pod labels; target labels
    ``namespace``, ``pod``, ``container``, ``role`` and ``job``. Any other relabeling is refused.
    """

    def __init__(
        self, kubectl: Kubectl, prometheus: Prometheus, monitor: dict[str, Any], interval: float = 1.0
    ) -> None:
        self.kubectl = kubectl
        self.prometheus = prometheus
        self.monitor = monitor
        self.interval = interval
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for rule in endpoint.get("relabelings") or []:
                if rule.get("action", "replace") not in ("keep", "drop"):
                    raise AssertionError(f"relabeling not supported by the e2e discovery: {rule}")
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-monitor-discovery", daemon=True)
        self._thread.start()

    def targets(self, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        spec = self.monitor["spec"]
        wanted = spec["selector"].get("matchLabels", {})
        name = f"podMonitor/{self.monitor['metadata']['namespace']}/{self.monitor['metadata']['name']}"
        groups = []
        for pod in pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            labels = meta.get("labels") or {}
            if any(labels.get(k) != v for k, v in wanted.items()):
                continue
            if status.get("phase") in ("Failed", "Succeeded") or not status.get("podIP"):
                continue
            meta_labels = {f"__meta_kubernetes_pod_label_{_snake(k)}": v for k, v in labels.items()}
            containers = [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
            for index, endpoint in enumerate(spec["podMetricsEndpoints"]):
                if not self._kept(endpoint.get("relabelings") or [], meta_labels):
                    continue
                for container in containers:
                    for port in container.get("ports") or []:
                        if port.get("name") != endpoint["port"]:
                            continue
                        groups.append(
                            {
                                "targets": [f"{status['podIP']}:{port['containerPort']}"],
                                "labels": {
                                    "job": f"{name}/{index}",
                                    "namespace": meta["namespace"],
                                    "pod": meta["name"],
                                    "container": container["name"],
                                    "role": labels.get(ROLE_LABEL, ""),
                                },
                            }
                        )
        return groups

    @staticmethod
    def _kept(rules: list[dict[str, Any]], meta_labels: dict[str, str]) -> bool:
        import re

        for rule in rules:
            value = ";".join(meta_labels.get(label, "") for label in rule["sourceLabels"])
            matched = re.fullmatch(rule.get("regex", "(.*)"), value) is not None
            if (rule["action"] == "keep") != matched:
                return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pods = self.kubectl.json("get", "pods", "-A")["items"]
                self.prometheus.write_targets("pod-monitor", self.targets(pods))
            except Exception as exc:  # keep discovering; tests see the errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
                del self.errors[:-20]
            self._stop.wait(self.interval)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.prometheus.remove_targets("pod-monitor")


class Prometheus:
    """A private Prometheus on a loopback port with file_sd targets; restartable on the same port and data."""

    def __init__(self, workdir: Path, binary: str = "prometheus") -> None:
        self.workdir = workdir
        self.binary = shutil.which(binary) or binary
        self.port = free_port()
        self.targets_dir = workdir / "targets"
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        interval = f"{SCRAPE_INTERVAL_SECONDS}s"
        jobs: list[dict[str, Any]] = [
            {
                "job_name": "disagg-e2e",
                "file_sd_configs": [{"files": [str(self.targets_dir / "*.json")], "refresh_interval": "5s"}],
            }
        ]
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": interval,
                        "scrape_timeout": interval,
                        "evaluation_interval": interval,
                    },
                    "scrape_configs": jobs,
                }
            )
        )
        self.process = Process(
            [
                self.binary,
                f"--config.file={self.config}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.path={workdir / 'data'}",
                "--storage.tsdb.retention.time=2h",
                "--log.level=warn",
            ],
            workdir / "prometheus.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        self.process.start()

        def ready() -> bool:
            if not self.process.alive():
                raise AssertionError(f"prometheus exited:\n{self.process.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_for("prometheus to be ready", ready, timeout=timeout, interval=0.2)

    def stop(self) -> None:
        self.process.stop(timeout=20)

    def write_targets(self, name: str, groups: list[dict[str, Any]]) -> None:
        """Atomically replace one file_sd file (Prometheus picks it up through inotify)."""
        path = self.targets_dir / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(path)

    def remove_targets(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.targets_dir / f"{name}.json").unlink()

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        answer = http_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        if answer.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        """Sum of an instant vector, None when empty (mirrors the operator's reading)."""
        result = self.query(expr)
        if not result:
            return None
        return sum(float(r["value"][1]) for r in result)

    def samples(self, selector: str, window: str = "5m") -> list[tuple[float, float]]:
        """Raw samples (scrape timestamp, value) of every series matching ``selector`` over ``window``."""
        out = []
        for series in self.query(f"{selector}[{window}]"):
            out += [(float(t), float(v)) for t, v in series.get("values", [])]
        return sorted(out)

    def targets_up(self) -> dict[str, float]:
        """pod -> value of ``up`` for every target currently scraped."""
        try:
            result = self.query("up")
        except (urllib.error.URLError, OSError):
            return {}
        return {r["metric"].get("pod", ""): float(r["value"][1]) for r in result}


# -- stand-ins for pods ----------------------------------------------------------------------


HOLD_SECONDS = 10.0
"""How long the router stand-in holds a request in its queue before counting it as scheduled."""


class RouterStandin:
    """The llm-d router's request counter for one router pod (the real EPP cannot run on kwok)."""

    def __init__(self, namespace: str, pod: str, model: str) -> None:
        self.namespace = namespace
        self.pod = pod
        self.model = model
        self._lock = threading.Lock()
        self._arrivals: list[float] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = standin.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    def exposition(self) -> str:
        now = time.monotonic()
        with self._lock:
            held = sum(1 for t in self._arrivals if now - t < HOLD_SECONDS)
            dispatched = len(self._arrivals) - held
        # the series names and labels llm-d router v0.10.0 exports (e2e/test_router_programs.py
        # checks them on the real endpoint picker): build info from start; a request first waits
        # in the flow-control queue (as when no engine is up), then counts as scheduled
        models = f'model_name="{self.model}",priority="0",target_model_name="{self.model}"'
        labels = f'fairness_id="",{models}'
        queue = f'fairness_id="",inference_pool="{self.pod}",{models}'
        lines = [
            "# HELP llm_d_epp_info Build information.",
            "# TYPE llm_d_epp_info gauge",
            'llm_d_epp_info{build_ref="",commit=""} 1',
        ]
        if self._arrivals:
            lines += [
                "# HELP llm_d_epp_flow_control_queue_size Requests held in the flow-control queue.",
                "# TYPE llm_d_epp_flow_control_queue_size gauge",
                f"llm_d_epp_flow_control_queue_size{{{queue}}} {held}",
            ]
        if dispatched:
            lines += [
                "# HELP llm_d_epp_request_total Counter of inference model requests.",
                "# TYPE llm_d_epp_request_total counter",
                f"llm_d_epp_request_total{{{labels}}} {dispatched}",
            ]
        return "\n".join(lines) + "\n"

    def bump(self, requests: int = 1) -> int:
        """``requests`` arrive and are held for HOLD_SECONDS; returns how many are held now."""
        now = time.monotonic()
        with self._lock:
            self._arrivals += [now] * requests
            return sum(1 for t in self._arrivals if now - t < HOLD_SECONDS)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._arrivals)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class EngineSim:
    """One llm-d-inference-sim process standing in for one engine pod."""

    def __init__(self, binary: Path, workdir: Path, namespace: str, pod: str, values: dict[str, float]) -> None:
        self.namespace = namespace
        self.pod = pod
        self.port = free_port()
        self.values = dict(values)
        fake = {
            "running-requests": values["running"],
            "waiting-requests": values["waiting"],
            "kv-cache-usage": values["kv"],
        }
        self.process = Process(
            [
                str(binary),
                f"--port={self.port}",
                f"--model=e2e/{namespace}-fake-model",
                "--force-dummy-tokenizer",
                f"--fake-metrics={json.dumps(fake)}",
                f"--zmq-endpoint=tcp://127.0.0.1:{free_port()}",
            ],
            workdir / f"sim-{namespace}-{pod}.log",
        )
        self.process.start()

    def set(self, values: dict[str, float]) -> bool:
        """Set what the sim reports; False if it did not answer (yet)."""
        if values == self.values:
            return True
        fake = {
            "running-requests": values["running"],
            "waiting-requests": values["waiting"],
            "kv-cache-usage": values["kv"],
        }
        try:
            http_json(f"http://127.0.0.1:{self.port}/admin/config", {"fake-metrics": fake}, timeout=2)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        self.values = dict(values)
        return True

    def stop(self) -> None:
        self.process.stop(timeout=5)


class PodMirror:
    """Mirrors one namespace's operator-managed pods into local sims, router stand-ins and file_sd targets.

    A background thread lists the pods with kubectl every ``interval`` seconds: a Running, not
    terminating pod gets a stand-in; a pod that goes away loses it (and its target, so Prometheus
    marks its series stale at once). Load is set per role as a *total* spread over the role's
    running pods, like a router spreading a queue: ``waiting`` is divided evenly, ``kv`` (in
    pod-equivalents of full caches) is divided and capped at 1.0 per pod.
    """

    def __init__(
        self,
        kubectl: Kubectl,
        prometheus: Prometheus,
        sim_binary: Path,
        workdir: Path,
        namespace: str,
        interval: float = 0.5,
    ) -> None:
        self.kubectl = kubectl
        self.prometheus = prometheus
        self.sim_binary = sim_binary
        self.workdir = workdir
        self.namespace = namespace
        self.interval = interval
        self.sims: dict[str, EngineSim] = {}
        self.routers: dict[str, RouterStandin] = {}
        self._roles: dict[str, str] = {}
        self._models: dict[str, str] = {}
        self._load: dict[tuple[str, str], dict[str, float]] = {}
        """(model or "*", role) -> total load of that role (of that model, or of every model)."""
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pod-mirror-{namespace}", daemon=True)
        self.errors: list[str] = []
        self._thread.start()

    # -- what tests call --------------------------------------------------------------------
    def set_load(
        self,
        role: str,
        *,
        waiting: float | None = None,
        kv: float | None = None,
        running: float | None = None,
        model: str | None = None,
    ) -> None:
        """Total load of a role, of one ``model`` or of every model of the namespace (see the class
        docstring); applied to the running sims at once."""
        with self._lock:
            base = self._load.get((model or "*", role)) or self._load.get(("*", role)) or IDLE
            load = self._load.setdefault((model or "*", role), dict(base))
            for key, value in (("waiting", waiting), ("kv", kv), ("running", running)):
                if value is not None:
                    load[key] = float(value)
            self._apply_load()

    def bump_demand(self, requests: int = 1, model: str | None = None) -> dict[str, int]:
        """Count ``requests`` more requests at the router(s) (of ``model``); returns pod -> new counter value."""
        with self._lock:
            routers = [r for r in self.routers.values() if model is None or r.model == model]
        if not routers:
            raise AssertionError(f"no router pod of {model or 'any model'} is running in {self.namespace}")
        return {r.pod: r.bump(requests) for r in routers}

    def running_pods(self, role: str | None = None, model: str | None = None) -> list[str]:
        with self._lock:
            pods = list(self.sims) + list(self.routers)
            return sorted(
                p
                for p in pods
                if (role is None or self._roles.get(p) == role) and (model is None or p.startswith(f"{model}-"))
            )

    def wait_scraped(self, pods: list[str], timeout: float = 60) -> None:
        """Until Prometheus has scraped every one of ``pods`` successfully."""

        def scraped() -> bool:
            up = self.prometheus.targets_up()
            return all(up.get(p) == 1.0 for p in pods)

        wait_for(f"prometheus to scrape {pods}", scraped, timeout=timeout, interval=0.5)

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # keep mirroring; tests see the errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
                del self.errors[:-20]
            self._stop.wait(self.interval)

    def sync(self) -> None:
        result = self.kubectl.run(
            "get", "pods", "-n", self.namespace, "-l", MANAGED, "-o", "json", check=False, timeout=20
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip()[:300])
        running: dict[str, tuple[str, str]] = {}
        for pod in json.loads(result.stdout)["items"]:
            meta = pod["metadata"]
            role = (meta.get("labels") or {}).get(ROLE_LABEL, "")
            model = (meta.get("labels") or {}).get("disagg.dev/model", "")
            if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running":
                continue
            if role in ENGINE_ROLES or role == ROUTER_ROLE:
                running[meta["name"]] = (role, model)
        with self._lock:
            if self._stop.is_set():
                return
            changed = False
            for name in [p for p in self.sims if p not in running]:
                self.sims.pop(name).stop()
                changed = True
            for name in [p for p in self.routers if p not in running]:
                self.routers.pop(name).close()
                changed = True
            for name, (role, model) in running.items():
                self._roles[name] = role
                self._models[name] = model
                if role == ROUTER_ROLE and name not in self.routers:
                    self.routers[name] = RouterStandin(self.namespace, name, model)
                    changed = True
                elif role in ENGINE_ROLES and name not in self.sims:
                    peers = 1 + sum(1 for p in self.sims if (self._roles.get(p), self._models.get(p)) == (role, model))
                    self.sims[name] = EngineSim(
                        self.sim_binary, self.workdir, self.namespace, name, self._per_pod(role, model, peers)
                    )
                    changed = True
            if changed:
                self._write_targets()
            self._apply_load()

    def _per_pod(self, role: str, model: str, pods: int) -> dict[str, float]:
        load = self._load.get((model, role)) or self._load.get(("*", role)) or IDLE
        pods = max(pods, 1)
        return {
            "waiting": load["waiting"] / pods,
            "running": load["running"] / pods,
            "kv": min(load["kv"] / pods, 1.0),
        }

    def _apply_load(self) -> None:
        groups: dict[tuple[str, str], list[EngineSim]] = {}
        for pod, sim in self.sims.items():
            groups.setdefault((self._models.get(pod, ""), self._roles.get(pod, "")), []).append(sim)
        for (model, role), sims in groups.items():
            values = self._per_pod(role, model, len(sims))
            for sim in sims:
                sim.set(values)  # a sim still starting keeps its flag values and is retried next pass

    def _write_targets(self) -> None:
        groups = [
            {
                "targets": [f"127.0.0.1:{s.port}"],
                "labels": {"namespace": self.namespace, "pod": p, "role": self._roles.get(p, "")},
            }
            for p, s in sorted(self.sims.items())
        ] + [
            {
                "targets": [f"127.0.0.1:{r.port}"],
                "labels": {"namespace": self.namespace, "pod": p, "role": ROUTER_ROLE},
            }
            for p, r in sorted(self.routers.items())
        ]
        self.prometheus.write_targets(self.namespace, groups)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        with self._lock:
            for sim in self.sims.values():
                sim.stop()
            for router in self.routers.values():
                router.close()
            self.sims.clear()
            self.routers.clear()
        self.prometheus.remove_targets(self.namespace)


# -- prometheus-adapter -----------------------------------------------------------------------


def _registration(port: int) -> list[dict[str, Any]]:
    """APIService + ExternalName Service (no kube-proxy here) + the HPA controller's read access."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ADAPTER_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "prometheus-adapter", "namespace": ADAPTER_NAMESPACE},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1", "ports": [{"port": port, "protocol": "TCP"}]},
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": APISERVICE},
            "spec": {
                "group": "custom.metrics.k8s.io",
                "version": "v1beta1",
                "service": {"name": "prometheus-adapter", "namespace": ADAPTER_NAMESPACE, "port": port},
                "insecureSkipTLSVerify": True,  # the adapter's self-signed serving cert (loopback only)
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "disagg-e2e-custom-metrics-reader"},
            "rules": [{"apiGroups": ["custom.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "disagg-e2e-hpa-custom-metrics"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "disagg-e2e-custom-metrics-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"}],
        },
    ]


class Adapter:
    def __init__(self, cluster: ClusterEnv, kubectl: Kubectl, binary: Path, workdir: Path, prometheus_url: str) -> None:
        self.kubectl = kubectl
        self.port = free_port()
        certs = workdir / "adapter-certs"
        certs.mkdir(exist_ok=True)
        self.registered = False
        self.process = Process(
            [
                str(binary),
                f"--secure-port={self.port}",
                "--bind-address=127.0.0.1",
                f"--cert-dir={certs}",
                f"--lister-kubeconfig={cluster.kubeconfig}",
                f"--authentication-kubeconfig={cluster.kubeconfig}",
                f"--authorization-kubeconfig={cluster.kubeconfig}",
                f"--prometheus-url={prometheus_url}",
                f"--config={RULES}",
                # re-list series often: metric names must appear soon after the first sims are scraped
                "--metrics-relist-interval=5s",
                "--v=1",
            ],
            workdir / "prometheus-adapter.log",
        )

    def start(self, timeout: float = 90) -> None:
        self.process.start()
        self.registered = True
        self.kubectl.apply("\n---\n".join(yaml.safe_dump(o) for o in _registration(self.port)))

        def available() -> bool:
            if not self.process.alive():
                raise AssertionError(f"prometheus-adapter exited:\n{self.process.tail()}")
            result = self.kubectl.run("get", "--raw", "/apis/custom.metrics.k8s.io/v1beta1", check=False, timeout=20)
            return result.returncode == 0 and "APIResourceList" in result.stdout

        try:
            wait_for("custom.metrics.k8s.io to answer through the aggregator", available, timeout=timeout, interval=1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nadapter log:\n{self.process.tail()}") from exc

    def stop(self) -> None:
        # Unregister first: an APIService without a backend breaks discovery, and with it
        # namespace deletion (NamespaceDeletionDiscoveryFailure) for everyone on the cluster.
        if self.registered:
            for obj in reversed(_registration(self.port)):
                kind = obj["kind"].lower()
                args = ["delete", kind, obj["metadata"]["name"], "--ignore-not-found", "--wait=false"]
                if obj["metadata"].get("namespace"):
                    args += ["-n", obj["metadata"]["namespace"]]
                if kind == "namespace":
                    continue  # below, after the Service
                self.kubectl.run(*args, check=False, timeout=60)
            self.kubectl.run(
                "delete", "namespace", ADAPTER_NAMESPACE, "--ignore-not-found", "--wait=false", check=False, timeout=60
            )
            self.registered = False
        self.process.stop(timeout=10)

    def metric(self, namespace: str, metric: str, selector: str) -> dict[str, float]:
        """pod -> value of a custom Pods metric, as the HPA controller sees it ({} if not served)."""
        path = f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/*/{metric}"
        path += "?" + urllib.parse.urlencode({"labelSelector": selector})
        result = self.kubectl.run("get", "--raw", path, check=False, timeout=20)
        if result.returncode != 0:
            return {}
        return {i["describedObject"]["name"]: _quantity(i["value"]) for i in json.loads(result.stdout).get("items", [])}


def _quantity(text: str) -> float:
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    if text and text[-1] in suffixes:
        return float(text[:-1]) * suffixes[text[-1]]
    return float(text)


# -- the whole stack --------------------------------------------------------------------------


class MetricsStack:
    """Prometheus + prometheus-adapter for one cluster, plus a :class:`PodMirror` per namespace."""

    def __init__(self, cluster: ClusterEnv, kubectl: Kubectl) -> None:
        self.cluster = cluster
        self.kubectl = kubectl
        self.workdir = Path(tempfile.mkdtemp(prefix="disagg-e2e-metrics-"))
        bins = bin_dir()
        self.sim_binary = bins / "llm-d-inference-sim"
        adapter_binary = bins / "prometheus-adapter"
        for binary in (self.sim_binary, adapter_binary):
            if not binary.exists():
                raise AssertionError(f"{binary} missing: run `make e2e-tools`")
        if shutil.which("prometheus") is None:
            raise AssertionError("prometheus is not on PATH: run `make e2e-tools` (e2e/ensure-prometheus.sh)")
        self.prometheus = Prometheus(self.workdir)
        self.adapter = Adapter(cluster, kubectl, adapter_binary, self.workdir, self.prometheus.url)
        self.mirrors: dict[str, PodMirror] = {}

    def start(self) -> MetricsStack:
        try:
            self.prometheus.start()
            self.adapter.start()
        except BaseException:
            self.stop()
            raise
        return self

    def mirror(self, namespace: str) -> PodMirror:
        if namespace not in self.mirrors:
            self.mirrors[namespace] = PodMirror(self.kubectl, self.prometheus, self.sim_binary, self.workdir, namespace)
        return self.mirrors[namespace]

    def release(self, namespace: str) -> None:
        mirror = self.mirrors.pop(namespace, None)
        if mirror is not None:
            mirror.close()

    def stop(self) -> None:
        errors: list[str] = []
        steps: list[Callable[[], None]] = [
            *(m.close for m in list(self.mirrors.values())),
            self.adapter.stop,
            self.prometheus.stop,
        ]
        for step in steps:
            try:
                step()
            except Exception as exc:  # keep tearing down
                errors.append(f"{type(exc).__name__}: {exc}")
        self.mirrors.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            log.warning("metrics stack teardown: %s", "; ".join(errors))

    def logs(self) -> str:
        return f"--- prometheus\n{self.prometheus.process.tail()}\n--- adapter\n{self.adapter.process.tail()}"


# -- timing and ownership helpers (tests and bench/scaling.py) ---------------------------------


def audit_time(stamp: str) -> float:
    """Epoch seconds of an audit timestamp such as ``2026-11-28T03:35:26.114512Z``."""
    import datetime as dt

    return dt.datetime.strptime(stamp.rstrip("Z")[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=dt.UTC).timestamp()


def scale_writes(
    audit_log: str | None, namespace: str, since: float, user_agents: tuple[str, ...] | None = None
) -> list[tuple[float, str, str]]:
    """(completion time, deployment, user agent) of every successful write to a Deployment's /scale."""
    from e2e.harness import audit_events

    out = []
    for event in audit_events(audit_log):
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace or ref.get("resource") != "deployments":
            continue
        if ref.get("subresource") != "scale" or event.get("verb") not in ("patch", "update"):
            continue
        if (event.get("responseStatus") or {}).get("code", 0) >= 300:
            continue
        agent = str(event.get("userAgent", ""))
        if user_agents is not None and not agent.startswith(user_agents):
            continue
        when = audit_time(event.get("stageTimestamp") or event["requestReceivedTimestamp"])
        if when >= since:
            out.append((when, str(ref.get("name")), agent))
    return sorted(out)


def first_visible(
    prometheus: Prometheus, selector: str, value: float, since: float, window: str = "5m"
) -> float | None:
    """Timestamp of the first scrape at or after ``since`` in which ``selector`` reached ``value``."""
    for stamp, sample in prometheus.samples(selector, window):
        if stamp >= since - SCRAPE_INTERVAL_SECONDS and sample >= value:
            return stamp
    return None


def field_owners(obj: dict[str, Any]) -> dict[str, set[str]]:
    """Leaf field path -> managers owning it, from ``metadata.managedFields``."""
    owners: dict[str, set[str]] = {}

    def walk(node: dict[str, Any], path: str, manager: str) -> None:
        leaf = True
        for key, child in node.items():
            if key == ".":
                continue
            leaf = False
            walk(child or {}, f"{path}/{key}", manager)
        if leaf:
            owners.setdefault(path, set()).add(manager)

    for entry in obj.get("metadata", {}).get("managedFields") or []:
        manager = entry.get("manager", "?")
        if entry.get("subresource"):
            manager += f"[{entry['subresource']}]"
        walk(entry.get("fieldsV1") or {}, "", manager)
    return owners


class OwnershipLog:
    """Per (object, field): the sequence of owner sets seen; a fight is an owner that comes back."""

    def __init__(self) -> None:
        self.history: dict[tuple[str, str], list[frozenset[str]]] = {}

    def record(self, name: str, obj: dict[str, Any]) -> None:
        for path, managers in field_owners(obj).items():
            seq = self.history.setdefault((name, path), [])
            owners = frozenset(managers)
            if not seq or seq[-1] != owners:
                seq.append(owners)

    def fights(self) -> list[str]:
        found = []
        for (name, path), seq in self.history.items():
            # A->B->A: some manager owned the field, lost it and took it back
            for i, owners in enumerate(seq):
                lost = [m for m in owners if any(m not in later for later in seq[i + 1 :])]
                for manager in lost:
                    j = next(k for k in range(i + 1, len(seq)) if manager not in seq[k])
                    if any(manager in later for later in seq[j + 1 :]):
                        found.append(f"{name} {path}: {[sorted(s) for s in seq]}")
                        break
                else:
                    continue
                break
        return found

    def owners_of(self, name: str, path: str) -> set[str]:
        return set().union(*self.history.get((name, path), [frozenset()]))
