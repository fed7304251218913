"""Replaying measured serving runs (aiconfigurator's silicon CSV format) through the estimator.

Only ``mode=agg`` rows (one engine, C closed-loop clients) are replayed; rows the estimator cannot
express (tensor parallelism beyond one scale-up domain, unknown models or GPUs, missing concurrency)
are reported as unsupported rather than forced.

Parallelism columns: ``tp_size`` is the attention TP of one rank, ``attention_dp_size`` the attention
data-parallel ranks, and ``moe_tp_size x moe_ep_size`` the GPUs an MoE layer spreads its experts over,
which is ``tp x dp``. Some harnesses leave ``attention_dp_size`` empty and record only the MoE split
(vLLM ``--data-parallel-size 2`` at TP1: ``tp_size 1, moe_tp_size 2``); the DP size is then
``moe_tp x moe_ep / tp``.

Each row is replayed under the protocol it was measured with (``protocol_for_row``): the benchmark client's
lengths and requests per client, and the server flags that differ from the engine's defaults, where the
publisher of the runs documents them (InferenceMAX); otherwise fixed lengths and ``BENCHMARK_WAVES``.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from disagg.planner.catalog import BackendProfile, PlanningError, get_backend, get_gpu, get_model, normalise_dtype
from disagg.planner.costmodel import Engine
from disagg.planner.estimate import estimate_closed_loop

BENCHMARK_WAVES = 8
"""Requests per client in the measurement harness (clients start together; see estimate.py)."""

_MEASURED = re.compile(r"\bmeasured=(\d{4}-\d{2}-\d{2})")
_INFERENCEMAX_SOURCE = re.compile(r"source_file=\d{4}-\d{2}-\d{2}\.csv;.*\bmeasured=")
"""Rows exported from the InferenceMAX dashboard: ``source_file=<date>.csv; model=...; measured=<date>``."""
INFERENCEMAX_REQUESTS_PER_CLIENT = 10
"""InferenceMAX runs ``benchmark_serving.py --num-prompts $((CONC * 10)) --max-concurrency $CONC``."""
INFERENCEMAX_LENGTH_RATIO = 0.8
"""... ``--random-range-ratio 0.8``: every prompt and output length is drawn from [0.8 L, L]."""


@dataclass(frozen=True)
class Protocol:
    """How one measured run was taken: the benchmark client's protocol and the server flags that differ
    from the engine's defaults, as the publisher of the run documents them."""

    waves: float = BENCHMARK_WAVES
    length_ratio: float = 1.0
    chunk_tokens: int = 0
    """The server's token budget per step (vLLM ``--max-num-batched-tokens``, TensorRT-LLM
    ``--max_num_tokens``); 0 = the engine's default."""
    batch_wait_iters: int = 0
    batch_wait_tokens_ratio: float = 0.0
    output_lag_steps: int | None = None
    """Engine steps a token is streamed late (vLLM ``--async-scheduling``: 1); None = the engine's default."""
    experts_over_tp: bool = False
    """The run spread whole experts over the TP ranks (``--ep_size=$TP``) whatever its record's EP column says."""
    moe_kernels_of: str | None = None
    """The engine whose MoE kernels the run uses instead of its own (TensorRT-LLM ``moe_config.backend:
    TRITON`` runs the Triton MXFP4 kernels vLLM runs for gpt-oss on Hopper: ``"vllm"``); None = its own."""


