"""Roofline cost model of one engine replica: prefill steps, decode steps, memory.

Every step time is ``max(bytes / achievable bandwidth, FLOPs / achievable FLOP/s)`` per operator group
(linear layers, attention), plus tensor-parallel all-reduces over the scale-up fabric, plus a per-step
floor (one kernel tail per layer and the engine's host-side step overhead). The achievable rates
come from :mod:`disagg.planner.catalog` (datasheet peak times a per-generation efficiency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, cached_property
from statistics import NormalDist

from disagg.planner.catalog import (
    BYTES_PER_PARAM,
    BYTES_PER_PARAM_KV,
    GPU,
    BackendProfile,
    ModelShape,
    PlanningError,
)

ACTIVATION_RESERVE_GB = 3.0
"""CUDA graphs, NCCL buffers, allocator slack and activations at the step token budget (per GPU)."""
P2P_LATENCY_S = 20e-6
KERNELS_PER_LAYER = 12
"""Kernels of one dense decoder layer (norms, QKV, rotary, KV write, attention, O-proj, all-reduces,
gate/up, activation, down) that the per-layer floor of ``Generation.layer_floor_us`` stands for."""
MOE_EXTRA_KERNELS = 6
"""Kernels an MoE layer adds to a dense MLP's: router GEMM, softmax/top-k, token sort, expert-block
alignment, gather into expert order (permute) and the weighted scatter-reduce back (unpermute)."""


@cache
def _max_of_normals(n: int) -> float:
    """Expected largest of ``n`` independent standard normal draws (Blom's approximation of the order
    statistic, within 0.03 of the exact 0.56, 1.03, 1.42, 1.77 for 2, 4, 8, 16)."""
    if n <= 1:
        return 0.0
    return NormalDist().inv_cdf((n - 0.375) / (n + 0.25))


@dataclass(frozen=True)
class Engine:
    """One engine replica: a model on ``tp * dp * pp`` GPUs.

    ``dp`` is attention data parallelism (vLLM ``--data-parallel-size`` with expert parallelism, SGLang
    ``--enable-dp-attention``, TensorRT-LLM ``enable_attention_dp``): ``dp`` attention ranks of ``tp`` GPUs
    each serve their own sequences with their own KV cache and a replicated copy of the non-expert weights,
    while every MoE layer spreads the routed experts over all ``tp * dp`` GPUs of a stage — ``ep`` ranks
    holding whole experts, each expert split over ``tp * dp / ep`` GPUs (MoE tensor parallelism). The ranks
    step together (an MoE layer needs every rank's tokens), so the busiest rank sets each step."""

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
    dp: int = 1
    """Attention data-parallel ranks (see the class docstring); 1 = plain tensor parallelism."""

    def __post_init__(self) -> None:
        if self.tp < 1 or self.pp < 1 or self.ep < 1 or self.dp < 1:
            raise PlanningError("tp, pp, ep and dp must be >= 1")
        if self.dp > 1 and not self.model.is_moe:
            raise PlanningError(
                "attention data parallelism needs an MoE model (for a dense model it is just more replicas)"
            )
        if self.ep > self.tp * self.dp:
            raise PlanningError(
                f"expert parallelism ({self.ep}) cannot exceed the GPUs of one pipeline stage (tp x dp = "
                f"{self.tp * self.dp}); for EP = TP x DP pass the attention data parallelism (--dp)"
            )
        if (self.tp * self.dp) % self.ep:
            raise PlanningError(f"expert parallelism ({self.ep}) must divide tp x dp ({self.tp * self.dp})")
        if self.model.layers < self.pp:
            raise PlanningError(f"pipeline parallelism {self.pp} exceeds the model's {self.model.layers} layers")
        if self.weights not in BYTES_PER_PARAM or self.kv_dtype not in BYTES_PER_PARAM_KV:
            raise PlanningError(f"unsupported precision {self.weights}/{self.kv_dtype}")

    # ------------------------------------------------------------------ geometry and precision
    @property
    def gpus(self) -> int:
        return self.tp * self.dp * self.pp

    @property
    def rank_gpus(self) -> int:
        """GPUs of one attention rank (``tp * pp``): they hold the non-expert weights and its KV cache."""
        return self.tp * self.pp

    @property
    def moe_group(self) -> int:
        """GPUs of one pipeline stage that share the routed experts (``tp * dp``)."""
        return self.tp * self.dp

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

    def moe_gather_time(self, nbytes: float) -> float:
        """One all-gather (before the experts) or reduce-scatter (after them) of ``nbytes`` of activations
        over the ``tp * dp`` GPUs of an MoE layer under attention data parallelism: every GPU receives the
        other ranks' tokens. (vLLM's all-gather/reduce-scatter backend, SGLang's DP-attention gather; an
        all-to-all dispatch moves ``top_k / ep`` of it per token, the same order at top-8 over 8 ranks.)"""
        group = self.moe_group
        if group == 1:
            return 0.0
        eff = self.gpu.eff
        latency = eff.allreduce_latency_us * 1e-6 * self.backend.allreduce_factor * (1 + 0.15 * math.log2(group))
        if group <= self.gpu.scaleup_domain:
            bw = self.gpu.scaleup_gbps * 1e9 * eff.link_eta
        else:
            bw, latency = self.gpu.scaleout_gbps * 1e9 * eff.link_eta, latency * 4
        return latency + (group - 1) / group * nbytes / bw

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
        always = (attn + dense + shared + router + lm_head) / self.rank_gpus  # replicated over DP ranks
        expert = m.moe_layers * m.expert_params * BYTES_PER_PARAM[self.weights] / self.gpus
        embed = 0.0 if m.tied_embeddings else m.embedding_params * 2.0 / self.rank_gpus
        return always, expert, embed

    @cached_property
    def weight_bytes_per_gpu(self) -> float:
        always, expert, embed = self._weight_parts
        return always + expert * self.model.experts + embed

    @property
    def kv_shards(self) -> int:
        """GPUs one sequence's KV is split over (within its attention rank): GQA heads shard up to n_kv;
        MLA's latent is replicated across TP ranks."""
        if self.model.mla:
            return self.pp
        return min(self.tp, self.model.kv_heads) * self.pp

    def kv_bytes_per_token_gpu(self, context: int | None = None) -> float:
        return self.model.kv_bytes_per_token(self.kv_dtype, context) / self.kv_shards

    @cached_property
    def kv_free_bytes_per_gpu(self) -> float:
        return self.gpu.hbm_bytes * self.mem_util - self.weight_bytes_per_gpu - ACTIVATION_RESERVE_GB * 1e9

    def rank_capacity_tokens(self, context: int | None = None) -> int:
        """Tokens of KV one attention rank holds (a sequence lives on one rank)."""
        free = self.kv_free_bytes_per_gpu
        return max(0, int(free / self.kv_bytes_per_token_gpu(context)))

    def kv_capacity_tokens(self, context: int | None = None) -> int:
        """Tokens of KV the replica holds (for sequences of about ``context`` tokens), all DP ranks."""
        return self.rank_capacity_tokens(context) * self.dp

    def fits(self, tokens: int = 1) -> bool:
        return self.kv_free_bytes_per_gpu > 0 and self.rank_capacity_tokens(tokens) >= tokens

    def max_batch(self, context: int) -> int:
        """Sequences of ``context`` tokens whose KV fits at once (every DP rank holds its own)."""
        return self.rank_capacity_tokens(context) // max(1, context) * self.dp

    # ------------------------------------------------------------------ step times
    def _expert_reads(self, tokens: float) -> float:
        """Distinct experts one MoE layer reads for ``tokens`` routed tokens (expected; <= min(E, k*tokens))."""
        m = self.model
        if not m.is_moe or tokens <= 0:
            return 0.0
        hit = 1.0 - (1.0 - m.top_k / m.experts) ** float(tokens)  # chance a given expert is routed to
        touched: float = m.experts * hit
        if self.ep > 1:
            # The slowest rank sets the step: each rank's count of touched experts among its E/ep is binomial
            # (mean E/ep * hit, variance E/ep * hit * (1 - hit)); the step waits for the largest of ep counts.
            local = m.experts / self.ep
            busiest = local * hit + _max_of_normals(self.ep) * math.sqrt(local * hit * (1.0 - hit))
            touched = min(float(m.experts), self.ep * busiest)
        return touched

    def _routed_imbalance(self, tokens: float) -> float:
        """Busiest EP rank's routed token-expert pairs over the mean: each rank's share of the ``tokens * top_k``
        pairs is binomial, and the MoE layer waits for the fullest rank (the expected maximum of ``ep`` draws,
        see ``_max_of_normals``). Random routing is the floor; trained routers are more skewed."""
        m = self.model
        if self.ep <= 1 or tokens <= 0 or not m.is_moe:
            return 1.0
        mean = tokens * m.top_k / self.ep
        return 1.0 + _max_of_normals(self.ep) * math.sqrt((1.0 - 1.0 / self.ep) / mean)

    @cached_property
    def _linear_rates(self) -> tuple[float, float, float, float, float]:
        """Per GPU: (seconds of compute per token through the transformer layers, seconds of lm-head compute
        per sampled token, seconds of compute per routed-expert token, seconds to stream the always-read
        weights, seconds to stream one routed expert in all MoE layers).

        Each weight group streams and multiplies at the rate of its own precision: attention projections
        at ``attn_dtype``, MLPs/experts at the checkpoint's precision, router and lm-head at BF16 (every
        serving checkpoint keeps them wide). A precision the tensor cores lack is dequantised in the GEMM
        (see ``GPU.gemm_flops`` / ``GPU.weight_stream_bytes_per_s``)."""
        m = self.model
        gpu = self.gpu
        w = BYTES_PER_PARAM[self.weights]
        attn_params = m.layers * m.attention_params
        dense_params = (m.dense_layers if m.is_moe else m.layers) * m.dense_mlp_params
        shared_params = m.moe_layers * m.shared_experts * m.expert_params
        routed_params = m.moe_layers * m.top_k * m.expert_params
        per_token = 2.0 * attn_params / gpu.gemm_flops(self.attn_dtype)
        per_token += 2.0 * (dense_params + shared_params) / gpu.gemm_flops(self.weights)
        per_token += 2.0 * m.moe_layers * m.hidden * m.experts / gpu.gemm_flops("bf16")  # router
        routed = 2.0 * routed_params / (gpu.gemm_flops(self.weights) * self.backend.moe_gemm_eta)
        lm_head = 2.0 * m.embedding_params / gpu.gemm_flops("bf16")
        rank = self.rank_gpus  # non-expert weights: split over one attention rank, replicated over DP ranks
        attn_b = attn_params * BYTES_PER_PARAM[self.attn_dtype] / rank
        mlp_b = (dense_params + shared_params) * w / rank
        wide_b = (m.moe_layers * m.hidden * m.experts + m.embedding_params) * 2.0 / rank  # router, lm-head
        always_s = attn_b / gpu.weight_stream_bytes_per_s(self.attn_dtype)
        always_s += mlp_b / gpu.weight_stream_bytes_per_s(self.weights)
        always_s += wide_b / gpu.weight_stream_bytes_per_s("bf16")
        _, expert, _ = self._weight_parts
        expert_s = expert / gpu.weight_stream_bytes_per_s(self.weights)
        return per_token / rank, lm_head / rank, routed / self.gpus, always_s, expert_s

    def _linear_time(self, tokens: float, sampled: float | None = None, moe_tokens: float | None = None) -> float:
        """Weight-bearing layers for ``tokens`` tokens of the busiest attention rank in one step (roofline:
        bytes vs FLOPs); the routed experts see ``moe_tokens`` (default ``tokens``: every rank's tokens under
        attention DP). Only the ``sampled`` tokens (default: all) go through the lm-head: a prefill chunk
        needs logits for at most its prompt's last token."""
        per_token, lm_head, routed, always_s, expert_s = self._linear_rates
        moe = tokens if moe_tokens is None else moe_tokens
        read = always_s + expert_s * self._expert_reads(moe)
        routed_s = routed * moe * self._routed_imbalance(moe)
        compute = per_token * tokens + routed_s + lm_head * (tokens if sampled is None else sampled)
        return max(read, compute)

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

    def _comm_time(self, tokens: float, moe_tokens: float | None = None) -> float:
        """Collectives of one pipeline stage: two all-reduces per layer among the ``tp`` GPUs of an attention
        rank (after attention and after the MLP) for its ``tokens``. Without attention DP every GPU already
        holds every token, so an MoE layer (experts whole under EP or sliced under MoE-TP) ends in the same
        all-reduce of partial sums. Under attention DP an MoE layer instead gathers all ranks' ``moe_tokens``
        before the experts and reduce-scatters them after."""
        m = self.model
        per_layer = self.allreduce_time(tokens * m.hidden * 2.0)
        if m.is_moe and self.dp > 1:
            moe = tokens if moe_tokens is None else moe_tokens
            gather = 2.0 * self.moe_gather_time(moe * m.hidden * 2.0)
            total = m.layers * per_layer + m.moe_layers * gather + m.dense_layers * per_layer
        else:
            total = 2 * m.layers * per_layer
        return total / self.pp

    def _p2p_time(self, tokens: float) -> float:
        if self.pp == 1:
            return 0.0
        return (self.pp - 1) * (P2P_LATENCY_S + tokens * self.model.hidden * 2.0 / (self.gpu.scaleup_gbps * 1e9))

    @cached_property
    def _activation_rate(self) -> tuple[float, float]:
        """(seconds per token of the busiest attention rank, seconds per routed token of an MoE layer) of
        one pipeline stage's element-wise kernels (between the GEMMs, which are
        compute-bound in prefill and leave these un-overlapped): two fused residual-add + RMSNorm passes
        over the full hidden state (every TP rank holds all of it after the all-reduce), rotary embedding
        and the KV-cache write on this rank's heads, and the gated activation on its MLP slice. An MoE layer
        also gathers each token into its ``top_k`` experts' buffers and scatter-reduces them back, and runs
        the activation on ``top_k`` expert slices; under EP a GPU moves only the ``top_k / ep`` copies bound
        for its own experts, and under attention DP it does so for every rank's tokens. BF16 activations,
        read and written once per pass."""
        m = self.model
        hidden = 8.0 * m.hidden  # 2 x (read x and residual, write residual and normed)
        if m.mla:
            heads = 2.0 * m.heads * m.qk_dim / self.tp + 3.0 * (m.kv_lora_rank + m.qk_rope_dim)
        else:  # rotary (read + write q, k) and KV-cache write (read k, v; write them to the cache)
            heads = (2.0 * m.heads * m.qk_dim + 6.0 * m.kv_heads * m.head_dim) / self.tp
        dense = 3.0 * m.intermediate / self.tp  # read gate and up, write their product
        shared = 3.0 * m.shared_experts * m.moe_intermediate / self.tp
        routed = 3.0 * m.top_k * m.moe_intermediate / self.moe_group + 2.0 * (m.top_k / self.ep + 1) * m.hidden
        per_token = m.layers * (hidden + heads)
        per_token += (m.dense_layers if m.is_moe else m.layers) * dense + m.moe_layers * shared
        scale = 2.0 / self.pp / self.gpu.hbm_bytes_per_s
        return per_token * scale, m.moe_layers * routed * scale

    def _stage_time(
        self,
        tokens: float,
        kv_read_tokens: float,
        pairs: float,
        sampled: float | None = None,
        moe_tokens: float | None = None,
    ) -> float:
        """One pipeline stage: ``tokens`` of the busiest attention rank, ``moe_tokens`` (default ``tokens``)
        through the routed experts."""
        moe = tokens if moe_tokens is None else moe_tokens
        rank_rate, moe_rate = self._activation_rate
        linear = self._linear_time(tokens, sampled, moe) + tokens * rank_rate + moe * moe_rate
        return linear + self._attention_time(kv_read_tokens, pairs) + self._comm_time(tokens, moe)

    @cached_property
    def step_floor(self) -> float:
        """Fixed cost of any engine step: host-side scheduling plus one kernel tail per layer (MoE layers
        run ``MOE_EXTRA_KERNELS`` more kernels than the ``KERNELS_PER_LAYER`` of a dense one)."""
        m = self.model
        kernels = m.layers + MOE_EXTRA_KERNELS * m.moe_layers / KERNELS_PER_LAYER
        return self.backend.step_overhead_ms * 1e-3 + kernels * self.gpu.eff.layer_floor_us * 1e-6

    @cached_property
    def eager_floor(self) -> float:
        """Least time of a step that carries prefill tokens (more tokens than ``BackendProfile.graph_tokens``):
        such a step runs outside a CUDA graph, so the host dispatches every layer's operators
        (``BackendProfile.eager_layer_us`` per dense layer, half again per MoE layer), plus the engine's
        per-step scheduling. The launches run ahead of the GPU asynchronously, so the step takes the longer of
        this and its kernels."""
        m = self.model
        layers = m.layers + MOE_EXTRA_KERNELS * m.moe_layers / KERNELS_PER_LAYER
        return self.backend.step_overhead_ms * 1e-3 + layers * self.backend.eager_layer_us * 1e-6

    def decode_step_time(
        self,
        batch: float,
        context: float,
        prefill_tokens: float = 0.0,
        prefill_pairs: float = 0.0,
        prefill_ranks: int = 1,
    ) -> float:
        """Seconds for one engine step: ``batch`` decoding sequences at mean ``context`` tokens, plus an
        optional prefill chunk (chunked prefill in aggregated serving) of ``prefill_tokens`` new tokens
        whose attention covers ``prefill_pairs`` query-key pairs.

        Under attention DP the sequences spread over the ``dp`` ranks and the chunk lands on one of them
        (``prefill_ranks`` > 1: that many ranks carry such a chunk in the same step); the experts see every
        rank's tokens and the busiest rank sets the step.

        With pipeline parallelism the batch is split into ``pp`` micro-batches; a token still passes every
        stage, so the per-token latency is ``pp`` stage times of one micro-batch.
        """
        if batch <= 0 and prefill_tokens <= 0:
            return 0.0
        ctx = self.model.attention_context(context)
        rank_batch = batch / self.dp if self.dp > 1 else batch
        if self.dp > 1 and batch > 0:
            rank_batch = max(rank_batch, min(batch, 1.0))  # a rank holds whole sequences
        micro = rank_batch / self.pp
        pf = prefill_tokens / self.pp
        moe = (batch / self.pp + pf * max(1, min(prefill_ranks, self.dp))) if self.dp > 1 else micro + pf
        stage = self._stage_time(micro + pf, micro * ctx + pf, micro * ctx + prefill_pairs / self.pp, micro, moe)
        step = self.pp * stage + self._p2p_time(micro + pf) + self.step_floor
        if prefill_tokens > 0 and rank_batch + prefill_tokens > self.backend.graph_tokens:
            step = max(step, self.eager_floor)
        return step + rank_batch * self.backend.seq_overhead_us * 1e-6

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
        ranks = max(1, min(self.dp, batch))  # under attention DP the prompts spread over the ranks
        batch = math.ceil(batch / ranks)
        if len(chunks) == 1 and batch > 1:
            tokens, pairs = chunks[0]
            per_step = max(1, self.chunk // max(1, tokens))
            total = 0.0
            left = batch
            while left > 0:
                n = min(per_step, left)
                total += self.prefill_step_time(tokens * n, pairs * n, ranks)
                left -= n
            return total
        return batch * sum(self.prefill_step_time(t, p, ranks) for t, p in chunks)

    def prefill_step_time(self, tokens: float, pairs: float, ranks: int = 1) -> float:
        """One prefill-only step of ``tokens`` new tokens covering ``pairs`` query-key pairs on one attention
        rank (``ranks`` DP ranks each running such a chunk at once: their tokens all reach the experts)."""
        moe = tokens * max(1, min(ranks, self.dp))
        stage = self._stage_time(tokens, tokens, pairs / self.pp, sampled=0.0, moe_tokens=moe)
        step = self.pp * stage + self._p2p_time(tokens) + self.step_floor
        return max(step, self.eager_floor) if tokens > self.backend.graph_tokens else step

    def kv_transfer_bytes(self, tokens: int) -> float:
        """KV bytes of ``tokens`` prompt tokens, all ranks together (what moves prefill -> decode)."""
        return self.model.kv_bytes_per_token(self.kv_dtype, tokens) * tokens

    def describe(self) -> str:
        par = f"TP{self.tp}" + (f" DP{self.dp}" if self.dp > 1 else "") + (f" PP{self.pp}" if self.pp > 1 else "")
        par += f" EP{self.ep}" if self.ep > 1 else ""
        return f"{self.model.name} {self.weights} on {self.gpus}x {self.gpu.name} ({par}, {self.backend.name})"
