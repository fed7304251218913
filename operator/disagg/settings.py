"""Cluster-wide operator settings (Helm values -> environment / config file), with documented defaults."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel, to_snake

from disagg import upstream

DEFAULT_TOPOLOGY_LABELS: dict[str, str] = {
    "zone": "topology.kubernetes.io/zone",
    "block": "topology.disagg.dev/block",
    "rack": "topology.disagg.dev/rack",
    "host": "kubernetes.io/hostname",
}
"""There is no standard rack label; map levels to your cluster's keys, e.g. rack ->
``nvidia.com/gpu.clique`` (GPU Feature Discovery) or ``ds.coreweave.com/nvlink.domain``."""


DEFAULT_METRICS_SCRAPER: dict[str, Any] = {
    "namespaceSelector": {},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


class MetricNames(BaseModel):
    """Custom-metric names as the metrics adapter exposes them (colons renamed to underscores)."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)
    prefill_queue: str = "vllm_num_requests_waiting"
    decode_kv_cache: str = "vllm_kv_cache_usage_perc"


class OperatorSettings(BaseModel):
    """What a cluster administrator sets once; every field has a default that works on kind/kwok."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)
    topology_labels: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TOPOLOGY_LABELS))
    engine_image: str = upstream.VLLM_IMAGE
    router_image: str = upstream.LLMD_ROUTER_IMAGE
    """The llm-d endpoint picker; its flags and config are rendered for upstream.LLMD_ROUTER_VERSION."""
    sidecar_image: str = upstream.LLMD_SIDECAR_IMAGE
    """The llm-d P/D sidecar in decode pods (same llm-d release as the router)."""
    envoy_image: str = upstream.ENVOY_IMAGE
    """The router pod's HTTP front: Envoy with an ext_proc filter to the endpoint picker."""
    prometheus_url: str | None = None
    metric_names: MetricNames = Field(default_factory=MetricNames)
    field_manager: str = "disagg-operator"
    prefix: str = "disagg.dev"
    """Label/annotation/finalizer prefix under our own domain."""
    stats_file: str | None = None
    """Write reconcile counters as JSON to this file every second (benchmarks)."""
    resync_seconds: Annotated[float, Field(gt=0)] = 60.0
    """Period of the level-based resync of every model (placement and drift)."""
    wake_poll_seconds: Annotated[float, Field(gt=0)] = 1.0
    """How often the router demand of models at zero is polled (bounds the operator's wake latency)."""
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch; empty means cluster-wide."""
    exclude_namespaces: list[str] = Field(default_factory=list)
    """Glob patterns of namespaces to leave alone (e.g. another operator instance's)."""
    leader_election: bool = False
    """Several replicas: only the holder of the Lease ``disagg-operator`` in leader_namespace acts."""
    leader_namespace: str = "default"
    inference_pool: bool = False
    """Render a Gateway API Inference Extension InferencePool per model (needs its CRD installed);
    the endpoint picker then discovers engines through it. Off: standalone discovery by label selector."""
    network_policy: bool = True
    """Render a NetworkPolicy per model so only its router, its engines and the metrics scrapers
    reach engine pods (vLLM has no authentication of its own)."""
    metrics_scrapers: list[dict[str, Any]] = Field(default_factory=lambda: [dict(DEFAULT_METRICS_SCRAPER)])
    """NetworkPolicy peers allowed to scrape engine metrics (Prometheus); default: pods labelled
    app.kubernetes.io/name=prometheus in any namespace (the Prometheus Operator's label)."""
    engine_clients: list[dict[str, Any]] = Field(default_factory=list)
    """NetworkPolicy peers besides the model's own router allowed to send requests to engine pods,
    e.g. your Gateway's pods when models are served through an InferencePool. With inferencePool
    on and none given, the engines' serving port is open to every pod (the Gateway must reach it);
    the decode vLLM port and the KV-transfer ports stay closed."""

    def prometheus_for(self, spec_url: str | None) -> str | None:
        """The Prometheus a model reads: its own ``autoscaling.prometheus.url``, else the operator's."""
        return spec_url or self.prometheus_url

    def manages(self, namespace: str) -> bool:
        """Whether models in ``namespace`` are this operator's to reconcile."""
        if self.namespaces and namespace not in self.namespaces:
            return False
        return not any(fnmatch.fnmatchcase(namespace, pattern) for pattern in self.exclude_namespaces)

    def level_label(self, level: str) -> str:
        try:
            return self.topology_labels[level]
        except KeyError as exc:
            raise ValueError(f"no node label configured for topology level {level!r}") from exc


def load_settings(environ: Mapping[str, str] | None = None) -> OperatorSettings:
    """Settings from ``DISAGG_SETTINGS_FILE`` (YAML, camelCase or snake_case keys) plus ``DISAGG_*`` overrides."""
    env = os.environ if environ is None else environ
    data: dict[str, object] = {}
    path = env.get("DISAGG_SETTINGS_FILE")
    if path:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: settings must be a mapping")
        # top-level keys to field names so DISAGG_* variables below override them; nested
        # models (metricNames) take camelCase through their aliases
        data.update({to_snake(str(k)): v for k, v in loaded.items()})
    for key in ("engine_image", "router_image", "sidecar_image", "envoy_image", "prometheus_url", "field_manager"):
        value = env.get(f"DISAGG_{key.upper()}")
        if value:
            data[key] = value
    if env.get("DISAGG_STATS_FILE"):
        data["stats_file"] = env["DISAGG_STATS_FILE"]
    if env.get("DISAGG_WAKE_POLL_SECONDS"):
        data["wake_poll_seconds"] = float(env["DISAGG_WAKE_POLL_SECONDS"])
    if env.get("DISAGG_RESYNC_SECONDS"):
        data["resync_seconds"] = float(env["DISAGG_RESYNC_SECONDS"])
    if env.get("DISAGG_LEADER_ELECTION"):
        data["leader_election"] = env["DISAGG_LEADER_ELECTION"].lower() in ("1", "true", "yes")
    namespace = env.get("DISAGG_LEADER_NAMESPACE") or env.get("POD_NAMESPACE")
    if namespace:
        data["leader_namespace"] = namespace
    if env.get("DISAGG_EXCLUDE_NAMESPACES"):
        data["exclude_namespaces"] = [n.strip() for n in env["DISAGG_EXCLUDE_NAMESPACES"].split(",") if n.strip()]
    if env.get("DISAGG_NAMESPACES"):
        data["namespaces"] = [n.strip() for n in env["DISAGG_NAMESPACES"].split(",") if n.strip()]
    if isinstance(data.get("topology_labels"), dict):
        data["topology_labels"] = {**DEFAULT_TOPOLOGY_LABELS, **data["topology_labels"]}  # type: ignore[dict-item]
    return OperatorSettings.model_validate(data)
