"""Who a rendered child is: its name, labels, selector and owner, from one place per role.

Every object of a role (Deployment, Service, PodDisruptionBudget, scaler, router config) takes its
metadata from the role's :class:`RoleIdentity`, and every selector is the identity's
``selector``, which its ``labels`` and ``pod_labels`` always contain. So a Service or budget
cannot select other pods than the role's Deployment runs, a user's pod label cannot override an
operator-owned one, and no child can miss the owner reference that ties it to the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from disagg.api.spec import GROUP, KIND, VERSION
from disagg.render.names import ModelRef, child_name, label_value, merged_labels
from disagg.settings import OperatorSettings

MANAGED_BY = "disagg-operator"


def model_labels(model: ModelRef, settings: OperatorSettings) -> dict[str, str]:
    """The selector labels shared by every child of one model."""
    return {f"{settings.prefix}/model": label_value(model.name)}


@dataclass(frozen=True)
class RoleIdentity:
    """Name, labels, selector and owner of the children of one role (or group, e.g. ``engines``)."""

    model: ModelRef
    settings: OperatorSettings
    role: str

    @property
    def name(self) -> str:
        return child_name(self.model.name, self.role)

    @property
    def role_key(self) -> str:
        return f"{self.settings.prefix}/role"

    @property
    def selector(self) -> dict[str, str]:
        """The labels that pick this role's pods (Deployment, Service, budget, scrapers)."""
        return {**model_labels(self.model, self.settings), self.role_key: self.role}

    def labels(self, *user: Mapping[str, str]) -> dict[str, str]:
        """``user`` layers first, the operator's own labels last (they win), selector included."""
        own = {
            "app.kubernetes.io/name": "disagg-model",
            "app.kubernetes.io/instance": label_value(self.model.name),
            "app.kubernetes.io/component": self.role,
            "app.kubernetes.io/part-of": "disagg",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            **self.selector,
        }
        return merged_labels(*user, own)

    def owner_references(self) -> list[dict[str, Any]]:
        if not self.model.uid:  # rendered offline (`disagg render`): no object to point at
            return []
        return [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": self.model.name,
                "uid": self.model.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]

    def meta(self, *user_labels: Mapping[str, str], name: str | None = None) -> dict[str, Any]:
        """Object metadata: the role's name (or ``name``), namespace, labels and owner."""
        meta: dict[str, Any] = {
            "name": name or self.name,
            "namespace": self.model.namespace,
            "labels": self.labels(*user_labels),
        }
        owners = self.owner_references()
        if owners:
            meta["ownerReferences"] = owners
        return meta

    def child(
        self, api_version: str, kind: str, spec: dict[str, Any], *user_labels: Mapping[str, str]
    ) -> dict[str, Any]:
        """A whole child object of this role with ``spec``."""
        return {"apiVersion": api_version, "kind": kind, "metadata": self.meta(*user_labels), "spec": spec}
