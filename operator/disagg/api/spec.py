"""The DisaggregatedModel spec: the single source of truth for the CRD schema.

Every field carries a docstring (it becomes the CRD description), its default and its bounds.
Cross-field rules are CEL expressions attached with ``x-kubernetes-validations`` so the API
server rejects bad input before the operator ever sees it; :func:`semantic_errors` repeats the
few checks CEL cannot express (e.g. presets the operator does not know).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from disagg.api.types import CamelModel, Duration, Quantity

GROUP = "disagg.dev"
VERSION = "v1alpha1"
KIND = "DisaggregatedModel"
PLURAL = "disaggregatedmodels"
SINGULAR = "disaggregatedmodel"
SHORT_NAMES = ("dm",)

TensorParallel = Literal[1, 2, 4, 8, 16, 32, 64]
DataParallel = Literal[1, 2, 4, 8, 16, 32, 64]
NameStr = Annotated[str, Field(min_length=1, max_length=253)]
LabelMap = dict[Annotated[str, Field(max_length=317)], Annotated[str, Field(max_length=63)]]


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


class Mode(StrEnum):
    AUTO = "auto"
    DISAGGREGATED = "disaggregated"
    AGGREGATED = "aggregated"


class ModeSwitch(StrEnum):
    MAKE_BEFORE_BREAK = "makeBeforeBreak"
    REPLACE = "replace"


class Dtype(StrEnum):
    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    FP4 = "fp4"


class KVCacheDtype(StrEnum):
    AUTO = "auto"
    BF16 = "bf16"
    FP8 = "fp8"


class TopologyLevel(StrEnum):
    ZONE = "zone"
    BLOCK = "block"
    RACK = "rack"
    HOST = "host"


class SecretKeyRef(CamelModel):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Name of a Secret in the model's namespace."""
    key: Annotated[str, Field(min_length=1, max_length=253)] = "token"
    """Key inside the Secret."""


class ModelSpec(CamelModel):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    """Model name served to clients (vLLM --served-model-name), e.g. meta-llama/Llama-3.3-70B-Instruct."""
    uri: Annotated[str, Field(max_length=1024, pattern=r"^(hf|pvc|s3|gs|oci|file)://.+$")] | None = None
    """Where the weights come from: hf://org/name, pvc://claim/path, s3://bucket/path. Defaults to hf://<name>."""
    preset: Annotated[str, Field(max_length=64, pattern=r"^[a-z0-9][a-z0-9.\-]*$")] | None = None
    """Architecture preset known to the planner (e.g. llama-3.3-70b); alternative to config."""
    config: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Hugging Face config.json content (architecture) when no preset fits."""
    dtype: Dtype = Dtype.AUTO
    """Weight precision the engine serves. auto: the checkpoint's own (its quantization_config, e.g. fp8
    for DeepSeek-V3, fp4 experts for gpt-oss; else its 16-bit torch_dtype), as vLLM loads it; fp8 on a
    16-bit checkpoint quantises at load time (vLLM --quantization=fp8); bf16/fp16 set the 16-bit type
    of an unquantised checkpoint (vLLM --dtype). A quantised checkpoint cannot be served wider, and fp4
    needs an fp4 checkpoint: the planner refuses both."""
    kv_cache_dtype: KVCacheDtype = KVCacheDtype.AUTO
    """KV-cache precision (vLLM --kv-cache-dtype). auto: what vLLM picks, which the planner assumes too:
    fp8 when the checkpoint's quantization_config declares an fp8 KV cache (ModelOpt kv_cache_quant_algo,
    compressed-tensors kv_cache_scheme), else the model's 16-bit dtype (also for fp8 weights)."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret holding a model-hub token, passed to the engine as HF_TOKEN; never copied elsewhere."""


class EnvVar(CamelModel):
    name: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
    """Environment variable name."""
    value: Annotated[str, Field(max_length=32768)] | None = None
    """Literal value (rendered verbatim, never through a shell)."""
    value_from: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef)."""


class EngineSpec(CamelModel):
    image: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    """Engine container image; defaults to the operator's configured vLLM image."""
    args: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=128)] = Field(default_factory=list)
    """Extra engine arguments appended to both roles (passed as argv, never through a shell)."""
    env: Annotated[list[EnvVar], Field(max_length=128)] = Field(default_factory=list)
    """Extra environment variables for both roles."""


class KVConnector(StrEnum):
    NIXL = "NixlConnector"


