"""Discrete-event simulation of both architectures on the same cost model as the planner.

Requests arrive as a Poisson process (seeded RNG). Engines advance in steps whose durations come
from :class:`disagg.planner.costmodel.Engine`, so the simulator checks the planner's *queueing*
approximations (M/D/c tails, Little's-law batches, chunked-prefill interference), not the cost model.

* Disaggregated: a load-aware router keeps one FCFS queue for the prefill pool (a free replica takes
  the head, batching short prompts up to its token budget); finished prompts move their KV over the
  fabric, join the least-loaded decode replica at its next step boundary and emit the first token at
  the end of that step.
* Aggregated: the router sends each request to the replica with the least queued prefill work; every
  step decodes the running batch and carries up to a chunk of queued prompt tokens (chunked prefill);
  a prompt's first token is emitted at the end of the step that finishes it.

Reported per request: TTFT (arrival to first token, plus the engine's fixed request overhead) and
TPOT (mean gap between its later tokens); percentiles are taken over requests after a warm-up share.
All loops are bounded by the request count.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

from disagg.planner.catalog import PlanningError
from disagg.planner.costmodel import Engine
from disagg.planner.plan import ServingMode
from disagg.planner.queueing import sample_percentile
from disagg.planner.sizing import Candidate, Fabric, Workload, prefill_batch_limit

WARMUP_SHARE = 0.1


@dataclass
class _Req:
    rid: int
    arrival: float
    isl: int
    osl: int
    new_tokens: int
    prefill_left: int = 0
    generated: int = 0
    first_token: float = math.nan
    finish: float = math.nan


@dataclass(frozen=True)
class SimResult:
    requests: int
    ttft_p_ms: float
    itl_p_ms: float
    ttft_mean_ms: float
    tpot_mean_ms: float
    percentile: int
    simulated_s: float
    throughput_tokens_per_s: float

    def as_dict(self) -> dict[str, float | int]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def _arrivals(workload: Workload, n: int, seed: int) -> list[_Req]:
    rng = random.Random(seed)  # noqa: S311 - a seeded simulation, not cryptography
    t = 0.0
    out = []
    for i in range(n):
        t += rng.expovariate(workload.rate)
        out.append(_Req(i, t, workload.isl, workload.osl, workload.new_tokens))
    return out


@dataclass
class _Decoder:
    """A replica that decodes (and, in aggregated mode, also prefills in chunks)."""

    engine: Engine
    running: list[_Req] = field(default_factory=list)
    joining: list[_Req] = field(default_factory=list)
    queue: deque[_Req] = field(default_factory=deque)
    busy: bool = False
    ctx_sum: float = 0.0
    step_prefill: list[tuple[_Req, int]] = field(default_factory=list)
    queued_tokens: int = 0


def _finish_stats(reqs: list[_Req], workload: Workload, overhead: float, end: float) -> SimResult:
    skip = int(len(reqs) * WARMUP_SHARE)
    done = [r for r in reqs[skip:] if not math.isnan(r.finish)]
    if not done:
        raise PlanningError("simulation finished no requests; the configuration is overloaded")
    ttfts = [r.first_token - r.arrival + overhead for r in done]
    tpots = [(r.finish - r.first_token) / max(1, r.osl - 1) for r in done]
    p = workload.p
    tokens = sum(r.osl for r in done)
    span = max(1e-9, max(r.finish for r in done) - min(r.arrival for r in done))
    return SimResult(
        requests=len(done),
        ttft_p_ms=sample_percentile(ttfts, p) * 1e3,
        itl_p_ms=sample_percentile(tpots, p) * 1e3,
        ttft_mean_ms=sum(ttfts) / len(ttfts) * 1e3,
        tpot_mean_ms=sum(tpots) / len(tpots) * 1e3,
        percentile=workload.percentile,
        simulated_s=end,
        throughput_tokens_per_s=tokens / span,
    )


def simulate(
    candidate: Candidate,
    prefill_engine: Engine,
    decode_engine: Engine,
    workload: Workload,
    fabric: Fabric | None = None,
    requests: int = 3000,
    seed: int = 1,
) -> SimResult:
    """Simulate ``candidate`` (aggregated: ``prefill_engine`` serves both phases) for ``requests`` requests."""
    if requests < 10:
        raise PlanningError("simulate at least 10 requests")
    reqs = _arrivals(workload, requests, seed)
    overhead = decode_engine.backend.request_overhead_ms / 1e3
    if candidate.mode == ServingMode.AGGREGATED:
        end = _run_aggregated(candidate, prefill_engine, reqs)
    else:
        end = _run_disaggregated(candidate, prefill_engine, decode_engine, reqs, fabric or Fabric())
    return _finish_stats(reqs, workload, overhead, end)


def _decode_step(rep: _Decoder, now: float, events: list[tuple[float, int, int]], idx: int, seq: list[int]) -> None:
    """Start a step on ``rep``: admit joiners, take prefill chunk (aggregated), push its end event."""
    for r in rep.joining:
        rep.running.append(r)
        rep.ctx_sum += r.isl + r.generated
    rep.joining.clear()
    tokens = 0
    pairs = 0.0
    rep.step_prefill = []
    budget = rep.engine.chunk
    while rep.queue and budget > 0:
        head = rep.queue[0]
        take = min(budget, head.prefill_left)
        done_before = head.new_tokens - head.prefill_left
        prior = head.isl - head.new_tokens + done_before
        pairs += take * rep.engine.model.attention_context(prior + take / 2.0)
        tokens += take
        budget -= take
        rep.step_prefill.append((head, take))
        if take == head.prefill_left:
            rep.queue.popleft()
        else:
            break
    b = len(rep.running)
    if b == 0 and tokens == 0:
        rep.busy = False
        return
    ctx = rep.ctx_sum / b if b else 0.0
    dt = rep.engine.decode_step_time(b, ctx, tokens, pairs)
    rep.busy = True
    seq[0] += 1
    heapq.heappush(events, (now + dt, seq[0], idx))


def _end_step(rep: _Decoder, now: float) -> None:
    still: list[_Req] = []
    for r in rep.running:
        r.generated += 1
        rep.ctx_sum += 1
        if math.isnan(r.first_token):
            r.first_token = now
        if r.generated >= r.osl:
            r.finish = now
            rep.ctx_sum -= r.isl + r.generated
        else:
            still.append(r)
    rep.running = still
    for r, take in rep.step_prefill:
        r.prefill_left -= take
        rep.queued_tokens -= take
        if r.prefill_left == 0:
            r.first_token = now
            r.generated = 1
            if r.generated >= r.osl:
                r.finish = now
            else:
                rep.joining.append(r)
    rep.step_prefill = []


def _run_aggregated(c: Candidate, engine: Engine, reqs: list[_Req]) -> float:
    reps = [_Decoder(engine) for _ in range(c.prefill_replicas)]
    events: list[tuple[float, int, int]] = []
    seq = [0]
    now = 0.0
    arrivals = deque(reqs)
    budget_events = 50 * len(reqs) * (reqs[0].osl + 2) if reqs else 0
    for _ in range(budget_events):
        next_arrival = arrivals[0].arrival if arrivals else math.inf
        next_event = events[0][0] if events else math.inf
        if next_arrival == math.inf and next_event == math.inf:
            break
        if next_arrival <= next_event:
            r = arrivals.popleft()
            now = r.arrival
            r.prefill_left = r.new_tokens
            idx = min(range(len(reps)), key=lambda i: (reps[i].queued_tokens, len(reps[i].running)))
            rep = reps[idx]
            rep.queue.append(r)
            rep.queued_tokens += r.new_tokens
            if not rep.busy:
                _decode_step(rep, now, events, idx, seq)
        else:
            now, _, idx = heapq.heappop(events)
            rep = reps[idx]
            _end_step(rep, now)
            _decode_step(rep, now, events, idx, seq)
    return now


def _run_disaggregated(c: Candidate, pengine: Engine, dengine: Engine, reqs: list[_Req], fabric: Fabric) -> float:
    decoders = [_Decoder(dengine) for _ in range(c.decode_replicas)]
    free_prefill = c.prefill_replicas
    queue: deque[_Req] = deque()
    # events: (time, seq, kind, payload index); kinds: 0 prefill done, 1 KV arrived, 2 decode step end
    events: list[tuple[float, int, int, int]] = []
    batches: dict[int, list[_Req]] = {}
    seq = 0
    now = 0.0
    arrivals = deque(reqs)
    transfer = fabric.transfer_time(pengine.kv_transfer_bytes(reqs[0].isl)) if reqs else 0.0
    limit = prefill_batch_limit(pengine, reqs[0].new_tokens) if reqs else 1
    step_events: list[tuple[float, int, int]] = []

    def start_prefill() -> None:
        nonlocal free_prefill, seq
        while free_prefill > 0 and queue:
            batch = [queue.popleft() for _ in range(min(limit, len(queue)))]
            dt = pengine.prefill_time(batch[0].isl, batch=len(batch), cached=batch[0].isl - batch[0].new_tokens)
            seq += 1
            batches[seq] = batch
            heapq.heappush(events, (now + dt, seq, 0, seq))
            free_prefill -= 1

    budget_events = 50 * len(reqs) * (reqs[0].osl + 2) if reqs else 0
    for _ in range(budget_events):
        next_arrival = arrivals[0].arrival if arrivals else math.inf
        next_event = events[0][0] if events else math.inf
        next_step = step_events[0][0] if step_events else math.inf
        if min(next_arrival, next_event, next_step) == math.inf:
            break
        if next_arrival <= next_event and next_arrival <= next_step:
            r = arrivals.popleft()
            now = r.arrival
            queue.append(r)
            start_prefill()
        elif next_event <= next_step:
            now, _, kind, key = heapq.heappop(events)
            if kind == 0:
                free_prefill += 1
                for r in batches.pop(key):
                    seq += 1
                    heapq.heappush(events, (now + transfer, seq, 1, r.rid))
                start_prefill()
            else:
                r = reqs[key]
                idx = min(range(len(decoders)), key=lambda i: len(decoders[i].running) + len(decoders[i].joining))
                dec = decoders[idx]
                dec.joining.append(r)
                if not dec.busy:
                    counter = [seq]
                    _decode_step(dec, now, step_events, idx, counter)
                    seq = counter[0]
        else:
            now, _, idx = heapq.heappop(step_events)
            dec = decoders[idx]
            _end_step(dec, now)
            counter = [seq]
            _decode_step(dec, now, step_events, idx, counter)
            seq = counter[0]
    return now
