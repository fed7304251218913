"""Generate the CustomResourceDefinition from the pydantic models.

pydantic emits JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3 subset.
The translation inlines ``$ref``s, turns ``Optional[X]`` into ``X`` (unset fields are omitted on
the wire), maps int-or-string and preserve-unknown-fields markers, rewrites numeric
``exclusiveMinimum`` into the OpenAPI 3.0 boolean form and drops keywords Kubernetes rejects.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from disagg.api.spec import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, DisaggregatedModelSpec
from disagg.api.status import DisaggregatedModelStatus

_DROP_KEYS = {"title", "x-disagg-format", "propertyNames", "$defs", "discriminator"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **extra}, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        if node.get("x-kubernetes-int-or-string"):
            pass  # int-or-string carries no type of its own
        elif len(variants) == 1:
            merged = {**variants[0], **node}
            if "description" in node:
                merged["description"] = node["description"]
            node = merged
        else:
            raise ValueError(f"cannot express union in a structural schema: {variants}")
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"] = node.pop("exclusiveMinimum")
        node["exclusiveMinimum"] = True
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("x-kubernetes-preserve-unknown-fields") and "type" not in node:
        node["type"] = "object"
    if "default" in node and node["default"] is None:
        del node["default"]
    if node.get("type") == "object" and "additionalProperties" in node and not node["additionalProperties"]:
        del node["additionalProperties"]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _structural(value)
        else:
            out[key] = value
    if "description" in out:
        out["description"] = " ".join(str(out["description"]).split())
    return out


def model_schema(model: type[Any]) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of a pydantic model (wire names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    result: dict[str, Any] = _structural(_resolve(raw, defs))
    return result


def crd() -> dict[str, Any]:
    """The complete CustomResourceDefinition object."""
    spec_schema = model_schema(DisaggregatedModelSpec)
    status_schema = model_schema(DisaggregatedModelStatus)
    spec_schema["description"] = "Desired serving deployment: model, workload, SLOs, hardware and roles."
    status_schema["description"] = "Observed state, per Kubernetes API conventions."
    ready = '.status.conditions[?(@.type=="Ready")].status'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "disagg", "app.kubernetes.io/part-of": "disagg"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["all", "disagg"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Mode", "type": "string", "jsonPath": ".status.mode"},
                        {"name": "Ratio", "type": "string", "jsonPath": ".status.ratio"},
                        {"name": "Ready", "type": "string", "jsonPath": ready},
                        {"name": "Pods", "type": "integer", "jsonPath": ".status.readyReplicas"},
                        {"name": "Desired", "type": "integer", "jsonPath": ".status.replicas"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        # -o wide: what the plan predicts and where the model lives
                        {"name": "GPUs", "type": "integer", "jsonPath": ".status.plan.gpus", "priority": 1},
                        {
                            "name": "TTFT-ms",
                            "type": "number",
                            "jsonPath": ".status.plan.predictedTtftMs",
                            "priority": 1,
                        },
                        {"name": "ITL-ms", "type": "number", "jsonPath": ".status.plan.predictedItlMs", "priority": 1},
                        {"name": "Domain", "type": "string", "jsonPath": ".status.placement[0].domain", "priority": 1},
                        {
                            "name": "Reason",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                            "priority": 1,
                        },
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "description": "DisaggregatedModel serves one LLM with prefill, decode and router roles.",
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `disagg crd` from operator/disagg/api; do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)