def protocol_for_row(row: Mapping[str, str], backend: str, model: str, tp: int) -> Protocol:
    """The protocol of a measured row. InferenceMAX publishes the script of every run
    (``benchmarks/*.sh`` in SemiAnalysisAI/InferenceX): the client above for every engine; TensorRT-LLM
    ``trtllm-serve`` with ``--max_num_tokens 16384`` for Llama-3.1-70B (and, at 1,024/1,024 tokens below
    TP8, ``batch_wait_timeout_iters: 20`` with ``batch_wait_max_tokens_ratio: 0.9``) and 20,000 for
    gpt-oss-120b; vLLM with ``max-num-batched-tokens: 8192`` (its default here). Other rows keep the
    fixed-length protocol of ``BENCHMARK_WAVES`` requests per client."""
    if not _INFERENCEMAX_SOURCE.search(row.get("silicon_data_source", "")):
        return Protocol()
    chunk, wait_iters, wait_ratio, lag, moe_kernels_of, experts_over_tp = 0, 0, 0.0, None, None, False
    if backend == "vllm":
        lag = 1  # async-scheduling: true in every script (and vLLM's default from 0.14 on)
    if backend == "trtllm":
        chunk = 20000 if model.startswith("gpt-oss") else 16384
        if model.startswith("gpt-oss"):
            moe_kernels_of = "vllm"  # moe_config.backend: TRITON in every gpt-oss script
            # From 2025-09-28 to 2025-11-02 the script passed --ep_size=$TP (its EP_SIZE variable from 2025-11-03 on),
            # while the exported rows of that time say EP 1.
            measured = _MEASURED.search(row.get("silicon_data_source", ""))
            experts_over_tp = measured is not None and "2025-09-28" <= measured.group(1) <= "2025-11-02"
        if model.startswith("llama") and row.get("isl") == "1024" and row.get("osl") == "1024" and tp < 8:
            wait_iters, wait_ratio = 20, 0.9
    return Protocol(
        INFERENCEMAX_REQUESTS_PER_CLIENT,
        INFERENCEMAX_LENGTH_RATIO,
        chunk,
        wait_iters,
        wait_ratio,
        lag,
        experts_over_tp,
        moe_kernels_of,
    )


def engine_under(protocol: Protocol, engine: Engine, backends: Mapping[str, BackendProfile] | None = None) -> Engine:
    """``engine`` with the server flags ``protocol`` records (unchanged when it records none). A run on another
    engine's MoE kernels takes that engine's efficiency from ``backends`` (a fold's fit), else the catalog's."""
    if protocol == Protocol(protocol.waves, protocol.length_ratio):
        return engine
    lag = engine.backend.output_lag_steps if protocol.output_lag_steps is None else protocol.output_lag_steps
    eta = engine.backend.moe_gemm_eta
    if protocol.moe_kernels_of is not None:
        eta = ((backends or {}).get(protocol.moe_kernels_of) or get_backend(protocol.moe_kernels_of)).moe_gemm_eta
    backend = dataclasses.replace(
        engine.backend,
        batch_wait_iters=protocol.batch_wait_iters,
        batch_wait_tokens_ratio=protocol.batch_wait_tokens_ratio,
        output_lag_steps=lag,
        moe_gemm_eta=eta,
    )
    ep = engine.tp * engine.dp if protocol.experts_over_tp else engine.ep
    return dataclasses.replace(engine, backend=backend, chunk_tokens=protocol.chunk_tokens, ep=ep)


@dataclass(frozen=True)
class Comparison:
    key: tuple[str, str, str]
    """(model preset, GPU, backend)."""
    row_id: str
    measured_ttft_ms: float
    measured_tpot_ms: float
    predicted_ttft_ms: float
    predicted_tpot_ms: float

    @property
    def ttft_error(self) -> float:
        return abs(self.predicted_ttft_ms - self.measured_ttft_ms) / self.measured_ttft_ms

    @property
    def tpot_error(self) -> float:
        return abs(self.predicted_tpot_ms - self.measured_tpot_ms) / self.measured_tpot_ms


def default_kv_dtype(weights: str) -> str:
    """``kvCacheDtype: auto``: fp8 KV with fp8 weights, bf16 otherwise (what the engines do by default)."""
    return "fp8" if weights == "fp8" else "bf16"


def _int(value: str, default: int = 0) -> int:
    try:
        return int(float(value))
    except ValueError:
        return default


def row_dp_ep(row: dict[str, str], tp: int) -> tuple[int, int]:
    """(attention DP, expert parallelism) of an MoE row (see the module docstring)."""
    dp = _int(row.get("attention_dp_size", "") or "1", 1) or 1
    ep = max(1, _int(row.get("moe_ep_size", "") or "1", 1))
    moe_gpus = max(1, _int(row.get("moe_tp_size", "") or "1", 1)) * ep
    if dp == 1 and moe_gpus > tp:
        if moe_gpus % tp:
            raise PlanningError(f"moe_tp x moe_ep ({moe_gpus}) is not a multiple of tp ({tp})")
        dp = moe_gpus // tp
    return dp, ep


