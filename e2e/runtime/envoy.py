"""A stand-in for Envoy that runs the router pod's rendered Envoy config (Envoy cannot be installed here).

Run as the ``envoy`` container's program: ``python -m e2e.runtime.envoy --config-path=... ...``. It
takes Envoy's command line, parses the bootstrap YAML into Envoy's own API types (xds-protos: a
misspelt field, a wrong enum or an unresolvable ``typed_config`` fails as it would in Envoy), and
then checks every field that is set against what this program implements. Anything else is
refused with a non-zero exit rather than ignored, so a config the stand-in would run differently
from Envoy cannot pass silently. ``--mode validate`` stops after the checks, as Envoy's does.

What it implements, and nothing more (one asyncio program):

- listeners with one ``http_connection_manager`` each (HTTP/1.1; ``codec_type`` AUTO or HTTP1):
  inline ``route_config`` (domain ``*``/exact, ``prefix``/``path`` routes to a cluster with
  ``timeout``, default 15s, ``0s`` = none, and ``idle_timeout``), ``use_remote_address``,
  ``normalize_path``, ``merge_slashes``, ``headers_with_underscores_action``;
- HTTP filters, in the configured order: ``header_mutation`` (request header removal),
  ``ext_proc`` (below), ``health_check`` (``pass_through_mode: false`` on an exact ``:path``;
  503 while draining or after the admin ``/healthcheck/fail``) and ``router`` (last);
- ``ext_proc`` with exactly the processing mode the operator renders: headers SEND, bodies
  FULL_DUPLEX_STREAMED, trailers SEND, over ``envoy_grpc`` to a STATIC cluster; header values go
  out in ``raw_value`` with the pseudo-headers first, as Envoy 1.33 sends them. Request body
  chunks stream to the processor as they arrive (without waiting for its header answer) and the
  upstream gets only the ``streamed_response`` chunks the processor returns; the response side
  is the same. ``immediate_response`` becomes the client's response; a failed or closed-early
  stream is a 500 and a ``message_timeout`` a 504 (``failure_mode_allow: false``). A stream the
  processor ends cleanly once it has answered everything lets the rest of the exchange pass
  unprocessed, as Envoy treats it. ``grpc_service.timeout`` bounds opening the stream (not its
  life: a stream lasts as long as a generation). Mutations follow Envoy's default rules: ``host``,
  ``:authority``, ``:scheme``, ``:method`` and ``x-envoy-*`` are not changed, no pseudo-header is
  removed, and a set without ``append`` replaces. ``content-length`` is dropped from a processed
  message (the processor may change the body) unless the processor sets it itself.
- clusters: STATIC (``load_assignment`` with IP endpoints, round robin) and ORIGINAL_DST with
  ``use_http_header`` (connect to the ``IP:port`` in that header; missing or not an address: 503
  "no healthy upstream"), ``connect_timeout``, ``circuit_breakers`` default thresholds (overflow:
  503), upstream HTTP/1.1, responses streamed chunk by chunk (SSE reaches the client as it is
  generated). A cluster with ``UpstreamTlsContext`` + ``http2_protocol_options`` may only be a
  gRPC (ext_proc) cluster;
- ``admin.address``: ``/ready``, ``/stats/prometheus`` (the stand-in's own counters, with
  Envoy's metric names where there is one), ``/healthcheck/fail|ok`` and ``/quitquitquit``;
- SIGTERM/SIGINT: stop accepting, answer ``connection: close`` (``--drain-strategy``), finish
  in-flight requests for at most ``--drain-time-s``, exit 0. (Envoy itself exits on SIGTERM
  without such a drain; this is the gentler behaviour the tests want from the stand-in.)
- logging to stderr in Envoy's line format, one line per request at ``info``, ``--log-level``.

TLS to the endpoint picker: Envoy's ``UpstreamTlsContext`` here has no validation context, so
Envoy does TLS (ALPN h2) without verifying the certificate. grpcio cannot do that: it always
verifies, and pinning the picker's certificate (fetch it, pass it as ``root_certificates`` with
``grpc.ssl_target_name_override``) fails for the real picker, whose self-signed certificate has
no subject alternative name and no common name (only ``O=Inference Ext``), so no name can match,
and it is regenerated on every picker start. So each gRPC cluster gets an in-process bridge: a
plaintext port on 127.0.0.1 that the ``grpc.aio`` channel uses, and that opens one TLS
connection (no verification, the configured ALPN, SNI only if configured) per gRPC connection to
the cluster's endpoint, in the same event loop, like ``e2e.netns.TlsPipe``. Every new connection
handshakes afresh, so a restarted picker with a new certificate is reached again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import logging
import random
import re
import signal
import ssl
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import aiohttp
import grpc
import yaml
from aiohttp import web
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2, processing_mode_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.health_check.v3 import health_check_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from multidict import CIMultiDict
from yarl import URL

T = TypeVar("T")
VERSION = "1.33.2-standin"
LOG = logging.getLogger("envoy")
TRACE = 5
LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"})
ROUTING_HEADERS = frozenset({"host", ":authority", ":scheme", ":method"})
"""What Envoy's default ext_proc mutation rules keep the processor from changing (``allow_all_routing``)."""
DEFAULT_ROUTE_TIMEOUT = 15.0
DEFAULT_THRESHOLD = 1024
"""Envoy's default for each circuit-breaker threshold."""
CONNECT_FAILURE = b"upstream connect error or disconnect/reset before headers. reset reason: "


class ConfigError(Exception):
    """The config is one Envoy would refuse, or one the stand-in does not implement."""


# --- command line -----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"envoy: error: {message}\n")


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def _level(text: str) -> str:
    if text not in LEVELS:
        raise argparse.ArgumentTypeError(f"invalid log level {text!r} (one of {', '.join(LEVELS)})")
    return text


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Envoy's flags the render uses and a few common ones; anything else is an error (exit 1)."""
    parser = _Parser(prog="envoy", allow_abbrev=False, add_help=True)
    parser.add_argument("-c", "--config-path", required=True, help="bootstrap config (YAML or JSON)")
    parser.add_argument("--mode", choices=["serve", "validate"], default="serve")
    parser.add_argument("--service-cluster", default="")
    parser.add_argument("--service-node", default="")
    parser.add_argument("--service-zone", default="")
    parser.add_argument("-l", "--log-level", type=_level, default="info")
    parser.add_argument("--drain-strategy", choices=["immediate", "gradual"], default="gradual")
    parser.add_argument("--drain-time-s", type=_integer(0), default=600)
    parser.add_argument("--parent-shutdown-time-s", type=_integer(0), default=900)
    parser.add_argument("--base-id", type=_integer(0), default=0)
    parser.add_argument("--concurrency", type=_integer(1), default=1)
    parser.add_argument("--disable-hot-restart", action="store_true")
    parser.add_argument("--version", action="version", version=f"envoy version: {VERSION}")
    return parser.parse_args(list(argv))


class _EnvoyFormatter(logging.Formatter):
    NAMES = {TRACE: "trace", logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning"}

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        level = self.NAMES.get(record.levelno, record.levelname.lower())
        component = record.name.rpartition(".")[2] if "." in record.name else "main"
        text = f"[{stamp}.{int(record.msecs):03d}][{record.process}][{level}][{component}] {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(level: str) -> None:
    logging.addLevelName(TRACE, "TRACE")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EnvoyFormatter())
    LOG.handlers[:] = [handler]
    LOG.setLevel(LEVELS[level])
    LOG.propagate = False


# --- config: parse, check against what is implemented, build the model -------------------------

_EXTENSIONS = (
    hcm_pb2.HttpConnectionManager,
    header_mutation_pb2.HeaderMutation,
    ext_proc_pb2.ExternalProcessor,
    health_check_pb2.HealthCheck,
    router_pb2.Router,
    tls_pb2.UpstreamTlsContext,
    http_protocol_options_pb2.HttpProtocolOptions,
)
"""The typed configs the stand-in implements; importing their modules lets the Any's resolve."""

HCM = hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
HTTP_FILTERS = {
    header_mutation_pb2.HeaderMutation.DESCRIPTOR.full_name: "header_mutation",
    ext_proc_pb2.ExternalProcessor.DESCRIPTOR.full_name: "ext_proc",
    health_check_pb2.HealthCheck.DESCRIPTOR.full_name: "health_check",
    router_pb2.Router.DESCRIPTOR.full_name: "router",
}
UPSTREAM_HTTP_OPTIONS = http_protocol_options_pb2.HttpProtocolOptions.DESCRIPTOR.full_name
TLS_SOCKET = tls_pb2.UpstreamTlsContext.DESCRIPTOR.full_name

