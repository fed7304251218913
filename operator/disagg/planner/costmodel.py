"""Roofline cost model of one engine replica: prefill steps, decode steps, memory.

Every step time is ``max(bytes / achievable bandwidth, FLOPs / achievable FLOP/s)`` per operator group
(linear layers, attention), plus tensor-parallel all-reduces over the scale-up fabric, plus a per-step
floor (one kernel tail per layer and the engine's host-side step overhead). The achievable rates
come from :mod:`disagg.planner.catalog` (datasheet peak times a per-generation efficiency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from disagg.planner.catalog import (
    BYTES_PER_PARAM,
    BYTES_PER_PARAM_KV,
    GPU,
    BackendProfile,
    ModelShape,
    PlanningError,
)

GIB = 1024.0**3
ACTIVATION_RESERVE_GB = 3.0
"""CUDA graphs, NCCL buffers, allocator slack and activations at the step token budget (per GPU)."""
P2P_LATENCY_S = 20e-6


@dataclass(frozen=True)
class Engine:
    """One engine replica: a model on ``tp * pp`` GPUs (experts spread over ``ep`` of them)."""

    model: ModelShape
    gpu: GPU
    backend: BackendProfile
    tp: int = 1
    pp: int = 1
    ep: int = 1
    weights: str = "bf16"
    kv_dtype: str = "bf16"
    chunk_tokens: int = 0
    """Prefill token budget per step; 0 means the backend default."""
    mem_util: float = 0.9
    """Share of HBM the engine may use (vLLM --gpu-memory-utilization)."""

    def __post_init__(self) -> None:
        if self.tp < 1 or self.pp < 1 or self.ep < 1:
            raise PlanningError("tp, pp and ep must be >= 1")
        if self.ep > self.tp * self.pp:
            raise PlanningError(f"expert parallelism ({self.ep}) cannot exceed the GPUs of one replica")
        if self.model.layers < self.pp:
            raise PlanningError(f"pipeline parallelism {self.pp} exceeds the model's {self.model.layers} layers")
        if self.weights not in BYTES_PER_PARAM or self.kv_dtype not in BYTES_PER_PARAM_KV:
            raise PlanningError(f"unsupported precision {self.weights}/{self.kv_dtype}")

    # ------------------------------------------------------------------ geometry and precision
    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def chunk(self) -> int:
        return self.chunk_tokens or self.backend.chunk_tokens

    @cached_property
    def attn_dtype(self) -> str:
        """Attention projections: fp4 checkpoints keep them wider (gpt-oss: bf16, NVFP4 DeepSeek: fp8)."""
        if self.weights != "fp4":
            return self.weights
        if self.model.is_moe:
            return "bf16" if self.model.native_dtype == "fp4" else "fp8"
        return "fp4"

    @cached_property
    def _link(self) -> tuple[float, float]:
        """(bus bandwidth B/s, latency s) of one all-reduce among the replica's TP ranks."""
        eff = self.gpu.eff
        latency = eff.allreduce_latency_us * 1e-6 * self.backend.allreduce_factor * (1 + 0.15 * math.log2(self.tp))
        if self.tp <= self.gpu.scaleup_domain:
            return self.gpu.scaleup_gbps * 1e9 * eff.link_eta, latency
        return self.gpu.scaleout_gbps * 1e9 * eff.link_eta, latency * 4

    def allreduce_time(self, nbytes: float) -> float:
        if self.tp == 1:
            return 0.0
        bw, latency = self._link
        return latency + 2.0 * (self.tp - 1) / self.tp * nbytes / bw

    def all_to_all_time(self, nbytes: float) -> float:
        """Expert-parallel dispatch or combine of ``nbytes`` of activations."""
        if self.ep == 1:
            return 0.0
        bw, latency = self._link
        return latency + (self.ep - 1) / self.ep * nbytes / bw

    # ------------------------------------------------------------------ bytes
    @cached_property
    def _weight_parts(self) -> tuple[float, float, float]:
        """(always-read bytes, bytes of one routed expert in all MoE layers, embedding bytes) per GPU."""
        m = self.model
        attn = m.layers * m.attention_params * BYTES_PER_PARAM[self.attn_dtype]
        dense = (m.dense_layers if m.is_moe else m.layers) * m.dense_mlp_params * BYTES_PER_PARAM[self.weights]
        shared = m.moe_layers * m.shared_experts * m.expert_params * BYTES_PER_PARAM[self.weights]
        router = m.moe_layers * m.hidden * m.experts * 2.0
        lm_head = m.embedding_params * 2.0
        always = (attn + dense + shared + router + lm_head) / self.gpus
        expert = m.moe_layers * m.expert_params * BYTES_PER_PARAM[self.weights] / self.gpus
        embed = 0.0 if m.tied_embeddings else m.embedding_params * 2.0 / self.gpus
        return always, expert, embed

    @cached_property
    def weight_bytes_per_gpu(self) -> float:
        always, expert, embed = self._weight_parts
        return always + expert * self.model.experts + embed

    @property
    def kv_shards(self) -> int:
        """Ranks the KV cache is split over: GQA heads shard up to n_kv; MLA's latent is replicated."""
        if self.model.mla:
            return self.pp
        return min(self.tp, self.model.kv_heads) * self.pp

    def kv_bytes_per_token_gpu(self, context: int | None = None) -> float:
        return self.model.kv_bytes_per_token(self.kv_dtype, context) / self.kv_shards

    @cached_property
    def kv_free_bytes_per_gpu(self) -> float:
        return self.gpu.hbm_gb * 1e9 * self.mem_util - self.weight_bytes_per_gpu - ACTIVATION_RESERVE_GB * 1e9

    def kv_capacity_tokens(self, context: int | None = None) -> int:
        """Tokens of KV the replica holds (for sequences of about ``context`` tokens)."""
        free = self.kv_free_bytes_per_gpu
        return max(0, int(free / self.kv_bytes_per_token_gpu(context)))

    def fits(self, tokens: int = 1) -> bool:
        return self.kv_free_bytes_per_gpu > 0 and self.kv_capacity_tokens(tokens) >= tokens

    def max_batch(self, context: int) -> int:
        """Sequences of ``context`` tokens whose KV fits at once."""
        return self.kv_capacity_tokens(context) // max(1, context)

    # ------------------------------------------------------------------ step times
    def _expert_reads(self, tokens: float) -> float:
        """Distinct experts one MoE layer reads for ``tokens`` routed tokens (expected; <= min(E, k*tokens))."""
        m = self.model
        if not m.is_moe or tokens <= 0:
            return 0.0
        touched: float = m.experts * (1.0 - (1.0 - m.top_k / m.experts) ** float(tokens))
        if self.ep > 1:
            # The slowest rank sets the step: experts land unevenly over EP ranks at small batches.
            per_rank = touched / self.ep
            touched = min(float(m.experts), self.ep * (per_rank + math.sqrt(per_rank)))
        return touched

    @cached_property
    def _linear_rates(self) -> tuple[float, float, float]:
        """(seconds of linear-layer compute per token per GPU, always-read bytes, one expert's bytes)."""
        m = self.model
        attn_params = m.layers * m.attention_params
        mlp_params = m.active_params - attn_params
        per_token = 2.0 * attn_params / self.gpu.gemm_flops(self.attn_dtype)
        per_token += 2.0 * mlp_params / self.gpu.gemm_flops(self.weights)
        always, expert, _ = self._weight_parts
        return per_token / (self.tp * self.pp), always, expert

    def _linear_time(self, tokens: float) -> float:
        """Weight-bearing layers for ``tokens`` tokens in one step (roofline: bytes vs FLOPs)."""
        per_token, always, expert = self._linear_rates
        read = always + expert * self._expert_reads(tokens)
        return max(read / self.gpu.hbm_bytes_per_s, per_token * tokens)

    @cached_property
    def _attention_rates(self) -> tuple[float, float]:
        """(seconds per query-key pair, seconds per cached token read) for one pipeline stage."""
        m = self.model
        heads_per_rank = m.heads / self.tp
        if m.mla:
            flops_per_pair = 2.0 * heads_per_rank * (2 * m.kv_lora_rank + m.qk_rope_dim)
        else:
            flops_per_pair = 2.0 * heads_per_rank * (m.qk_dim + m.vo_dim)
        pair = flops_per_pair * m.layers / self.pp / self.gpu.attention_flops
        kv = m.kv_elements_per_token_layer() * BYTES_PER_PARAM_KV[self.kv_dtype] * m.layers / self.kv_shards
        return pair, kv / self.gpu.hbm_bytes_per_s

    def _attention_time(self, kv_read_tokens: float, score_pairs: float) -> float:
        """Attention over ``kv_read_tokens`` cached tokens (bytes) and ``score_pairs`` query-key pairs (FLOPs)."""
        pair, read = self._attention_rates
        return max(kv_read_tokens * read, score_pairs * pair)

    def _comm_time(self, tokens: float) -> float:
        """Collectives of one pipeline stage for ``tokens`` tokens: two all-reduces per layer under TP
        (after attention and after the MLP); MoE layers under EP use dispatch + combine all-to-alls."""
        m = self.model
        act = tokens * m.hidden * 2.0
        per_layer = self.allreduce_time(act)
        if m.is_moe and self.ep > 1:
            moe = 2.0 * self.all_to_all_time(act * m.top_k / max(1, self.tp // self.ep))
            total = m.layers * per_layer + m.moe_layers * moe + m.dense_layers * per_layer
        else:
            total = 2 * m.layers * per_layer
        return total / self.pp

    def _p2p_time(self, tokens: float) -> float:
        if self.pp == 1:
            return 0.0
        return (self.pp - 1) * (P2P_LATENCY_S + tokens * self.model.hidden * 2.0 / (self.gpu.scaleup_gbps * 1e9))

    def _stage_time(self, tokens: float, kv_read_tokens: float, pairs: float) -> float:
        return self._linear_time(tokens) + self._attention_time(kv_read_tokens, pairs) + self._comm_time(tokens)

    @cached_property
    def step_floor(self) -> float:
        """Fixed cost of any engine step: host-side scheduling plus one kernel tail per layer."""
        return self.backend.step_overhead_ms * 1e-3 + self.model.layers * self.gpu.eff.layer_floor_us * 1e-6

    def decode_step_time(
        self, batch: float, context: float, prefill_tokens: float = 0.0, prefill_pairs: float = 0.0
    ) -> float:
        """Seconds for one engine step: ``batch`` decoding sequences at mean ``context`` tokens, plus an
        optional prefill chunk (chunked prefill in aggregated serving) of ``prefill_tokens`` new tokens
        whose attention covers ``prefill_pairs`` query-key pairs.

        With pipeline parallelism the batch is split into ``pp`` micro-batches; a token still passes every
        stage, so the per-token latency is ``pp`` stage times of one micro-batch.
        """
        if batch <= 0 and prefill_tokens <= 0:
            return 0.0
        ctx = self.model.attention_context(context)
        micro = batch / self.pp
        pf = prefill_tokens / self.pp
        stage = self._stage_time(micro + pf, micro * ctx + pf, micro * ctx + prefill_pairs / self.pp)
        return self.pp * stage + self._p2p_time(micro + pf) + self.step_floor

    def prefill_chunks(self, isl: int, cached: int = 0) -> list[tuple[int, float]]:
        """(new tokens, query-key pairs) of each chunk one prompt is prefilled in."""
        new = max(0, isl - cached)
        out: list[tuple[int, float]] = []
        done = 0
        while done < new:
            step = min(self.chunk, new - done)
            prior = cached + done
            out.append((step, step * self.model.attention_context(prior + step / 2.0)))
            done += step
        return out

    def prefill_time(self, isl: int, batch: int = 1, cached: int = 0) -> float:
        """Seconds to prefill ``batch`` prompts of ``isl`` tokens (``cached`` of them already in KV) with no
        decode work alongside. Short prompts share a step up to the chunk budget; long ones span steps."""
        chunks = self.prefill_chunks(isl, cached)
        if not chunks:
            return self.step_floor
        if len(chunks) == 1 and batch > 1:
            tokens, pairs = chunks[0]
            per_step = max(1, self.chunk // max(1, tokens))
            total = 0.0
            left = batch
            while left > 0:
                n = min(per_step, left)
                total += self.prefill_step_time(tokens * n, pairs * n)
                left -= n
            return total
        return batch * sum(self.prefill_step_time(t, p) for t, p in chunks)

    def prefill_step_time(self, tokens: float, pairs: float) -> float:
        """One prefill-only step of ``tokens`` new tokens covering ``pairs`` query-key pairs."""
        stage = self._stage_time(tokens, tokens, pairs / self.pp)
        return self.pp * stage + self._p2p_time(tokens) + self.step_floor

    def kv_transfer_bytes(self, tokens: int) -> float:
        """KV bytes of ``tokens`` prompt tokens, all ranks together (what moves prefill -> decode)."""
        return self.model.kv_bytes_per_token(self.kv_dtype, tokens) * tokens

    def describe(self) -> str:
        par = f"TP{self.tp}" + (f" PP{self.pp}" if self.pp > 1 else "") + (f" EP{self.ep}" if self.ep > 1 else "")
        return f"{self.model.name} {self.weights} on {self.gpus}x {self.gpu.name} ({par}, {self.backend.name})"
