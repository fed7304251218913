"""The plan the renderer consumes, and the placeholder planner used until the analytical one lands.

The renderer takes a :class:`Plan` as input, so a better planner changes the numbers, never the
renderer. The placeholder is deliberately simple and documented: replicas from ``replicas.min``,
tensor parallelism from the spec (1 when unset), ``mode: auto`` resolves to disaggregated, and the
router threshold is 512 uncached tokens (prompts shorter than that rarely repay a KV transfer).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from disagg.api.spec import DisaggregatedModelSpec, Dtype, EngineRoleSpec, KVCacheDtype, Mode, ReplicaRange

PLACEHOLDER_DISAGG_THRESHOLD = 512


class ServingMode(StrEnum):
    """How a plan serves: ``mode: auto`` in the spec resolves to one of these."""

    DISAGGREGATED = "disaggregated"
    AGGREGATED = "aggregated"


class Role(StrEnum):
    """The workloads of a model: Deployment suffixes, the disagg.dev/role label, status role names.
    (A StrEnum, so a role is still the string Kubernetes and PromQL see.)"""

    PREFILL = "prefill"
    DECODE = "decode"
    AGGREGATED = "prefill-decode"
    """Aggregated mode: one engine does prefill and decode."""
    ROUTER = "router"


ROLE_PREFILL = Role.PREFILL
ROLE_DECODE = Role.DECODE
ROLE_AGGREGATED = Role.AGGREGATED
ROLE_ROUTER = Role.ROUTER
ENGINE_ROLES = frozenset({Role.PREFILL, Role.DECODE, Role.AGGREGATED})
"""Every engine role any mode has (a mode switch briefly runs roles of both modes)."""


@dataclass(frozen=True)
class RolePlan:
    replicas: int
    """Floor: the autoscaler's minReplicas (or the fixed count without one)."""
    max_replicas: int
    tensor_parallel: int
    autoscale: bool | None = None
    """Keep the autoscaler even where the floor has reached the ceiling (a re-planned floor may;
    removing and re-creating the HPA would lose its state). None: autoscaled when there is a range."""
    data_parallel: int = 1
    """Attention data-parallel ranks per pod (vLLM --data-parallel-size); a pod has ``tp * dp`` GPUs."""
    expert_parallel: bool = False
    """Whole experts per GPU over the pod's ``tp * dp`` GPUs (vLLM --enable-expert-parallel)."""
    max_num_seqs: int | None = None
    """Sequences one attention rank runs at once (vLLM --max-num-seqs): the planned decode batch limit,
    what the KV cache holds at full context. None: the engine's default (a prefill-only role)."""
    max_num_batched_tokens: int | None = None
    """Token budget of one engine step (vLLM --max-num-batched-tokens): the planned prefill chunk plus,
    on a role that decodes, one token per sequence of ``max_num_seqs`` (vLLM counts decode tokens in
    the same budget and needs it >= max-num-seqs). None: the engine's default (GPU-dependent)."""
    max_model_len: int | None = None
    """Longest sequence the engine accepts (vLLM --max-model-len), set only when the KV cache cannot
    hold the checkpoint's own context (vLLM would refuse to start). None: the checkpoint's."""

    @property
    def gpus_per_pod(self) -> int:
        return self.tensor_parallel * self.data_parallel

    @property
    def autoscaled(self) -> bool:
        return self.autoscale if self.autoscale is not None else self.max_replicas > self.replicas

    @property
    def gpus(self) -> int:
        return self.replicas * self.gpus_per_pod


@dataclass(frozen=True)
class EngineSettings:
    """What every engine of a model is told about precision (vLLM flags; None: the flag is not rendered,
    and the engine's default is what the plan assumed), and what the plan assumed it serves."""

    quantization: str | None = None
    """vLLM --quantization: fp8 to quantise a 16-bit checkpoint at load time; None: the checkpoint's own."""
    dtype: str | None = None
    """vLLM --dtype (bfloat16, float16) for a 16-bit checkpoint; None: the checkpoint's torch_dtype."""
    kv_cache_dtype: str | None = None
    """vLLM --kv-cache-dtype; None: auto (the checkpoint's declared KV quantisation, else the model dtype)."""
    weights: str | None = None
    """Weight precision the plan assumed (bf16 for any 16-bit type, fp8, fp4); None: not planned."""
    kv_cache: str | None = None
    """KV-cache precision the plan assumed (bf16 for any 16-bit type, fp8); None: not planned."""


