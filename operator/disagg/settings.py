"""Cluster-wide operator settings (Helm values -> environment / config file), with documented defaults."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel, to_snake

DEFAULT_TOPOLOGY_LABELS: dict[str, str] = {
    "zone": "topology.kubernetes.io/zone",
    "block": "topology.disagg.dev/block",
    "rack": "topology.disagg.dev/rack",
    "host": "kubernetes.io/hostname",
}
"""There is no standard rack label; map levels to your cluster's keys, e.g. rack ->
``nvidia.com/gpu.clique`` (GPU Feature Discovery) or ``ds.coreweave.com/nvlink.domain``."""


class MetricNames(BaseModel):
    """Custom-metric names as the metrics adapter exposes them (colons renamed to underscores)."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)
    prefill_queue: str = "vllm_num_requests_waiting"
    decode_kv_cache: str = "vllm_kv_cache_usage_perc"


class OperatorSettings(BaseModel):
    """What a cluster administrator sets once; every field has a default that works on kind/kwok."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)
    topology_labels: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TOPOLOGY_LABELS))
    engine_image: str = "ghcr.io/llm-d/llm-d-cuda:v0.4.0"
    router_image: str = "ghcr.io/llm-d/llm-d-inference-scheduler:v0.4.0"
    sidecar_image: str = "ghcr.io/llm-d/llm-d-routing-sidecar:v0.4.0"
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
    """Render a Gateway API Inference Extension InferencePool per model (needs its CRD installed)."""

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
    for key in ("engine_image", "router_image", "sidecar_image", "prometheus_url", "field_manager"):
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
