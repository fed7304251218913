"""One pinned llm-d release: the operator renders for the version the e2e suite runs."""

from __future__ import annotations

import yaml

from disagg import upstream
from disagg.settings import OperatorSettings
from tests.conftest import ROOT


def versions_env() -> dict[str, str]:
    lines = (ROOT / "e2e" / "versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_e2e_runs_the_llm_d_release_the_operator_renders_for() -> None:
    assert versions_env()["LLMD_ROUTER_VERSION"] == upstream.LLMD_ROUTER_VERSION


def test_e2e_checks_engine_args_with_the_vllm_the_operator_renders_for() -> None:
    assert versions_env()["VLLM_VERSION"] == upstream.VLLM_VERSION
    requirements = (ROOT / "e2e" / "vllm-parser-requirements.txt").read_text().splitlines()
    pins = [line.strip() for line in requirements if line.strip().lower().startswith("vllm")]
    assert pins == [f"vllm=={upstream.VLLM_VERSION}"]


def test_default_images_are_the_pinned_releases() -> None:
    settings = OperatorSettings()
    assert settings.router_image.endswith(f":{upstream.LLMD_ROUTER_VERSION}")
    assert settings.sidecar_image.endswith(f":{upstream.LLMD_ROUTER_VERSION}")
    assert settings.envoy_image.endswith(upstream.ENVOY_VERSION)
    assert settings.engine_image.endswith(upstream.VLLM_VERSION)


def test_the_chart_pins_no_image_of_its_own() -> None:
    """Empty chart values mean the operator's pins; a second pin would drift from disagg.upstream."""
    values = yaml.safe_load((ROOT / "charts" / "disagg-operator" / "values.yaml").read_text())
    assert all(value == "" for value in values["settings"]["images"].values()), values["settings"]["images"]
