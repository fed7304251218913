"""``kubectl disagg``: the kubectl plugin installed with the package (console script ``kubectl-disagg``).

kubectl runs any ``kubectl-<name>`` on PATH for ``kubectl <name> ...`` and passes it none of its
own flags, so the plugin reads the kubeconfig as kubectl does (``--kubeconfig``, else KUBECONFIG,
else ~/.kube/config; ``--context``; the context's namespace unless ``-n``).

- ``kubectl disagg status NAME``: the plan, roles with their autoscalers, placement, the last
  sleep/wake and re-planning decisions and the conditions, on one screen.
- ``kubectl disagg plan -f model.yaml``: the planner on a manifest (the code the operator runs),
  and what would change against the live model's ``status.plan`` (``--detailed-exitcode``: exit 2
  when something would, for scripts and CI gates).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from disagg import __version__
from disagg.api.spec import DisaggregatedModelSpec
from disagg.api.status import ConditionType, DisaggregatedModelStatus, condition
from disagg.cli import CliError, load_models
from disagg.describe import PlanChange, plan_change_text, status_text, would_change
from disagg.planner.replan import apply_floors
from disagg.planner.resolve import Resolution, resolve_plan
from disagg.reconcile import parse_spec
from disagg.status import plan_summary

if TYPE_CHECKING:
    from disagg.kube.client import KubeCluster

PROG = "kubectl disagg"
PLAN_CHANGES_EXIT = 2
"""``plan --detailed-exitcode`` when a manifest would change its model (terraform's convention: 1 stays an error)."""
USER_AGENT = f"kubectl-disagg/{__version__}"


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _connect(args: argparse.Namespace) -> tuple[KubeCluster, str]:
    """The cluster (read only) and the namespace to use; CliError without credentials."""
    from kubernetes.config import ConfigException

    from disagg.kube.client import KubeCluster, default_namespace, load_api_client

    try:
        api = load_api_client(args.kubeconfig, context=args.context, user_agent=USER_AGENT)
    except (ConfigException, OSError) as exc:
        where = args.kubeconfig or "KUBECONFIG or ~/.kube/config"
        raise CliError(f"no cluster credentials: {exc} (looked in {where}; set --kubeconfig or KUBECONFIG)") from exc
    namespace = args.namespace or default_namespace(args.kubeconfig, context=args.context)
    return KubeCluster(api, field_manager="kubectl-disagg"), namespace


def cmd_status(args: argparse.Namespace, now: Callable[[], dt.datetime] = _utc_now) -> int:
    from disagg.kube import ApiError
    from disagg.kube.inspect import ModelLookupError, read_snapshot

    cluster, namespace = _connect(args)
    try:
        snapshot = read_snapshot(cluster, namespace, args.name)
    except ModelLookupError as exc:
        raise CliError(str(exc)) from exc
    except ApiError as exc:
        raise CliError(f"reading {namespace}/{args.name}: {exc}") from exc
    sys.stdout.write(status_text(snapshot, now()))
    return 0


def _live_status(live: Mapping[str, Any] | None) -> DisaggregatedModelStatus | None:
    if live is None:
        return None
    try:
        return DisaggregatedModelStatus.model_validate(live.get("status") or {})
    except ValidationError:
        return None


def plan_change(
    name: str, namespace: str, spec: DisaggregatedModelSpec, resolution: Resolution, live: Mapping[str, Any] | None
) -> PlanChange:
    """The manifest's plan as the operator would run it beside the live model (None: not deployed).

    With re-planning on, the operator keeps the floors of its last decision until the next one is
    due; so does this comparison, or an unchanged manifest would show the re-planned floors as changes.
    """
    if resolution.plan is None:
        raise CliError(f"{name}: cannot plan: {resolution.message}")
    plan = resolution.plan
    status = _live_status(live)
    notes: list[str] = []
    if live is not None and status is None:
        notes.append("the live model's status is not readable by this plugin: compared against no plan")
    if status is not None and status.replan is not None and spec.planner.replan.enabled and plan.source == "planner":
        plan = apply_floors(plan, status.replan, spec)
        last = status.replan
        notes.append(
            f"floors kept from the last re-planning decision ({last.time}: {last.decision})"
            if last.time
            else f"floors kept from status.replan ({last.decision})"
        )
    planned = condition(status.conditions, ConditionType.PLANNED.value) if status is not None else None
    return PlanChange(
        name=name,
        namespace=namespace,
        plan=plan_summary(plan),
        verdict=resolution.reason,
        message=resolution.message,
        deployed=live is not None,
        live_plan=status.plan if status is not None else None,
        live_verdict=planned.reason if planned is not None else None,
        notes=tuple(notes),
    )


def _resolved(name: str, spec: DisaggregatedModelSpec, node_products: Mapping[str, int] | None) -> Resolution:
    resolution = resolve_plan(spec, node_products)
    if resolution.plan is None:
        raise CliError(f"{name}: cannot plan: {resolution.message}")
    return resolution


def cmd_plan(args: argparse.Namespace) -> int:
    from disagg.kube import ApiError
    from disagg.reconcile import node_products

    manifests: list[tuple[dict[str, Any], DisaggregatedModelSpec, Resolution | None]] = []
    for body in load_models(args.filename):  # every manifest is judged before the cluster is asked
        name = (body.get("metadata") or {}).get("name")
        if not name:
            raise CliError(f"{args.filename}: a DisaggregatedModel has no metadata.name")
        try:
            spec = parse_spec(body.get("spec"))
        except ValueError as exc:
            raise CliError(f"{name}: invalid spec: {exc}") from exc
        # a spec without accelerator.type is planned for its nodes' GPUs, as the operator does: later
        manifests.append((body, spec, _resolved(name, spec, None) if spec.accelerator.type else None))
    cluster, namespace = _connect(args)
    texts = []
    changes = 0
    for body, spec, known in manifests:
        meta = body.get("metadata") or {}
        name, own = str(meta["name"]), meta.get("namespace")
        if own and args.namespace and own != args.namespace:
            raise CliError(f"{name}: the manifest's namespace {own!r} does not match the namespace {args.namespace!r}")
        where = own or namespace
        try:
            resolution = known or _resolved(name, spec, node_products(spec, cluster))
            live = cluster.get_model(where, name)
        except ApiError as exc:
            raise CliError(f"{name}: reading the cluster: {exc}") from exc
        change = plan_change(name, where, spec, resolution, live)
        changes += would_change(change)
        texts.append(plan_change_text(change))
    sys.stdout.write("\n".join(texts))
    return PLAN_CHANGES_EXIT if args.detailed_exitcode and changes else 0


def _connection_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--kubeconfig", default=default, help="kubeconfig file (default: KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", default=default, help="kubeconfig context (default: the current one)")
    parser.add_argument("-n", "--namespace", default=default, help="namespace (default: the context's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Inspect DisaggregatedModels and preview plans.")
    parser.add_argument("--version", action="version", version=f"kubectl-disagg {__version__}")
    _connection_flags(parser, None)
    # the same flags after the subcommand (kubectl users write them there); SUPPRESS keeps the ones above
    common = argparse.ArgumentParser(add_help=False)
    _connection_flags(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser(
        "status", parents=[common], help="plan, roles, autoscalers, placement, sleep/wake, re-plan, conditions"
    )
    status.add_argument("name", help="the DisaggregatedModel")
    status.set_defaults(func=cmd_status)
    plan = sub.add_parser(
        "plan", parents=[common], help="plan a manifest and show what would change against the live model"
    )
    plan.add_argument("-f", "--filename", required=True, help="YAML file with DisaggregatedModel(s), - for stdin")
    plan.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help=f"exit {PLAN_CHANGES_EXIT} when applying would change a model (not deployed, or a plan field differs); "
        "0 when nothing would, 1 on errors",
    )
    plan.set_defaults(func=cmd_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
