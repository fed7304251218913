"""What the planner knows about hardware, serving engines and model shapes.

GPU figures are dense (no sparsity) datasheet numbers. Efficiency factors are per GPU *generation*,
never per measurement: they say which fraction of a datasheet peak well-tuned kernels reach on that
silicon (large GEMMs, streaming HBM reads, NVLink collectives), and are justified in docs/planner.md.
Model shapes come from Hugging Face ``config.json`` files; the presets are trimmed copies of the
public configs shipped as package data, parsed by the same loader users reach with ``--model-config``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

DType = Literal["bf16", "fp8", "fp4"]
DTYPES: tuple[DType, ...] = ("bf16", "fp8", "fp4")
Backend = Literal["vllm", "trtllm", "sglang"]
BACKENDS: tuple[Backend, ...] = ("vllm", "trtllm", "sglang")

BYTES_PER_PARAM: dict[str, float] = {
    "bf16": 2.0,
    "fp8": 1.0 + 1.0 / 128,  # block scales (128-wide) are a rounding error, but they are read too
    "fp4": 0.5 + 1.0 / 32,  # one 8-bit scale per 16 (nvfp4) or 32 (mxfp4) values: take the mean
}


GIB = 1024.0**3


class PlanningError(ValueError):
    """Input the planner cannot act on; the message is one line, shown to users verbatim."""


@dataclass(frozen=True)
class Generation:
    """Efficiency of one GPU generation: fraction of datasheet peak reached by tuned kernels."""

    name: str
    gemm_eta: float
    """Large bf16 GEMMs (cuBLAS/CUTLASS) vs dense peak."""
    low_precision_eta: dict[str, float]
    """Extra factor for fp8/fp4 GEMMs: scaling epilogues and smaller tiles leave more on the table."""
    hbm_eta: float
    """Streaming weight/KV reads vs HBM peak."""
    attention_eta: float
    """FlashAttention-class kernels vs bf16 peak (softmax and masking are not tensor-core work)."""
    link_eta: float
    """Achieved all-reduce bus bandwidth vs per-direction link bandwidth."""
    allreduce_latency_us: float
    """Fixed cost of one small all-reduce (launch + one NVLink/PCIe round trip)."""
    layer_floor_us: float
    """Per-layer kernel floor of a decode step (about a dozen kernels, each with a launch/tail cost)."""
    dequant_flops_eta: float = 1.0
    """Mixed-input GEMMs (weights in a precision these tensor cores lack, dequantised in registers to BF16
    before every MMA): share of the BF16 GEMM rate they keep. The conversion, scale loads and shuffles
    take issue slots from the tensor-core pipeline."""
    dequant_bw_eta: float = 1.0
    """The same kernels when streaming weights at small batch: share of the streaming bandwidth kept
    (the dequantisation sits on the load-to-MMA path and lowers the bytes in flight per SM)."""


GENERATIONS: dict[str, Generation] = {
    # Ampere: mature software; A100 cuBLAS reaches ~70% of 312 TFLOPS, HBM2e ~80% of 2.0 TB/s. No FP8/FP4
    # tensor cores: such weights are dequantised to BF16 in mixed-input (Marlin-class) kernels.
    "ampere": Generation("ampere", 0.70, {"fp8": 1.0, "fp4": 1.0}, 0.80, 0.55, 0.80, 8.0, 16.0, 0.60, 0.75),
    # Hopper: ~65% of dense bf16 peak for large GEMMs, fp8 ~55% of fp8 peak; HBM3 ~80%. No FP4 tensor
    # cores: MXFP4/NVFP4 weights are decoded (E2M1 + block scale) to BF16 before every wgmma; warp-specialised
    # mixed-input kernels (Machete, matmul_ogs) overlap that decode with the MMAs of a prefill-sized tile.
    "hopper": Generation("hopper", 0.65, {"fp8": 0.85, "fp4": 0.80}, 0.80, 0.50, 0.80, 8.0, 14.0, 0.90, 0.75),
    # Blackwell: larger tensor-core tiles, younger kernels; HBM3e at 8 TB/s is harder to saturate. FP8 and
    # FP4 are native, so the dequantisation factors never apply.
    "blackwell": Generation("blackwell", 0.62, {"fp8": 0.85, "fp4": 0.75}, 0.77, 0.45, 0.80, 7.0, 12.0),
    # Ada (L40S): GDDR6, PCIe-only collectives (no NVLink): slow and high-latency all-reduce. FP8 native,
    # FP4 dequantised to BF16 as on Hopper.
    "ada": Generation("ada", 0.65, {"fp8": 0.85, "fp4": 1.0}, 0.80, 0.50, 0.70, 25.0, 16.0, 0.60, 0.75),
}


@dataclass(frozen=True)
class GPU:
    name: str
    generation: str
    tflops: dict[str, float]
    """Dense tensor-core TFLOPS per operand dtype; a missing dtype means no native support."""
    hbm_gb: float
    """Memory as the datasheet states it. HBM stacks come in binary sizes (H100: 5 x 16 GiB, B300: 8 x 36 GiB),
    and the figure is GiB: nvidia-smi reports 81559 MiB for an H100 "80 GB", 143771 MiB for an H200 "141 GB"."""
    hbm_tbps: float
    scaleup_gbps: float
    """Per-direction NVLink (or PCIe when no NVLink) bandwidth per GPU, GB/s."""
    scaleup_domain: int
    """GPUs reachable over the scale-up fabric (8 in an HGX box, 72 in an NVL72 rack)."""
    scaleout_gbps: float
    """Per-GPU NIC bandwidth (GB/s) of the typical node for this GPU."""
    hourly_usd: float
    """Indicative on-demand price per GPU-hour, for $/1M-token figures only."""

    @property
    def hbm_bytes(self) -> float:
        """Device memory in bytes (what ``--gpu-memory-utilization`` takes its share of)."""
        return self.hbm_gb * GIB

    @property
    def eff(self) -> Generation:
        return GENERATIONS[self.generation]

    def native(self, dtype: str) -> bool:
        """Whether the tensor cores take ``dtype`` operands (bf16 always counts as native)."""
        return dtype == "bf16" or dtype in self.tflops

    def compute_dtype(self, weights: str) -> str:
        """The GEMM operand dtype actually used: the weights' own if the tensor cores support it; otherwise
        the weights are dequantised to BF16 in the kernel (Marlin, Machete, Triton mixed-input GEMMs) and
        the math runs at BF16 rate."""
        return weights if self.native(weights) else "bf16"

    def gemm_flops(self, weights: str) -> float:
        """Achievable GEMM FLOP/s per GPU for this weight precision."""
        dtype = self.compute_dtype(weights)
        eta = self.eff.gemm_eta * self.eff.low_precision_eta.get(dtype, 1.0)
        if not self.native(weights):
            eta *= self.eff.dequant_flops_eta
        return self.tflops[dtype] * 1e12 * eta

    def weight_stream_bytes_per_s(self, weights: str) -> float:
        """Achievable bandwidth when streaming weights of this precision through a GEMM."""
        bw = self.hbm_bytes_per_s
        return bw if self.native(weights) else bw * self.eff.dequant_bw_eta

    @property
    def attention_flops(self) -> float:
        return self.tflops["bf16"] * 1e12 * self.eff.attention_eta

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_tbps * 1e12 * self.eff.hbm_eta


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("a100-80g", "ampere", {"bf16": 312}, 80, 2.039, 300, 8, 25, 1.8),
        GPU("h100-sxm", "hopper", {"bf16": 989, "fp8": 1979}, 80, 3.35, 450, 8, 50, 3.0),
        GPU("h200-sxm", "hopper", {"bf16": 989, "fp8": 1979}, 141, 4.8, 450, 8, 50, 3.8),
        GPU("b200", "blackwell", {"bf16": 2250, "fp8": 4500, "fp4": 9000}, 180, 8.0, 900, 8, 50, 5.5),
        GPU("gb200", "blackwell", {"bf16": 2500, "fp8": 5000, "fp4": 10000}, 186, 8.0, 900, 72, 100, 6.5),
        GPU("b300", "blackwell", {"bf16": 2250, "fp8": 4500, "fp4": 14000}, 288, 8.0, 900, 8, 100, 7.0),
        GPU("gb300", "blackwell", {"bf16": 2500, "fp8": 5000, "fp4": 15000}, 288, 8.0, 900, 72, 100, 8.0),
        GPU("l40s", "ada", {"bf16": 362, "fp8": 733}, 48, 0.864, 32, 8, 25, 1.0),
    )
}
_GPU_ALIASES = {"a100": "a100-80g", "a100-sxm": "a100-80g", "h100": "h100-sxm", "h200": "h200-sxm"}

_PRODUCT = re.compile(
    r"^(?:nvidia-)?(?:tesla-)?(?P<family>a100|h100|h200|gb200|gb300|b200|b300|l40s)"
    r"(?P<rest>(?:-[a-z0-9.]+)*)$"
)
"""A GPU as users and clusters spell it: ``b200_sxm``, ``B200``, ``nvidia-b200`` and GPU Feature
Discovery's ``nvidia.com/gpu.product`` values (``NVIDIA-H100-80GB-HBM3``, ``NVIDIA-B200``)."""
_NOT_THE_SXM_PART: dict[str, tuple[str, ...]] = {
    # H100 PCIe (2.0 TB/s, no NVLink switch), H100 NVL (94 GB, PCIe card with a 3-card bridge), H200 NVL
    # (PCIe card, 2- or 4-way bridge), A100 40 GB and the PCIe A100: other memory, bandwidth or interconnect
    # than the catalog entry, so never guessed. A MIG slice is a fraction of a GPU. GB200/GB300 "NVL72" is
    # the rack's own name, not a PCIe variant, so it stays accepted there.
    "a100": ("pcie", "40gb", "-mig-"),
    "h100": ("pcie", "nvl", "94gb", "-mig-"),
    "h200": ("pcie", "nvl", "-mig-"),
    "b200": ("-mig-",),
    "b300": ("-mig-",),
    "gb200": ("-mig-",),
    "gb300": ("-mig-",),
    "l40s": (),
}
_SHARED_SUFFIX = "-shared"
"""GPU Feature Discovery appends ``-SHARED`` to the product when time-slicing or MPS shares each GPU."""

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
"""The node label GPU Feature Discovery sets to the GPU's product name (``NVIDIA-H100-80GB-HBM3``)."""


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def gpu_key(name: str) -> str | None:
    """The catalog name a GPU spelling means, or None when it names no catalog GPU.

    Accepts catalog names and their ``_`` / upper-case forms (``h100_sxm``, ``H100-SXM``), bare families
    (``h100``, ``B200``), vendor-prefixed names (``nvidia-b200``) and GPU Feature Discovery products
    (``NVIDIA-H100-80GB-HBM3``, ``NVIDIA-B300-SXM6-AC``, ``NVIDIA-GB200``). Variants whose memory,
    bandwidth or interconnect differ from the catalog entry (PCIe and NVL cards, 40 GB A100, MIG slices)
    give None rather than a wrong guess."""
    key = _norm(name)
    if key.endswith(_SHARED_SUFFIX):
        key = key[: -len(_SHARED_SUFFIX)]
    key = _GPU_ALIASES.get(key, key)
    if key in GPUS:
        return key
    match = _PRODUCT.match(key)
    if match is None:
        return None
    family, rest = match.group("family"), match.group("rest")
    if any(part in f"{rest}-" for part in _NOT_THE_SXM_PART[family]):
        return None
    if family == "a100" and "80gb" not in rest and rest not in ("", "-sxm", "-sxm4"):
        return None
    return _GPU_ALIASES.get(family, family)


