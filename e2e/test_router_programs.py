"""The real llm-d router programs run on what the operator renders, each in a pod-like network namespace.

For every sample and the main variants (aggregated and disaggregated, InferencePool discovery on
and off, KEDA, scale-to-zero), the endpoint picker (``epp``) starts with the rendered args, env
(downward API resolved as the kubelet would), the rendered ConfigMap files at the rendered mount
paths, and the rendered ServiceAccount's token (so the rendered Role is all it may do); the
decode pods' P/D sidecar (``pd-sidecar``) starts with its rendered args beside an engine on the
rendered decode vLLM port. Both must load their configuration, become healthy the way the
rendered probes ask, stay up, and log no deprecation, warning or error. The picker's metrics port
must serve, without a token, the series the operator's scale-to-zero demand query reads, and a
real Prometheus evaluating that query must see a request the picker holds while no engine is up.

Binaries: ``e2e/tools.sh`` (llm-d router ``LLMD_ROUTER_VERSION``, llm-d-inference-sim), network
namespaces: :mod:`e2e.netns` (root).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from disagg.api.spec import DisaggregatedModelSpec
from disagg.scaling import ROUTER_HELD, ROUTER_INFO, ROUTER_REQUESTS, queries
from disagg.upstream import LLMD_ROUTER_VERSION
from e2e.harness import ROOT, ClusterEnv, Kubectl, wait_for
from e2e.metrics import Prometheus, bin_dir
from e2e.netns import PodNetwork, TlsPipe, serve, tcp_listener, unix_connect

SAMPLES = ROOT / "manifests" / "samples"
TOOLS = ROOT / "e2e" / "tools.sh"
STAY_UP_SECONDS = 5.0
BAD_LEVELS = {"warn", "warning", "error", "dpanic", "panic", "fatal"}


@dataclass(frozen=True)
class Case:
    sample: str
    pool: bool = False
    spec: dict[str, Any] = field(default_factory=dict)
    """Merged into the sample's spec (one level deep)."""

    @property
    def id(self) -> str:
        extra = "-".join(sorted(self.spec)) or "plain"
        return f"{self.sample.removesuffix('.yaml')}-{'pool' if self.pool else 'standalone'}-{extra}"


CASES = [
    Case("llama-3.3-70b-disaggregated.yaml"),
    Case("llama-8b-aggregated.yaml"),
    Case("qwen3-32b-rack-packed.yaml"),
    Case("llama-3.3-70b-disaggregated.yaml", pool=True),
    Case("llama-8b-aggregated.yaml", pool=True),
    Case("llama-3.3-70b-disaggregated.yaml", spec={"autoscaling": {"engine": "keda"}}),
    Case("llama-3.3-70b-disaggregated.yaml", spec={"scaleToZero": {"enabled": True, "idleAfter": "1m"}}),
    Case("llama-8b-aggregated.yaml", pool=True, spec={"scaleToZero": {"enabled": True, "idleAfter": "1m"}}),
]


@pytest.fixture(scope="module")
def router_bins() -> dict[str, Path]:
    """The llm-d router binaries of the pinned release (a required tool group of e2e/tools.sh)."""
    subprocess.run(["bash", str(TOOLS), "llm-d-router"], check=True, timeout=900, capture_output=True)
    bins = {name: bin_dir() / name for name in ("epp", "pd-sidecar", "llm-d-inference-sim")}
    missing = [str(path) for path in bins.values() if not path.exists()]
    assert not missing, f"missing binaries (run `make e2e-tools`): {missing}"
    return bins