SUPPORTED: dict[str, frozenset[str]] = {
    name: frozenset(fields.split())
    for name, fields in {
        "envoy.config.bootstrap.v3.Bootstrap": "admin static_resources",
        "envoy.config.bootstrap.v3.Admin": "address",
        "envoy.config.bootstrap.v3.Bootstrap.StaticResources": "listeners clusters",
        "envoy.config.core.v3.Address": "socket_address",
        "envoy.config.core.v3.SocketAddress": "address port_value",
        "envoy.config.listener.v3.Listener": "name address filter_chains",
        "envoy.config.listener.v3.FilterChain": "filters",
        "envoy.config.listener.v3.Filter": "name typed_config",
        HCM: "stat_prefix codec_type use_remote_address normalize_path merge_slashes common_http_protocol_options "
        "route_config http_filters",
        "envoy.config.core.v3.HttpProtocolOptions": "headers_with_underscores_action",
        "envoy.config.route.v3.RouteConfiguration": "name virtual_hosts",
        "envoy.config.route.v3.VirtualHost": "name domains routes",
        "envoy.config.route.v3.Route": "name match route",
        "envoy.config.route.v3.RouteMatch": "prefix path",
        "envoy.config.route.v3.RouteAction": "cluster timeout idle_timeout",
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter": "name typed_config",
        "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation": "mutations",
        "envoy.extensions.filters.http.header_mutation.v3.Mutations": "request_mutations",
        "envoy.config.common.mutation_rules.v3.HeaderMutation": "remove",
        "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor": "grpc_service failure_mode_allow "
        "message_timeout processing_mode",
        "envoy.config.core.v3.GrpcService": "envoy_grpc timeout",
        "envoy.config.core.v3.GrpcService.EnvoyGrpc": "cluster_name authority",
        "envoy.extensions.filters.http.ext_proc.v3.ProcessingMode": "request_header_mode response_header_mode "
        "request_body_mode response_body_mode request_trailer_mode response_trailer_mode",
        "envoy.extensions.filters.http.health_check.v3.HealthCheck": "pass_through_mode headers",
        "envoy.config.route.v3.HeaderMatcher": "name string_match",
        "envoy.type.matcher.v3.StringMatcher": "exact",
        "envoy.extensions.filters.http.router.v3.Router": "suppress_envoy_headers",
        "envoy.config.cluster.v3.Cluster": "name type connect_timeout load_assignment lb_policy circuit_breakers "
        "typed_extension_protocol_options transport_socket original_dst_lb_config",
        "envoy.config.endpoint.v3.ClusterLoadAssignment": "cluster_name endpoints",
        "envoy.config.endpoint.v3.LocalityLbEndpoints": "lb_endpoints",
        "envoy.config.endpoint.v3.LbEndpoint": "endpoint",
        "envoy.config.endpoint.v3.Endpoint": "address",
        "envoy.config.cluster.v3.CircuitBreakers": "thresholds",
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds": "max_connections max_pending_requests max_requests",
        "envoy.config.cluster.v3.Cluster.OriginalDstLbConfig": "use_http_header http_header_name",
        UPSTREAM_HTTP_OPTIONS: "explicit_http_config",
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig": "http_protocol_options "
        "http2_protocol_options",
        "envoy.config.core.v3.Http1ProtocolOptions": "",
        "envoy.config.core.v3.Http2ProtocolOptions": "",
        "envoy.config.core.v3.TransportSocket": "name typed_config",
        TLS_SOCKET: "common_tls_context sni",
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext": "alpn_protocols",
    }.items()
}
LEAVES = frozenset({"google.protobuf.Duration", "google.protobuf.BoolValue", "google.protobuf.UInt32Value"})


def unpack(any_message: Any) -> Message:
    """The message inside a ``google.protobuf.Any`` (its type was resolved when the YAML was parsed)."""
    descriptor = descriptor_pool.Default().FindMessageTypeByName(any_message.TypeName())
    inner = message_factory.GetMessageClass(descriptor)()
    any_message.Unpack(inner)
    return inner


def unimplemented_fields(message: Message, path: str = "") -> list[str]:
    """Every set field the stand-in does not implement, by its path in the config."""
    name = message.DESCRIPTOR.full_name
    if name in LEAVES:
        return []
    if name == "google.protobuf.Any":
        inner = unpack(message)
        return unimplemented_fields(inner, path)
    allowed = SUPPORTED.get(name)
    problems: list[str] = []
    for fd, value in message.ListFields():
        where = f"{path}.{fd.name}" if path else fd.name
        if allowed is None or fd.name not in allowed:
            problems.append(f"{where} ({name})")
            continue
        if fd.type != fd.TYPE_MESSAGE:
            continue
        if fd.message_type.GetOptions().map_entry:
            problems += [p for key, item in value.items() for p in unimplemented_fields(item, f"{where}[{key}]")]
        elif fd.is_repeated:
            problems += [p for i, item in enumerate(value) for p in unimplemented_fields(item, f"{where}[{i}]")]
        else:
            problems += unimplemented_fields(value, where)
    return problems


def seconds(duration: Any) -> float:
    return float(duration.seconds + duration.nanos / 1e9)


@dataclass
class Cluster:
    name: str
    original_dst_header: str | None
    """ORIGINAL_DST: the request header holding ``IP:port``; None for STATIC."""
    endpoints: list[tuple[str, int]]
    connect_timeout: float
    max_connections: int
    max_pending_requests: int
    max_requests: int
    http2: bool
    tls_alpn: list[str] | None
    """None: plaintext."""
    tls_sni: str
    active: int = 0
    _next: Iterator[tuple[str, int]] | None = None

    def pick(self) -> tuple[str, int]:
        if self._next is None:
            self._next = itertools.cycle(self.endpoints)
        return next(self._next)

    def overflowing(self) -> bool:
        limit = min(self.max_requests, self.max_connections + self.max_pending_requests)
        return self.active >= (self.max_requests if self.http2 else limit)


@dataclass(frozen=True)
class Route:
    prefix: str | None
    path: str | None
    cluster: str
    timeout: float | None
    idle_timeout: float | None

    def matches(self, path: str) -> bool:
        bare = path.partition("?")[0]
        return bare == self.path if self.path is not None else bare.startswith(self.prefix or "")


@dataclass(frozen=True)
class VirtualHost:
    name: str
    domains: list[str]
    routes: list[Route]

    def serves(self, authority: str) -> bool:
        host = authority.lower()
        return any(d == "*" or d.lower() == host for d in self.domains)


@dataclass(frozen=True)
class HeaderMutationFilter:
    remove: list[str]


@dataclass(frozen=True)
class ExtProcFilter:
    cluster: str
    authority: str
    open_timeout: float | None
    failure_mode_allow: bool
    message_timeout: float


@dataclass(frozen=True)
class HealthCheckFilter:
    path: str


@dataclass(frozen=True)
class RouterFilter:
    suppress_envoy_headers: bool


HttpFilter = HeaderMutationFilter | ExtProcFilter | HealthCheckFilter | RouterFilter


@dataclass
class Listener:
    name: str
    host: str
    port: int
    stat_prefix: str
    use_remote_address: bool
    normalize_path: bool
    merge_slashes: bool
    reject_underscores: bool
    virtual_hosts: list[VirtualHost]
    filters: list[HttpFilter]


@dataclass
class Config:
    listeners: list[Listener]
    clusters: dict[str, Cluster]
    admin: tuple[str, int] | None


def _socket(address: Any, where: str) -> tuple[str, int]:
    if not address.HasField("socket_address"):
        raise ConfigError(f"{where}: only socket_address is implemented")
    sock = address.socket_address
    try:
        ipaddress.ip_address(sock.address)
    except ValueError:
        raise ConfigError(f"{where}: {sock.address!r} is not an IP address") from None
    if sock.port_value > 65535:
        raise ConfigError(f"{where}: port {sock.port_value} out of range")
    return str(sock.address), int(sock.port_value)


