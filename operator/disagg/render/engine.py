"""Engine (vLLM) pod templates for the prefill, decode and aggregated prefill-decode roles.

Conventions follow llm-d so its router works unchanged: ``llm-d.ai/role`` labels, prefill vLLM on
8000, decode vLLM on 8200 behind the routing sidecar on 8000, NIXL side channel on 5600 with the
host taken from the downward API.
"""

from __future__ import annotations

import json
from typing import Any

from disagg.api.spec import DisaggregatedModelSpec, EngineRoleSpec, EnvVar, NetworkKind
from disagg.planner.plan import EngineSettings, RolePlan
from disagg.settings import OperatorSettings

PREFILL_PORT = 8000
DECODE_VLLM_PORT = 8200
SIDECAR_PORT = 8000
NIXL_PORT = 5600
ENGINE_CONTAINER = "vllm"
STARTUP_PROBE_SECONDS = 2
STARTUP_LIMIT_SECONDS = 1800
"""vLLM has this long to load its weights and answer /health before the kubelet restarts it."""
ENGINE_DRAIN_SECONDS = 5
"""How long a deleted engine keeps serving before vLLM gets SIGTERM (a preStop sleep): the router
drops a terminating pod from its pool within this, so a request that arrives during a scale-down
(or just as the model goes to sleep) is held or sent elsewhere instead of meeting a stopped engine."""
SIDECAR_CONTAINER = "routing-sidecar"


def served_model_path(spec: DisaggregatedModelSpec) -> str:
    """What vLLM loads: the repo id of an hf:// URI, a mounted path, or the model name."""
    uri = spec.model.uri
    if uri is None or uri.startswith("hf://"):
        return uri[len("hf://") :] if uri else spec.model.name
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if uri.startswith("pvc://"):
        return "/models/" + uri[len("pvc://") :].split("/", 1)[-1] if "/" in uri[len("pvc://") :] else "/models"
    return uri


def kv_transfer_config(spec: DisaggregatedModelSpec) -> str:
    """NixlConnector config; recompute on load failure so a prefill pod scaled away costs a recompute."""
    config: dict[str, Any] = {
        "kv_connector": spec.kv_transfer.connector.value,
        "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
    }
    backends = [b.value for b in spec.kv_transfer.backends]
    if backends != ["UCX"]:
        config["kv_connector_extra_config"] = {"backends": backends}
    return json.dumps(config, separators=(",", ":"), sort_keys=True)


def engine_args(
    spec: DisaggregatedModelSpec,
    role: EngineRoleSpec,
    *,
    port: int,
    plan_role: RolePlan,
    engine: EngineSettings,
    disaggregated: bool,
) -> list[str]:
    """The ``vllm serve`` arguments: what the plan decided (parallelism, precisions, the batch limit, the
    step's token budget and, when the KV cache cannot hold the checkpoint's context, the context), then
    the spec's own args (engine.args, then the role's; argparse keeps the last of a repeated flag, so
    they win)."""
    args = [
        served_model_path(spec),
        f"--port={port}",
        f"--served-model-name={spec.model.name}",
        f"--tensor-parallel-size={plan_role.tensor_parallel}",
    ]
    if plan_role.data_parallel > 1:
        args.append(f"--data-parallel-size={plan_role.data_parallel}")
    if plan_role.expert_parallel:
        args.append("--enable-expert-parallel")
    if engine.dtype is not None:
        args.append(f"--dtype={engine.dtype}")
    if engine.quantization is not None:
        args.append(f"--quantization={engine.quantization}")
    if engine.kv_cache_dtype is not None:
        args.append(f"--kv-cache-dtype={engine.kv_cache_dtype}")
    if plan_role.max_num_seqs is not None:
        args.append(f"--max-num-seqs={plan_role.max_num_seqs}")
    if plan_role.max_num_batched_tokens is not None:
        args.append(f"--max-num-batched-tokens={plan_role.max_num_batched_tokens}")
    if plan_role.max_model_len is not None:
        args.append(f"--max-model-len={plan_role.max_model_len}")
    if disaggregated:
        args += ["--block-size=128", f"--kv-transfer-config={kv_transfer_config(spec)}"]
    return [*args, *spec.engine.args, *role.args]


def _env_entry(var: EnvVar) -> dict[str, Any]:
    return var.wire()


