"""Drift detection: rendered fields must hold on the live object; server additions are ignored."""

from __future__ import annotations

from disagg.drift import is_subset, needs_apply, stamp


def test_subset_ignores_server_defaults() -> None:
    want = {"spec": {"template": {"spec": {"containers": [{"name": "vllm", "image": "a"}]}}}}
    have = {
        "spec": {
            "progressDeadlineSeconds": 600,
            "template": {"spec": {"containers": [{"name": "vllm", "image": "a", "imagePullPolicy": "IfNotPresent"}]}},
        }
    }
    assert is_subset(want, have)


def test_subset_detects_changed_and_missing_values() -> None:
    want = {"spec": {"template": {"spec": {"containers": [{"name": "vllm", "image": "a"}]}}}}
    assert not is_subset(want, {"spec": {"template": {"spec": {"containers": [{"name": "vllm", "image": "b"}]}}}})
    assert not is_subset(want, {"spec": {"template": {"spec": {"containers": []}}}})
    assert not is_subset({"a": [1, 2]}, {"a": [1, 2, 3]})


def test_named_lists_match_by_name_and_order() -> None:
    want = [{"name": "a", "v": 1}, {"name": "b", "v": 2}]
    assert is_subset(want, [{"name": "a", "v": 1}, {"name": "x"}, {"name": "b", "v": 2, "extra": 0}])
    assert not is_subset(want, [{"name": "b", "v": 2}, {"name": "a", "v": 1}])


def test_quantities_compare_numerically() -> None:
    assert is_subset({"cpu": "1"}, {"cpu": "1000m"})
    assert is_subset({"memory": "1Gi"}, {"memory": "1073741824"})
    assert not is_subset({"cpu": "1"}, {"cpu": "2"})
    assert not is_subset({"flag": True}, {"flag": 1})


def test_needs_apply_on_hash_change_and_on_hand_edit() -> None:
    desired = stamp({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}, "p")
    assert needs_apply(desired, None, "p")
    assert not needs_apply(desired, desired, "p")
    edited = {**desired, "data": {"k": "hand-edited"}}
    assert needs_apply(desired, edited, "p")
    changed = stamp({**desired, "data": {"k": "new"}}, "p")
    assert needs_apply(changed, desired, "p")


def test_stamp_is_stable() -> None:
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}
    assert stamp(obj, "p") == stamp(stamp(obj, "p"), "p")


def test_empty_rendered_list_matches_an_absent_field() -> None:
    assert is_subset({"env": [], "image": "a"}, {"image": "a"})
    assert not is_subset({"env": [{"name": "X"}]}, {})