def _cluster(message: Any) -> Cluster:
    where = f"cluster {message.name!r}"
    kind = cluster_pb2.Cluster
    thresholds = list(message.circuit_breakers.thresholds)
    if len(thresholds) > 1:
        raise ConfigError(f"{where}: only one circuit_breakers threshold (priority DEFAULT) is implemented")
    limits = {"max_connections": DEFAULT_THRESHOLD, "max_pending_requests": DEFAULT_THRESHOLD}
    limits["max_requests"] = DEFAULT_THRESHOLD
    for threshold in thresholds:
        for name in limits:
            if threshold.HasField(name):
                limits[name] = getattr(threshold, name).value
    http2 = False
    for key, options in message.typed_extension_protocol_options.items():
        inner = unpack(options)
        if key != UPSTREAM_HTTP_OPTIONS or inner.DESCRIPTOR.full_name != UPSTREAM_HTTP_OPTIONS:
            raise ConfigError(f"{where}: typed_extension_protocol_options[{key}] is not implemented")
        if not inner.HasField("explicit_http_config"):
            raise ConfigError(f"{where}: only explicit_http_config is implemented")
        http2 = inner.explicit_http_config.HasField("http2_protocol_options")
    alpn: list[str] | None = None
    sni = ""
    if message.HasField("transport_socket"):
        tls = unpack(message.transport_socket.typed_config)
        if tls.DESCRIPTOR.full_name != TLS_SOCKET:
            raise ConfigError(f"{where}: transport socket {tls.DESCRIPTOR.full_name} is not implemented")
        alpn = list(tls.common_tls_context.alpn_protocols)
        sni = tls.sni
    endpoints = [
        _socket(lb.endpoint.address, f"{where} endpoint")
        for locality in message.load_assignment.endpoints
        for lb in locality.lb_endpoints
    ]
    header: str | None = None
    if message.type == kind.STATIC:
        if message.lb_policy != kind.ROUND_ROBIN:
            raise ConfigError(f"{where}: STATIC clusters implement lb_policy ROUND_ROBIN only")
        if not endpoints:
            raise ConfigError(f"{where}: a STATIC cluster needs at least one endpoint in load_assignment")
        if message.HasField("original_dst_lb_config"):
            raise ConfigError(f"{where}: original_dst_lb_config needs type ORIGINAL_DST")
    elif message.type == kind.ORIGINAL_DST:
        if message.lb_policy != kind.CLUSTER_PROVIDED:
            raise ConfigError(f"{where}: ORIGINAL_DST clusters need lb_policy CLUSTER_PROVIDED")
        if message.HasField("load_assignment"):
            raise ConfigError(f"{where}: ORIGINAL_DST clusters take no load_assignment")
        config = message.original_dst_lb_config
        if not config.use_http_header:
            raise ConfigError(f"{where}: only ORIGINAL_DST with original_dst_lb_config.use_http_header is implemented")
        header = (config.http_header_name or "x-envoy-original-dst-host").lower()
    else:
        raise ConfigError(f"{where}: type {kind.DiscoveryType.Name(message.type)} is not implemented")
    return Cluster(
        name=message.name,
        original_dst_header=header,
        endpoints=endpoints,
        connect_timeout=seconds(message.connect_timeout) if message.HasField("connect_timeout") else 5.0,
        max_connections=limits["max_connections"],
        max_pending_requests=limits["max_pending_requests"],
        max_requests=limits["max_requests"],
        http2=http2,
        tls_alpn=alpn,
        tls_sni=sni,
    )


def _processing_mode_problems(mode: Any) -> list[str]:
    pm = processing_mode_pb2.ProcessingMode
    want = {
        "request_header_mode": pm.SEND,
        "response_header_mode": pm.SEND,
        "request_body_mode": pm.FULL_DUPLEX_STREAMED,
        "response_body_mode": pm.FULL_DUPLEX_STREAMED,
        "request_trailer_mode": pm.SEND,
        "response_trailer_mode": pm.SEND,
    }
    problems = []
    for name, value in want.items():
        actual = getattr(mode, name)
        enum = pm.BodySendMode if "body" in name else pm.HeaderSendMode
        if actual != value:
            problems.append(f"{name} {enum.Name(actual)} (implemented: {enum.Name(value)})")
    return problems


def _http_filter(message: Any, where: str, clusters: dict[str, Cluster]) -> HttpFilter:
    if not message.HasField("typed_config"):
        raise ConfigError(f"{where}: needs a typed_config")
    inner = unpack(message.typed_config)
    kind = HTTP_FILTERS.get(inner.DESCRIPTOR.full_name)
    if kind == "header_mutation":
        if any(not m.remove for m in inner.mutations.request_mutations):
            raise ConfigError(f"{where}: only request_mutations with remove are implemented")
        return HeaderMutationFilter(remove=[m.remove.lower() for m in inner.mutations.request_mutations])
    if kind == "ext_proc":
        service = inner.grpc_service
        if not service.HasField("envoy_grpc"):
            raise ConfigError(f"{where}: only grpc_service.envoy_grpc is implemented")
        name = service.envoy_grpc.cluster_name
        cluster = clusters.get(name)
        if cluster is None:
            raise ConfigError(f"{where}: grpc_service.envoy_grpc.cluster_name {name!r} is not a defined cluster")
        if cluster.original_dst_header is not None:
            raise ConfigError(f"{where}: the gRPC cluster {name!r} must be STATIC")
        if not cluster.http2:
            raise ConfigError(f"{where}: the gRPC cluster {name!r} needs http2_protocol_options")
        problems = _processing_mode_problems(inner.processing_mode)
        if problems:
            raise ConfigError(f"{where}: processing_mode not implemented: " + "; ".join(problems))
        timeout = seconds(inner.message_timeout) if inner.HasField("message_timeout") else 0.2
        if timeout <= 0:
            raise ConfigError(f"{where}: message_timeout must be positive")
        return ExtProcFilter(
            cluster=name,
            authority=service.envoy_grpc.authority or name,
            open_timeout=seconds(service.timeout) if service.HasField("timeout") else None,
            failure_mode_allow=inner.failure_mode_allow,
            message_timeout=timeout,
        )
    if kind == "health_check":
        if not inner.HasField("pass_through_mode") or inner.pass_through_mode.value:
            raise ConfigError(f"{where}: only pass_through_mode: false is implemented")
        matchers = list(inner.headers)
        if len(matchers) != 1 or matchers[0].name != ":path" or not matchers[0].string_match.exact:
            raise ConfigError(f"{where}: only one exact :path header matcher is implemented")
        return HealthCheckFilter(path=matchers[0].string_match.exact)
    if kind == "router":
        return RouterFilter(suppress_envoy_headers=inner.suppress_envoy_headers)
    raise ConfigError(f"{where}: HTTP filter type {inner.DESCRIPTOR.full_name} is not implemented")


