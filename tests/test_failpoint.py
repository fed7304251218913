"""The fault-test failpoint's syntax: a typo must fail loudly, not silently disable the fault."""

from __future__ import annotations

import pytest

from disagg.kube.client import parse_failpoint


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, None), ("", None), ("apply:1", ("apply", 1)), ("status:12", ("status", 12)), ("scale:2", ("scale", 2))],
)
def test_parses(text: str | None, expected: tuple[str, int] | None) -> None:
    assert parse_failpoint(text) == expected


@pytest.mark.parametrize("text", ["apply", "apply:", "apply:0", "apply:-1", "patch:1", "delete:x", ":3"])
def test_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="DISAGG_FAILPOINT must be PHASE:N"):
        parse_failpoint(text)
