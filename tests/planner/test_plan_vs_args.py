"""What the plan assumes is what the engine is told (issue 13, item 5).

For every sample manifest and every catalog preset, the planner's own answer (``search_for_spec``:
precisions, layouts, chunk, batch limit) is held against the rendered ``vllm serve`` arguments as
vLLM 0.33 reads them. The reading below is written from vLLM's source, independently of the
renderer: a flag that is not rendered means vLLM's default, and the default is worked out from the
checkpoint's own config (``--dtype auto``: its torch_dtype; quantisation: its quantization_config;
``--kv-cache-dtype auto``: a declared KV quantisation, else the model dtype;
``--max-model-len``: its max_position_embeddings; ``--data-parallel-size`` 1, no expert parallelism).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from disagg.api.spec import DisaggregatedModelSpec
from disagg.planner.catalog import PlanningError, preset_names
from disagg.planner.from_spec import plan_for_spec, search_for_spec
from disagg.planner.plan import ServingMode
from disagg.planner.search import PlanResult
from disagg.render import ModelRef, render
from disagg.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
ROLE_LABEL = "llm-d.ai/role"


def _preset_config(name: str) -> dict[str, Any]:
    text = resources.files("disagg.planner").joinpath("data/models.json").read_text(encoding="utf-8")
    config: dict[str, Any] = json.loads(text)[name]
    return config


@dataclass(frozen=True)
class VllmReading:
    """What vLLM 0.33 will run, from its arguments and the checkpoint's config."""

    weights: str
    kv_cache: str
    tp: int
    dp: int
    ep: int
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    max_model_len: int
    gpus: int


def _flags(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for arg in args[1:]:
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            out[key] = value  # argparse: the last occurrence wins
    return out


def _checkpoint_weights(config: dict[str, Any]) -> str:
    quant = config.get("quantization_config") or {}
    method = f"{quant.get('quant_method', '')} {quant.get('quant_algo', '')}".lower()
    if "fp4" in method:
        return "fp4"
    return "fp8" if "fp8" in method else "bf16"


def _checkpoint_kv(config: dict[str, Any]) -> str:
    """vllm.utils.torch_utils.resolve_kv_cache_dtype_string and the attention layer's kv_cache_scheme."""
    quant = config.get("quantization_config") or {}
    for key in ("kv_cache_scheme", "kv_cache_quant_algo"):
        value = quant.get(key)
        if isinstance(value, dict) and value.get("num_bits") == 8 and value.get("type") == "float":
            return "fp8"
        if isinstance(value, str) and "fp8" in value.lower():
            return "fp8"
    return "bf16"  # auto: the model dtype (16-bit)


def read_like_vllm(args: list[str], container: dict[str, Any], config: dict[str, Any]) -> VllmReading:
    flags = _flags(args)
    quantization = flags.get("quantization")
    weights = "fp8" if quantization == "fp8" else _checkpoint_weights(config)
    kv = flags.get("kv-cache-dtype", "auto")
    kv_cache = _checkpoint_kv(config) if kv == "auto" else ("fp8" if kv.startswith("fp8") else "bf16")
    tp = int(flags.get("tensor-parallel-size", "1"))
    dp = int(flags.get("data-parallel-size", "1"))
    ep = tp * dp if "enable-expert-parallel" in flags else 1
    seqs = int(flags["max-num-seqs"]) if "max-num-seqs" in flags else None
    budget = int(flags["max-num-batched-tokens"]) if "max-num-batched-tokens" in flags else None
    max_len = int(flags.get("max-model-len") or config.get("max_position_embeddings") or 0)
    gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    return VllmReading(weights, kv_cache, tp, dp, ep, seqs, budget, max_len, gpus)


def _engines(spec: DisaggregatedModelSpec) -> dict[str, tuple[list[str], dict[str, Any]]]:
    plan = plan_for_spec(spec)
    objects = render(ModelRef(name="m", namespace="ns", uid=None), spec, plan, OperatorSettings(), None)
    out: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        template = obj["spec"]["template"]
        role = template["metadata"]["labels"].get(ROLE_LABEL)
        for container in template["spec"]["containers"]:
            if container["name"] == "vllm" and role is not None:
                out[role] = (container["args"], container)
    return out


def _spec_for(body: dict[str, Any]) -> DisaggregatedModelSpec:
    return DisaggregatedModelSpec.model_validate(body)


def assert_plan_matches_args(spec: DisaggregatedModelSpec) -> None:
    assert spec.model.preset is not None
    config = _preset_config(spec.model.preset.lower())
    result: PlanResult = search_for_spec(spec)
    c = result.chosen
    engines = _engines(spec)
    first, decode = result.engines(c)
    if c.mode == ServingMode.AGGREGATED:
        roles = {"prefill-decode": (c.prefill_layout, first, c.max_batch)}
    else:
        roles = {"prefill": (c.prefill_layout, first, None), "decode": (c.decode_layout, decode, c.max_batch)}
    assert set(engines) == set(roles), (set(engines), set(roles))
    full_ctx = result.workload.isl + result.workload.osl
    for role, (layout, engine, max_batch) in roles.items():
        args, container = engines[role]
        seen = read_like_vllm(args, container, config)
        where = f"{spec.model.preset} {role}: {args}"
        assert seen.weights == result.weights, where
        assert seen.kv_cache == result.kv_dtype, where
        assert (seen.tp, seen.dp, seen.ep) == (layout.tp, layout.dp, layout.ep), where
        assert seen.gpus == layout.gpus == engine.gpus, where
        # the batch limit: what the KV cache holds at full context, per data-parallel rank
        if max_batch is not None:
            assert seen.max_num_seqs is not None, where
            assert seen.max_num_seqs * layout.dp <= max_batch, where
            assert max_batch - seen.max_num_seqs * layout.dp < layout.dp, where
        # the step budget: the chunk the plan assumed, beside one token per decoding sequence
        assert seen.max_num_batched_tokens is not None, where
        assert seen.max_num_batched_tokens - (seen.max_num_seqs or 0) == engine.chunk, where
        assert seen.max_num_batched_tokens >= (seen.max_num_seqs or 0), where  # vLLM SchedulerConfig
        # vLLM starts only when one max-length sequence fits the KV cache; the plan needs a full one
        assert seen.max_model_len >= full_ctx, where
        assert engine.rank_capacity_tokens(seen.max_model_len) >= seen.max_model_len, where
        assert seen.max_model_len <= int(config.get("max_position_embeddings") or seen.max_model_len), where


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.stem for s in SAMPLES])
def test_every_sample_is_told_what_its_plan_assumes(sample: Path) -> None:
    assert_plan_matches_args(_spec_for(yaml.safe_load(sample.read_text())["spec"]))