class KVBackend(StrEnum):
    UCX = "UCX"
    UCCL = "UCCL"
    LIBFABRIC = "LIBFABRIC"


class NetworkKind(StrEnum):
    RDMA = "rdma"
    TCP = "tcp"


class KVTransferSpec(CamelModel):
    connector: KVConnector = KVConnector.NIXL
    """vLLM KV connector moving KV blocks from prefill to decode."""
    backends: Annotated[list[KVBackend], Field(min_length=1, max_length=4)] = Field(
        default_factory=lambda: [KVBackend.UCX]
    )
    """NIXL transport backends, in order of preference."""
    network: NetworkKind = NetworkKind.RDMA
    """Fabric between prefill and decode pods; tcp is slow and makes disaggregation rarely pay."""
    bandwidth_gbps: Annotated[float, Field(gt=0, le=10000)] | None = None
    """Per-pod transfer bandwidth in GB/s; defaults to a typical figure for the network kind."""


class TokenLength(CamelModel):
    mean: Annotated[int, Field(ge=1, le=10_000_000)]
    """Mean tokens per request."""
    p90: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    """90th-percentile tokens per request, when known."""


class WorkloadSpec(CamelModel):
    model_config = CamelModel.model_config | {
        "json_schema_extra": _cel(
            (
                "!has(self.inputTokens.p90) || self.inputTokens.p90 >= self.inputTokens.mean",
                "inputTokens.p90 must be >= inputTokens.mean",
            )
        )
    }
    input_tokens: TokenLength = Field(default_factory=lambda: TokenLength(mean=2048))
    """Prompt length."""
    output_tokens: TokenLength = Field(default_factory=lambda: TokenLength(mean=256))
    """Generated length."""
    request_rate: Annotated[float, Field(gt=0, le=1_000_000)] = 1.0
    """Expected steady request rate in requests per second (the planner sizes for it)."""
    prefix_cache_hit_percent: Annotated[int, Field(ge=0, le=100)] = 0
    """Share of prompt tokens served from the prefix cache, in percent."""


class SLOSpec(CamelModel):
    ttft: Duration = "2s"
    """Time-to-first-token target."""
    itl: Duration = "50ms"
    """Inter-token latency (time per output token) target."""
    percentile: Annotated[int, Field(ge=50, le=99)] = 90
    """Percentile at which both targets must hold."""


class AcceleratorSpec(CamelModel):
    type: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_\-]*$")] | None = None
    """GPU type from the planner catalog (h100-sxm, h100_sxm, B200, or a GPU Feature Discovery product such
    as NVIDIA-H100-80GB-HBM3). Unset: the GPU of the nodes the model may use, from their
    nvidia.com/gpu.product labels (nodes matching the roles' nodeSelector); status.plan says which, and
    nodes of different GPUs are an error (set the type and a node selector)."""
    resource_name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=r"^([a-z0-9.\-]+/)?[a-zA-Z0-9_.\-]+$")
    ] = "nvidia.com/gpu"
    """Extended resource requested per GPU."""


