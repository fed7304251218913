"""Steady state of one engine serving C closed-loop clients (how benchmarks and the data are taken).

Each client sends its next request when the last one finishes, so per replica the throughput is
``X = C / (TTFT + OSL * TPOT)`` (Little's law over the whole loop). The engine runs chunked prefill:
every step decodes all running sequences and may carry a prefill chunk. The unknowns feed each other:

* decoding sequences ``B = X * OSL * TPOT`` (capped by C and by the KV cache);
* the prefill share of engine time ``u = X * (extra step time the prompt's chunks add)``;
* ``TPOT = T_decode(B, ISL + OSL/2) / (1 - u)``: decode steps stretched by prefill chunks;
* ``TTFT = request overhead + half a step (arrival mid-step) + queueing behind other prompts
  (M/D/1 wait at utilisation u, at most C-1 prompts) + the prompt's own chunks`` (+ one decode step
  under an overlap scheduler, which streams every token one step late; + TensorRT-LLM's batch-waiting hold
  where the engine is told to wait for a larger prefill batch);
* when the KV cache holds fewer than C sequences, the extra clients wait for a slot (Little's law
  on the engine's sequence slots bounds X).

Lengths are fixed unless a length ratio says they vary (then the engine sees their mean and no clients stay
in phase). A damped fixed-point iteration converges in a few dozen rounds (microseconds of arithmetic).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from disagg.planner.catalog import PlanningError
from disagg.planner.costmodel import Engine

MAX_ITERATIONS = 200
MAX_UTILISATION = 0.97


@dataclass(frozen=True)
class ClosedLoopEstimate:
    ttft_ms: float
    tpot_ms: float
    requests_per_s: float
    output_tokens_per_s: float
    output_tokens_per_s_per_gpu: float
    decode_batch: float
    prefill_ms: float
    """One prompt's prefill alone on an idle engine."""
    decode_step_ms: float
    """A decode step at the steady batch without prefill work."""
    prefill_share: float
    kv_capacity_sequences: int
    kv_limited: bool
    gpus: int
    engine: str

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _burst_ttft(engine: Engine, clients: int, isl: int, cached: int, mean_ctx: float) -> float:
    """Mean time to first token when ``clients`` prompts arrive at once (a benchmark's first wave):
    prompts are prefilled first-come first-served in chunk-budget steps, finished ones start decoding.
    Under attention DP each rank takes its share of the prompts and the ranks prefill side by side."""
    ranks = max(1, min(engine.dp, clients))
    clients = math.ceil(clients / ranks)
    chunks = engine.prefill_chunks(isl, cached)
    per_prompt = sum(t for t, _ in chunks)
    pairs_per_prompt = sum(p for _, p in chunks)
    budget = max(engine.chunk, 1)
    clock = 0.0
    done_tokens = 0.0
    finished = 0
    total_ttft = 0.0
    total_tokens = per_prompt * clients
    while finished < clients and done_tokens < total_tokens:
        step = min(budget, total_tokens - done_tokens)
        pairs = pairs_per_prompt * step / max(per_prompt, 1)
        # Prefill-first (wave) scheduling runs the wave's prefill steps alone; otherwise finished prompts
        # decode in the steps that carry the rest.
        decoding = 0 if engine.backend.lockstep == "wave" else finished * ranks
        clock += engine.decode_step_time(decoding, mean_ctx, step, pairs, prefill_ranks=ranks)
        done_tokens += step
        now_finished = min(clients, int(done_tokens / max(per_prompt, 1) + 1e-9))
        total_ttft += (now_finished - finished) * clock
        finished = now_finished
    return total_ttft / clients


