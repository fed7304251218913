"""Operator settings: documented defaults, file and environment overrides, readable failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from disagg.settings import DEFAULT_TOPOLOGY_LABELS, load_settings


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.topology_labels == DEFAULT_TOPOLOGY_LABELS
    assert settings.level_label("rack") == "topology.disagg.dev/rack"
    assert settings.field_manager == "disagg-operator"


def test_file_and_env_overrides(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(
        "topologyLabels:\n  rack: nvidia.com/gpu.clique\nengineImage: img:1\nmetricNames:\n  prefillQueue: my_waiting\n"
    )
    settings = load_settings(
        {"DISAGG_SETTINGS_FILE": str(path), "DISAGG_ENGINE_IMAGE": "img:2", "DISAGG_NAMESPACES": "a, b"}
    )
    assert settings.level_label("rack") == "nvidia.com/gpu.clique"
    assert settings.level_label("zone") == "topology.kubernetes.io/zone"
    assert settings.engine_image == "img:2"
    assert settings.metric_names.prefill_queue == "my_waiting"
    assert settings.namespaces == ["a", "b"]


def test_bad_settings_fail_loudly(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("noSuchSetting: 1\n")
    with pytest.raises(ValidationError):
        load_settings({"DISAGG_SETTINGS_FILE": str(path)})
    with pytest.raises(ValueError, match="no node label configured"):
        load_settings({}).level_label("galaxy")


def test_namespace_scope() -> None:
    settings = load_settings({"DISAGG_EXCLUDE_NAMESPACES": "op-*, kube-system"})
    assert settings.manages("default")
    assert not settings.manages("op-ha-1")
    assert not settings.manages("kube-system")
    only = load_settings({"DISAGG_NAMESPACES": "a"})
    assert only.manages("a")
    assert not only.manages("b")
