"""Names and labels of rendered children, kept within Kubernetes length limits."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DNS_LABEL_MAX = 63
LABEL_VALUE_MAX = 63


@dataclass(frozen=True)
class ModelRef:
    """Identity of the DisaggregatedModel being rendered (uid absent when rendering offline)."""

    name: str
    namespace: str
    uid: str | None = None


def _digest(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def child_name(base: str, suffix: str, limit: int = DNS_LABEL_MAX) -> str:
    """``<base>-<suffix>``, truncated with a hash of the full name when it would exceed ``limit``.

    The hash keeps two long names that share a prefix distinct after truncation.
    """
    full = f"{base}-{suffix}" if suffix else base
    if len(full) <= limit:
        return full
    digest = _digest(full)
    keep = limit - len(suffix) - len(digest) - 2
    stem = base[:keep].rstrip("-.")
    return f"{stem}-{digest}-{suffix}" if suffix else f"{stem}-{digest}"


def label_value(text: str) -> str:
    """A valid label value carrying ``text``: invalid characters replaced, long values hashed."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", text)
    cleaned = cleaned.strip("_.-")
    if len(cleaned) > LABEL_VALUE_MAX:
        cleaned = f"{cleaned[: LABEL_VALUE_MAX - 9].rstrip('_.-')}-{_digest(text)}"
    return cleaned


def merged_labels(*layers: Mapping[str, str]) -> dict[str, str]:
    """Later layers win: user labels first, operator-owned labels last."""
    result: dict[str, str] = {}
    for layer in layers:
        result.update(layer)
    return result


def content_hash(obj: Any) -> str:
    """Stable short hash of any JSON-able value (rolls pods when their mounted config changes)."""
    return _digest(json.dumps(obj, sort_keys=True, separators=(",", ":")), 16)