def _wave_tpot(engine: Engine, clients: int, isl: int, osl: int, cached: int, mean_ctx: float) -> float:
    """TPOT under prefill-first scheduling with the clients in lock-step (SGLang): each wave's prompts are
    prefilled in ``J`` budget-sized steps while decode waits, and nothing is prefilled while the wave decodes.
    A prompt finished in step ``j`` sits through the ``J - j`` prefill steps after its first token, (J - 1) / 2
    on average, spread over its ``osl - 1`` inter-token gaps."""
    ranks = max(1, min(engine.dp, clients))
    per_rank = math.ceil(clients / ranks)
    chunks = engine.prefill_chunks(isl, cached)
    tokens = sum(t for t, _ in chunks) * per_rank
    pairs = sum(p for _, p in chunks) * per_rank
    budget = max(engine.chunk, 1)
    steps = max(1, math.ceil(tokens / budget))
    step = engine.prefill_step_time(min(budget, tokens), pairs / steps, ranks) if tokens > 0 else 0.0
    t_dec = engine.decode_step_time(clients, mean_ctx)
    return t_dec + (steps - 1) / 2.0 * step / max(1, osl - 1)


def mean_length(nominal: int, length_ratio: float) -> int:
    """Mean of lengths drawn uniformly from ``[int(ratio * nominal), nominal]`` (vLLM's ``benchmark_serving
    --random-range-ratio`` as InferenceMAX runs it: ratio 0.8 gives 0.9 of the nominal length)."""
    return max(1, round((int(nominal * length_ratio) + nominal) / 2.0))


def _batch_wait(engine: Engine, x: float, batch: float, prompt_tokens: int, t_dec: float) -> tuple[float, float]:
    """(mean hold, prompts per released group) of TensorRT-LLM's batch waiting: while sequences decode, new
    prompts are held until ``batch_wait_iters`` iterations have passed or the held prompts and the decode
    tokens reach ``batch_wait_tokens_ratio`` of the token budget; then the whole group is prefilled at once.
    The first prompt of a group waits the full window, the ``n = x * window`` that arrive during it half of
    it on average (arrivals at ``x`` per second)."""
    backend = engine.backend
    if backend.batch_wait_iters <= 0 or batch < 1.0 or x <= 0:
        return 0.0, 1.0
    window = backend.batch_wait_iters * t_dec
    if backend.batch_wait_tokens_ratio > 0:
        room = backend.batch_wait_tokens_ratio * engine.chunk - batch  # decode tokens count towards the threshold
        prompts_to_fill = max(1.0, math.ceil(room / max(1, prompt_tokens)))
        window = min(window, (prompts_to_fill - 1.0) / x)
    n = x * window
    return window * (1.0 + n / 2.0) / (1.0 + n), 1.0 + n


