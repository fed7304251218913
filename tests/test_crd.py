"""The committed CRD is exactly what the models generate, and it is a structural schema."""

from __future__ import annotations

from typing import Any

import yaml

from disagg.api.crd import crd, crd_yaml
from tests.conftest import ROOT

CRD_PATH = ROOT / "crds" / "disagg.dev_disaggregatedmodels.yaml"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            found += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_committed_crd_matches_generated() -> None:
    assert CRD_PATH.read_text() == crd_yaml(), "crds/ is stale: run `make crd`"


def test_schema_is_structural() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert not {"$ref", "anyOf", "title"} & node.keys(), path
        typed = "type" in node or node.get("x-kubernetes-int-or-string")
        assert typed, f"{path} has no type"
        if "exclusiveMinimum" in node:
            assert isinstance(node["exclusiveMinimum"], bool), path


def test_crd_metadata_and_columns() -> None:
    doc = crd()
    assert doc["spec"]["names"]["shortNames"] == ["dm"]
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == ["Mode", "Ratio", "Ready", "Pods", "Desired", "Age"]
    wide = [c["name"] for c in columns if c.get("priority") == 1]  # kubectl get dm -o wide
    assert wide == ["GPUs", "TTFT-ms", "ITL-ms", "Domain", "Reason"]


def _rules(node: dict[str, Any]) -> list[str]:
    return [r["rule"] for r in node.get("x-kubernetes-validations", [])]


def test_cel_rules_cover_cross_field_constraints() -> None:
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    top = " ".join(_rules(spec))
    assert "self.decode.parallelism.tensor >= self.prefill.parallelism.tensor" in top
    assert "scaleToZero" in top
    for role in ("prefill", "decode", "router"):
        replicas = spec["properties"][role]["properties"]["replicas"]
        assert "self.min <= self.max" in " ".join(_rules(replicas)), role
    topology = spec["properties"]["topology"]
    assert topology["properties"]["packDomain"]["enum"] == ["zone", "block", "rack", "host"]
    assert "has(self.pack)" in " ".join(_rules(topology))


def test_crd_yaml_round_trips() -> None:
    assert yaml.safe_load(crd_yaml()) == crd()
