"""Decide (purely) whether a live child differs from its rendered form, so unchanged children get no write.

A child is re-applied when the hash of its rendered form changed (this also covers fields we
stopped rendering, which server-side apply then releases) or when any rendered field no longer
holds on the live object (a hand edit). Fields the server or other managers add are ignored:
the comparison is "desired is a subset of live", which mirrors what server-side apply owns.

The exception is the maps and structs Kubernetes marks atomic (a Service's selector, every
LabelSelector): server-side apply replaces them whole, so a key someone added
by hand (which empties a Service's endpoints) is drift there, and our apply removes it. Custom
resources get no such rule: their schemas merge maps key by key, and an apply could not remove a
foreign key, so flagging one would only re-apply forever.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from disagg.api.types import parse_quantity
from disagg.render.names import content_hash


def hash_annotation(prefix: str) -> str:
    return f"{prefix}/applied-hash"


def stamp(obj: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A copy of a rendered object carrying the hash of its content in an annotation."""
    stamped = copy.deepcopy(dict(obj))
    meta = stamped.setdefault("metadata", {})
    annotations = meta.setdefault("annotations", {})
    annotations.pop(hash_annotation(prefix), None)
    annotations[hash_annotation(prefix)] = content_hash(stamped)
    return stamped


def _scalar_equal(want: Any, have: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return want is have
    if want == have:
        return True
    if isinstance(want, str | int | float) and isinstance(have, str | int | float):
        try:
            return parse_quantity(want) == parse_quantity(have)
        except ValueError:
            return False
    return False


# field names whose values the built-in APIs declare atomic (x-kubernetes-map-type / struct-type)
# (a pod's nodeSelector is atomic too but left out: admission webhooks add keys to it, and
# re-applying over them every pass would be a write loop the cluster's own policy answers)
ATOMIC_FIELDS = frozenset({"selector", "podSelector", "namespaceSelector", "labelSelector"})
_BUILTIN_GROUPS = frozenset({"", "apps", "policy", "networking.k8s.io", "autoscaling", "rbac.authorization.k8s.io"})


def atomic_fields_for(obj: Mapping[str, Any]) -> frozenset[str]:
    """The atomic field names that apply to ``obj``: the built-in kinds' only."""
    api_version = str(obj.get("apiVersion") or "")
    group = api_version.rpartition("/")[0]
    return ATOMIC_FIELDS if group in _BUILTIN_GROUPS else frozenset()


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, Mapping) and "name" in i for i in items)


def first_difference(want: Any, have: Any, path: str = "", atomic: frozenset[str] = frozenset()) -> str | None:
    """Where ``want`` stops being a subset of ``have`` (for logs), or None; under a field named
    in ``atomic`` the two must be equal."""
    if isinstance(want, Mapping) and isinstance(have, Mapping):
        for key, value in want.items():
            if key not in have:
                if value == []:
                    continue
                return f"{path}.{key} missing"
            if key in atomic and isinstance(value, Mapping):
                if not (is_subset(value, have[key]) and is_subset(have[key], value)):
                    return f"{path}.{key}: want exactly {value!r:.200}, have {have[key]!r:.200}"
                continue
            found = first_difference(value, have[key], f"{path}.{key}", atomic)
            if found:
                return found
        return None
    if is_subset(want, have, atomic):
        return None
    if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        for index, (w, h) in enumerate(zip(want, have, strict=True)):
            found = first_difference(w, h, f"{path}[{index}]", atomic)
            if found:
                return found
    return f"{path}: want {want!r:.200}, have {have!r:.200}"


def is_subset(want: Any, have: Any, atomic: frozenset[str] = frozenset()) -> bool:
    """Every value in ``want`` holds in ``have`` (lists of named items matched by name); under a
    field named in ``atomic`` the two must be equal."""
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return False

        def holds(key: str, value: Any) -> bool:
            if key not in have:
                # the API server drops empty lists, so an empty list we render matches an absent field
                return bool(value == [])
            if key in atomic and isinstance(value, Mapping):
                return is_subset(value, have[key]) and is_subset(have[key], value)
            return is_subset(value, have[key], atomic)

        return all(holds(key, value) for key, value in want.items())
    if isinstance(want, list):
        if not isinstance(have, list):
            return False
        if _named(want) and _named(have):
            by_name = {item["name"]: item for item in have}
            order_want = [i["name"] for i in want]
            order_have = [i["name"] for i in have if i["name"] in set(order_want)]
            return order_want == order_have and all(
                i["name"] in by_name and is_subset(i, by_name[i["name"]], atomic) for i in want
            )
        return len(want) == len(have) and all(is_subset(w, h, atomic) for w, h in zip(want, have, strict=True))
    return _scalar_equal(want, have)


def apply_reason(desired: Mapping[str, Any], live: Mapping[str, Any] | None, prefix: str) -> str | None:
    """Why ``desired`` (already stamped) must be applied over ``live``; None when it need not be."""
    if live is None:
        return "absent"
    key = hash_annotation(prefix)
    want_hash = ((desired.get("metadata") or {}).get("annotations") or {}).get(key)
    have_hash = ((live.get("metadata") or {}).get("annotations") or {}).get(key)
    if want_hash != have_hash:
        return "rendered form changed"
    return first_difference(
        {k: v for k, v in desired.items() if k != "status"}, live, atomic=atomic_fields_for(desired)
    )


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None, prefix: str) -> bool:
    """True when ``desired`` (already stamped) must be applied over ``live``."""
    return apply_reason(desired, live, prefix) is not None