def get_gpu(name: str) -> GPU:
    """A catalog GPU by any usual spelling (``H100_SXM``, ``h100-sxm``, ``h100``, ``NVIDIA-H100-80GB-HBM3``)."""
    key = gpu_key(name)
    if key is None:
        raise PlanningError(
            f"unknown GPU {name!r}; known: {', '.join(GPUS)} (also as GPU Feature Discovery names them)"
        )
    return GPUS[key]


def gpu_from_node_labels(labels: Mapping[str, str]) -> str | None:
    """The catalog GPU of a node from its labels (GPU Feature Discovery's ``nvidia.com/gpu.product``), or
    None when the node has no such label or its product is not in the catalog. Pure: the caller reads the
    labels from the cluster."""
    product = labels.get(GPU_PRODUCT_LABEL)
    if not product:
        return None
    return gpu_key(product)


def gpu_for_products(products: Iterable[str]) -> str:
    """The one catalog GPU a set of GPU products (e.g. the ``nvidia.com/gpu.product`` values of the nodes
    a model may land on) stands for. Raises PlanningError when the set is empty, a product is not in the
    catalog, or the products are different GPUs: an engine's step runs at its slowest rank, so a plan for
    mixed GPUs would be wrong for all of them."""
    seen: dict[str, set[str]] = {}
    unknown: list[str] = []
    for product in products:
        key = gpu_key(product)
        if key is None:
            unknown.append(product)
        else:
            seen.setdefault(key, set()).add(product)
    if unknown:
        raise PlanningError(
            f"GPU product(s) {', '.join(sorted(set(unknown)))} not in the planner catalog; "
            f"set spec.accelerator.type to one of {', '.join(GPUS)}"
        )
    if not seen:
        raise PlanningError("no GPU product to plan for (no node carries nvidia.com/gpu.product)")
    if len(seen) > 1:
        mixed = "; ".join(f"{key} ({', '.join(sorted(names))})" for key, names in sorted(seen.items()))
        raise PlanningError(
            f"mixed GPU products: {mixed}; pin the model to one GPU type (spec.accelerator.type and a node selector)"
        )
    return next(iter(seen))