def crd_dir(option: str) -> Path:
    """A directory of upstream CRDs fetched by e2e/tools.sh (versions in e2e/versions.env)."""
    out = subprocess.run(["bash", str(TOOLS), option], check=True, timeout=600, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gaie_crds(kubectl: Kubectl) -> None:
    """InferencePool / InferenceObjective CRDs of the Gateway API Inference Extension release llm-d builds on."""
    crds = crd_dir("--gaie-crds")
    for crd in ("inferencepools", "inferenceobjectives", "inferencemodelrewrites"):
        group = "inference.networking.k8s.io" if crd == "inferencepools" else "inference.networking.x-k8s.io"
        kubectl.run("apply", "--server-side", "-f", str(crds / f"{group}_{crd}.yaml"))
    kubectl.wait_established("crd/inferencepools.inference.networking.k8s.io")


def render(case: Case, namespace: str, workdir: Path) -> list[dict[str, Any]]:
    """``disagg render`` of the case's model, with the case's operator settings."""
    body = yaml.safe_load((SAMPLES / case.sample).read_text())
    for key, value in case.spec.items():
        body["spec"][key] = {**body["spec"].get(key, {}), **value}
    body["metadata"]["namespace"] = namespace
    model = workdir / "model.yaml"
    model.write_text(yaml.safe_dump(body))
    settings = workdir / "settings.yaml"
    settings.write_text(yaml.safe_dump({"inferencePool": case.pool}))
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "disagg"), "render", "-f", str(model)],
        env={**os.environ, "DISAGG_SETTINGS_FILE": str(settings)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(objects: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix))


def pod_name(deployment: dict[str, Any]) -> str:
    """A name as the ReplicaSet controller would give it (the picker derives its Deployment from it)."""
    return f"{deployment['metadata']['name']}-{uuid.uuid4().hex[:10]}-{uuid.uuid4().hex[:5]}"


def materialize_volumes(pod_spec: dict[str, Any], objects: list[dict[str, Any]], root: Path) -> dict[str, Path]:
    """Each ConfigMap volume as files (its items, or every key), like the kubelet; name -> dir."""
    dirs: dict[str, Path] = {}
    for volume in pod_spec.get("volumes", []):
        source = volume.get("configMap")
        if not source:
            continue
        data = find(objects, "ConfigMap", source["name"])["data"]
        target = root / volume["name"]
        target.mkdir(parents=True)
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            (target / item["path"]).write_text(data[item["key"]])
        dirs[volume["name"]] = target
    return dirs


def container_argv(container: dict[str, Any], mounts: dict[str, Path], binary: Path) -> list[str]:
    """The container's args with each mount path mapped to where its volume was materialized.

    The image's entrypoint is the program itself (llm-d's images run /app/epp, /app/pd-sidecar).
    """
    args: list[str] = list(container.get("args", []))
    for mount in container.get("volumeMounts", []):
        if mount["name"] in mounts:
            args = [a.replace(mount["mountPath"], str(mounts[mount["name"]])) for a in args]
    return [str(binary), *args]


def container_env(container: dict[str, Any], *, pod: str, namespace: str) -> dict[str, str]:
    """Literal values and the downward-API fields the kubelet would fill in."""
    fields = {"metadata.name": pod, "metadata.namespace": namespace, "status.podIP": "127.0.0.1"}
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert path in fields, f"unexpected downward-API field {path}"
            env[var["name"]] = fields[path]
    return env


def port_of(container: dict[str, Any], name: str) -> int:
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == name))


NOT_SERVING_YET = "gRPC health check not serving"
"""What the picker logs (at error level) for each probe answered before it is ready."""


def bad_log_lines(log: Path, *, ready_at: float = 0.0, caused_by_test: str | None = None) -> list[str]:
    """Warnings, errors and deprecations in a zap JSON log (any non-JSON line counts as bad too).

    Not counted: "not serving" answers to probes before ``ready_at`` (start-up, as a kubelet's
    early probes would see it) and lines about the request ``caused_by_test`` (a held request the
    test cancels on purpose).
    """
    bad = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            bad.append(line)
            continue
        if float(entry.get("ts", 0)) < ready_at and NOT_SERVING_YET in str(entry.get("msg", "")):
            continue
        if caused_by_test and caused_by_test in line:
            continue
        text = json.dumps(entry).lower()
        if str(entry.get("level", "")).lower() in BAD_LEVELS or "deprecat" in text or "warning" in text:
            bad.append(line[:400])
    return bad