class ReplicaRange(CamelModel):
    model_config = CamelModel.model_config | {
        "json_schema_extra": _cel(("!has(self.max) || self.min <= self.max", "replicas.min must be <= replicas.max"))
    }
    min: Annotated[int, Field(ge=0, le=1000)] = 1
    """Floor; 0 only with scaleToZero."""
    max: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Ceiling for the autoscaler; unset means the planned count (no autoscaling headroom)."""


class Parallelism(CamelModel):
    tensor: TensorParallel | None = None
    """Tensor-parallel size of one attention rank. Unset: the planner chooses."""
    data: DataParallel | None = None
    """Attention data-parallel ranks per pod (vLLM --data-parallel-size; MoE models only): each rank of
    ``tensor`` GPUs keeps its own sequences and KV cache, the experts spread over all ``tensor x data``
    GPUs of the pod. Unset: the planner chooses (1 for dense models)."""
    expert: bool | None = None
    """Expert parallelism (vLLM --enable-expert-parallel; MoE models only): whole experts per GPU over
    the pod's ``tensor x data`` GPUs instead of every expert split over them. Unset: the planner
    chooses (on with data parallelism, EP = TP x DP)."""


class ResourceRequirements(CamelModel):
    requests: dict[Annotated[str, Field(max_length=253)], Quantity] = Field(default_factory=dict)
    """CPU, memory and other requests; GPUs are set from the tensor-parallel size."""
    limits: dict[Annotated[str, Field(max_length=253)], Quantity] = Field(default_factory=dict)
    """Limits; GPUs are set from the tensor-parallel size."""


class Toleration(CamelModel):
    key: Annotated[str, Field(max_length=317)] | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: Annotated[str, Field(max_length=63)] | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class SchedulingSpec(CamelModel):
    node_selector: LabelMap = Field(default_factory=dict)
    """Extra node selector merged with the topology placement."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(default_factory=list)
    """Tolerations (e.g. for tainted GPU nodes)."""
    priority_class_name: Annotated[str, Field(max_length=253)] | None = None
    """PriorityClass of the role's pods."""
    pod_labels: LabelMap = Field(default_factory=dict)
    """Extra labels on the role's pods (operator-owned labels win)."""
    pod_annotations: dict[Annotated[str, Field(max_length=317)], Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict
    )
    """Extra annotations on the role's pods."""
    security_context: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Container securityContext fields merged over the operator's defaults (no privilege escalation,
    all capabilities dropped except IPC_LOCK for RDMA, RuntimeDefault seccomp)."""


class PrefillAutoscaling(CamelModel):
    target_waiting_per_pod: Annotated[int, Field(ge=1, le=1000)] = 4
    """Waiting requests per pod the autoscaler aims for (vllm:num_requests_waiting)."""


class DecodeAutoscaling(CamelModel):
    target_kv_cache_percent: Annotated[int, Field(ge=1, le=100)] = 80
    """KV-cache utilisation per pod the autoscaler aims for (vllm:kv_cache_usage_perc)."""


class EngineRoleSpec(CamelModel):
    replicas: ReplicaRange = Field(default_factory=ReplicaRange)
    """Replica bounds; the planner's figure becomes the autoscaler floor within them."""
    parallelism: Parallelism = Field(default_factory=Parallelism)
    """Parallelism of one engine replica."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """Non-GPU resources of the engine container."""
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    """Scheduling overrides for this role's pods."""
    args: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=128)] = Field(default_factory=list)
    """Role-specific engine arguments appended after engine.args."""
    env: Annotated[list[EnvVar], Field(max_length=128)] = Field(default_factory=list)
    """Role-specific environment variables (override engine.env by name)."""


class PrefillRoleSpec(EngineRoleSpec):
    """Prefill pods (or, aggregated, the pods that do both): they scale on their queue."""

    autoscaling: PrefillAutoscaling = Field(default_factory=PrefillAutoscaling)
    """Autoscaling target: queue depth per pod."""


class DecodeRoleSpec(EngineRoleSpec):
    """Decode pods: they scale on KV-cache use."""

    autoscaling: DecodeAutoscaling = Field(default_factory=DecodeAutoscaling)
    """Autoscaling target: KV-cache use per pod."""


class RouterType(StrEnum):
    LLM_D = "llm-d"


class RouterAutoscaling(CamelModel):
    target_cpu_percent: Annotated[int, Field(ge=1, le=100)] = 70
    """Router CPU utilisation the autoscaler aims for."""


DisaggThreshold = Annotated[
    int | str,
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == int ? self >= 0 : self == 'auto'",
                    "message": "disaggThreshold must be 'auto' or a non-negative token count",
                }
            ],
        }
    ),
]


DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class GatewayRef(CamelModel):
    name: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
    """Name of a Gateway (gateway.networking.k8s.io) to attach the model's HTTPRoute to."""
    namespace: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)] | None = None
    """Namespace of the Gateway; defaults to the model's (the Gateway must allow routes from it)."""
    section_name: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """Listener of the Gateway to attach to; all listeners when omitted."""


class RouterSpec(CamelModel):
    type: RouterType = RouterType.LLM_D
    """Router implementation (llm-d endpoint picker)."""
    image: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    """Router image; defaults to the operator's configured llm-d router image."""
    replicas: ReplicaRange = Field(default_factory=ReplicaRange)
    """Router replica bounds (the router never scales to zero: it holds requests while engines wake)."""
    disagg_threshold: DisaggThreshold = "auto"
    """Uncached prompt tokens below which a request is served by decode alone; auto uses the plan."""
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    """Router container resources (CPU requests are defaulted: the autoscaler needs them)."""
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    """Scheduling overrides for router pods."""
    autoscaling: RouterAutoscaling = Field(default_factory=RouterAutoscaling)
    """Router autoscaling target."""
    gateway: GatewayRef | None = None
    """Also serve through this Gateway: an HTTPRoute whose backend is the model's InferencePool when
    the operator renders pools (the Gateway then asks the endpoint picker itself), else the router
    Service's HTTP port."""

    @field_validator("disagg_threshold")
    @classmethod
    def _auto_or_count(cls, value: int | str) -> int | str:
        if isinstance(value, str) and value != "auto":
            raise ValueError("disaggThreshold must be 'auto' or a non-negative token count")
        if isinstance(value, int) and value < 0:
            raise ValueError("disaggThreshold must be 'auto' or a non-negative token count")
        return value