@dataclass(frozen=True)
class BackendProfile:
    """Serving-engine constants: host-side costs no roofline sees. Same for every GPU and model."""

    name: str
    step_overhead_ms: float
    """Scheduler, sampling and input preparation per engine step (CPU work between CUDA graphs)."""
    allreduce_factor: float
    """Multiplier on the all-reduce latency (custom one-shot kernels vs NCCL)."""
    request_overhead_ms: float
    """Per-request fixed time to first token outside the GPU: HTTP, tokenisation, detokenised stream."""
    chunk_tokens: int
    """Default prefill token budget per step (chunked prefill / max_num_tokens)."""
    lockstep: Literal["none", "step", "wave"]
    """How fixed-length closed-loop clients stay synchronised under this scheduler: ``none`` (prefill
    chunks ride decode steps first-come first-served, so clients drift apart), ``step`` (prompts
    prefilled in one step finish and return together) or ``wave`` (prefill-first scheduling pauses
    decode, so every client's request starts and ends together and each wave arrives at once)."""
    moe_gemm_eta: float = 1.0
    """Routed-expert (grouped) GEMMs vs a dense GEMM of the same precision on the same GPU: the engine's
    MoE kernel class (Triton ``fused_moe`` in vLLM and SGLang, CUTLASS grouped GEMMs in TensorRT-LLM) run
    many small per-expert problems (a few hundred tokens by a sliced intermediate), pad each expert's
    tokens to the tile, and load block scales inside the K loop."""
    output_lag_steps: int = 0
    """Engine steps between a token being computed and it leaving the engine. With an overlap scheduler
    (TensorRT-LLM's PyTorch executor and SGLang, on by default) the host processes step n's outputs while the
    GPU runs step n+1, so every token, the first included, is streamed one step late; TPOT is unchanged (the
    whole stream shifts), TTFT grows by one decode step. vLLM 0.12 runs its scheduler synchronously by default."""
    seq_overhead_us: float = 20.0
    """Host time per running sequence per step: the engine loop's bookkeeping that grows with the batch
    (scheduling each request, appending its token, stop checks, streaming its output to the front end), in
    Python in all three engines. ~10-30 µs a request in vLLM V1, SGLang and TensorRT-LLM's PyTorch executor;
    it is what makes TPOT grow with the batch faster than the KV reads alone."""
    graph_tokens: int = 0
    """Largest step (tokens, decode and prefill together) the engine still replays from a captured CUDA graph
    when it carries prefill tokens: vLLM V1 captures piecewise graphs for mixed batches up to 512 tokens;
    SGLang and TensorRT-LLM capture decode-only batches, so any step with prefill tokens runs eagerly."""
    eager_layer_us: float = 0.0
    """Host time to issue one decoder layer's kernels in a step that runs outside a CUDA graph. Decode-only
    steps replay captured graphs (one launch per step), but a step carrying prefill tokens has a token count
    no graph was captured for, so the engine's Python/C++ code dispatches every operator of every layer
    (module calls, custom-op wrappers, attention metadata, activation quantisation, then the CUDA launch).
    Launches are asynchronous, so this host time hides behind the GPU's work unless the step's kernels are
    shorter than their dispatch: short prefills of deep models (an MoE layer dispatches half again as many
    operators) are host-bound."""
    batch_wait_iters: int = 0
    """TensorRT-LLM ``batch_wait_timeout_iters``: iterations a new prompt may be held, while other sequences
    decode, to gather a larger prefill batch (0: off, the default)."""
    batch_wait_tokens_ratio: float = 0.0
    """TensorRT-LLM ``batch_wait_max_tokens_ratio``: the hold ends early once the held prompts and the decode
    tokens reach this share of the token budget (0: only the iteration limit ends it)."""