def service_account_kubeconfig(kubectl: Kubectl, cluster: ClusterEnv, namespace: str, account: str) -> Path:
    """A kubeconfig with the rendered ServiceAccount's token: the program may do what its Role allows."""
    token = kubectl.run("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    server_cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": server_cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": account, "namespace": namespace}}],
        "current-context": "c",
    }
    path = Path(cluster.kubeconfig).parent / f"sa-{namespace}-{account}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def apiserver_port(cluster: ClusterEnv) -> tuple[str, int]:
    server = yaml.safe_load(Path(cluster.kubeconfig).read_text())["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    return host, int(port)


def http_get(unix_path: str, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("localhost", timeout=5)
    conn.sock = unix_connect(unix_path, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def try_get(unix_path: str, path: str) -> tuple[int, str] | None:
    """``http_get``, or None while nothing listens yet."""
    try:
        return http_get(unix_path, path)
    except (OSError, http.client.HTTPException):
        return None


def health(unix_path: str, service: str) -> int | None:
    """gRPC health of ``service``, as the kubelet's grpc probe asks; None when it does not answer."""
    with grpc.insecure_channel(f"unix:{unix_path}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError:
            return None
        return int(answer.status)


class HeldRequest:
    """One OpenAI request sent to the picker's ext_proc stream as Envoy would, kept open."""

    def __init__(self, port: int, model: str) -> None:
        self._outbox: queue.Queue[ext_proc.ProcessingRequest | None] = queue.Queue()
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.responses: list[ext_proc.ProcessingResponse] = []
        body = json.dumps({"model": model, "prompt": "Say hello.", "max_tokens": 4}).encode()
        self.request_id = uuid.uuid4().hex
        headers = [
            (":method", "POST"),
            (":path", "/v1/completions"),
            (":authority", "router"),
            (":scheme", "http"),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("x-request-id", self.request_id),
        ]
        header_map = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers])
        self._outbox.put(ext_proc.ProcessingRequest(request_headers=ext_proc.HttpHeaders(headers=header_map)))
        self._outbox.put(ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=body, end_of_stream=True)))
        self._call = ext_proc_grpc.ExternalProcessorStub(self._channel).Process(iter(self._outbox.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in self._call:
                self.responses.append(response)

    def close(self) -> None:
        self._call.cancel()
        self._outbox.put(None)
        self._reader.join(timeout=10)
        self._channel.close()


@contextlib.contextmanager
def pod_network(workdir: Path, label: str) -> Iterator[PodNetwork]:
    net = PodNetwork(workdir, label)
    try:
        yield net
    finally:
        net.close()


def run_picker(
    case: Case,
    objects: list[dict[str, Any]],
    *,
    namespace: str,
    cluster: ClusterEnv,
    kubectl: Kubectl,
    bins: dict[str, Path],
    workdir: Path,
) -> None:
    deployment = find(objects, "Deployment", "-router")
    pod_spec = deployment["spec"]["template"]["spec"]
    picker = next(c for c in pod_spec["containers"] if c["name"] == "epp")
    assert picker["image"] == f"ghcr.io/llm-d/llm-d-router-endpoint-picker:{LLMD_ROUTER_VERSION}"
    # the router's identity and permissions exactly as rendered
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        kubectl.apply(find(objects, kind, "-router"), namespace)
    if case.pool:
        kubectl.apply(find(objects, "InferencePool", "-router"), namespace)
    kubeconfig = service_account_kubeconfig(kubectl, cluster, namespace, pod_spec["serviceAccountName"])
    mounts = materialize_volumes(pod_spec, objects, workdir / "volumes")
    pod = pod_name(deployment)
    env = {"PATH": os.environ["PATH"], "KUBECONFIG": str(kubeconfig)}
    env |= container_env(picker, pod=pod, namespace=namespace)
    probe = picker["readinessProbe"]["grpc"]
    liveness = picker["livenessProbe"]["grpc"]
    grpc_port, metrics_port = port_of(picker, "grpc"), port_of(picker, "metrics")
    log = workdir / "epp.log"
    host, api_port = apiserver_port(cluster)
    with pod_network(workdir, "router") as net:
        api = net.host_socket_to(host, api_port)
        sockets = net.bridge(exports=[probe["port"], grpc_port, metrics_port], imports={api: api_port})
        proc = net.spawn(container_argv(picker, mounts, bins["epp"]), env=env, log=log)

        def serving() -> bool | None:
            if proc.poll() is not None:
                raise AssertionError(f"epp exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            return health(sockets[probe["port"]], probe["service"]) == health_pb2.HealthCheckResponse.SERVING or None

        wait_for("the endpoint picker to report SERVING", serving, timeout=60, interval=0.3)
        ready_at = time.time()
        time.sleep(STAY_UP_SECONDS)
        assert proc.poll() is None, f"epp exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert health(sockets[liveness["port"]], liveness["service"]) == health_pb2.HealthCheckResponse.SERVING
        status, text = http_get(sockets[metrics_port], "/metrics")
        assert status == 200, f"unauthenticated scrape refused ({status}): {text[:300]}"
        assert f"{ROUTER_INFO}{{" in text
        cancelled = None
        if case.spec.get("scaleToZero", {}).get("enabled"):
            cancelled = check_held_request(
                case, objects, sockets[grpc_port], sockets[metrics_port], namespace, pod, workdir
            )
        assert proc.poll() is None, f"epp exited {proc.returncode}:\n{log.read_text()[-3000:]}"
    bad = bad_log_lines(log, ready_at=ready_at, caused_by_test=cancelled)
    assert not bad, "the endpoint picker logged warnings/errors/deprecations:\n" + "\n".join(bad)


def check_held_request(
    case: Case,
    objects: list[dict[str, Any]],
    grpc_socket: str,
    metrics_socket: str,
    namespace: str,
    pod: str,
    workdir: Path,
) -> str:
    """With engines at zero the picker holds a request, and the operator's demand query sees it.

    Returns the x-request-id of the held request (the test then cancels it).
    """
    body = yaml.safe_load((SAMPLES / case.sample).read_text())
    spec = DisaggregatedModelSpec.model_validate({**body["spec"], **case.spec})
    model = body["metadata"]["name"]
    # Prometheus scrapes the picker's metrics port as the PodMonitor would, with pod labels
    stop = threading.Event()
    server: threading.Thread | None = None
    tls: TlsPipe | None = None
    prometheus = Prometheus(workdir / "prometheus")
    held: HeldRequest | None = None
    try:
        listener = tcp_listener()
        scrape_port = listener.getsockname()[1]
        server = serve(listener, lambda: unix_connect(metrics_socket), stop)
        tls = TlsPipe(grpc_socket)
        prometheus.start()
        prometheus.write_targets(
            "router", [{"targets": [f"127.0.0.1:{scrape_port}"], "labels": {"namespace": namespace, "pod": pod}}]
        )
        demand = queries(spec, namespace=namespace, name=model).demand
        assert ROUTER_HELD in demand
        assert ROUTER_REQUESTS in demand
        idle = wait_for("Prometheus to read the idle router", lambda: prometheus.query(demand) or None, timeout=60)
        assert float(idle[0]["value"][1]) == 0.0, idle
        held = HeldRequest(tls.port, spec.model.name)
        _, text = wait_for(
            "the picker to hold the request",
            lambda: r if ROUTER_HELD in (r := try_get(metrics_socket, "/metrics") or (0, ""))[1] else None,
            timeout=30,
        )
        held_lines = [line for line in text.splitlines() if line.startswith(ROUTER_HELD + "{")]
        assert held_lines, text
        assert float(held_lines[0].rsplit(" ", 1)[1]) == 1.0, held_lines
        assert not held.responses, "a request with no engine up was answered instead of held"

        def demand_seen() -> float | None:
            result = prometheus.query(demand)
            return float(result[0]["value"][1]) if result and float(result[0]["value"][1]) > 0 else None

        assert wait_for("the demand query to see the held request", demand_seen, timeout=60) >= 1.0
        return held.request_id
    finally:
        if held is not None:
            held.close()
        if tls is not None:
            tls.close()
        prometheus.stop()
        stop.set()
        if server is not None:
            server.join(timeout=5)


def run_sidecar(objects: list[dict[str, Any]], *, bins: dict[str, Path], workdir: Path, namespace: str) -> None:
    """The decode pod's P/D sidecar with its rendered args, in front of an engine on the decode vLLM port."""
    deployment = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["labels"].get("llm-d.ai/role") == "decode"
    )
    pod_spec = deployment["spec"]["template"]["spec"]
    (sidecar,) = pod_spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == f"ghcr.io/llm-d/llm-d-router-disagg-sidecar:{LLMD_ROUTER_VERSION}"
    engine = next(c for c in pod_spec["containers"] if c["name"] == "vllm")
    engine_port = port_of(engine, "vllm")
    sidecar_port = port_of(sidecar, "http")
    served = next(a.split("=", 1)[1] for a in engine["args"] if a.startswith("--served-model-name="))
    log = workdir / "pd-sidecar.log"
    with pod_network(workdir, "decode") as net:
        sockets = net.bridge(exports=[sidecar_port, engine_port])
        sim = net.spawn(
            [str(bins["llm-d-inference-sim"]), f"--port={engine_port}", f"--model={served}", "--force-dummy-tokenizer"],
            env={"PATH": os.environ["PATH"]},
            log=workdir / "engine.log",
        )
        wait_for("the engine stand-in", lambda: (try_get(sockets[engine_port], "/health") or (0, ""))[0] == 200 or None)
        proc = net.spawn(
            container_argv(sidecar, {}, bins["pd-sidecar"]),
            env={"PATH": os.environ["PATH"], **container_env(sidecar, pod=pod_name(deployment), namespace=namespace)},
            log=log,
        )

        def models() -> bool | None:
            if proc.poll() is not None:
                raise AssertionError(f"pd-sidecar exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            status, text = try_get(sockets[sidecar_port], "/v1/models") or (0, "")
            return (status == 200 and served in text) or None

        wait_for("the sidecar to proxy to the decode engine", models, timeout=60, interval=0.3)
        time.sleep(STAY_UP_SECONDS)
        assert proc.poll() is None, f"pd-sidecar exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert sim.poll() is None
    bad = bad_log_lines(log)
    assert not bad, "the P/D sidecar logged warnings/errors/deprecations:\n" + "\n".join(bad)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_real_router_programs_run_the_render(
    case: Case,
    cluster: ClusterEnv,
    kubectl: Kubectl,
    private_namespace: str,
    router_bins: dict[str, Path],
    gaie_crds: None,
    tmp_path: Path,
) -> None:
    objects = render(case, private_namespace, tmp_path)
    run_picker(
        case, objects, namespace=private_namespace, cluster=cluster, kubectl=kubectl, bins=router_bins, workdir=tmp_path
    )
    if any(o["kind"] == "Deployment" and o["metadata"]["labels"].get("llm-d.ai/role") == "decode" for o in objects):
        run_sidecar(objects, bins=router_bins, workdir=tmp_path, namespace=private_namespace)


def test_unknown_flag_fails_the_check(router_bins: dict[str, Path], tmp_path: Path) -> None:
    """The check can fail: the flag earlier renders gave the sidecar makes the real program exit."""
    with pod_network(tmp_path, "neg") as net:
        proc = net.spawn([str(router_bins["pd-sidecar"]), "--secure-serving=false"], log=tmp_path / "neg.log")
        assert proc.wait(timeout=30) != 0
    assert "unknown flag: --secure-serving" in (tmp_path / "neg.log").read_text()


@pytest.mark.parametrize("pool", [False, True], ids=["service-backend", "pool-backend"])
def test_http_route_is_valid_gateway_api(pool: bool, kubectl: Kubectl, private_namespace: str, tmp_path: Path) -> None:
    """The rendered HTTPRoute against Gateway API's own CRD (its schema and CEL rules), server-side."""
    crds = crd_dir("--gateway-crds")
    kubectl.run("apply", "--server-side", "-f", str(crds / "gateway.networking.k8s.io_httproutes.yaml"))
    kubectl.wait_established("crd/httproutes.gateway.networking.k8s.io")
    case = Case("llama-3.3-70b-disaggregated.yaml", pool=pool, spec={"router": {"gateway": {"name": "inference-gw"}}})
    route = find(render(case, private_namespace, tmp_path), "HTTPRoute", "-router")
    result = kubectl.dry_run(route, namespace=private_namespace)
    assert result.returncode == 0, result.stderr
    broken = {**route, "spec": {**route["spec"], "parentRefs": [{"kind": "Gateway"}]}}
    rejected = kubectl.dry_run(broken, namespace=private_namespace)
    assert rejected.returncode != 0, "the CRD accepted a parentRef without a name: the check cannot fail"