def engine_for_row(
    row: dict[str, str], backends: Mapping[str, BackendProfile] | None = None
) -> tuple[Engine, int, int, int]:
    """(engine, concurrency, isl, osl) for one CSV row; PlanningError when unsupported. ``backends``
    overrides the catalog's backend constants (cross-validation fits them per fold)."""
    if row.get("mode") != "agg":
        raise PlanningError("only aggregated (single-engine) rows are replayed")
    concurrency = _int(row.get("batch_size", ""))
    if concurrency < 1:
        raise PlanningError("row has no concurrency")
    model = get_model(row["model_path"])
    gpu = get_gpu(row["system"])
    backend = get_backend(row["backend"])
    if backends is not None:
        backend = backends.get(backend.name, backend)
    quant = row.get("moe_quant_mode") if model.is_moe and row.get("moe_quant_mode") else row.get("gemm_quant_mode")
    weights = normalise_dtype(quant or row.get("precision") or "bf16")
    tp = _int(row.get("tp_size", "1"), 1) or 1
    pp = _int(row.get("pp_size", "1"), 1) or 1
    dp, ep = row_dp_ep(row, tp) if model.is_moe else (1, 1)
    if tp * dp > gpu.scaleup_domain:
        raise PlanningError("tensor parallelism across nodes is not modelled")
    engine = Engine(
        model, gpu, backend, tp=tp, pp=pp, ep=ep, dp=dp, weights=weights, kv_dtype=default_kv_dtype(weights)
    )
    return engine, concurrency, _int(row["isl"]), _int(row["osl"])


def compare_rows(
    rows: Iterable[dict[str, str]], backends: Mapping[str, BackendProfile] | None = None
) -> tuple[list[Comparison], int]:
    """Predictions for every supported row, and the number of rows skipped."""
    out: list[Comparison] = []
    skipped = 0
    for row in rows:
        try:
            engine, c, isl, osl = engine_for_row(row, backends)
            protocol = protocol_for_row(row, engine.backend.name, engine.model.name, engine.tp)
            engine = engine_under(protocol, engine, backends)
            est = estimate_closed_loop(engine, c, isl, osl, waves=protocol.waves, length_ratio=protocol.length_ratio)
            measured_ttft, measured_tpot = float(row["silicon_ttft_ms"]), float(row["silicon_tpot_ms"])
        except (PlanningError, ValueError, KeyError):
            skipped += 1
            continue
        if measured_ttft <= 0 or measured_tpot <= 0:
            skipped += 1
            continue
        key = (engine.model.name, engine.gpu.name, engine.backend.name)
        out.append(Comparison(key, row.get("id", ""), measured_ttft, measured_tpot, est.ttft_ms, est.tpot_ms))
    return out, skipped


def read_rows(path: str | Path) -> Iterator[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


@dataclass(frozen=True)
class Accuracy:
    rows: int
    ttft_median: float
    tpot_median: float
    ttft_within_20: float
    tpot_within_20: float


def accuracy(comparisons: list[Comparison]) -> Accuracy:
    if not comparisons:
        return Accuracy(0, float("nan"), float("nan"), float("nan"), float("nan"))
    ttft = [c.ttft_error for c in comparisons]
    tpot = [c.tpot_error for c in comparisons]
    n = len(comparisons)
    return Accuracy(
        rows=n,
        ttft_median=statistics.median(ttft),
        tpot_median=statistics.median(tpot),
        ttft_within_20=sum(e <= 0.2 for e in ttft) / n,
        tpot_within_20=sum(e <= 0.2 for e in tpot) / n,
    )


def accuracy_by_group(comparisons: list[Comparison]) -> dict[tuple[str, str, str], Accuracy]:
    groups: dict[tuple[str, str, str], list[Comparison]] = defaultdict(list)
    for c in comparisons:
        groups[c.key].append(c)
    return {k: accuracy(v) for k, v in sorted(groups.items())}
