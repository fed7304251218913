"""The kubectl plugin's command (disagg/kubectl.py) without a cluster: manifests, kubeconfig, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from disagg.api.status import Condition, DisaggregatedModelStatus, ReplanStatus
from disagg.describe import would_change
from disagg.kube.client import default_namespace
from disagg.kubectl import build_parser, main, plan_change
from disagg.planner.resolve import resolve_plan
from disagg.reconcile import parse_spec
from disagg.status import plan_summary
from tests.conftest import INVALID, SAMPLES

SAMPLE = next(p for p in SAMPLES if p.name == "llama-3.3-70b-disaggregated.yaml")


def kubeconfig(path: Path, current: str = "dev") -> Path:
    cluster = {"server": "https://127.0.0.1:1"}
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "dev", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}},
                    {"name": "bare", "context": {"cluster": "c", "user": "u"}},
                ],
                "current-context": current,
            }
        )
    )
    return path


def test_the_namespace_comes_from_the_context_like_kubectl(tmp_path: Path) -> None:
    config = str(kubeconfig(tmp_path / "config"))
    assert default_namespace(config) == "team-a"
    assert default_namespace(config, context="bare") == "default"
    assert default_namespace(config, context="dev") == "team-a"
    assert default_namespace(str(tmp_path / "missing")) == "default"


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "m", "-n", "ns", "--context", "dev", "--kubeconfig", "k"],
        ["-n", "ns", "--context", "dev", "--kubeconfig", "k", "status", "m"],
    ],
)
def test_connection_flags_go_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.name, args.namespace, args.context, args.kubeconfig) == ("m", "ns", "dev", "k")


def test_without_credentials_the_exit_is_non_zero_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "m", "--kubeconfig", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no cluster credentials: ")
    assert err.count("\n") == 1


def test_an_unreachable_cluster_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "m", "--kubeconfig", str(kubeconfig(tmp_path / "config"))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: reading team-a/m: HTTP 0: API server unreachable"), err


@pytest.mark.parametrize("bad", INVALID, ids=lambda p: p.stem)
def test_a_bad_manifest_fails_with_the_validation_message_before_any_cluster_read(
    bad: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = yaml.safe_load(bad.read_text())
    try:
        parse_spec(body["spec"])
    except ValueError as exc:
        expected = str(exc)
    else:  # a schema-level rejection (the CRD's enum), not one parse_spec makes
        pytest.skip(f"{bad.name} is rejected by the CRD schema only")
    # no kubeconfig at all: the manifest is judged first
    assert main(["plan", "-f", str(bad), "--kubeconfig", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err == f"error: {body['metadata']['name']}: invalid spec: {expected}\n"


def test_an_unplannable_manifest_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = yaml.safe_load(SAMPLE.read_text())
    body["spec"]["accelerator"]["type"] = "h900-imaginary"
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(body))
    assert main(["plan", "-f", str(path), "--kubeconfig", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err.startswith("error: llama-70b: cannot plan: ")


def live_body(status: DisaggregatedModelStatus) -> dict[str, Any]:
    return {"metadata": {"name": "llama-70b", "namespace": "prod"}, "status": status.wire()}


def test_an_unchanged_manifest_compares_equal_to_the_status_the_operator_wrote() -> None:
    spec = parse_spec(yaml.safe_load(SAMPLE.read_text())["spec"])
    resolution = resolve_plan(spec)
    assert resolution.plan is not None
    planned = Condition(
        type="Planned", status="True", reason=resolution.reason, message="", last_transition_time="2026-12-02T17:00:00Z"
    )
    live = DisaggregatedModelStatus(plan=plan_summary(resolution.plan), conditions=[planned])
    change = plan_change("llama-70b", "prod", spec, resolution, live_body(live))
    assert change.deployed
    assert change.live_plan == change.plan
    assert change.live_verdict == change.verdict == "SLOsMet"
    assert plan_change("llama-70b", "prod", spec, resolution, None).deployed is False
    # what --detailed-exitcode reports: nothing for the same plan, a change for a model not deployed or a field moved
    assert not would_change(change)
    assert would_change(plan_change("llama-70b", "prod", spec, resolution, None))
    assert change.live_plan is not None
    moved = dataclasses.replace(change, live_plan=change.live_plan.model_copy(update={"gpus": change.plan.gpus + 1}))
    assert would_change(moved)


def test_with_replanning_on_the_live_floors_are_kept_as_the_operator_keeps_them() -> None:
    body = yaml.safe_load(SAMPLE.read_text())
    body["spec"]["planner"] = {"replan": {"enabled": True}}
    spec = parse_spec(body["spec"])
    resolution = resolve_plan(spec)
    assert resolution.plan is not None
    assert resolution.plan.prefill.replicas != 3
    decision = ReplanStatus.model_validate(
        {"time": "2026-12-02T17:58:00Z", "observed": {}, "prefillFloor": 3, "decision": "prefill floor 5 -> 3"}
    )
    live = DisaggregatedModelStatus(replan=decision)
    change = plan_change("llama-70b", "prod", spec, resolution, live_body(live))
    assert change.plan.prefill is not None
    assert change.plan.prefill.replicas == 3
    assert change.notes == (
        "floors kept from the last re-planning decision (2026-12-02T17:58:00Z: prefill floor 5 -> 3)",
    )
    # re-planning off in the manifest: the floors are the plan's own again
    off = parse_spec(yaml.safe_load(SAMPLE.read_text())["spec"])
    unchanged = plan_change("llama-70b", "prod", off, resolve_plan(off), live_body(live))
    assert unchanged.plan.prefill is not None
    assert unchanged.plan.prefill.replicas == resolution.plan.prefill.replicas
    assert unchanged.notes == ()
