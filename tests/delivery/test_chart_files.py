"""The chart's files, the install bundle's header, the Argo CD Applications and the Dockerfile.

Everything here reads files only; rendering with helm and applying to an API server is in
e2e/test_delivery.py.
"""

from __future__ import annotations

import inspect
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "disagg-operator"
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())


def copied(source: str) -> str:
    return f"# Copied from {source} by charts/sync-chart-files.sh (make chart-crds); do not edit.\n"


# -- values.schema.json -------------------------------------------------------------------------


def test_schema_is_valid_json_schema_and_accepts_the_defaults() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)


def objects(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, child in node.items():
            yield from objects(child, f"{path}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from objects(child, f"{path}/{i}")


def test_every_object_level_forbids_unknown_keys() -> None:
    """additionalProperties: false, except free-form string maps (labels...) and Helm's `global`."""
    found = list(objects(SCHEMA, "#"))
    assert len(found) > 15
    for path, node in found:
        if path == "#/properties/global":
            continue
        extra = node.get("additionalProperties")
        if "properties" in node:
            assert extra is False, f"{path}: additionalProperties must be false"
        else:
            assert extra is False or extra == {"type": "string"}, f"{path}: a map must say what its values are"


@pytest.mark.parametrize(
    "bad",
    [
        {"replica": 2},
        {"settings": {"topologyLabel": {"rack": "x"}}},
        {"settings": {"topologyLabels": {"continent": "x"}}},
        {"image": {"repository": "r", "pullPolicy": "Sometimes"}},
        {"podLabels": {"team": 1}},
        {"metrics": {"podMonitor": {"enabled": True, "intervall": "5s"}}},
        {"watchNamespaces": ["Not_A_Name"]},
    ],
)
def test_schema_rejects_typos_and_wrong_types(bad: dict[str, Any]) -> None:
    merged = json.loads(json.dumps(VALUES))
    for key, value in bad.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and key in merged else value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(merged)


def schema_paths(node: dict[str, Any], prefix: str = "") -> set[str]:
    if "$ref" in node:
        node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    paths = set()
    for key, child in (node.get("properties") or {}).items():
        paths.add(prefix + key)
        paths |= schema_paths(child, f"{prefix}{key}.")
    return paths


def value_paths(node: Any, prefix: str = "") -> set[str]:
    if not isinstance(node, dict):
        return set()
    paths = set()
    for key, child in node.items():
        paths.add(prefix + key)
        paths |= value_paths(child, f"{prefix}{key}.")
    return paths


def test_every_schema_key_has_a_default_in_values_yaml() -> None:
    """So values.yaml documents every option (resource quantities and Helm's global are optional)."""
    missing = {
        p
        for p in schema_paths(SCHEMA) - value_paths(VALUES)
        if p != "global" and not p.startswith(("resources.", "tolerations"))
    }
    assert not missing, f"not in values.yaml: {sorted(missing)}"


def test_values_yaml_is_commented() -> None:
    """Every top-level key has a comment right above it, or opens a section whose first key has."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if not re.match(r"^[a-zA-Z]\w*:", line):
            continue
        above = lines[i - 1].strip() if i else ""
        below = lines[i + 1].strip() if i + 1 < len(lines) else ""
        assert above.startswith("#") or below.startswith("#"), f"values.yaml:{i + 1}: {line} is undocumented"


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.30.0-0"
    assert chart["appVersion"] == project["version"]


# -- high availability: the operator's Lease, not kopf peering -----------------------------------


def chart_text() -> str:
    parts = [CHART / "values.yaml", CHART / "values.schema.json", *sorted((CHART / "templates").iterdir())]
    return "\n".join(p.read_text() for p in parts)


def test_no_kopf_peering_anywhere_in_the_chart() -> None:
    """The work queue runs outside kopf's handlers: kopf peering would not stop a standby from acting."""
    text = chart_text().lower()
    for word in ("--peering", "kopf.dev", "kopfpeering", "peering.name", "pod_id"):
        assert word not in text, f"kopf peering remnant in the chart: {word}"
    assert "peering" not in SCHEMA["properties"]
    assert "peering" not in VALUES


def test_the_chart_names_the_lease_the_operator_elects_on() -> None:
    from disagg.leader import LeaderElector

    lease = inspect.signature(LeaderElector).parameters["name"].default
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    defined = re.search(r'define "disagg-operator.leaseName" -\}\}\n(\S+)\n', helpers)
    assert defined, "no disagg-operator.leaseName helper"
    assert defined.group(1) == lease


def test_the_settings_configmap_keeps_its_keys() -> None:
    """Older operators convert top-level keys only: nested settings keys stay snake_case."""
    configmap = (CHART / "templates" / "configmap.yaml").read_text()
    assert "prefill_queue: {{ $s.metricNames.prefillQueue | quote }}" in configmap
    assert "decode_kv_cache: {{ $s.metricNames.decodeKvCache | quote }}" in configmap


# -- generated copies ---------------------------------------------------------------------------


def test_chart_crds_are_the_generated_crds() -> None:
    """Drift check: `make chart-crds` copies crds/ into the chart, and nothing else is there."""
    sources = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert sources
    for name in sources:
        expected = copied(f"crds/{name}") + (ROOT / "crds" / name).read_text()
        assert (CHART / "crds" / name).read_text() == expected, f"charts crds/{name} is stale: run make chart-crds"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sources


def test_bundled_prometheus_adapter_rules_are_current() -> None:
    source = ROOT / "manifests" / "prometheus-adapter" / "rules.yaml"
    bundled = CHART / "files" / "prometheus-adapter-rules.yaml"
    if not source.exists():
        assert not bundled.exists(), "stale bundled rules: run make chart-crds"
        return
    assert bundled.read_text() == copied("manifests/prometheus-adapter/rules.yaml") + source.read_text()
    assert yaml.safe_load(bundled.read_text())["rules"]


def test_install_yaml_is_generated() -> None:
    """Its content is checked against `helm template` in e2e/test_delivery.py (needs helm)."""
    text = (ROOT / "manifests" / "install.yaml").read_text()
    assert text.startswith("# Generated by charts/render-install.sh from charts/disagg-operator; do not edit.\n")
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "disagg-system",
            "labels": {"app.kubernetes.io/part-of": "disagg", "pod-security.kubernetes.io/enforce": "restricted"},
        },
    }
    assert "CustomResourceDefinition" not in {d["kind"] for d in docs}, "CRDs are applied from crds/"


