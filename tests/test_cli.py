"""The CLI: offline render, CRD output, one-line errors with a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from disagg.api.crd import crd_yaml
from disagg.cli import main
from tests.conftest import INVALID, SAMPLES


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_render_prints_manifests(sample: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(sample)]) == 0
    kinds = {d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= kinds


@pytest.mark.parametrize("bad", INVALID, ids=lambda p: p.stem)
def test_render_rejects_invalid_specs_in_one_line(bad: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("disagg: error: ")
    assert err.count("\n") == 1


def test_render_missing_file_and_bad_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed\n")
    assert main(["render", "-f", str(broken)]) == 1
    assert "not valid YAML" in capsys.readouterr().err
    other = tmp_path / "other.yaml"
    other.write_text("kind: ConfigMap\n")
    assert main(["render", "-f", str(other)]) == 1
    assert "no DisaggregatedModel" in capsys.readouterr().err


def test_crd_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == crd_yaml()
    target = tmp_path / "crd.yaml"
    assert main(["crd", "-o", str(target)]) == 0
    assert target.read_text() == crd_yaml()


def test_render_without_accelerator_type_takes_the_node_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = yaml.safe_load(next(p for p in SAMPLES if p.stem == "llama-8b-aggregated").read_text())
    del body["spec"]["accelerator"]
    path = tmp_path / "no-accelerator.yaml"
    path.write_text(yaml.safe_dump(body))
    assert main(["render", "-f", str(path)]) == 1
    assert "pass --node-gpu PRODUCT" in capsys.readouterr().err
    assert main(["render", "-f", str(path), "--node-gpu", "NVIDIA-H100-80GB-HBM3"]) == 0
    engine = next(
        d
        for d in yaml.safe_load_all(capsys.readouterr().out)
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-prefill-decode")
    )
    assert engine["spec"]["template"]["metadata"]["labels"]["llm-d.ai/accelerator-variant"] == "h100-sxm"