def estimate_closed_loop(
    engine: Engine,
    concurrency: int,
    isl: int,
    osl: int,
    cached: int = 0,
    waves: float = 0.0,
    length_ratio: float = 1.0,
) -> ClosedLoopEstimate:
    """TTFT and TPOT of ``engine`` under ``concurrency`` closed-loop clients.

    ``waves`` > 0 models a finite benchmark: all clients start together and each sends ``waves``
    requests, so the first wave's burst (every prompt queued at once) weighs 1/waves in the mean TTFT.
    ``length_ratio`` < 1 draws each request's prompt and output lengths uniformly from
    ``[int(ratio * length), length]``: the engine sees the mean lengths, and requests that end at different
    tokens keep no two clients in phase, so no lock-step grouping applies.
    """
    if concurrency < 1:
        raise PlanningError("concurrency must be >= 1")
    if isl < 1 or osl < 1:
        raise PlanningError("input and output lengths must be >= 1 token")
    if not 0.0 < length_ratio <= 1.0:
        raise PlanningError("the length ratio must be in (0, 1]")
    fixed_lengths = length_ratio >= 1.0
    if not fixed_lengths:
        isl, osl = mean_length(isl, length_ratio), mean_length(osl, length_ratio)
        cached = min(cached, isl - 1)
    mean_ctx = isl + osl / 2.0
    capacity = engine.kv_capacity_tokens(int(mean_ctx))
    if engine.kv_free_bytes_per_gpu <= 0 or capacity < isl + osl:
        raise PlanningError(
            f"{engine.describe()} does not fit: {engine.weight_bytes_per_gpu / 1e9:.1f} GB of weights per GPU "
            f"leave room for {capacity} KV tokens (need {isl + osl})"
        )
    slots = max(1, int(capacity / mean_ctx))
    chunks = engine.prefill_chunks(isl, cached)
    new_tokens = sum(t for t, _ in chunks)
    # Fixed-length clients stay in lock-step: prompts prefilled in the same step finish decoding
    # together and come back together, so prompts shorter than the chunk budget arrive in groups
    # that share one prefill step (and all wait for it).
    group: float = 1
    if fixed_lengths and len(chunks) == 1 and new_tokens > 0 and engine.backend.lockstep == "step":
        group = max(1, min(concurrency, slots, engine.chunk // new_tokens))
    own_chunks = chunks
    grouped: list[tuple[float, float]] = [(t * group, p * group) for t, p in chunks]
    overhead = engine.backend.request_overhead_ms / 1e3
    lag = engine.backend.output_lag_steps  # an overlap scheduler streams each token one step late
    pf_alone = engine.prefill_time(isl, cached=cached)

    ttft = pf_alone + overhead
    tpot = engine.decode_step_time(min(concurrency, slots), mean_ctx)
    batch = 1.0
    t_dec = tpot
    u = 0.0
    for _ in range(MAX_ITERATIONS):
        x = concurrency / (ttft + osl * tpot)
        batch = min(float(concurrency), float(slots), max(1.0, x * osl * tpot))
        t_dec = engine.decode_step_time(batch, mean_ctx)
        hold, held = _batch_wait(engine, x, batch, new_tokens, t_dec)
        if engine.backend.batch_wait_iters > 0:  # a released group of held prompts is prefilled together
            group = held
            grouped = [(t * held, p * held) for t, p in own_chunks]
        mixed = [engine.decode_step_time(batch, mean_ctx, t, p) for t, p in grouped]
        extra = sum(mixed) - len(mixed) * t_dec  # what the group's chunks add to the steps they ride
        service = sum(mixed)
        # Each attention-DP rank prefills its own prompts (x / dp of them); every rank waits for the
        # slowest in a step, so decode is stretched whenever any rank carries a chunk.
        u = min(MAX_UTILISATION, x / group / engine.dp * extra)
        u_any = 1.0 - (1.0 - u) ** engine.dp
        new_tpot = t_dec / (1.0 - min(MAX_UTILISATION, u_any))
        wait = min(u * extra / (2.0 * (1.0 - u)), max(0.0, concurrency / group / engine.dp - 1) * extra)
        new_ttft = overhead + (0.5 + lag) * t_dec + wait + hold + service
        # Sequence slots: at most `slots` requests are inside the engine; the rest queue outside.
        x_slots = slots / (service + osl * new_tpot)
        if concurrency / (new_ttft + osl * new_tpot) > x_slots:
            new_ttft = concurrency / x_slots - osl * new_tpot
        done = abs(new_ttft - ttft) < 1e-7 and abs(new_tpot - tpot) < 1e-9
        ttft = 0.5 * ttft + 0.5 * new_ttft
        tpot = 0.5 * tpot + 0.5 * new_tpot
        if done:
            break
    steady_ttft = ttft
    if engine.backend.lockstep == "wave" and fixed_lengths:
        waves = 1.0
        tpot = _wave_tpot(engine, min(concurrency, slots), isl, osl, cached, mean_ctx)
    if waves > 0:
        burst = _burst_ttft(engine, min(concurrency, slots), isl, cached, mean_ctx) + overhead + lag * t_dec
        ttft = steady_ttft + max(0.0, burst - steady_ttft) / waves
    x = concurrency / (ttft + osl * tpot)
    return ClosedLoopEstimate(
        ttft_ms=ttft * 1e3,
        tpot_ms=tpot * 1e3,
        requests_per_s=x,
        output_tokens_per_s=x * osl,
        output_tokens_per_s_per_gpu=x * osl / engine.gpus,
        decode_batch=batch,
        prefill_ms=pf_alone * 1e3,
        decode_step_ms=t_dec * 1e3,
        prefill_share=u,
        kv_capacity_sequences=slots,
        kv_limited=slots < concurrency,
        gpus=engine.gpus,
        engine=engine.describe(),
    )
