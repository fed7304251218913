"""The replica search of the sizing (queueing.min_servers)."""

from __future__ import annotations

import pytest

from disagg.planner.queueing import min_servers


@pytest.mark.parametrize("need", [1, 2, 3, 7, 8, 9, 33, 64])
def test_min_servers_finds_the_smallest_count_and_judges_each_count_once(need: int) -> None:
    judged: list[int] = []

    def ok(n: int) -> bool:
        judged.append(n)
        return n >= need

    assert min_servers(ok, 1, 64) == need
    assert len(judged) == len(set(judged)), judged  # each count is a full sizing evaluation: never twice


def test_min_servers_gives_none_when_even_the_limit_fails_and_respects_the_floor() -> None:
    assert min_servers(lambda n: False, 1, 16) is None
    assert min_servers(lambda n: n >= 2, 5, 16) == 5