class PackSpec(CamelModel):
    required: TopologyLevel | None = None
    """All prefill and decode pods must land in one domain of this level."""
    preferred: TopologyLevel | None = None
    """Pods prefer one domain of this level but may spill over."""


class TopologySpec(CamelModel):
    model_config = CamelModel.model_config | {
        "json_schema_extra": _cel(
            ("!(has(self.packDomain) && has(self.pack))", "set either topology.packDomain or topology.pack, not both")
        )
    }
    pack_domain: TopologyLevel | None = None
    """Shorthand for pack.required: every engine pod in one domain of this level (the node label
    the operator maps the level to); pods that do not fit there stay Pending."""
    pack: PackSpec | None = None
    """Packing constraints by topology level."""

    def required_level(self) -> TopologyLevel | None:
        if self.pack_domain is not None:
            return self.pack_domain
        return self.pack.required if self.pack else None

    def preferred_level(self) -> TopologyLevel | None:
        return self.pack.preferred if self.pack else None


class AutoscalingEngine(StrEnum):
    HPA = "hpa"
    KEDA = "keda"
    NONE = "none"


class PrometheusSpec(CamelModel):
    url: Annotated[str, Field(max_length=2048, pattern=r"^https?://.+$")] | None = None
    """Prometheus base URL; defaults to the operator's setting."""


class AutoscalingSpec(CamelModel):
    engine: AutoscalingEngine = AutoscalingEngine.HPA
    """hpa: HorizontalPodAutoscalers on custom metrics; keda: KEDA ScaledObjects; none: fixed replicas."""
    prometheus: PrometheusSpec = Field(default_factory=PrometheusSpec)
    """Where engine and router metrics are read."""
    scale_up_stabilization: Duration = "0s"
    """How long a higher recommendation must hold before scaling up (LLM pods start slowly: react at once)."""
    scale_down_stabilization: Duration = "5m"
    """How long a lower recommendation must hold before scaling down (at most 1 pod per 2 minutes)."""


class ScaleToZeroSpec(CamelModel):
    enabled: bool = False
    """Scale prefill and decode to zero together when idle; the router stays up."""
    idle_after: Duration = "15m"
    """No demand for this long means idle."""
    demand_query: Annotated[str, Field(max_length=4096)] | None = None
    """PromQL returning demand at the router now (> 0 wakes the model; it must read 0 once the model
    is idle, so no rate over a window longer than idleAfter); default from the llm-d router."""
    idle_query: Annotated[str, Field(max_length=4096)] | None = None
    """PromQL returning in-flight work at the engines (0 means idle); default from vLLM metrics."""
    hold_requests_for: Duration = "10m"
    """How long the router holds a request that arrives while the engines sleep (the llm-d router's
    flow-control queue TTL); keep it above the engines' cold start and below the clients' timeout."""


class ReplanSpec(CamelModel):
    enabled: bool = False
    """Re-plan from observed traffic."""
    interval: Duration = "5m"
    """How often to re-plan; each decision reads the traffic of the last interval (keep it at least
    four Prometheus scrape intervals long)."""


class PlannerSpec(CamelModel):
    """The planner always picks the fewest GPUs that meet the SLOs at the workload's rate (at a
    fixed rate that is also the best goodput per GPU), so it has no objective to choose."""

    replan: ReplanSpec = Field(default_factory=ReplanSpec)
    """Live re-planning settings."""


