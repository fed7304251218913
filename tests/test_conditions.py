"""Condition helpers follow Kubernetes API conventions."""

from __future__ import annotations

from disagg.api.status import condition, drop_conditions, set_condition


def test_new_condition_gets_transition_time() -> None:
    conds = set_condition([], ctype="Ready", status="False", reason="RollingOut", message="m", generation=1, now="t1")
    assert conds[0].last_transition_time == "t1"
    assert conds[0].observed_generation == 1


def test_transition_time_moves_only_on_flip() -> None:
    conds = set_condition([], ctype="Ready", status="False", reason="A", message="", generation=1, now="t1")
    same = set_condition(conds, ctype="Ready", status="False", reason="B", message="x", generation=2, now="t2")
    assert same[0].last_transition_time == "t1"
    assert same[0].reason == "B"
    assert same[0].observed_generation == 2
    flipped = set_condition(same, ctype="Ready", status="True", reason="Available", message="", generation=2, now="t3")
    assert flipped[0].last_transition_time == "t3"


def test_one_entry_per_type_in_stable_order() -> None:
    conds = set_condition([], ctype="Degraded", status="False", reason="Ok", message="", generation=1, now="t")
    conds = set_condition(conds, ctype="Ready", status="True", reason="Ok", message="", generation=1, now="t")
    conds = set_condition(conds, ctype="Ready", status="True", reason="Ok", message="", generation=1, now="t")
    assert [c.type for c in conds] == ["Ready", "Degraded"]
    assert condition(conds, "Degraded") is not None
    assert [c.type for c in drop_conditions(conds, ["Ready"])] == ["Degraded"]