@dataclass(frozen=True)
class Plan:
    mode: ServingMode
    prefill: RolePlan
    """In aggregated mode, the single prefill-decode role."""
    decode: RolePlan | None
    router: RolePlan
    disagg_threshold: int
    source: str
    reason: str
    predicted_ttft_ms: float | None = None
    predicted_itl_ms: float | None = None
    slo_met: bool | None = None
    decode_max_batch: int | None = None
    """Sequences one decode-capable replica holds at full context (all its DP ranks), when planned."""
    engine: EngineSettings = field(default_factory=EngineSettings)
    """Precision flags and assumptions shared by every engine role."""
    gpu: str | None = None
    """The catalog GPU planned for; None when not planned (the placeholder takes the spec's type as given)."""

    def __post_init__(self) -> None:
        # engine_role_plans and everything built on it read the mode from ``decode`` alone
        if self.mode == ServingMode.AGGREGATED and self.decode is not None:
            raise ValueError("an aggregated plan must not have a decode role")
        if self.mode == ServingMode.DISAGGREGATED and self.decode is None:
            raise ValueError("a disaggregated plan must have a decode role")

    @property
    def gpus(self) -> int:
        return self.prefill.gpus + (self.decode.gpus if self.decode else 0)

    @property
    def ratio(self) -> str:
        if self.decode is None:
            return f"{self.prefill.replicas}PD"
        return f"{self.prefill.replicas}P:{self.decode.replicas}D"


def clamped_role(bounds: ReplicaRange, tensor_parallel: int, planned: int | None = None) -> tuple[RolePlan, bool]:
    """(role plan, capped): the planned count (default: the floor) clamped into the spec's replica
    bounds; without ``max`` the count is fixed (no autoscaling headroom). ``capped`` is true when
    ``max`` cuts the role below the planned count."""
    floor, ceiling = bounds.min, bounds.max
    wanted = floor if planned is None else planned
    if ceiling is None:
        count = max(floor, wanted)
        return RolePlan(replicas=count, max_replicas=count, tensor_parallel=tensor_parallel), False
    count = min(max(wanted, floor), ceiling)
    return RolePlan(replicas=count, max_replicas=max(ceiling, count), tensor_parallel=tensor_parallel), count < wanted


def router_plan(spec: DisaggregatedModelSpec) -> RolePlan:
    """The router's floor and ceiling come from the spec alone (it has no GPUs to plan)."""
    return clamped_role(spec.router.replicas, tensor_parallel=0)[0]


def _role_plan(role: EngineRoleSpec, default_tp: int = 1) -> RolePlan:
    fixed = clamped_role(role.replicas, role.parallelism.tensor or default_tp)[0]
    return replace(fixed, data_parallel=role.parallelism.data or 1, expert_parallel=bool(role.parallelism.expert))


_DTYPE_FLAGS = {Dtype.BF16: "bfloat16", Dtype.FP16: "float16"}


def spec_engine_settings(spec: DisaggregatedModelSpec) -> EngineSettings:
    """The precision flags the spec asks for, when there is no model shape to plan with: nothing is
    assumed, the spec's values are passed through (fp4 has no load-time quantisation: not rendered)."""
    dtype = spec.model.dtype
    return EngineSettings(
        quantization="fp8" if dtype == Dtype.FP8 else None,
        dtype=_DTYPE_FLAGS.get(dtype),
        kv_cache_dtype="fp8" if spec.model.kv_cache_dtype == KVCacheDtype.FP8 else None,
    )


def placeholder_plan(spec: DisaggregatedModelSpec) -> Plan:
    """Replicas from the spec's min, TP from the spec; documented in the module docstring."""
    mode = ServingMode.AGGREGATED if spec.mode == Mode.AGGREGATED else ServingMode.DISAGGREGATED
    threshold = spec.router.disagg_threshold
    router = router_plan(spec)
    prefill = _role_plan(spec.prefill)
    decode = None
    if mode == ServingMode.DISAGGREGATED:
        decode = _role_plan(spec.decode, default_tp=prefill.tensor_parallel)
    return Plan(
        mode=mode,
        prefill=prefill,
        decode=decode,
        router=router,
        disagg_threshold=threshold if isinstance(threshold, int) else PLACEHOLDER_DISAGG_THRESHOLD,
        source="placeholder",
        reason=(
            "Placeholder plan: replicas from replicas.min, tensor parallelism from the spec"
            + (" (mode auto resolved to disaggregated)" if spec.mode == Mode.AUTO else "")
            + "; the analytical planner is not enabled yet."
        ),
        engine=spec_engine_settings(spec),
        gpu=spec.accelerator.type,
    )


def engine_role_plans(plan: Plan) -> list[tuple[Role, RolePlan]]:
    """(role name, plan) of the engine roles the plan renders: prefill-decode, or prefill and decode."""
    if plan.decode is None:
        return [(ROLE_AGGREGATED, plan.prefill)]
    return [(ROLE_PREFILL, plan.prefill), (ROLE_DECODE, plan.decode)]


def engine_roles(spec: DisaggregatedModelSpec, plan: Plan) -> list[tuple[Role, RolePlan, EngineRoleSpec]]:
    """:func:`engine_role_plans` with each role's spec; the aggregated role is configured by ``spec.prefill``."""
    return [
        (name, role_plan, spec.decode if name == Role.DECODE else spec.prefill)
        for name, role_plan in engine_role_plans(plan)
    ]