BACKEND_PROFILES: dict[str, BackendProfile] = {
    # request_overhead_ms, moe_gemm_eta and eager_layer_us are the only fitted constants
    # (disagg.planner.calibrate.fit on every measured row, `python bench/planner_accuracy.py --fit`; priors
    # and bounds there); the rest are host-side figures of each engine.
    "vllm": BackendProfile(
        "vllm", 1.2, 1.3, 5.0, 8192, "none", moe_gemm_eta=0.25, eager_layer_us=600.0, graph_tokens=512
    ),
    "sglang": BackendProfile(
        "sglang", 1.0, 1.2, 5.0, 8192, "wave", moe_gemm_eta=0.3, eager_layer_us=600.0, output_lag_steps=1
    ),
    "trtllm": BackendProfile(
        "trtllm", 0.5, 1.0, 60.0, 8192, "none", moe_gemm_eta=0.2, eager_layer_us=600.0, output_lag_steps=1
    ),
}


def get_backend(name: str) -> BackendProfile:
    key = _norm(name).replace("-", "")
    key = {"tensorrtllm": "trtllm", "trt": "trtllm"}.get(key, key)
    if key not in BACKEND_PROFILES:
        raise PlanningError(f"unknown backend {name!r}; use one of {', '.join(BACKEND_PROFILES)}")
    return BACKEND_PROFILES[key]