def _listener(message: Any, clusters: dict[str, Cluster]) -> Listener:
    where = f"listener {message.name!r}"
    host, port = _socket(message.address, f"{where} address")
    chains = list(message.filter_chains)
    if len(chains) != 1 or len(chains[0].filters) != 1:
        raise ConfigError(f"{where}: exactly one filter chain with one network filter is implemented")
    network = chains[0].filters[0]
    if not network.HasField("typed_config") or unpack(network.typed_config).DESCRIPTOR.full_name != HCM:
        raise ConfigError(f"{where}: only the http_connection_manager network filter is implemented")
    manager: Any = unpack(network.typed_config)
    codec = hcm_pb2.HttpConnectionManager.CodecType
    if manager.codec_type not in (codec.AUTO, codec.HTTP1):
        raise ConfigError(f"{where}: codec_type {codec.Name(manager.codec_type)} is not implemented (HTTP/1.1 only)")
    if not manager.stat_prefix:
        raise ConfigError(f"{where}: http_connection_manager needs a stat_prefix")
    if not manager.HasField("route_config"):
        raise ConfigError(f"{where}: only an inline route_config is implemented")
    hosts = []
    for vhost in manager.route_config.virtual_hosts:
        routes = []
        for route in vhost.routes:
            match = route.match.WhichOneof("path_specifier")
            if match not in ("prefix", "path"):
                raise ConfigError(f"{where}: route in {vhost.name!r} needs a prefix or path match")
            if not route.HasField("route") or not route.route.cluster:
                raise ConfigError(f"{where}: route in {vhost.name!r} needs route.cluster")
            target = clusters.get(route.route.cluster)
            if target is None:
                raise ConfigError(f"{where}: route to {route.route.cluster!r}, which is not a defined cluster")
            if target.tls_alpn is not None or target.http2:
                raise ConfigError(
                    f"{where}: cluster {target.name!r}: TLS/HTTP2 to a routed upstream is not implemented"
                )
            action = route.route
            timeout = seconds(action.timeout) if action.HasField("timeout") else DEFAULT_ROUTE_TIMEOUT
            idle = seconds(action.idle_timeout) if action.HasField("idle_timeout") else None
            routes.append(
                Route(
                    prefix=route.match.prefix if match == "prefix" else None,
                    path=route.match.path if match == "path" else None,
                    cluster=action.cluster,
                    timeout=timeout or None,
                    idle_timeout=idle or None,
                )
            )
        if not vhost.domains:
            raise ConfigError(f"{where}: virtual host {vhost.name!r} needs domains")
        hosts.append(VirtualHost(name=vhost.name, domains=list(vhost.domains), routes=routes))
    filters = [
        _http_filter(f, f"{where} http_filters[{i}] {f.name!r}", clusters) for i, f in enumerate(manager.http_filters)
    ]
    if not filters or not isinstance(filters[-1], RouterFilter):
        raise ConfigError(f"{where}: the last HTTP filter must be the router")
    kinds = [type(f) for f in filters]
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"{where}: each HTTP filter may appear once")
    underscores = manager.common_http_protocol_options.headers_with_underscores_action
    actions = protocol_pb2.HttpProtocolOptions.HeadersWithUnderscoresAction
    if underscores not in (actions.ALLOW, actions.REJECT_REQUEST):
        raise ConfigError(f"{where}: headers_with_underscores_action {actions.Name(underscores)} is not implemented")
    listener = Listener(
        name=message.name,
        host=host,
        port=port,
        stat_prefix=manager.stat_prefix,
        use_remote_address=manager.use_remote_address.value,
        normalize_path=manager.normalize_path.value,
        merge_slashes=manager.merge_slashes,
        reject_underscores=underscores == actions.REJECT_REQUEST,
        virtual_hosts=hosts,
        filters=filters,
    )
    _check_destination_is_set(listener, clusters)
    return listener


def _check_destination_is_set(listener: Listener, clusters: dict[str, Cluster]) -> None:
    """A route to an ORIGINAL_DST cluster needs something before the router to name the destination.

    Here only an ext_proc filter can: without one every request on the route would be a 503, so the
    config is refused (a missing ext_proc filter fails at start, not at the first request).
    """
    if any(isinstance(f, ExtProcFilter) for f in listener.filters):
        return
    for vhost in listener.virtual_hosts:
        for route in vhost.routes:
            header = clusters[route.cluster].original_dst_header
            if header is not None:
                raise ConfigError(
                    f"listener {listener.name!r}: route to ORIGINAL_DST cluster {route.cluster!r} but no ext_proc "
                    f"filter sets {header}: every request would fail with 503"
                )


