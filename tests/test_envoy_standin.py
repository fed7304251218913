"""The Envoy stand-in (``e2e.runtime.envoy``) runs what the operator renders, and refuses what it cannot run.

Config: every sample's rendered ``envoy.yaml`` loads with the rendered container args; a config
naming a cluster that does not exist, a field Envoy does not know, a field or processing mode the
stand-in does not implement, a missing ext_proc or router filter, or an unknown flag, exits non-zero
with a message.

End to end on loopback (no cluster, no network namespace): the rendered config with only its ports
changed, an in-test ext_proc server over TLS with a self-signed certificate like the endpoint
picker's (it picks a fixed upstream by setting ``x-gateway-destination-endpoint``, as the picker
does after buffering the whole body), and an in-test upstream: a completion reaches the upstream
the processor named, a client's own routing headers never reach the processor, a streamed (SSE)
response arrives event by event, the processor's immediate response reaches the client, an
unreachable processor is a 500, and SIGTERM drains an in-flight stream and exits 0.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.type.v3 import http_status_pb2

from disagg.render.router import DESTINATION_HEADER, PREFILLER_HEADER
from e2e.runtime.envoy import ConfigError, load_config
from tests.conftest import ROOT, SAMPLES, load
from tests.test_render import render_body

STANDIN = [sys.executable, "-m", "e2e.runtime.envoy"]
EVENTS = [b'data: {"choices":[{"text":"Hel"}]}\n\n', b'data: {"choices":[{"text":"lo"}]}\n\n', b"data: [DONE]\n\n"]


def rendered_router(sample: Path, **spec: Any) -> tuple[str, list[str]]:
    """The router ConfigMap's envoy.yaml and the envoy container's args, as rendered for ``sample``."""
    body = load(sample)
    body["spec"].update(spec)
    objects = render_body(body)
    config_map = next(o for o in objects if o["kind"] == "ConfigMap" and "envoy.yaml" in o.get("data", {}))
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-router"))
    envoy = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "envoy")
    assert envoy["command"] == ["envoy"]
    return config_map["data"]["envoy.yaml"], envoy["args"]


def container_args(args: list[str], config: Path, **override: str) -> list[str]:
    """The rendered args with the config where the test wrote it and $(POD_NAME) expanded, as the kubelet would."""
    out = []
    for arg in args:
        flag = arg.split("=", 1)[0]
        name = flag.removeprefix("--")
        value = str(config) if name == "config-path" else override.get(name)
        out.append(f"{flag}={value}" if value is not None else arg.replace("$(POD_NAME)", "router-pod-0"))
    return out


LLAMA_70B = ROOT / "manifests" / "samples" / "llama-3.3-70b-disaggregated.yaml"


@pytest.fixture(scope="module")
def rendered() -> tuple[str, list[str]]:
    return rendered_router(LLAMA_70B)


def run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STANDIN, *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("scale_to_zero", [False, True], ids=["awake", "scale-to-zero"])
def test_rendered_config_loads(sample: Path, scale_to_zero: bool, tmp_path: Path) -> None:
    spec = {"scaleToZero": {"enabled": True, "holdRequestsFor": "15m"}} if scale_to_zero else {}
    text, args = rendered_router(sample, **spec)
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    config = load_config(path)
    assert [listener.name for listener in config.listeners] == ["http", "ready"]
    assert config.admin == ("127.0.0.1", 19000)
    result = run([*container_args(args, path), "--mode=validate"])
    assert result.returncode == 0, result.stderr
    assert f"configuration '{path}' OK" in result.stdout


def edit(text: str, change: Any) -> str:
    config = yaml.safe_load(text)
    change(config)
    return yaml.safe_dump(config, sort_keys=False)


def http_manager(config: dict[str, Any], listener: str = "http") -> dict[str, Any]:
    found = next(x for x in config["static_resources"]["listeners"] if x["name"] == listener)
    return found["filter_chains"][0]["filters"][0]["typed_config"]


def ext_proc_filter(config: dict[str, Any]) -> dict[str, Any]:
    filters = http_manager(config)["http_filters"]
    return next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")["typed_config"]


def _drop_filter(name: str) -> Any:
    def change(config: dict[str, Any]) -> None:
        manager = http_manager(config)
        manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] != name]

    return change


REFUSED = {
    "wrong-ext-proc-cluster": (
        lambda c: ext_proc_filter(c)["grpc_service"]["envoy_grpc"].update(cluster_name="endpoint-picker"),
        "'endpoint-picker' is not a defined cluster",
    ),
    "unknown-field": (lambda c: http_manager(c).update(merge_slahes=True), 'no field named "merge_slahes"'),
    "unknown-typed-config": (
        lambda c: ext_proc_filter(c).update({"@type": "type.googleapis.com/envoy.extensions.filters.http.nope.v3.X"}),
        "nope",
    ),
    "changed-processing-mode": (
        lambda c: ext_proc_filter(c)["processing_mode"].update(request_body_mode="BUFFERED"),
        "request_body_mode BUFFERED (implemented: FULL_DUPLEX_STREAMED)",
    ),
    "unimplemented-field": (
        lambda c: ext_proc_filter(c).update(allow_mode_override=True),
        "allow_mode_override",
    ),
    "no-ext-proc-filter": (_drop_filter("envoy.filters.http.ext_proc"), "no ext_proc filter sets"),
    "no-router-filter": (_drop_filter("envoy.filters.http.router"), "the last HTTP filter must be the router"),
    "route-to-missing-cluster": (
        lambda c: http_manager(c)["route_config"]["virtual_hosts"][0]["routes"][0]["route"].update(cluster="picked"),
        "'picked', which is not a defined cluster",
    ),
    "dns-cluster": (
        lambda c: c["static_resources"]["clusters"][0].update(type="STRICT_DNS"),
        "type STRICT_DNS is not implemented",
    ),
    "port-out-of-range": (
        lambda c: c["static_resources"]["listeners"][0]["address"]["socket_address"].update(port_value=80810),
        "out of range",
    ),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_config_is_refused(case: str, rendered: tuple[str, list[str]], tmp_path: Path) -> None:
    change, message = REFUSED[case]
    path = tmp_path / "envoy.yaml"
    path.write_text(edit(rendered[0], change))
    with pytest.raises(ConfigError, match=r"\w"):
        load_config(path)
    result = run(container_args(rendered[1], path))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--secure-serving=false", "unrecognized arguments: --secure-serving"),
        ("--log-level=loud", "invalid log level 'loud'"),
        ("--drain-strategy=slow", "invalid choice: 'slow'"),
        ("--drain-time-s=-1", "-1 is below 0"),
        ("--concurrency=two", "'two' is not an integer"),
        ("--config-pat=/etc/envoy/envoy.yaml", "unrecognized arguments"),
    ],
)
def test_bad_flag_is_refused(arg: str, message: str, rendered: tuple[str, list[str]], tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(rendered[0])
    result = run([*container_args(rendered[1], path), arg])
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# --- the ext_proc server and the upstream ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """Key and self-signed certificate with no SAN and no CN, like the endpoint picker's own."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test processor's certificate")
    out = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/O=Inference Ext"),
            *("-keyout", str(out / "key.pem"), "-out", str(out / "cert.pem")),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return (out / "key.pem").read_bytes(), (out / "cert.pem").read_bytes()