@dataclass(frozen=True)
class ModelShape:
    """The parts of a transformer's shape that set its FLOPs, bytes and KV size."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False
    experts: int = 0
    top_k: int = 0
    moe_intermediate: int = 0
    shared_experts: int = 0
    dense_layers: int = 0
    """Leading layers with a dense MLP in an MoE model (DeepSeek's first_k_dense_replace)."""
    mla: bool = False
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_dim: int = 0
    qk_nope_dim: int = 0
    v_head_dim: int = 0
    sliding_window: int = 0
    sliding_layers: int = 0
    native_dtype: str = "bf16"
    """Precision of the published checkpoint (fp8 for DeepSeek-V3, fp4 experts for gpt-oss)."""
    native_kv_dtype: str | None = None
    """KV-cache precision the checkpoint's quantization_config declares (fp8), None when it declares none:
    an engine told ``auto`` then keeps the KV cache in the model's 16-bit dtype (vLLM 0.33)."""
    max_context: int = 0
    """The checkpoint's longest sequence (``max_position_embeddings``); 0 when the config does not say."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers if self.is_moe else 0

    # --- parameters ---------------------------------------------------------------------------
    @property
    def attention_params(self) -> float:
        """Per layer."""
        h = self.hidden
        if self.mla:
            q = h * self.q_lora_rank + self.q_lora_rank * self.heads * (self.qk_nope_dim + self.qk_rope_dim)
            if self.q_lora_rank == 0:
                q = h * self.heads * (self.qk_nope_dim + self.qk_rope_dim)
            kv = h * (self.kv_lora_rank + self.qk_rope_dim)
            kv += self.kv_lora_rank * self.heads * (self.qk_nope_dim + self.v_head_dim)
            return q + kv + self.heads * self.v_head_dim * h
        return h * self.head_dim * (2 * self.heads + 2 * self.kv_heads)

    @property
    def dense_mlp_params(self) -> float:
        return 3.0 * self.hidden * self.intermediate

    @property
    def expert_params(self) -> float:
        """One routed expert (gate, up, down)."""
        return 3.0 * self.hidden * self.moe_intermediate

    @property
    def embedding_params(self) -> float:
        return float(self.vocab * self.hidden)

    @property
    def total_params(self) -> float:
        per_layer = self.layers * self.attention_params
        if self.is_moe:
            mlp = self.dense_layers * self.dense_mlp_params
            mlp += self.moe_layers * (self.experts + self.shared_experts) * self.expert_params
            mlp += self.moe_layers * self.hidden * self.experts  # router
        else:
            mlp = self.layers * self.dense_mlp_params
        return per_layer + mlp + self.embedding_params * (1 if self.tied_embeddings else 2)

    @property
    def active_params(self) -> float:
        """Parameters touched per token (sets FLOPs); excludes the embedding lookup."""
        per_layer = self.layers * self.attention_params
        if self.is_moe:
            mlp = self.dense_layers * self.dense_mlp_params
            mlp += self.moe_layers * (self.top_k + self.shared_experts) * self.expert_params
        else:
            mlp = self.layers * self.dense_mlp_params
        return per_layer + mlp + self.embedding_params  # lm_head

    # --- KV cache -----------------------------------------------------------------------------
    def kv_elements_per_token_layer(self) -> int:
        if self.mla:
            return self.kv_lora_rank + self.qk_rope_dim
        return 2 * self.kv_heads * self.head_dim

    def kv_bytes_per_token(self, kv_dtype: str, context: int | None = None) -> float:
        """KV bytes one token adds, over all layers; sliding layers count only while within the window."""
        per_layer = self.kv_elements_per_token_layer() * BYTES_PER_PARAM_KV[kv_dtype]
        full = self.layers - self.sliding_layers
        if self.sliding_layers and context is not None and context > self.sliding_window:
            share = self.sliding_window / context
            return per_layer * (full + self.sliding_layers * share)
        return per_layer * self.layers

    def attention_context(self, ctx: float) -> float:
        """Mean context each layer attends over (sliding layers see at most the window)."""
        if not self.sliding_layers:
            return ctx
        full = self.layers - self.sliding_layers
        return (full * ctx + self.sliding_layers * min(ctx, self.sliding_window)) / self.layers

    @property
    def qk_dim(self) -> int:
        return self.qk_nope_dim + self.qk_rope_dim if self.mla else self.head_dim

    @property
    def vo_dim(self) -> int:
        return self.v_head_dim if self.mla else self.head_dim


BYTES_PER_PARAM_KV: dict[str, float] = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5 + 1.0 / 16}


def checkpoint_kv_dtype(quant: dict[str, Any]) -> str | None:
    """The KV-cache precision a checkpoint's ``quantization_config`` declares, as vLLM 0.33 reads it when
    told ``--kv-cache-dtype auto``: ModelOpt's ``kv_cache_quant_algo`` (or a ``kv_cache_scheme``) and
    compressed-tensors' ``kv_cache_scheme`` of 8-bit floats mean fp8; anything else (also fp8 *weights*
    such as DeepSeek-V3's block fp8) declares none, and vLLM keeps the KV cache in the model's dtype."""
    nested = quant.get("quantization")
    inner: dict[str, Any] = nested if isinstance(nested, dict) else {}
    for key in ("kv_cache_scheme", "kv_cache_quant_algo"):
        value = inner.get(key) or quant.get(key)
        if isinstance(value, dict) and value.get("type") == "float" and value.get("num_bits") == 8:
            return "fp8"
        if isinstance(value, str) and "fp8" in value.lower():
            return "fp8"
    return None


def checkpoint_weight_dtype(quant: dict[str, Any]) -> str:
    """The weight precision a checkpoint's ``quantization_config`` declares: ``quant_method``/``quant_algo``
    naming fp8 or fp4 (``fp8``, ModelOpt's ``FP8``/``NVFP4``), or compressed-tensors' ``config_groups``
    whose weights are 8- or 4-bit floats (llm-compressor's FP8 and NVFP4 checkpoints, which vLLM loads
    with FP8/FP4 GEMMs; mixed fp8/fp4 groups count as fp8). Integer schemes (W8A8-int8, W4A16) and
    anything unknown count as 16-bit: the planner then over-sizes memory rather than under-sizing it."""
    method = " ".join(str(quant.get(k, "")) for k in ("quant_method", "quant_algo")).lower()
    if "fp4" in method:
        return "fp4"
    if "fp8" in method:
        return "fp8"
    groups = quant.get("config_groups")
    if "compressed-tensors" in method and isinstance(groups, dict):
        schemes: list[dict[str, Any]] = [
            g["weights"] for g in groups.values() if isinstance(g, dict) and isinstance(g.get("weights"), dict)
        ]
        if schemes and all(w.get("type") == "float" for w in schemes):
            # mixed precision (fp8 attention, NVFP4 experts) counts at its widest: never under-size memory
            widest = max(int(w.get("num_bits") or 16) for w in schemes)
            return {8: "fp8", 4: "fp4"}.get(widest, "bf16")
    return "bf16"


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


def model_from_config(cfg: dict[str, Any], name: str = "custom") -> ModelShape:
    """Parse a Hugging Face ``config.json`` (dense, GQA, MoE, MLA, sliding-window families)."""
    if "text_config" in cfg and isinstance(cfg["text_config"], dict):
        cfg = {**cfg, **cfg["text_config"]}
    try:
        hidden = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanningError(f"model config {name!r} lacks hidden_size/num_hidden_layers/num_attention_heads") from exc
    if hidden <= 0 or layers <= 0 or heads <= 0:
        raise PlanningError(f"model config {name!r} has a non-positive dimension")
    kv_heads = int(_get(cfg, "num_key_value_heads", default=heads))
    head_dim = int(_get(cfg, "head_dim", default=hidden // heads))
    experts = int(_get(cfg, "num_experts", "num_local_experts", "n_routed_experts", default=0) or 0)
    top_k = int(_get(cfg, "num_experts_per_tok", "experts_per_token", "moe_topk", default=0) or 0)
    intermediate = int(_get(cfg, "intermediate_size", default=4 * hidden))
    moe_intermediate = int(_get(cfg, "moe_intermediate_size", default=intermediate)) if experts else 0
    mla = cfg.get("kv_lora_rank") is not None
    layer_types = cfg.get("layer_types") or []
    sliding_layers = sum(1 for t in layer_types if "sliding" in str(t))
    window = int(cfg.get("sliding_window") or 0)
    if not layer_types and cfg.get("use_sliding_window") and window:
        sliding_layers = layers - int(cfg.get("max_window_layers") or 0)
    if not window:
        sliding_layers = 0
    quant = cfg.get("quantization_config") or {}
    native = checkpoint_weight_dtype(quant)
    return ModelShape(
        name=name,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads if not mla else heads,
        head_dim=head_dim,
        intermediate=intermediate,
        vocab=int(_get(cfg, "vocab_size", default=32000)),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        experts=experts,
        top_k=top_k if experts else 0,
        moe_intermediate=moe_intermediate,
        shared_experts=int(_get(cfg, "n_shared_experts", "num_shared_experts", default=0) or 0) if experts else 0,
        dense_layers=int(_get(cfg, "first_k_dense_replace", default=0) or 0) if experts else 0,
        mla=mla,
        kv_lora_rank=int(cfg.get("kv_lora_rank") or 0),
        q_lora_rank=int(cfg.get("q_lora_rank") or 0),
        qk_rope_dim=int(cfg.get("qk_rope_head_dim") or 0),
        qk_nope_dim=int(cfg.get("qk_nope_head_dim") or 0),
        v_head_dim=int(cfg.get("v_head_dim") or 0),
        sliding_window=window if sliding_layers else 0,
        sliding_layers=sliding_layers,
        native_dtype=native,
        native_kv_dtype=checkpoint_kv_dtype(quant),
        max_context=int(cfg.get("max_position_embeddings") or 0),
        meta={"model_type": cfg.get("model_type", "")},
    )


@cache
def _preset_configs() -> dict[str, dict[str, Any]]:
    text = resources.files("disagg.planner").joinpath("data/models.json").read_text(encoding="utf-8")
    data: dict[str, dict[str, Any]] = json.loads(text)
    return data


PRESET_ALIASES = {
    "llama-3.1-8b-instruct": "llama-3.1-8b",
    "meta-llama/llama-3.1-8b-instruct": "llama-3.1-8b",
    "meta-llama/llama-3.1-8b": "llama-3.1-8b",
    "nvidia/llama-3.1-8b-instruct-fp8": "llama-3.1-8b",
    "meta-llama/llama-3.1-70b": "llama-3.1-70b",
    "meta-llama/llama-3.1-70b-instruct": "llama-3.1-70b",
    "meta-llama/llama-3.3-70b-instruct": "llama-3.3-70b",
    "qwen/qwen3-32b": "qwen3-32b",
    "qwen/qwen3-235b-a22b": "qwen3-235b-a22b",
    "qwen/qwen3-235b-a22b-fp8": "qwen3-235b-a22b",
    "openai/gpt-oss-120b": "gpt-oss-120b",
    "deepseek-ai/deepseek-v3": "deepseek-v3",
}


def preset_names() -> list[str]:
    return sorted(_preset_configs())


def get_model(name: str) -> ModelShape:
    """A preset by name (case-insensitive; Hugging Face repo ids of the presets work too)."""
    key = name.strip().lower()
    key = PRESET_ALIASES.get(key, key)
    configs = _preset_configs()
    if key not in configs:
        raise PlanningError(f"unknown model preset {name!r}; known: {', '.join(preset_names())}")
    return model_from_config(configs[key], name=key)


def load_model_config(path: str | Path) -> ModelShape:
    """A model shape from a Hugging Face ``config.json`` on disk."""
    p = Path(path)
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanningError(f"cannot read model config {p}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise PlanningError(f"model config {p} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(cfg, dict):
        raise PlanningError(f"model config {p} is not a JSON object")
    return model_from_config(cfg, name=p.stem)


def normalise_dtype(value: str | None, default: str = "bf16") -> str:
    """bf16/fp16/fp8/fp4 (and nvfp4, mxfp4, fp8_block, e4m3 spellings) to the catalog dtypes."""
    if value is None or value in ("", "auto"):
        return default
    v = value.strip().lower()
    if "fp4" in v or v in ("int4", "w4a16"):
        return "fp4"
    if "fp8" in v or "e4m3" in v or v in ("int8", "w8a8"):
        return "fp8"
    if v in ("bf16", "fp16", "float16", "bfloat16", "half"):
        return "bf16"
    raise PlanningError(f"unknown precision {value!r}; use bf16, fp8 or fp4")


def tp_candidates(gpu: GPU) -> list[int]:
    """Tensor-parallel sizes that stay inside one scale-up domain."""
    return [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= gpu.scaleup_domain]


def ceil_div(a: float, b: float) -> int:
    return max(1, math.ceil(a / b - 1e-9))