def load_config(path: str | Path) -> Config:
    """The bootstrap at ``path``, checked against what the stand-in implements."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a bootstrap object")
    try:
        bootstrap = json_format.ParseDict(raw, bootstrap_pb2.Bootstrap())
    except json_format.ParseError as error:
        raise ConfigError(f"{path}: invalid bootstrap: {error}") from None
    problems = unimplemented_fields(bootstrap)
    if problems:
        raise ConfigError("fields the stand-in does not implement: " + ", ".join(problems))
    clusters: dict[str, Cluster] = {}
    for message in bootstrap.static_resources.clusters:
        if message.name in clusters or not message.name:
            raise ConfigError(f"cluster name {message.name!r} is empty or used twice")
        clusters[message.name] = _cluster(message)
    listeners = [_listener(message, clusters) for message in bootstrap.static_resources.listeners]
    if not listeners:
        raise ConfigError("no listeners")
    names = [listener.name for listener in listeners]
    if len(set(names)) != len(names) or "" in names:
        raise ConfigError(f"listener names must be set and unique: {names}")
    admin = _socket(bootstrap.admin.address, "admin.address") if bootstrap.HasField("admin") else None
    ports = [listener.port for listener in listeners] + ([admin[1]] if admin else [])
    if len(set(ports)) != len(ports):
        raise ConfigError(f"two listeners (or a listener and admin) on one port: {ports}")
    return Config(listeners=listeners, clusters=clusters, admin=admin)


# --- runtime: stats -----------------------------------------------------------------------------


class Stats:
    """Counters and gauges, rendered in the Prometheus text format under Envoy's names."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], int] = defaultdict(int)
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def inc(self, name: str, amount: int = 1, /, **labels: str) -> None:
        self.counters[name, tuple(sorted(labels.items()))] += amount

    def set(self, name: str, value: float, /, **labels: str) -> None:
        self.gauges[name, tuple(sorted(labels.items()))] = value

    def add(self, name: str, delta: float, /, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.gauges[key] = self.gauges.get(key, 0) + delta

    def render(self) -> str:
        lines: list[str] = []
        for kind, series in (("counter", self.counters), ("gauge", self.gauges)):
            by_name: dict[str, list[str]] = defaultdict(list)
            for (name, labels), value in sorted(series.items()):
                text = ",".join(f'{k}="{v}"' for k, v in labels)
                by_name[name].append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")
            for name, samples in by_name.items():
                lines += [f"# TYPE {name} {kind}", *samples]
        return "\n".join(lines) + "\n"


# --- runtime: messages between filters ----------------------------------------------------------

Headers = list[tuple[str, str]]


def header(headers: Headers, name: str) -> str | None:
    return next((v for k, v in headers if k == name), None)


def without(headers: Headers, *names: str) -> Headers:
    return [(k, v) for k, v in headers if k not in names]


@dataclass
class LocalReply:
    status: int
    body: bytes = b""
    details: str = ""
    headers: Headers = field(default_factory=list)


class ResetError(Exception):
    """The exchange cannot go on (client gone, upstream reset after headers): reset the downstream."""


class ReplyError(Exception):
    """Answer the client with ``reply`` instead of going on (ext_proc immediate or failure)."""

    def __init__(self, reply: LocalReply) -> None:
        super().__init__(reply.details or str(reply.status))
        self.reply = reply


@dataclass
class Body:
    chunks: AsyncIterator[bytes]
    length: int | None
    """Content length when known."""


@dataclass
class UpstreamResponse:
    status: int
    headers: Headers
    body: Body | None
    upstream: str = ""


@dataclass
class Exchange:
    """One request on its way through a listener's filters."""

    listener: Listener
    headers: Headers
    body: Body | None
    request_id: str
    encoders: list[ExtProcStream] = field(default_factory=list)
    upstream: str = "-"
    details: str = "via_upstream"

    @property
    def path(self) -> str:
        return header(self.headers, ":path") or "/"


async def framed(body: Body) -> AsyncIterator[tuple[bytes, bool]]:
    """Body chunks with end-of-stream on the last: on the chunk completing a known length, else an empty one."""
    seen = 0
    async for chunk in body.chunks:
        if not chunk:
            continue
        seen += len(chunk)
        done = body.length is not None and seen >= body.length
        yield chunk, done
        if done:
            return
    if body.length is not None and seen < body.length:
        raise ResetError(f"body ended after {seen} of {body.length} bytes")
    yield b"", True


def body_free(method: str, status: int, length: int | None) -> bool:
    return method == "HEAD" or status in (204, 304) or 100 <= status < 200 or length == 0


# --- runtime: gRPC clusters (TLS bridge, channel) -----------------------------------------------


class TlsBridge:
    """A plaintext port on 127.0.0.1 relayed to a cluster's endpoints over TLS without verification.

    See the module docstring for why grpcio cannot do this TLS itself.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        if cluster.tls_alpn:
            self.context.set_alpn_protocols(cluster.tls_alpn)
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        host, port = self.cluster.pick()
        try:
            if self.connections >= self.cluster.max_connections:
                raise OSError("max_connections reached")
            up_reader, up_writer = await within(
                self.cluster.connect_timeout,
                asyncio.open_connection(
                    host,
                    port,
                    ssl=self.context,
                    server_hostname=self.cluster.tls_sni or "",
                    ssl_handshake_timeout=self.cluster.connect_timeout,
                ),
            )
        except (OSError, TimeoutError, ssl.SSLError) as error:
            LOG.debug("cluster %s: TLS connection to %s:%d failed: %s", self.cluster.name, host, port, error)
            writer.close()
            self._tasks.discard(task)
            return
        self.connections += 1
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        except asyncio.CancelledError:
            # closing (asyncio's stream server would log a cancelled connection task as an error)
            for end in (writer, up_writer):
                end.close()
        finally:
            self.connections -= 1
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def within(seconds: float | None, awaitable: Awaitable[T]) -> T:
    """``awaitable`` bounded by ``seconds`` (None: unbounded).

    ``asyncio.timeout``, not ``asyncio.wait_for``: in Python 3.11 a ``wait_for`` cancelled in the same
    loop pass as its inner future completes returns the result and loses the cancellation, which
    left request handlers waiting forever on a watchdog that had been cancelled.
    """
    async with asyncio.timeout(seconds):
        return await awaitable


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            sink.close()


class GrpcCluster:
    """One ``grpc.aio`` channel to a STATIC cluster (through a :class:`TlsBridge` when it has TLS)."""

    def __init__(self, cluster: Cluster, authority: str) -> None:
        self.cluster = cluster
        self.authority = authority
        self.bridge = TlsBridge(cluster) if cluster.tls_alpn is not None else None
        self.channel: grpc.aio.Channel | None = None
        self.stub: Any = None

    async def start(self) -> None:
        if self.bridge is not None:
            target = f"127.0.0.1:{await self.bridge.start()}"
        else:
            host, port = self.cluster.endpoints[0]
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # reconnect quickly, as Envoy's per-stream connection pool would, once the picker is up
        options = [
            ("grpc.default_authority", self.authority),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
        ]
        self.channel = grpc.aio.insecure_channel(target, options=options)
        self.stub = ext_proc_grpc.ExternalProcessorStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close(grace=None)
        if self.bridge is not None:
            await self.bridge.close()


# --- runtime: ext_proc ----------------------------------------------------------------------------


def _header_map(headers: Headers) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers])


def _value_of(option: Any) -> str:
    raw: bytes = option.header.raw_value
    return raw.decode(errors="replace") if raw else str(option.header.value)


def apply_mutation(headers: Headers, mutation: Any, *, response: bool) -> tuple[Headers, set[str], int]:
    """``headers`` after an ext_proc HeaderMutation under Envoy's default mutation rules.

    Returns the new headers, the names the processor set, and how many changes were refused.
    """
    out = list(headers)
    set_names: set[str] = set()
    rejected = 0
    action = base_pb2.HeaderValueOption.HeaderAppendAction
    if LOG.isEnabledFor(logging.DEBUG) and (mutation.set_headers or mutation.remove_headers):
        LOG.debug(
            "ext_proc %s header mutation: set %s, remove %s",
            "response" if response else "request",
            {o.header.key: _value_of(o) for o in mutation.set_headers},
            list(mutation.remove_headers),
        )

    def allowed(name: str) -> bool:
        return name not in ROUTING_HEADERS and not name.startswith("x-envoy-")

    for name in (n.lower() for n in mutation.remove_headers):
        if name.startswith(":") or not allowed(name):
            rejected += 1
            continue
        out = without(out, name)
    for option in mutation.set_headers:
        name = option.header.key.lower()
        value = _value_of(option)
        bad_status = name == ":status" and (not response or not value.isdigit() or not 200 <= int(value) <= 599)
        pseudo_ok = name in (":path", ":status")
        if (
            not name
            or not allowed(name)
            or (name.startswith(":") and not pseudo_ok)
            or bad_status
            or any(c in value for c in "\r\n\0")
        ):
            rejected += 1
            continue
        if option.HasField("append"):
            mode = action.APPEND_IF_EXISTS_OR_ADD if option.append.value else action.OVERWRITE_IF_EXISTS_OR_ADD
        elif option.append_action == action.APPEND_IF_EXISTS_OR_ADD:
            mode = action.OVERWRITE_IF_EXISTS_OR_ADD  # an unset ``append`` means replace in ext_proc
        else:
            mode = option.append_action
        present = header(out, name) is not None
        if mode == action.ADD_IF_ABSENT and present:
            continue
        if mode == action.OVERWRITE_IF_EXISTS and not present:
            continue
        if mode != action.APPEND_IF_EXISTS_OR_ADD or name.startswith(":"):
            index = next((i for i, (k, _) in enumerate(out) if k == name), None)
            out = without(out, name)
            out.insert(index if index is not None else len(out), (name, value))
        else:
            out.append((name, value))
        set_names.add(name)
    return out, set_names, rejected


class ExtProcStream:
    """One request's ``Process`` stream in FULL_DUPLEX_STREAMED mode for both bodies.

    A reader task dispatches the processor's messages to the phase waiting for them; the
    processor must answer in order: request headers, request body chunks up to end of stream,
    response headers, response body chunks up to end of stream (immediate_response any time). A
    watchdog fails the stream with 504 when an answer owed is not progressing for
    ``message_timeout``: the header answers, and the body answers once the whole body was sent.
    """

    def __init__(self, config: ExtProcFilter, grpc_cluster: GrpcCluster, stats: Stats, prefix: str) -> None:
        self.config = config
        self.grpc = grpc_cluster
        self.stats = stats
        self.prefix = prefix
        self.call: Any = None
        loop = asyncio.get_running_loop()
        self.request_headers: asyncio.Future[Any] = loop.create_future()
        self.response_headers: asyncio.Future[Any] = loop.create_future()
        self.request_body: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.response_body: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.owed: set[str] = set()
        """Answers the processor owes that the watchdog times: headers, or a body whose end was sent."""
        self.sent: set[str] = set()
        self.done: set[str] = set()
        self.failure: LocalReply | None = None
        self.ended = False
        self._write_lock = asyncio.Lock()
        self._progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._counted = False

    def _stat(self, name: str) -> None:
        self.stats.inc(f"envoy_http_ext_proc_{name}", envoy_http_conn_manager_prefix=self.prefix)

    # -- lifecycle

    async def open(self, headers: Headers, end_of_stream: bool) -> None:
        cluster = self.grpc.cluster
        if cluster.overflowing():
            raise ReplyError(LocalReply(500, details="ext_proc_error_gRPC_error_14{overflow}"))
        cluster.active += 1
        self._counted = True
        self._stat("streams_started")
        self.call = self.grpc.stub.Process()
        self._tasks.append(asyncio.create_task(self._read()))
        self._tasks.append(asyncio.create_task(self._watchdog()))
        request = ext_proc.ProcessingRequest(
            request_headers=ext_proc.HttpHeaders(headers=_header_map(headers), end_of_stream=end_of_stream)
        )
        # grpc_service.timeout bounds opening the stream (connecting, TLS, the first message)
        try:
            await within(self.config.open_timeout, self._send(request, "request_headers"))
        except TimeoutError:
            self._fail(LocalReply(500, details="ext_proc_error_gRPC_error_4{open timeout}"))
        if self.failure is not None:
            raise ReplyError(self.failure)
        if end_of_stream:
            self.done.add("request_body")

    async def close(self) -> None:
        """Finish the stream (half-close, as Envoy does when the exchange is over) and stop the tasks."""
        if self.call is not None and not self.call.done() and self.failure is None:
            with contextlib.suppress(Exception):
                await within(1.0, self.call.done_writing())
            with contextlib.suppress(Exception):
                await within(1.0, self.call.code())
        if self.call is not None:
            self.call.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._counted:
            self.grpc.cluster.active -= 1
            self._counted = False
            self._stat("streams_closed")

    # -- sending

    async def _send(self, request: ext_proc.ProcessingRequest, what: str) -> None:
        if self.failure is not None or self.ended:
            return
        try:
            async with self._write_lock:
                await self.call.write(request)
        except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as error:
            await self._rpc_failed(error)
            return
        self._stat("stream_msgs_sent")
        if what in ("request_headers", "response_headers"):
            self.sent.add(what)
            self.owed.add(what)
            self._progress.set()

    async def pump(self, body: Body, phase: str) -> None:
        """Stream ``body`` to the processor as ``phase`` ("request_body"/"response_body") messages."""
        try:
            async for chunk, end in framed(body):
                message = ext_proc.HttpBody(body=chunk, end_of_stream=end)
                request = (
                    ext_proc.ProcessingRequest(request_body=message)
                    if phase == "request_body"
                    else ext_proc.ProcessingRequest(response_body=message)
                )
                await self._send(request, phase)
                if self.failure is not None or self.ended:
                    return
                if end and phase not in self.done:
                    self.owed.add(phase)
                    self._progress.set()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the client or upstream went away mid-body
            self._fail(None, error)

    def start_pump(self, body: Body, phase: str) -> None:
        self._tasks.append(asyncio.create_task(self.pump(body, phase)))

    # -- receiving

    async def _read(self) -> None:
        try:
            while True:
                response = await self.call.read()
                if response is grpc.aio.EOF:
                    self._ended_cleanly()
                    return
                self._stat("stream_msgs_received")
                self._dispatch(response)
                if self.failure is not None:
                    return
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as error:
            await self._rpc_failed(error)

    def _dispatch(self, response: Any) -> None:
        kind = response.WhichOneof("response")
        self._progress.set()
        if kind == "immediate_response":
            self._immediate(response.immediate_response)
        elif kind in ("request_headers", "response_headers"):
            if kind not in self.sent or kind in self.done:
                return self._spurious(kind)
            if response.request_headers.response.HasField("body_mutation") or (
                response.response_headers.response.HasField("body_mutation")
            ):
                return self._spurious(f"{kind} with a body mutation")
            self.done.add(kind)
            self.owed.discard(kind)
            future = self.request_headers if kind == "request_headers" else self.response_headers
            future.set_result(getattr(response, kind).response)
        elif kind in ("request_body", "response_body"):
            headers_phase = kind.replace("body", "headers")
            if headers_phase not in self.done or kind in self.done:
                return self._spurious(kind)
            common = getattr(response, kind).response
            mutation = common.body_mutation
            if common.HasField("body_mutation") and mutation.WhichOneof("mutation") != "streamed_response":
                return self._spurious(f"{kind} with a non-streamed body mutation")
            queue = self.request_body if kind == "request_body" else self.response_body
            chunk = mutation.streamed_response.body
            if chunk:
                queue.put_nowait(chunk)
            if mutation.streamed_response.end_of_stream:
                self.done.add(kind)
                self.owed.discard(kind)
                queue.put_nowait(None)
        else:
            self._spurious(kind or "empty response")
        return None

    def _immediate(self, immediate: Any) -> None:
        self._stat("immediate_responses")
        status = immediate.status.code or 200
        headers, _, _ = apply_mutation([], immediate.headers, response=True)
        reply = LocalReply(status, bytes(immediate.body), "ext_proc_immediate_response", headers)
        self._fail(reply)

    def _spurious(self, what: str) -> None:
        self._stat("spurious_msgs_received")
        LOG.debug("ext_proc: out-of-order message from the processor: %s", what)
        self._fail(LocalReply(500, details="ext_proc_error_spurious_message"))

    def _ended_cleanly(self) -> None:
        """The processor closed the stream with OK: fine if it owes nothing, else a failure."""
        self.ended = True
        waiting = {"request_headers", "response_headers"} & (self.sent - self.done)
        half_done = any(
            f"{side}_headers" in self.done and f"{side}_body" not in self.done for side in ("request", "response")
        )
        if waiting or half_done:
            self._fail(LocalReply(500, details="ext_proc_error_stream_closed_early"))
            return
        self._progress.set()

    async def _rpc_failed(self, error: BaseException) -> None:
        code: Any = getattr(error, "code", None)
        if self.call is not None and not callable(code):
            with contextlib.suppress(Exception):
                code = await within(1.0, self.call.code())
        elif callable(code):
            code = code()
        value = code.value[0] if isinstance(code, grpc.StatusCode) else 2
        self._stat("streams_failed")
        details = getattr(error, "details", lambda: "")()
        LOG.debug("ext_proc: gRPC stream failed: %s %s", code, details)
        self._fail(LocalReply(500, details=f"ext_proc_error_gRPC_error_{value}"))

    async def _watchdog(self) -> None:
        timeout = self.config.message_timeout
        while self.failure is None:
            self._progress.clear()
            if not self.owed:
                await self._progress.wait()
                continue
            try:
                await within(timeout, self._progress.wait())
            except TimeoutError:
                if self.owed and self.failure is None:
                    self._stat("message_timeouts")
                    self._fail(LocalReply(504, details="ext_proc_error_message_timeout"))
                    return

    def _fail(self, reply: LocalReply | None, error: BaseException | None = None) -> None:
        if self.failure is not None:
            return
        self.failure = reply or LocalReply(0, details=f"downstream_or_upstream_reset: {error}")
        exc: BaseException = ReplyError(self.failure) if reply is not None else ResetError(str(error))
        for future in (self.request_headers, self.response_headers):
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved here: a phase that never comes must not warn
        for queue in (self.request_body, self.response_body):
            queue.put_nowait(exc)
        if self.call is not None:
            self.call.cancel()

    # -- phases

    async def processed(self, queue: asyncio.Queue[bytes | BaseException | None]) -> AsyncIterator[bytes]:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


# --- runtime: the proxy --------------------------------------------------------------------------


def normalize(path: str, *, dots: bool, slashes: bool) -> str | None:
    """``:path`` as ``normalize_path`` (RFC 3986 dot segments) and ``merge_slashes`` leave it; None if invalid."""
    bare, sep, query = path.partition("?")
    if not bare.startswith("/"):
        return None
    if slashes:
        bare = re.sub("/{2,}", "/", bare)
    if dots:
        out: list[str] = []
        parts = bare.split("/")[1:]
        for i, part in enumerate(parts):
            if part == ".":
                if i == len(parts) - 1:
                    out.append("")
            elif part == "..":
                if out:
                    out.pop()
                if i == len(parts) - 1:
                    out.append("")
            else:
                out.append(part)
        bare = "/" + "/".join(out)
    return bare + sep + query


class Proxy:
    """The listeners, the admin endpoint, the clusters and the drain."""

    def __init__(self, config: Config, args: argparse.Namespace) -> None:
        self.config = config
        self.args = args
        self.stats = Stats()
        self.draining_since: float | None = None
        self.health_failed = False
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.stopping = asyncio.Event()
        self.grpc: dict[str, GrpcCluster] = {}
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        self.runners: list[web.ServerRunner] = []
        self.sites: list[web.TCPSite] = []
        self.started = time.time()

    # -- start and stop

    async def start(self) -> None:
        for listener in self.config.listeners:
            for f in listener.filters:
                if isinstance(f, ExtProcFilter) and f.cluster not in self.grpc:
                    client = GrpcCluster(self.config.clusters[f.cluster], f.authority)
                    await client.start()
                    self.grpc[f.cluster] = client
        servers: list[tuple[str, int, Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]]] = [
            (listener.host, listener.port, self._handler(listener)) for listener in self.config.listeners
        ]
        if self.config.admin is not None:
            servers.append((*self.config.admin, self._admin))
        for host, port, handler in servers:
            server = web.Server(
                handler,
                access_log=None,
                max_line_size=65536,
                max_field_size=65536,
                auto_decompress=False,
                keepalive_timeout=3600,
            )
            runner = web.ServerRunner(server, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
            self.runners.append(runner)
            self.sites.append(site)
        self.stats.set("envoy_server_live", 1)
        self.stats.set("envoy_server_state", 0)
        names = ", ".join(f"{listener.name}={listener.host}:{listener.port}" for listener in self.config.listeners)
        LOG.info("stand-in for envoy %s started: listeners %s, admin %s", VERSION, names, self.config.admin)

    def drain(self) -> None:
        if self.draining_since is None:
            self.draining_since = time.monotonic()
            self.stats.set("envoy_server_state", 1)
            LOG.info("shutting down: draining (strategy %s, at most %ds)", self.args.drain_strategy, self.drain_time)
            self.stopping.set()

    @property
    def drain_time(self) -> int:
        return int(self.args.drain_time_s)

    async def shutdown(self) -> None:
        for site in self.sites:
            await site.stop()
        try:
            await within(self.drain_time, self.idle.wait())
        except TimeoutError:
            LOG.warning("drain time over with %d request(s) in flight: closing them", self.inflight)
        for runner in self.runners:
            await runner.cleanup()
        for session in self.sessions.values():
            await session.close()
        for client in self.grpc.values():
            await client.close()
        LOG.info("exiting")

    def close_connection(self) -> bool:
        """Whether a response now should close its connection (drain strategy)."""
        if self.draining_since is None:
            return False
        if self.args.drain_strategy == "immediate" or self.drain_time == 0:
            return True
        return random.random() < (time.monotonic() - self.draining_since) / self.drain_time

    def session(self, cluster: Cluster) -> aiohttp.ClientSession:
        if cluster.name not in self.sessions:
            connector = aiohttp.TCPConnector(limit=cluster.max_connections, limit_per_host=0, ttl_dns_cache=None)
            self.sessions[cluster.name] = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self.sessions[cluster.name]

    # -- admin

    async def _admin(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/ready" and request.method in ("GET", "HEAD"):
            live = self.draining_since is None
            return web.Response(status=200 if live else 503, text="LIVE\n" if live else "DRAINING\n")
        if path == "/stats/prometheus" and request.method == "GET":
            self.stats.set("envoy_server_uptime", int(time.time() - self.started))
            return web.Response(text=self.stats.render(), content_type="text/plain", charset="utf-8")
        if path in ("/healthcheck/fail", "/healthcheck/ok") and request.method == "POST":
            self.health_failed = path.endswith("fail")
            return web.Response(text="OK\n")
        if path == "/quitquitquit" and request.method == "POST":
            asyncio.get_running_loop().call_soon(self.drain)
            return web.Response(text="OK\n")
        return web.Response(status=404, text="invalid path. admin commands are: /ready /stats/prometheus\n")

    # -- the HTTP connection manager

    def _handler(self, listener: Listener) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            started = time.monotonic()
            self.inflight += 1
            self.idle.clear()
            labels = {"envoy_http_conn_manager_prefix": listener.stat_prefix}
            self.stats.inc("envoy_http_downstream_rq_total", **labels)
            self.stats.add("envoy_http_downstream_rq_active", 1, **labels)
            exchange: Exchange | None = None
            status = 0
            sent = 0
            try:
                exchange, outcome = await self._exchange(listener, request)
                response, status, sent = await self._respond(request, exchange, outcome)
                return response
            finally:
                self.inflight -= 1
                if not self.inflight:
                    self.idle.set()
                self.stats.add("envoy_http_downstream_rq_active", -1, **labels)
                code_class = str(status // 100) if status else "reset"
                self.stats.inc("envoy_http_downstream_rq_xx", envoy_response_code_class=code_class, **labels)
                if exchange is not None:
                    for stream in exchange.encoders:
                        await stream.close()
                LOG.info(
                    '%s "%s %s HTTP/%d.%d" %s %s bytes_sent=%d upstream=%s request_id=%s duration_ms=%d',
                    listener.name,
                    request.method,
                    request.raw_path,
                    request.version.major,
                    request.version.minor,
                    status or "-",
                    exchange.details if exchange else "-",
                    sent,
                    exchange.upstream if exchange else "-",
                    exchange.request_id if exchange else "-",
                    (time.monotonic() - started) * 1000,
                )

        return handle

    async def _exchange(
        self, listener: Listener, request: web.BaseRequest
    ) -> tuple[Exchange, UpstreamResponse | LocalReply]:
        """The request through the listener's filters: what the client should get."""
        incoming = [(k.lower(), v) for k, v in request.headers.items()]
        request_id = header(incoming, "x-request-id") or str(uuid.uuid4())
        has_body = request.body_exists
        body = Body(request.content.iter_any(), request.content_length) if has_body else None
        exchange = Exchange(listener=listener, headers=[], body=body, request_id=request_id)
        if listener.reject_underscores and any("_" in k for k, _ in incoming):
            exchange.details = "http1.unexpected_underscore"
            return exchange, LocalReply(400, b"Bad Request", exchange.details)
        path = normalize(request.raw_path, dots=listener.normalize_path, slashes=listener.merge_slashes)
        if path is None:
            exchange.details = "http1.invalid_url"
            return exchange, LocalReply(400, b"Bad Request", exchange.details)
        authority = header(incoming, "host") or ""
        headers: Headers = [
            (":authority", authority),
            (":path", path),
            (":method", request.method),
            (":scheme", "http"),
        ]
        te = header(incoming, "te")
        headers += [(k, v) for k, v in incoming if k not in HOP_BY_HOP and k != "host"]
        if te and "trailers" in te.lower():
            headers.append(("te", "trailers"))
        remote = request.remote or ""
        if listener.use_remote_address:
            forwarded = header(headers, "x-forwarded-for")
            headers = without(headers, "x-forwarded-for", "x-forwarded-proto")
            headers.append(("x-forwarded-for", f"{forwarded}, {remote}" if forwarded else remote))
            headers.append(("x-forwarded-proto", "http"))
        elif header(headers, "x-forwarded-proto") is None:
            headers.append(("x-forwarded-proto", "http"))
        if header(headers, "x-request-id") is None:
            headers.append(("x-request-id", request_id))
        exchange.headers = headers
        for f in listener.filters:
            try:
                outcome = await self._decode(f, exchange)
            except ReplyError as reply:
                exchange.details = reply.reply.details
                return exchange, reply.reply
            except ResetError as error:
                return exchange, LocalReply(0, details=f"downstream_reset: {error}")
            if outcome is not None:
                if isinstance(outcome, LocalReply):
                    exchange.details = outcome.details or exchange.details
                return exchange, outcome
        raise AssertionError("the router is the last filter")  # checked when the config was loaded

    async def _decode(self, f: HttpFilter, exchange: Exchange) -> UpstreamResponse | LocalReply | None:
        if isinstance(f, HeaderMutationFilter):
            exchange.headers = without(exchange.headers, *f.remove)
            return None
        if isinstance(f, HealthCheckFilter):
            if exchange.path.partition("?")[0] != f.path:
                return None
            healthy = self.draining_since is None and not self.health_failed
            return LocalReply(200 if healthy else 503, details="health_check")
        if isinstance(f, ExtProcFilter):
            await self._ext_proc_request(f, exchange)
            return None
        return await self._route(f, exchange)

    async def _ext_proc_request(self, config: ExtProcFilter, exchange: Exchange) -> None:
        stream = ExtProcStream(config, self.grpc[config.cluster], self.stats, exchange.listener.stat_prefix)
        exchange.encoders.append(stream)
        await stream.open(exchange.headers, end_of_stream=exchange.body is None)
        if exchange.body is not None:
            stream.start_pump(exchange.body, "request_body")
        common = await stream.request_headers
        headers, set_names, rejected = apply_mutation(exchange.headers, common.header_mutation, response=False)
        if rejected:
            self.stats.inc(
                "envoy_http_ext_proc_rejected_header_mutations",
                rejected,
                envoy_http_conn_manager_prefix=exchange.listener.stat_prefix,
            )
        if exchange.body is not None:
            # the upstream gets what the processor streams back, whose length it may have changed
            if "content-length" not in set_names:
                headers = without(headers, "content-length")
            length = header(headers, "content-length")
            exchange.body = Body(stream.processed(stream.request_body), int(length) if length else None)
        exchange.headers = headers

    async def _route(self, f: RouterFilter, exchange: Exchange) -> UpstreamResponse | LocalReply:
        authority = header(exchange.headers, ":authority") or ""
        vhost = next((v for v in exchange.listener.virtual_hosts if v.serves(authority)), None)
        route = next((r for r in vhost.routes if r.matches(exchange.path)), None) if vhost else None
        if route is None:
            return LocalReply(404, details="route_not_found")
        cluster = self.config.clusters[route.cluster]
        cluster_labels = {"envoy_cluster_name": cluster.name}
        if cluster.original_dst_header is not None:
            target = _address(header(exchange.headers, cluster.original_dst_header))
            if target is None:
                self.stats.inc("envoy_cluster_upstream_cx_none_healthy", **cluster_labels)
                return LocalReply(503, b"no healthy upstream", "no_healthy_upstream", [("content-type", "text/plain")])
        else:
            target = cluster.pick()
        if cluster.overflowing():
            self.stats.inc("envoy_cluster_upstream_rq_pending_overflow", **cluster_labels)
            extra = [] if f.suppress_envoy_headers else [("x-envoy-overloaded", "true")]
            return LocalReply(503, CONNECT_FAILURE + b"overflow", "upstream_overflow", extra)
        host, port = target
        exchange.upstream = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        method = header(exchange.headers, ":method") or "GET"
        out = CIMultiDict[str]()
        out["Host"] = authority
        for k, v in exchange.headers:
            if not k.startswith(":") and k not in HOP_BY_HOP:
                out.add(k, v)
        if not f.suppress_envoy_headers and route.timeout:
            out["x-envoy-expected-rq-timeout-ms"] = str(int(route.timeout * 1000))
        data = exchange.body.chunks if exchange.body is not None else None
        timeout = aiohttp.ClientTimeout(
            total=route.timeout, sock_connect=cluster.connect_timeout, sock_read=route.idle_timeout
        )
        url = URL(f"http://{exchange.upstream}{exchange.path}", encoded=True)
        self.stats.inc("envoy_cluster_upstream_rq_total", **cluster_labels)
        cluster.active += 1
        started = time.monotonic()
        try:
            response = await self.session(cluster).request(
                method, url, headers=out, data=data, timeout=timeout, allow_redirects=False
            )
        except ReplyError as reply:  # ext_proc failed while the request body streamed upstream
            cluster.active -= 1
            return reply.reply
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            cluster.active -= 1
            failed = next((s.failure for s in exchange.encoders if s.failure is not None), None)
            if failed is not None and failed.status:
                return failed
            return self._upstream_error(error, cluster)
        except BaseException:
            cluster.active -= 1
            raise
        self.stats.inc("envoy_cluster_upstream_rq_completed", **cluster_labels)
        headers: Headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.raw_headers]
        headers = [(k, v) for k, v in headers if k not in HOP_BY_HOP]
        if not f.suppress_envoy_headers:
            headers.append(("x-envoy-upstream-service-time", str(int((time.monotonic() - started) * 1000))))
        length = response.content_length
        body: Body | None = None
        if not body_free(method, response.status, length):
            body = Body(_released(response, cluster), length)
        else:
            response.release()
            cluster.active -= 1
        return UpstreamResponse(response.status, headers, body, exchange.upstream)

    def _upstream_error(self, error: BaseException, cluster: Cluster) -> LocalReply:
        labels = {"envoy_cluster_name": cluster.name}
        if isinstance(error, aiohttp.ConnectionTimeoutError):
            self.stats.inc("envoy_cluster_upstream_cx_connect_timeout", **labels)
            return LocalReply(503, CONNECT_FAILURE + b"connection timeout", "upstream_reset_before_response")
        if isinstance(error, aiohttp.ServerTimeoutError):  # no byte for idle_timeout
            self.stats.inc("envoy_cluster_upstream_rq_timeout", **labels)
            return LocalReply(504, b"stream timeout", "stream_idle_timeout")
        if isinstance(error, TimeoutError):  # the route's timeout
            self.stats.inc("envoy_cluster_upstream_rq_timeout", **labels)
            return LocalReply(504, b"upstream request timeout", "upstream_response_timeout")
        if isinstance(error, aiohttp.ClientConnectorError):
            self.stats.inc("envoy_cluster_upstream_cx_connect_fail", **labels)
            return LocalReply(503, CONNECT_FAILURE + b"connection failure", "upstream_reset_before_response")
        LOG.debug("upstream %s: %r", cluster.name, error)
        return LocalReply(503, CONNECT_FAILURE + b"connection termination", "upstream_reset_before_response")

    async def _ext_proc_response(
        self, stream: ExtProcStream, exchange: Exchange, response: UpstreamResponse
    ) -> UpstreamResponse:
        if stream.ended or stream.failure is not None:
            if stream.failure is not None and stream.failure.status:
                raise ReplyError(stream.failure)
            return response
        headers = [(":status", str(response.status)), *response.headers]
        message = ext_proc.HttpHeaders(headers=_header_map(headers), end_of_stream=response.body is None)
        await stream._send(ext_proc.ProcessingRequest(response_headers=message), "response_headers")
        if stream.ended:  # closed right after the request phase: pass the response through
            return response
        if response.body is not None:
            stream.start_pump(response.body, "response_body")
        else:
            stream.done.add("response_body")
        common = await stream.response_headers
        mutated, set_names, rejected = apply_mutation(headers, common.header_mutation, response=True)
        if rejected:
            self.stats.inc(
                "envoy_http_ext_proc_rejected_header_mutations",
                rejected,
                envoy_http_conn_manager_prefix=exchange.listener.stat_prefix,
            )
        status = int(header(mutated, ":status") or response.status)
        mutated = [(k, v) for k, v in mutated if not k.startswith(":")]
        body = response.body
        if body is not None:
            if "content-length" not in set_names:
                mutated = without(mutated, "content-length")
            length = header(mutated, "content-length")
            body = Body(stream.processed(stream.response_body), int(length) if length else None)
        return UpstreamResponse(status, mutated, body, response.upstream)

    async def _respond(
        self, request: web.BaseRequest, exchange: Exchange, outcome: UpstreamResponse | LocalReply
    ) -> tuple[web.StreamResponse, int, int]:
        """Send ``outcome`` (through the ext_proc response phase) to the client: (response, status, body bytes)."""
        if isinstance(outcome, UpstreamResponse):
            try:
                for stream in reversed(exchange.encoders):
                    outcome = await self._ext_proc_response(stream, exchange, outcome)
            except ReplyError as reply:
                await _discard(outcome)
                exchange.details = reply.reply.details
                outcome = reply.reply
            except ResetError as error:
                await _discard(outcome)
                exchange.details = f"downstream_reset: {error}"
                return self._abort(request), 0, 0
        if isinstance(outcome, LocalReply):
            if not outcome.status:  # the client or the upstream went away
                exchange.details = outcome.details
                return self._abort(request), 0, 0
            local = web.Response(status=outcome.status, body=outcome.body)
            for k, v in outcome.headers:
                local.headers.add(k, v)
            if outcome.body and "content-type" not in {k for k, _ in outcome.headers}:
                local.headers["content-type"] = "text/plain"
            self._finish_headers(local)
            await local.prepare(request)
            await local.write_eof()
            return local, outcome.status, len(outcome.body)
        response = web.StreamResponse(status=outcome.status)
        for k, v in outcome.headers:
            if k not in ("content-length", "date", "server"):
                response.headers.add(k, v)
        length = header(outcome.headers, "content-length")
        if outcome.body is not None and length is None:
            response.enable_chunked_encoding()
        elif length is not None:
            response.content_length = int(length)
        self._finish_headers(response)
        sent = 0
        try:
            await response.prepare(request)
            if outcome.body is not None:
                async for chunk in outcome.body.chunks:
                    await response.write(chunk)
                    sent += len(chunk)
            await response.write_eof()
        except (ReplyError, ResetError, ConnectionError, aiohttp.ClientError, TimeoutError, OSError) as error:
            exchange.details = f"reset after response headers: {type(error).__name__} {error}"
            self._abort(request)
        finally:
            await _discard(outcome)
        return response, outcome.status, sent

    def _finish_headers(self, response: web.StreamResponse) -> None:
        response.headers["server"] = "envoy"
        if self.close_connection():
            response.force_close()
            response.headers["connection"] = "close"

    def _abort(self, request: web.BaseRequest) -> web.StreamResponse:
        """Reset the downstream connection (what Envoy does when a stream fails after it started)."""
        if request.transport is not None:
            request.transport.abort()
        return web.StreamResponse(status=500)


