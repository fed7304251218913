"""Catalogs: GPU names, model presets and the Hugging Face config loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from disagg.planner.catalog import (
    GPUS,
    PlanningError,
    checkpoint_weight_dtype,
    get_backend,
    get_gpu,
    get_model,
    gpu_for_products,
    gpu_from_node_labels,
    gpu_key,
    load_model_config,
    model_from_config,
    normalise_dtype,
    preset_names,
)

CONFIGS = Path(__file__).resolve().parents[2] / "data" / "model-configs"


@pytest.mark.parametrize("name", ["h100-sxm", "h100_sxm", "H100_SXM", "H100-Sxm", "h100"])
def test_gpu_names_accept_both_forms(name: str) -> None:
    assert get_gpu(name).name == "h100-sxm"


def test_catalog_has_current_fleet() -> None:
    for name in ("a100-80g", "h100-sxm", "h200-sxm", "b200", "gb200", "b300", "gb300", "l40s"):
        gpu = get_gpu(name)
        assert gpu.hbm_gb > 0
        assert gpu.hbm_tbps > 0
        assert gpu.scaleup_gbps > 0
        assert gpu.scaleout_gbps > 0
        assert gpu.tflops["bf16"] > 0
    assert get_gpu("b200").tflops["fp4"] == 9000
    assert "fp8" not in get_gpu("a100-80g").tflops
    assert get_gpu("gb200").scaleup_domain == 72


def test_efficiencies_are_physical() -> None:
    for gpu in GPUS.values():
        assert 0.55 <= gpu.eff.gemm_eta <= 0.75
        assert 0.75 <= gpu.eff.hbm_eta <= 0.85


def test_unknown_gpu_is_one_line_error() -> None:
    with pytest.raises(PlanningError, match="unknown GPU 'x100'") as info:
        get_gpu("x100")
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_weight_only_precision_falls_back_to_wider_math() -> None:
    assert get_gpu("h100-sxm").compute_dtype("fp4") == "bf16"  # mixed-input kernels dequantise to BF16
    assert get_gpu("a100-80g").compute_dtype("fp8") == "bf16"
    assert get_gpu("b200").compute_dtype("fp4") == "fp4"
    assert get_gpu("h100-sxm").compute_dtype("fp8") == "fp8"


def test_emulated_precision_costs_compute_and_bandwidth() -> None:
    h100, b200 = get_gpu("h100-sxm"), get_gpu("b200")
    # Hopper has no FP4 tensor cores: FP4 weights run slower than native BF16 math, never faster.
    assert h100.gemm_flops("fp4") < h100.gemm_flops("bf16") < h100.gemm_flops("fp8")
    assert h100.weight_stream_bytes_per_s("fp4") < h100.weight_stream_bytes_per_s("fp8") == h100.hbm_bytes_per_s
    # Blackwell runs FP4 natively: no dequantisation penalty.
    assert b200.gemm_flops("fp4") > b200.gemm_flops("fp8")
    assert b200.weight_stream_bytes_per_s("fp4") == b200.hbm_bytes_per_s
    for gpu in GPUS.values():
        assert 0.5 <= gpu.eff.dequant_flops_eta <= 1.0
        assert 0.6 <= gpu.eff.dequant_bw_eta <= 1.0


def test_presets() -> None:
    names = preset_names()
    for name in (
        "llama-3.1-8b",
        "llama-3.1-70b",
        "llama-3.3-70b",
        "qwen3-32b",
        "qwen3-235b-a22b",
        "gpt-oss-120b",
        "deepseek-v3",
    ):
        assert name in names
    assert get_model("meta-llama/Llama-3.1-8B-Instruct").name == "llama-3.1-8b"
    with pytest.raises(PlanningError, match="unknown model preset"):
        get_model("gpt-17")


@pytest.mark.parametrize(
    ("preset", "kv_bytes", "total_b", "active_b"),
    [
        ("llama-3.1-8b", 128 * 1024, 8.0, 7.5),
        ("llama-3.1-70b", 320 * 1024, 70.6, 69.5),
        ("qwen3-32b", 256 * 1024, 32.8, 32.0),
        ("qwen3-235b-a22b", 188 * 1024, 235.0, 21.5),
        ("deepseek-v3", 70_272, 671.0, 36.5),
    ],
)
def test_model_shapes(preset: str, kv_bytes: int, total_b: float, active_b: float) -> None:
    m = get_model(preset)
    assert m.kv_bytes_per_token("bf16") == kv_bytes
    assert m.total_params / 1e9 == pytest.approx(total_b, rel=0.02)
    assert m.active_params / 1e9 == pytest.approx(active_b, rel=0.03)


def test_gpt_oss_sliding_window_and_moe() -> None:
    m = get_model("gpt-oss-120b")
    assert m.is_moe
    assert m.experts == 128
    assert m.top_k == 4
    assert m.sliding_layers == 18
    assert m.sliding_window == 128
    assert m.native_dtype == "fp4"
    # Beyond the window, sliding layers stop growing: per-token KV falls with context.
    assert m.kv_bytes_per_token("bf16", 8192) < m.kv_bytes_per_token("bf16", 128)
    assert m.attention_context(8192) == pytest.approx((18 * 8192 + 18 * 128) / 36)


def _ct_group(bits: int, kind: str = "float") -> dict[str, object]:
    """A compressed-tensors config group as llm-compressor writes it."""
    return {
        "targets": ["Linear"],
        "weights": {"num_bits": bits, "type": kind, "strategy": "channel", "symmetric": True, "dynamic": False},
        "input_activations": {"num_bits": bits, "type": kind, "strategy": "token", "dynamic": True},
        "format": "float-quantized" if kind == "float" else "int-quantized",
    }


@pytest.mark.parametrize(
    ("quant", "weights"),
    [
        ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8"),  # DeepSeek / Qwen FP8
        ({"quant_method": "modelopt", "quant_algo": "FP8"}, "fp8"),
        ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, "fp4"),
        ({"quant_method": "mxfp4"}, "fp4"),  # gpt-oss
        (
            {
                "quant_method": "compressed-tensors",
                "format": "float-quantized",
                "config_groups": {"group_0": _ct_group(8)},
            },
            "fp8",
        ),
        ({"quant_method": "compressed-tensors", "config_groups": {"group_0": _ct_group(4)}}, "fp4"),
        (
            {
                "quant_method": "compressed-tensors",
                "format": "mixed-precision",
                "config_groups": {"group_0": _ct_group(4), "group_1": _ct_group(8)},
            },
            "fp8",
        ),
        (
            {"quant_method": "compressed-tensors", "config_groups": {"group_0": _ct_group(8, "int")}},
            "bf16",
        ),  # W8A8 int8
        ({"quant_method": "gptq", "bits": 4}, "bf16"),
        ({}, "bf16"),
    ],
)
def test_checkpoint_weight_precision(quant: dict[str, object], weights: str) -> None:
    assert checkpoint_weight_dtype(quant) == weights
    config = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "quantization_config": quant}
    assert model_from_config(config).native_dtype == weights


def test_mla_latent_kv() -> None:
    m = get_model("deepseek-v3")
    assert m.mla
    assert m.kv_lora_rank == 512
    assert m.qk_rope_dim == 64
    assert m.kv_bytes_per_token("bf16") == (512 + 64) * 61 * 2
    assert m.dense_layers == 3
    assert m.shared_experts == 1


def test_loader_handles_every_shipped_config() -> None:
    files = sorted(CONFIGS.glob("*.json"))
    assert len(files) == 6
    for path in files:
        m = load_model_config(path)
        assert m.layers > 0
        assert m.total_params > m.active_params * 0.99


def test_loader_errors() -> None:
    with pytest.raises(PlanningError, match="lacks hidden_size"):
        model_from_config({"num_hidden_layers": 2})
    with pytest.raises(PlanningError, match="cannot read"):
        load_model_config("/nonexistent/config.json")


def test_dtype_and_backend_names() -> None:
    assert normalise_dtype("nvfp4") == "fp4"
    assert normalise_dtype("fp8_block") == "fp8"
    assert normalise_dtype("fp16") == "bf16"
    assert normalise_dtype(None, default="fp8") == "fp8"
    with pytest.raises(PlanningError):
        normalise_dtype("int3")
    assert get_backend("TensorRT-LLM").name == "trtllm"
    with pytest.raises(PlanningError, match="unknown backend"):
        get_backend("tgi")


@pytest.mark.parametrize(
    ("spelling", "gpu"),
    [
        # catalog names and how users type them
        ("h100-sxm", "h100-sxm"),
        ("h100_sxm", "h100-sxm"),
        ("H100_SXM", "h100-sxm"),
        ("H100", "h100-sxm"),
        ("h100-sxm5", "h100-sxm"),
        ("nvidia-h100", "h100-sxm"),
        ("h200_sxm", "h200-sxm"),
        ("H200", "h200-sxm"),
        ("b200_sxm", "b200"),
        ("B200", "b200"),
        ("nvidia-b200", "b200"),
        ("b300_sxm", "b300"),
        ("B300", "b300"),
        ("gb200", "gb200"),
        ("GB200_NVL72", "gb200"),
        ("gb300-nvl72", "gb300"),
        ("a100", "a100-80g"),
        ("a100_sxm", "a100-80g"),
        ("l40s", "l40s"),
        ("  L40S ", "l40s"),
        # GPU Feature Discovery's nvidia.com/gpu.product values
        ("NVIDIA-H100-80GB-HBM3", "h100-sxm"),
        ("NVIDIA-H100-80GB-HBM3-SHARED", "h100-sxm"),  # time-slicing / MPS suffix
        ("NVIDIA-H200", "h200-sxm"),
        ("NVIDIA-H200-141GB-HBM3e", "h200-sxm"),
        ("NVIDIA-B200", "b200"),
        ("NVIDIA-B300-SXM6-AC", "b300"),
        ("NVIDIA-B300", "b300"),
        ("NVIDIA-GB200", "gb200"),
        ("NVIDIA-GB300", "gb300"),
        ("NVIDIA-A100-SXM4-80GB", "a100-80g"),
        ("NVIDIA-A100-80GB", "a100-80g"),
        ("NVIDIA-L40S", "l40s"),
        ("Tesla-A100-SXM4-80GB", "a100-80g"),
    ],
)
def test_gpu_names_as_users_and_clusters_spell_them(spelling: str, gpu: str) -> None:
    assert gpu_key(spelling) == gpu
    assert get_gpu(spelling).name == gpu


@pytest.mark.parametrize(
    "spelling",
    [
        "NVIDIA-H100-PCIe",
        "NVIDIA-H100-NVL",
        "NVIDIA-H200-NVL",
        "NVIDIA-A100-SXM4-40GB",
        "NVIDIA-A100-80GB-PCIe",
        "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb",
        "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb",
        "mi300x",
        "b100",
        "",
    ],
)
def test_variants_the_catalog_does_not_hold_are_never_guessed(spelling: str) -> None:
    """A PCIe H100 has 2 TB/s and no NVLink: planning it as the SXM part would mislead."""
    assert gpu_key(spelling) is None
    with pytest.raises(PlanningError, match="unknown GPU"):
        get_gpu(spelling)


def test_gpu_from_node_labels() -> None:
    assert gpu_from_node_labels({"nvidia.com/gpu.product": "NVIDIA-B200", "nvidia.com/gpu.count": "8"}) == "b200"
    assert gpu_from_node_labels({"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}) == "h100-sxm"
    assert gpu_from_node_labels({"nvidia.com/gpu.product": "NVIDIA-H100-PCIe"}) is None
    assert gpu_from_node_labels({"kubernetes.io/hostname": "cpu-node"}) is None
    assert gpu_from_node_labels({"nvidia.com/gpu.product": ""}) is None


def test_gpu_for_products_resolves_one_gpu() -> None:
    products = ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-80GB-HBM3-SHARED", "NVIDIA-H100-80GB-HBM3"]
    assert gpu_for_products(products) == "h100-sxm"
    assert gpu_for_products(iter(["NVIDIA-B300-SXM6-AC"])) == "b300"


def test_gpu_for_products_rejects_mixed_unknown_and_empty() -> None:
    with pytest.raises(PlanningError, match=r"mixed GPU products: b200 \(NVIDIA-B200\); h200-sxm \(NVIDIA-H200\)"):
        gpu_for_products(["NVIDIA-H200", "NVIDIA-B200"])
    with pytest.raises(PlanningError, match="NVIDIA-H100-PCIe not in the planner catalog"):
        gpu_for_products(["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"])
    with pytest.raises(PlanningError, match="no GPU product"):
        gpu_for_products([])
