"""Drift detection: rendered fields must hold on the live object; server additions are ignored."""

from __future__ import annotations

from disagg.drift import ATOMIC_FIELDS, apply_reason, atomic_fields_for, first_difference, is_subset, needs_apply, stamp


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


def _service(selector: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "m"}, "spec": {"selector": selector}}


def test_a_key_added_to_an_atomic_selector_is_drift() -> None:
    """A hand-added selector key empties the Service's endpoints; apply replaces the atomic map."""
    desired = stamp(_service({"app": "m", "role": "prefill"}), "p")
    edited = {**desired, "spec": {"selector": {"app": "m", "role": "prefill", "x": "y"}}}
    reason = apply_reason(desired, edited, "p")
    assert reason is not None
    assert reason.startswith(".spec.selector: want exactly"), reason
    reordered = {**desired, "spec": {"selector": {"role": "prefill", "app": "m"}}}
    assert not needs_apply(desired, reordered, "p")


def test_label_selectors_are_atomic_but_the_rest_stays_a_subset() -> None:
    atomic = ATOMIC_FIELDS
    want = {"spec": {"selector": {"matchLabels": {"a": "1"}}, "template": {"metadata": {"labels": {"a": "1"}}}}}
    labels = {"a": "1", "b": "2"}
    have = {"spec": {"selector": {"matchLabels": {"a": "1"}}, "template": {"metadata": {"labels": labels}}}}
    assert is_subset(want, have, atomic)
    widened = {"spec": {"selector": {"matchLabels": {"a": "1", "b": "2"}}}}
    assert not is_subset({"spec": {"selector": {"matchLabels": {"a": "1"}}}}, widened, atomic)
    narrowed = {"spec": {"podSelector": {}}}
    assert first_difference({"spec": {"podSelector": {"matchLabels": {"a": "1"}}}}, narrowed, atomic=atomic)


def test_custom_resources_merge_maps_so_their_selectors_stay_subsets() -> None:
    """A CRD's schema merges maps key by key: apply cannot remove a foreign key, so it is no drift."""
    pool = {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool", "metadata": {"name": "m"}}
    desired = stamp({**pool, "spec": {"selector": {"matchLabels": {"a": "1"}}}}, "p")
    live = {**desired, "spec": {"selector": {"matchLabels": {"a": "1", "x": "y"}}}}
    assert atomic_fields_for(desired) == frozenset()
    assert not needs_apply(desired, live, "p")
    assert atomic_fields_for({"apiVersion": "apps/v1"}) == ATOMIC_FIELDS
    assert atomic_fields_for({"apiVersion": "v1"}) == ATOMIC_FIELDS