def engine_env(spec: DisaggregatedModelSpec, role: EngineRoleSpec, *, disaggregated: bool) -> list[dict[str, Any]]:
    """Operator env first, then engine.env, then role env; a later entry with the same name wins."""
    env: dict[str, dict[str, Any]] = {}
    if disaggregated:
        ucx = "rc,cuda_ipc,cuda_copy,tcp" if spec.kv_transfer.network == NetworkKind.RDMA else "cuda_ipc,cuda_copy,tcp"
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = {
            "name": "VLLM_NIXL_SIDE_CHANNEL_HOST",
            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
        }
        env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = {"name": "VLLM_NIXL_SIDE_CHANNEL_PORT", "value": str(NIXL_PORT)}
        env["UCX_TLS"] = {"name": "UCX_TLS", "value": ucx}
    if spec.model.token_secret_ref is not None:
        ref = spec.model.token_secret_ref
        env["HF_TOKEN"] = {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        }
    for var in [*spec.engine.env, *role.env]:
        env[var.name] = _env_entry(var)
    return list(env.values())


def _resources(role: EngineRoleSpec, gpu_resource: str, gpus: int) -> dict[str, Any]:
    requests = dict(role.resources.requests)
    limits = dict(role.resources.limits)
    requests[gpu_resource] = str(gpus)
    limits[gpu_resource] = str(gpus)
    return {"requests": dict(sorted(requests.items())), "limits": dict(sorted(limits.items()))}


def engine_container(
    spec: DisaggregatedModelSpec,
    role: EngineRoleSpec,
    settings: OperatorSettings,
    *,
    port: int,
    port_name: str,
    plan_role: RolePlan,
    engine: EngineSettings,
    disaggregated: bool,
) -> dict[str, Any]:
    ports = [{"name": port_name, "containerPort": port, "protocol": "TCP"}]
    if disaggregated:
        # one NIXL side channel per data-parallel rank: VLLM_NIXL_SIDE_CHANNEL_PORT + rank
        ports.append({"name": "nixl", "containerPort": NIXL_PORT, "protocol": "TCP"})
        ports += [
            {"name": f"nixl-{rank}", "containerPort": NIXL_PORT + rank, "protocol": "TCP"}
            for rank in range(1, plan_role.data_parallel)
        ]
    container: dict[str, Any] = {
        "name": ENGINE_CONTAINER,
        "image": spec.engine.image or settings.engine_image,
        "command": ["vllm", "serve"],
        "args": engine_args(spec, role, port=port, plan_role=plan_role, engine=engine, disaggregated=disaggregated),
        "ports": ports,
        "resources": _resources(role, spec.accelerator.resource_name, plan_role.gpus_per_pod),
        # probed every 2 s for up to 30 min of weight loading: a pod woken from zero is Ready (and
        # routed to) within 2 s of vLLM answering, not up to 10 s later
        "startupProbe": {
            "httpGet": {"path": "/health", "port": port},
            "periodSeconds": STARTUP_PROBE_SECONDS,
            "failureThreshold": STARTUP_LIMIT_SECONDS // STARTUP_PROBE_SECONDS,
        },
        "readinessProbe": {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 10, "failureThreshold": 6},
        "lifecycle": {"preStop": {"sleep": {"seconds": ENGINE_DRAIN_SECONDS}}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],  # noqa: S108 - shared memory for TP workers
        "securityContext": container_security(spec, role, disaggregated=disaggregated),
    }
    env = engine_env(spec, role, disaggregated=disaggregated)
    if env:  # the API server drops an empty list; rendering none keeps drift checks exact
        container["env"] = env
    return container


def container_security(spec: DisaggregatedModelSpec, role: EngineRoleSpec, *, disaggregated: bool) -> dict[str, Any]:
    """Restrictive defaults a GPU engine still runs under; the role's overrides win field by field.

    RDMA transports pin memory, which needs IPC_LOCK; nothing else is kept. Root is not forbidden
    by default because the common vLLM images run as root; set runAsNonRoot in the override when
    your image allows it.
    """
    capabilities: dict[str, Any] = {"drop": ["ALL"]}
    if disaggregated and spec.kv_transfer.network == NetworkKind.RDMA:
        capabilities["add"] = ["IPC_LOCK"]
    defaults: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": capabilities,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return {**defaults, **(role.scheduling.security_context or {})}


def routing_sidecar(settings: OperatorSettings) -> dict[str, Any]:
    """llm-d's P/D sidecar as a native sidecar: it starts before vLLM and stops after it.

    It takes every request on the decode pod's serving port, runs the prefill leg on the pod the
    router named in ``x-prefiller-host-port`` (if any) and then decode on the local vLLM. Plain
    HTTP like the engines: the NetworkPolicy, not TLS, keeps strangers out.
    """
    return {
        "name": SIDECAR_CONTAINER,
        "image": settings.sidecar_image,
        "restartPolicy": "Always",
        "args": [
            f"--port={SIDECAR_PORT}",
            f"--model-server-port={DECODE_VLLM_PORT}",
            "--kv-connector=nixlv2",
            "--secure-proxy=false",
            "--zap-encoder=json",
        ],
        "ports": [{"name": "http", "containerPort": SIDECAR_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