def headers_of(message: Any) -> dict[str, str]:
    return {h.key: h.raw_value.decode() for h in message.headers.headers}


def set_headers(**values: str) -> ext_proc.HeaderMutation:
    return ext_proc.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, raw_value=v.encode()))
            for k, v in values.items()
        ]
    )


def streamed(kind: str, chunk: bytes, end: bool) -> ext_proc.ProcessingResponse:
    mutation = ext_proc.BodyMutation(streamed_response=ext_proc.StreamedBodyResponse(body=chunk, end_of_stream=end))
    return ext_proc.ProcessingResponse(
        **{kind: ext_proc.BodyResponse(response=ext_proc.CommonResponse(body_mutation=mutation))}
    )


@dataclass
class Picker(ext_proc_grpc.ExternalProcessorServicer):
    """A tiny endpoint picker: buffers the request body to its end, then routes to ``destination``."""

    destination: str
    streams: list[list[ext_proc.ProcessingRequest]] = field(default_factory=list)
    finished: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def Process(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method's name
        seen: list[ext_proc.ProcessingRequest] = []
        self.streams.append(seen)
        body = b""
        try:
            for request in request_iterator:
                seen.append(request)
                kind = request.WhichOneof("request")
                if kind == "request_body":
                    body += request.request_body.body
                    if not request.request_body.end_of_stream:
                        continue
                    model = json.loads(body).get("model")
                    if model == "reject-me":
                        yield ext_proc.ProcessingResponse(
                            immediate_response=ext_proc.ImmediateResponse(
                                status=http_status_pb2.HttpStatus(code=429),
                                body=b"too many requests",
                                headers=set_headers(**{"x-went-into-immediate": "yes"}),
                            )
                        )
                        return
                    mutation = set_headers(**{DESTINATION_HEADER: self.destination, "content-length": str(len(body))})
                    yield ext_proc.ProcessingResponse(
                        request_headers=ext_proc.HeadersResponse(
                            response=ext_proc.CommonResponse(header_mutation=mutation, clear_route_cache=True)
                        )
                    )
                    half = len(body) // 2  # two chunks, as a picker splitting a large body would
                    yield streamed("request_body", body[:half], False)
                    yield streamed("request_body", body[half:], True)
                elif kind == "response_headers":
                    yield ext_proc.ProcessingResponse(
                        response_headers=ext_proc.HeadersResponse(
                            response=ext_proc.CommonResponse(header_mutation=set_headers(**{"x-picker": "seen"}))
                        )
                    )
                elif kind == "response_body":
                    yield streamed("response_body", request.response_body.body, request.response_body.end_of_stream)
        finally:
            self.finished.release()


@contextlib.contextmanager
def picker_server(picker: Picker, certificate: tuple[bytes, bytes]) -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(picker, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([certificate]))
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


@dataclass
class Upstream:
    """An engine stand-in: records requests; a ``stream: true`` completion is sent as SSE, event by event."""

    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                body = self.rfile.read(int(headers.get("content-length", "0")))
                upstream.requests.append((self.path, headers, body))
                if not json.loads(body).get("stream"):
                    text = json.dumps({"choices": [{"text": "Hello"}]}).encode()
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for i, event in enumerate(EVENTS):
                    if i == 1:  # the rest only once the client has the first event
                        upstream.release.wait(timeout=15)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

        return Handler


@contextlib.contextmanager
def upstream_server() -> Iterator[Upstream]:
    upstream = Upstream()
    server = ThreadingHTTPServer(("127.0.0.1", 0), upstream.handler())
    server.daemon_threads = True
    upstream.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        upstream.release.set()
        server.shutdown()
        server.server_close()


# --- the stand-in on loopback ------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class StandIn:
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    log: Path

    @contextlib.contextmanager
    def open(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        port: str = "http",
    ) -> Iterator[http.client.HTTPResponse]:
        """A request whose response the caller reads as it arrives."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[port], timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            yield conn.getresponse()
        finally:
            conn.close()

    def request(self, method: str, path: str, body: bytes | None = None, port: str = "http") -> Answer:
        with self.open(method, path, body, port=port) as response:
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def logged(self, text: str, timeout: float = 5) -> bool:
        """Whether ``text`` shows up in the log (the request line is written once the response is sent)."""
        deadline = time.monotonic() + timeout
        while text not in self.logs():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def loopback_config(text: str, ports: dict[int, int]) -> str:
    """The rendered config with each port mapped to a free one (and nothing else changed)."""

    def remap(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "port_value":
                    node[key] = ports[value]
                else:
                    remap(value)
        elif isinstance(node, list):
            for item in node:
                remap(item)

    config = yaml.safe_load(text)
    remap(config)
    return yaml.safe_dump(config, sort_keys=False)


@contextlib.contextmanager
def standin(rendered: tuple[str, list[str]], picker_port: int, workdir: Path) -> Iterator[StandIn]:
    text, args = rendered
    ports = {"http": free_port(), "ready": free_port(), "admin": free_port()}
    mapping = {8081: ports["http"], 19001: ports["ready"], 19000: ports["admin"], 9002: picker_port}
    path = workdir / "envoy.yaml"
    path.write_text(loopback_config(text, mapping))
    log = workdir / "envoy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*STANDIN, *container_args(args, path, **{"log-level": "debug"})], cwd=ROOT, stdout=out, stderr=out
        )
    running = StandIn(proc, ports, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"the stand-in exited {proc.returncode}:\n{running.logs()}"
            with contextlib.suppress(OSError, http.client.HTTPException):
                if running.request("GET", "/ready", port="ready").status == 200:
                    break
            assert time.monotonic() < deadline, f"the stand-in did not get ready:\n{running.logs()}"
            time.sleep(0.05)
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Router:
    envoy: StandIn
    picker: Picker
    upstream: Upstream


@pytest.fixture(scope="module")
def router(
    rendered: tuple[str, list[str]], certificate: tuple[bytes, bytes], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Router]:
    with upstream_server() as upstream:
        picker = Picker(destination=f"127.0.0.1:{upstream.port}")
        with picker_server(picker, certificate) as port, standin(rendered, port, tmp_path_factory.mktemp("e")) as envoy:
            yield Router(envoy, picker, upstream)
            # every exchange has finished: a handler left waiting would hold the drain for its 30 s
            envoy.proc.send_signal(signal.SIGTERM)
            assert envoy.proc.wait(timeout=10) == 0, envoy.logs()


def completion(**extra: Any) -> bytes:
    return json.dumps({"model": "meta-llama/Llama-3.3-70B-Instruct", "prompt": "Say hello.", **extra}).encode()


def test_completion_reaches_the_upstream_the_processor_picked(router: Router) -> None:
    body = completion(max_tokens=4)
    before = len(router.picker.streams)
    sneaky = {DESTINATION_HEADER: "10.9.9.9:1", PREFILLER_HEADER: "10.9.9.9:2", "content-type": "application/json"}
    with router.envoy.open("POST", "/v1/completions", body, sneaky) as response:
        assert response.status == 200, router.envoy.logs()
        assert json.loads(response.read()) == {"choices": [{"text": "Hello"}]}
        assert response.getheader("x-picker") == "seen"
        assert response.getheader("server") == "envoy"
    path, headers, received = router.upstream.requests[-1]
    assert (path, received) == ("/v1/completions", body)
    assert headers[DESTINATION_HEADER] == f"127.0.0.1:{router.upstream.port}"
    assert PREFILLER_HEADER not in headers
    assert headers["content-length"] == str(len(body))
    assert headers["host"] == f"127.0.0.1:{router.envoy.ports['http']}"
    assert headers["x-request-id"]

    assert router.picker.finished.acquire(timeout=10)
    messages = router.picker.streams[before]
    kinds = [m.WhichOneof("request") for m in messages]
    assert kinds[0] == "request_headers"
    request_bodies = [m.request_body for m in messages if m.HasField("request_body")]
    assert kinds[1 : 1 + len(request_bodies)] == ["request_body"] * len(request_bodies)
    assert b"".join(b.body for b in request_bodies) == body
    assert [b.end_of_stream for b in request_bodies][-1] is True
    assert not any(b.end_of_stream for b in request_bodies[:-1])
    assert kinds[1 + len(request_bodies)] == "response_headers"
    assert kinds[-1] == "response_body"
    assert messages[-1].response_body.end_of_stream

    first = messages[0].request_headers
    assert not first.end_of_stream
    assert all(h.raw_value and not h.value for h in first.headers.headers), "Envoy 1.33 sends raw_value"
    sent = headers_of(first)
    assert [h.key for h in first.headers.headers][:4] == [":authority", ":path", ":method", ":scheme"]
    assert sent[":method"] == "POST"
    assert sent[":path"] == "/v1/completions"
    assert sent[":scheme"] == "http"
    assert sent["content-length"] == str(len(body))
    assert DESTINATION_HEADER not in sent, "the client's routing header reached the processor"
    assert PREFILLER_HEADER not in sent
    assert sent["x-request-id"] == headers["x-request-id"]
    assert headers_of(messages[1 + len(request_bodies)].response_headers)[":status"] == "200"


def test_streamed_response_arrives_event_by_event(router: Router) -> None:
    router.upstream.release.clear()
    with router.envoy.open("POST", "/v1/completions", completion(stream=True)) as response:
        assert response.status == 200, router.envoy.logs()
        assert response.getheader("content-type") == "text/event-stream"
        # the upstream holds the second event until the client has the first: a buffered reply would hang here
        first = response.read1(65536)
        assert first == EVENTS[0]
        router.upstream.release.set()
        rest = response.read()
    assert first + rest == b"".join(EVENTS)


def test_immediate_response_reaches_the_client(router: Router) -> None:
    before = len(router.upstream.requests)
    answer = router.envoy.request("POST", "/v1/completions", json.dumps({"model": "reject-me"}).encode())
    assert (answer.status, answer.body) == (429, b"too many requests")
    assert answer.headers["x-went-into-immediate"] == "yes"
    assert router.envoy.logged('"POST /v1/completions HTTP/1.1" 429 ext_proc_immediate_response'), router.envoy.logs()
    assert len(router.upstream.requests) == before


def test_readiness_and_metrics(router: Router) -> None:
    assert router.envoy.request("GET", "/ready", port="ready").status == 200
    assert router.envoy.request("GET", "/other", port="ready").status == 404
    scrape = router.envoy.request("GET", "/stats/prometheus", port="ready")
    assert scrape.status == 200
    text = scrape.body.decode()
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="http"}' in text
    assert "envoy_http_ext_proc_streams_started" in text
    admin = router.envoy.request("GET", "/ready", port="admin")
    assert (admin.status, admin.body) == (200, b"LIVE\n")


def test_unreachable_processor_is_a_500(rendered: tuple[str, list[str]], tmp_path: Path) -> None:
    with standin(rendered, free_port(), tmp_path) as envoy:
        answer = envoy.request("POST", "/v1/completions", completion())
        assert answer.status == 500, envoy.logs()
        assert envoy.logged('"POST /v1/completions HTTP/1.1" 500 ext_proc_error_gRPC_error_14'), envoy.logs()


def test_sigterm_drains_in_flight_requests(
    rendered: tuple[str, list[str]], certificate: tuple[bytes, bytes], tmp_path: Path
) -> None:
    with upstream_server() as upstream:
        picker = Picker(destination=f"127.0.0.1:{upstream.port}")
        with picker_server(picker, certificate) as port, standin(rendered, port, tmp_path) as envoy:
            stream = envoy.open("POST", "/v1/completions", completion(stream=True))
            response = stream.__enter__()
            assert response.read1(65536) == EVENTS[0]
            envoy.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while True:  # no new connections once draining
                try:
                    socket.create_connection(("127.0.0.1", envoy.ports["http"]), timeout=1).close()
                except OSError:
                    break
                assert time.monotonic() < deadline, "still accepting after SIGTERM"
                time.sleep(0.05)
            assert envoy.proc.poll() is None, "exited with a request in flight"
            upstream.release.set()
            assert EVENTS[0] + response.read() == b"".join(EVENTS)
            stream.__exit__(None, None, None)
            assert envoy.proc.wait(timeout=15) == 0, envoy.logs()
