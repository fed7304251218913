"""The estimate / plan / simulate subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from disagg.planner.cli import add_subcommands
from tests.planner import LLAMA_8B_SHAPE


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    parser = argparse.ArgumentParser(prog="disagg")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_estimate_json(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(
        [
            "estimate",
            "--model",
            "llama-3.1-70b",
            "--gpu",
            "h100_sxm",
            "--tp",
            "4",
            "--weights",
            "fp8",
            "--concurrency",
            "16",
            "--isl",
            "1024",
            "--osl",
            "1024",
            "--json",
        ],
        capsys,
    )
    data = json.loads(out)
    assert data["ttft_ms"] > 0
    assert 5 < data["tpot_ms"] < 30


def test_estimate_length_ratio_serves_the_mean_lengths(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["estimate", "--model", "llama-3.1-70b", "--gpu", "h200_sxm", "--weights", "fp8", "--concurrency", "8"]
    varied = json.loads(run([*base, "--isl", "8192", "--osl", "1024", "--length-ratio", "0.8", "--json"], capsys))
    mean = json.loads(run([*base, "--isl", "7372", "--osl", "922", "--json"], capsys))
    assert varied["ttft_ms"] == pytest.approx(mean["ttft_ms"])
    assert varied["tpot_ms"] == pytest.approx(mean["tpot_ms"])


def test_estimate_with_model_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(LLAMA_8B_SHAPE))
    out = run(
        [
            "estimate",
            "--model-config",
            str(config),
            "--gpu",
            "l40s",
            "--backend",
            "sglang",
            "--pp",
            "2",
            "--concurrency",
            "8",
            "--isl",
            "512",
            "--osl",
            "128",
            "--kv-cache",
            "fp8",
        ],
        capsys,
    )
    assert "TPOT" in out
    assert "TTFT" in out


def test_plan_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    common = [
        "plan",
        "--model",
        "llama-3.1-70b",
        "--gpu",
        "h100-sxm",
        "--isl",
        "4096",
        "--osl",
        "300",
        "--rate",
        "20",
        "--ttft",
        "1s",
        "--itl",
        "50ms",
        "--percentile",
        "90",
    ]
    text = run(common, capsys)
    assert "chosen:" in text
    assert "runner-up:" in text
    assert "because" in text
    data = json.loads(run([*common, "--json"], capsys))
    assert data["chosen"]["meets_slo"] is True
    assert data["mode"] in ("aggregated", "disaggregated")


def test_plan_fixes_attention_dp_and_expert_parallelism(capsys: pytest.CaptureFixture[str]) -> None:
    """``disagg plan`` takes the layouts the spec can fix (parallelism.data / .expert) on the command line."""
    common = ["plan", "--model", "qwen3-235b-a22b", "--gpu", "h200", "--weights", "fp8", "--rate", "5"]
    common += ["--ttft", "2s", "--itl", "50ms", "--mode", "disaggregated", "--json"]
    data = json.loads(run([*common, "--prefill-dp", "4", "--decode-dp", "8"], capsys))
    chosen = data["chosen"]
    assert (chosen["prefill_dp"], chosen["decode_dp"]) == (4, 8)
    assert chosen["prefill_ep"] == chosen["prefill_tp"] * 4
    assert chosen["decode_ep"] == chosen["decode_tp"] * 8
    narrow = json.loads(run([*common, "--no-prefill-expert", "--no-decode-expert"], capsys))["chosen"]
    assert (narrow["prefill_ep"], narrow["decode_ep"]) == (1, 1)


def test_plan_refuses_attention_dp_for_a_dense_model() -> None:
    parser = argparse.ArgumentParser(prog="disagg")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["plan", "--model", "llama-3.1-70b", "--prefill-dp", "2"])
    with pytest.raises(ValueError, match="needs an MoE model"):
        args.func(args)


def test_simulate_json(capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(
        run(
            [
                "simulate",
                "--model",
                "llama-3.1-8b",
                "--isl",
                "2048",
                "--osl",
                "128",
                "--rate",
                "10",
                "--ttft",
                "500ms",
                "--itl",
                "30ms",
                "--requests",
                "600",
                "--json",
            ],
            capsys,
        )
    )
    assert data["ttft_ms"] > 0
    assert abs(data["itl_agreement"]) < 0.25


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "--model", "llama-3.1-70b", "--gpu", "x100"], "unknown GPU"),
        (["plan", "--model", "llama-3.1-70b", "--rate", "0"], "rate must be > 0"),
        (["estimate", "--model", "qwen3-235b-a22b", "--tp", "1"], "does not fit"),
        (["estimate"], "--model"),
        (["estimate", "--model", "llama-3.1-70b", "--tp", "4", "--length-ratio", "1.5"], "length ratio"),
    ],
)
def test_errors_are_value_errors(argv: list[str], message: str) -> None:
    parser = argparse.ArgumentParser(prog="disagg")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    with pytest.raises(ValueError, match=message):
        args.func(args)


def test_simulate_draws_the_crossover_chart(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    chart = tmp_path / "crossover.png"
    argv = ["simulate", "--model", "llama-3.1-8b", "--isl", "2048", "--osl", "128", "--rate", "10"]
    argv += ["--ttft", "500ms", "--itl", "30ms", "--requests", "300", "--json", "--chart", str(chart)]
    data = json.loads(run(argv, capsys))
    assert data["chart"] == str(chart)
    png = chart.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000  # two panels with lines and legends, not an empty canvas


@pytest.mark.parametrize(
    ("flags", "parallelism", "inferred"),
    [
        (["--tp", "1", "--dp", "8", "--ep", "8"], {"tp": 1, "dp": 8, "pp": 1, "ep": 8}, False),
        (["--tp", "1", "--ep", "8"], {"tp": 1, "dp": 8, "pp": 1, "ep": 8}, True),  # EP = TP x DP
        (["--tp", "2", "--moe-tp", "4"], {"tp": 2, "dp": 2, "pp": 1, "ep": 1}, True),
        (["--tp", "8", "--ep", "8"], {"tp": 8, "dp": 1, "pp": 1, "ep": 8}, False),
    ],
)
def test_estimate_attention_dp(
    capsys: pytest.CaptureFixture[str], flags: list[str], parallelism: dict[str, int], inferred: bool
) -> None:
    base = ["estimate", "--model", "qwen3-235b-a22b", "--gpu", "b200_sxm", "--weights", "fp8", "--json"]
    data = json.loads(run([*base, *flags, "--concurrency", "32", "--isl", "2000", "--osl", "500"], capsys))
    assert data["parallelism"] == parallelism
    assert data["dp_inferred"] is inferred
    assert data["gpus"] == parallelism["tp"] * parallelism["dp"]
    assert data["ttft_ms"] > data["prefill_ms"] > 0
    assert data["tpot_ms"] > 0
