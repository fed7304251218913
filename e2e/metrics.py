"""Metrics side of the e2e tests: a private Prometheus and prometheus-adapter in front of pods that really run.

- the pods run under e2e/runtime: the engines' ``vllm:*`` series come from llm-d-inference-sim
  serving real requests, the router's ``llm_d_epp_*`` series from the real endpoint picker;
- a private Prometheus (Debian's, ``e2e/ensure-prometheus.sh``) scrapes them every second at their
  pod IPs, through file_sd targets that :class:`PodMonitorDiscovery` derives from the chart's own
  PodMonitor (``namespace``, ``pod``, ``container``, ``role`` labels);
- prometheus-adapter (built by ``e2e/tools.sh``) with ``manifests/prometheus-adapter/rules.yaml``,
  registered as ``v1beta1.custom.metrics.k8s.io`` through an ``ExternalName 127.0.0.1`` Service, so
  the real HPA controller reads the engines' metrics.

Prometheus and the adapter listen on 127.0.0.1. Every wait is bounded; :meth:`MetricsStack.stop`
stops every process and thread and removes every temp dir, and is safe on a half-started stack.
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
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from e2e.harness import ROOT, ClusterEnv, Kubectl, wait_for

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

    def query_range(self, expr: str, start: float, end: float, step: float = 2.0) -> list[dict[str, Any]]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        answer = http_json(f"{self.url}/api/v1/query_range?{urllib.parse.urlencode(params)}", timeout=30)
        if answer.get("status") != "success":
            raise AssertionError(f"range query {expr!r} failed: {answer}")
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
    """Prometheus (scraping what the chart's PodMonitor selects) + prometheus-adapter for one cluster."""

    def __init__(self, cluster: ClusterEnv, kubectl: Kubectl) -> None:
        self.cluster = cluster
        self.kubectl = kubectl
        self.workdir = Path(tempfile.mkdtemp(prefix="disagg-e2e-metrics-"))
        adapter_binary = bin_dir() / "prometheus-adapter"
        if not adapter_binary.exists():
            raise AssertionError(f"{adapter_binary} missing: run `make e2e-tools`")
        if shutil.which("prometheus") is None:
            raise AssertionError("prometheus is not on PATH: run `make e2e-tools` (e2e/ensure-prometheus.sh)")
        self.prometheus = Prometheus(self.workdir)
        self.adapter = Adapter(cluster, kubectl, adapter_binary, self.workdir, self.prometheus.url)
        self.discovery: PodMonitorDiscovery | None = None

    def start(self) -> MetricsStack:
        try:
            self.prometheus.start()
            self.discovery = PodMonitorDiscovery(self.kubectl, self.prometheus, chart_pod_monitor())
            self.adapter.start()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_scraped(self, namespace: str, pods: list[str], timeout: float = 60) -> None:
        """Until Prometheus has scraped every one of ``pods`` (of ``namespace``) successfully."""

        def scraped() -> bool:
            up = {
                r["metric"].get("pod", ""): float(r["value"][1])
                for r in self.prometheus.query(f'up{{namespace="{namespace}"}}')
            }
            return all(up.get(p) == 1.0 for p in pods)

        wait_for(f"prometheus to scrape {pods}", scraped, timeout=timeout, interval=0.5)

    def stop(self) -> None:
        errors: list[str] = []
        steps: list[Callable[[], None]] = [
            *([self.discovery.close] if self.discovery else []),
            self.adapter.stop,
            self.prometheus.stop,
        ]
        for step in steps:
            try:
                step()
            except Exception as exc:  # keep tearing down
                errors.append(f"{type(exc).__name__}: {exc}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            log.warning("metrics stack teardown: %s", "; ".join(errors))

    def logs(self) -> str:
        return f"--- prometheus\n{self.prometheus.process.tail()}\n--- adapter\n{self.adapter.process.tail()}"


# -- timing and ownership helpers (tests and bench/serving.py) ---------------------------------


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


# -- a detached stack (`make demo`) ---------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m e2e.metrics --cluster NAME --url-file F``: run the stack for a local cluster until
    SIGTERM; F gets Prometheus's URL once it and the adapter serve (``make demo`` reads it)."""
    import argparse

    from e2e.harness import cluster_env

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--cluster", required=True, help="the local cluster's name (DISAGG_CLUSTER_NAME)")
    parser.add_argument("--url-file", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    facts = cluster_env(args.cluster)
    cluster = ClusterEnv(
        facts["KUBECONFIG"],
        facts.get("DISAGG_E2E_BIN_DIR"),
        facts.get("DISAGG_E2E_AUDIT_LOG"),
        args.cluster,
        facts.get("DISAGG_E2E_CLUSTER_DIR"),
    )
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    stack = MetricsStack(cluster, Kubectl(cluster)).start()
    try:
        args.url_file.unlink(missing_ok=True)
        tmp = args.url_file.with_suffix(".tmp")
        tmp.write_text(stack.prometheus.url)
        tmp.replace(args.url_file)
        log.info("metrics stack serving: prometheus %s", stack.prometheus.url)
        stopping.wait()
    finally:
        args.url_file.unlink(missing_ok=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