class DisaggregatedModelSpec(CamelModel):
    model_config = CamelModel.model_config | {
        "json_schema_extra": _cel(
            (
                "(has(self.mode) && self.mode == 'aggregated')"
                " || !has(self.prefill) || !has(self.decode) || !has(self.prefill.parallelism)"
                " || !has(self.decode.parallelism) || !has(self.prefill.parallelism.tensor)"
                " || !has(self.decode.parallelism.tensor)"
                " || self.decode.parallelism.tensor >= self.prefill.parallelism.tensor",
                "decode tensor parallelism must be >= prefill tensor parallelism (NixlConnector)",
            ),
            (
                "(has(self.scaleToZero) && self.scaleToZero.enabled)"
                " || ((!has(self.prefill) || !has(self.prefill.replicas) || self.prefill.replicas.min >= 1)"
                " && (!has(self.decode) || !has(self.decode.replicas) || self.decode.replicas.min >= 1))",
                "replicas.min may be 0 only with scaleToZero.enabled",
            ),
            (
                "!has(self.router) || !has(self.router.replicas) || self.router.replicas.min >= 1",
                "the router needs at least one replica (it holds requests while engines wake)",
            ),
        )
    }
    model: ModelSpec
    """The model to serve."""
    mode: Mode = Mode.AUTO
    """auto: the planner decides; disaggregated: prefill + decode; aggregated: one prefill-decode role."""
    mode_switch: ModeSwitch = Field(default_factory=lambda: ModeSwitch.MAKE_BEFORE_BREAK)
    """When the mode changes: makeBeforeBreak keeps the old roles serving until the new ones hold
    their planned floor (needs GPUs for both for a while; if the cluster cannot hold both, the new
    pods wait and Degraded says so); replace removes the old roles at once (capacity drops to zero
    until the new pods load)."""
    engine: EngineSpec = Field(default_factory=EngineSpec)
    """Engine container settings shared by all engine roles."""
    kv_transfer: KVTransferSpec = Field(default_factory=KVTransferSpec)
    """How KV moves from prefill to decode."""
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    """The traffic to size for."""
    slo: SLOSpec = Field(default_factory=SLOSpec)
    """Latency targets."""
    accelerator: AcceleratorSpec = Field(default_factory=AcceleratorSpec)
    """GPU type and resource name."""
    prefill: PrefillRoleSpec = Field(default_factory=PrefillRoleSpec)
    """Prefill role (in aggregated mode: the prefill-decode role)."""
    decode: DecodeRoleSpec = Field(default_factory=DecodeRoleSpec)
    """Decode role (ignored in aggregated mode)."""
    router: RouterSpec = Field(default_factory=RouterSpec)
    """Router (llm-d endpoint picker)."""
    topology: TopologySpec = Field(default_factory=TopologySpec)
    """Keep a model's prefill and decode pods together in one topology domain (a rack by default).

    A level (zone, block, rack, host) means the node label the operator's settings map it to
    (topologyLabels; defaults topology.kubernetes.io/zone, topology.disagg.dev/block,
    topology.disagg.dev/rack, kubernetes.io/hostname): a domain is one value of that label. The
    operator chooses the domain: of those whose Ready, schedulable nodes (matching each role's
    nodeSelector and tolerating its taints) can hold every planned engine pod, first-fit on free
    GPUs, the one with the fewest GPUs left over; it keeps its domain while it still fits, and
    GPUs claimed by other models placed moments before count as taken. The choice is in
    status.placement; pods get node affinity to it.
    """
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    """Autoscaling engine and metrics source."""
    scale_to_zero: ScaleToZeroSpec = Field(default_factory=ScaleToZeroSpec)
    """Scale-to-zero settings."""
    planner: PlannerSpec = Field(default_factory=PlannerSpec)
    """Planner settings."""


class SpecError(ValueError):
    """A spec the operator cannot act on; the message is shown to users verbatim."""


def semantic_errors(spec: DisaggregatedModelSpec) -> list[str]:
    """Cross-field problems the CRD's CEL rules also catch; repeated here for `disagg render`."""
    errors: list[str] = []
    for role in ("prefill", "decode", "router"):
        replicas: ReplicaRange = getattr(spec, role).replicas
        if replicas.max is not None and replicas.min > replicas.max:
            errors.append(f"{role}.replicas.min ({replicas.min}) must be <= {role}.replicas.max ({replicas.max})")
    ptp, dtp = spec.prefill.parallelism.tensor, spec.decode.parallelism.tensor
    if ptp is not None and dtp is not None and dtp < ptp and spec.mode != Mode.AGGREGATED:
        errors.append(f"decode tensor parallelism ({dtp}) must be >= prefill tensor parallelism ({ptp})")
    if not spec.scale_to_zero.enabled:
        for role in ("prefill", "decode"):
            if getattr(spec, role).replicas.min == 0:
                errors.append(f"{role}.replicas.min may be 0 only with scaleToZero.enabled")
    if spec.router.replicas.min < 1:
        errors.append("router.replicas.min must be >= 1")
    if spec.topology.pack_domain is not None and spec.topology.pack is not None:
        errors.append("set either topology.packDomain or topology.pack, not both")
    return errors
