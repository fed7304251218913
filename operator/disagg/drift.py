"""Decide (purely) whether a live child differs from its rendered form, so unchanged children get no write.

A child is re-applied when the hash of its rendered form changed (this also covers fields we
stopped rendering, which server-side apply then releases) or when any rendered field no longer
holds on the live object (a hand edit). Fields the server or other managers add are ignored:
the comparison is "desired is a subset of live", which mirrors what server-side apply owns.
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


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, Mapping) and "name" in i for i in items)


def first_difference(want: Any, have: Any, path: str = "") -> str | None:
    """Where ``want`` stops being a subset of ``have`` (for logs), or None."""
    if isinstance(want, Mapping) and isinstance(have, Mapping):
        for key, value in want.items():
            if key not in have:
                if value == []:
                    continue
                return f"{path}.{key} missing"
            found = first_difference(value, have[key], f"{path}.{key}")
            if found:
                return found
        return None
    if is_subset(want, have):
        return None
    if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        for index, (w, h) in enumerate(zip(want, have, strict=True)):
            found = first_difference(w, h, f"{path}[{index}]")
            if found:
                return found
    return f"{path}: want {want!r:.200}, have {have!r:.200}"


def is_subset(want: Any, have: Any) -> bool:
    """Every value in ``want`` holds in ``have`` (lists of named items matched by name)."""
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return False
        # the API server drops empty lists, so an empty list we render matches an absent field
        return all(is_subset(value, have[key]) if key in have else value == [] for key, value in want.items())
    if isinstance(want, list):
        if not isinstance(have, list):
            return False
        if _named(want) and _named(have):
            by_name = {item["name"]: item for item in have}
            order_want = [i["name"] for i in want]
            order_have = [i["name"] for i in have if i["name"] in set(order_want)]
            return order_want == order_have and all(
                i["name"] in by_name and is_subset(i, by_name[i["name"]]) for i in want
            )
        return len(want) == len(have) and all(is_subset(w, h) for w, h in zip(want, have, strict=True))
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
    return first_difference({k: v for k, v in desired.items() if k != "status"}, live)


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None, prefix: str) -> bool:
    """True when ``desired`` (already stamped) must be applied over ``live``."""
    return apply_reason(desired, live, prefix) is not None
