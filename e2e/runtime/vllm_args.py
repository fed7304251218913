"""Placeholder until vLLM's parser is wired in."""

from __future__ import annotations


def check(args: list[str]) -> str | None:
    return None