# -- Argo CD -------------------------------------------------------------------------------------


def test_argocd_applications_order_crds_before_operator_before_models() -> None:
    apps = {
        app["metadata"]["name"]: app
        for path in sorted((ROOT / "manifests" / "argocd" / "apps").glob("*.yaml"))
        for app in [yaml.safe_load(path.read_text())]
    }
    waves = {name: int(app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for name, app in apps.items()}
    assert waves == {"disagg-crds": -1, "disagg-operator": 0, "disagg-models": 1}
    for name, app in apps.items():
        assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"], name
        assert "ignoreDifferences" not in app["spec"], f"{name}: no field needs ignoring (see README)"
        source = app["spec"]["source"]
        assert (ROOT / source["path"]).is_dir(), f"{name}: {source['path']} does not exist"
    assert apps["disagg-operator"]["spec"]["source"]["helm"]["skipCrds"] is True
    assert apps["disagg-crds"]["spec"]["source"]["path"] == "charts/disagg-operator/crds"
    assert apps["disagg-crds"]["spec"]["syncPolicy"]["automated"]["prune"] is False


# -- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_runs_non_root_from_a_pinned_slim_python() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.strip()]
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert froms, "no FROM"
    assert all(f == "python:3.11-slim" for f in froms), froms
    final_stage = lines[max(i for i, ln in enumerate(lines) if ln.startswith("FROM ")) :]
    users = [ln.split()[1] for ln in final_stage if ln.startswith("USER ")]
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric UID: the kubelet checks runAsNonRoot without /etc/passwd"
    assert int(uid) != 0, "non-root"
    assert any(ln.startswith("RUN pip install") and " ." in ln for ln in lines)
    assert 'ENTRYPOINT ["disagg"]' in lines
    assert 'CMD ["run"]' in lines


def test_dockerignore_sends_only_what_pip_install_needs() -> None:
    patterns = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in patterns
    assert {"!pyproject.toml", "!README.md", "!operator/"} <= set(patterns)


def test_chart_runs_the_image_as_the_dockerfile_user() -> None:
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert "runAsUser: 65532" in deployment
    assert "USER 65532:65532" in (ROOT / "Dockerfile").read_text()