def _preset_body(preset: str, gpu: str, mode: str, kv: str) -> dict[str, Any]:
    return {
        "model": {"name": preset, "preset": preset, "kvCacheDtype": kv},
        "mode": mode,
        "workload": {"inputTokens": {"mean": 4096}, "outputTokens": {"mean": 300}, "requestRate": 10},
        "slo": {"ttft": "2s", "itl": "60ms"},
        "accelerator": {"type": gpu},
    }


def _refusal(spec: DisaggregatedModelSpec) -> str | None:
    try:
        search_for_spec(spec)
    except PlanningError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("preset", preset_names())
@pytest.mark.parametrize("mode", ["aggregated", "disaggregated"])
def test_every_preset_is_told_what_its_plan_assumes(preset: str, mode: str) -> None:
    """Each preset at its checkpoint's precision (dtype unset) on the first GPU it fits, KV auto and fp8."""
    checked = 0
    for gpu in ("h100-sxm", "h200-sxm", "b200"):
        for kv in ("auto", "fp8"):
            spec = _spec_for(_preset_body(preset, gpu, mode, kv))
            refusal = _refusal(spec)
            if refusal is not None:
                assert "does not fit" in refusal or "physical floor" in refusal, refusal
                continue
            assert_plan_matches_args(spec)
            checked += 1
        if checked:
            break
    assert checked == 2, f"{preset} fits none of the GPUs tried"


def test_moe_with_attention_data_parallelism_is_rendered_as_planned() -> None:
    body = _preset_body("qwen3-235b-a22b", "h200-sxm", "disaggregated", "auto")
    body["decode"] = {"parallelism": {"tensor": 2, "data": 4}}
    spec = _spec_for(body)
    result = search_for_spec(spec)
    assert (result.chosen.decode_tp, result.chosen.decode_dp, result.chosen.decode_ep) == (2, 4, 8)
    args, container = _engines(spec)["decode"]
    assert "--data-parallel-size=4" in args
    assert "--enable-expert-parallel" in args
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert_plan_matches_args(spec)


def test_the_checkpoint_precision_is_the_default() -> None:
    """A large MoE preset with its checkpoint's fp8 weights plans (and renders no --quantization): the old
    CRD default dtype bf16 made it refuse; a precision the checkpoint cannot be served in is refused."""
    body = _preset_body("deepseek-v3", "h200-sxm", "aggregated", "auto")
    result = search_for_spec(_spec_for(body))
    assert (result.weights, result.kv_dtype) == ("fp8", "bf16")  # block-fp8 weights declare no KV scheme
    args, _ = _engines(_spec_for(body))["prefill-decode"]
    assert not any(a.startswith(("--quantization", "--dtype", "--kv-cache-dtype")) for a in args), args
    body["model"]["dtype"] = "bf16"
    with pytest.raises(PlanningError, match="checkpoint's weights are fp8"):
        search_for_spec(_spec_for(body))
    fp4 = _preset_body("llama-3.1-8b", "h100-sxm", "aggregated", "auto")
    fp4["model"]["dtype"] = "fp4"
    with pytest.raises(PlanningError, match="fp4 weights need an fp4 checkpoint"):
        search_for_spec(_spec_for(fp4))


def test_a_declared_kv_scheme_is_what_auto_means() -> None:
    """A ModelOpt checkpoint declaring an fp8 KV cache: auto plans (and vLLM runs) fp8 KV; asking for a
    16-bit KV cache must then be told to vLLM explicitly."""
    config = {**_preset_config("llama-3.1-8b")}
    config["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    body = _preset_body("llama-3.1-8b", "h100-sxm", "aggregated", "auto")
    body["model"] = {"name": "x", "config": config}
    result = search_for_spec(_spec_for(body))
    assert (result.weights, result.kv_dtype) == ("fp8", "fp8")
    args, container = _engines(_spec_for(body))["prefill-decode"]
    assert read_like_vllm(args, container, config).kv_cache == "fp8"
    body["model"]["kvCacheDtype"] = "bf16"
    assert search_for_spec(_spec_for(body)).kv_dtype == "bf16"
    args, container = _engines(_spec_for(body))["prefill-decode"]
    assert "--kv-cache-dtype=bfloat16" in args
    assert read_like_vllm(args, container, config).kv_cache == "bf16"
