"""Strict Kubernetes schema check of rendered objects (kubernetes-validate, the version we target)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

KUBERNETES_VERSION = "1.36.0"
NOT_IN_CORE = {"keda.sh/v1alpha1", "inference.networking.k8s.io/v1"}


def validate_strict(obj: dict[str, Any]) -> None:
    """Raise if the object is not valid for the targeted Kubernetes (unknown fields included)."""
    if obj["apiVersion"] in NOT_IN_CORE:
        return
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