def _address(value: str | None) -> tuple[str, int] | None:
    """``IP:port`` (IPv6 in brackets) as an ORIGINAL_DST header names it; None if it is not one."""
    if not value:
        return None
    host, sep, port = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        return None
    return (host, number) if sep and 0 < number < 65536 else None


async def _released(response: aiohttp.ClientResponse, cluster: Cluster) -> AsyncIterator[bytes]:
    """The upstream body as it arrives (no buffering: SSE events go on one by one)."""
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, TimeoutError) as error:
        raise ResetError(f"upstream reset: {error}") from None
    finally:
        response.release()
        cluster.active -= 1


async def _discard(outcome: UpstreamResponse | LocalReply) -> None:
    if isinstance(outcome, UpstreamResponse) and outcome.body is not None:
        chunks = outcome.body.chunks
        if hasattr(chunks, "aclose"):
            with contextlib.suppress(Exception):
                await chunks.aclose()


# --- main --------------------------------------------------------------------------------------------


async def serve(config: Config, args: argparse.Namespace) -> None:
    proxy = Proxy(config, args)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, proxy.drain)
    try:
        await proxy.start()
    except OSError as error:
        raise ConfigError(f"cannot listen: {error}") from None
    await proxy.stopping.wait()
    await proxy.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.log_level)
    LOG.debug(
        "service cluster %r node %r zone %r, base id %d, concurrency %d (one event loop)",
        args.service_cluster,
        args.service_node,
        args.service_zone,
        args.base_id,
        args.concurrency,
    )
    try:
        config = load_config(args.config_path)
        if args.mode == "validate":
            print(f"configuration '{args.config_path}' OK")
            return 0
        asyncio.run(serve(config, args))
    except ConfigError as error:
        LOG.critical("error initializing configuration '%s': %s", args.config_path, error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
