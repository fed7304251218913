"""The ``disagg`` command: run the operator, render manifests offline, print the CRD."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from disagg import __version__


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def load_models(path: str) -> list[dict[str, Any]]:
    """The DisaggregatedModels in a YAML file (``-``: stdin); CliError when there are none."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        documents = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    models = [d for d in documents if isinstance(d, dict) and d.get("kind") == "DisaggregatedModel"]
    if not models:
        raise CliError(f"{path}: no DisaggregatedModel found")
    return models


def cmd_render(args: argparse.Namespace) -> int:
    from disagg.placement import place
    from disagg.planner.resolve import resolve_plan
    from disagg.reconcile import parse_spec, pod_demands
    from disagg.render import ModelRef, render, to_yaml
    from disagg.settings import load_settings

    settings = load_settings()
    out: list[dict[str, Any]] = []
    for body in load_models(args.filename):
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise CliError(f"{args.filename}: a DisaggregatedModel has no metadata.name")
        try:
            spec = parse_spec(body.get("spec"))
        except ValueError as exc:
            raise CliError(f"{name}: {exc}") from exc
        model = ModelRef(name=name, namespace=meta.get("namespace") or args.namespace)
        resolution = resolve_plan(spec, {args.node_gpu: 1} if args.node_gpu else None)
        if resolution.plan is None:
            hint = "; pass --node-gpu PRODUCT" if resolution.reason == "AcceleratorUnknown" else ""
            raise CliError(f"{name}: cannot plan: {resolution.message}{hint}")
        plan = resolution.plan
        placement = place(spec.topology, pods=pod_demands(spec, plan), inventory=None, settings=settings, previous={})
        out += render(model, spec, plan, settings, placement)
    sys.stdout.write(to_yaml(out))
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    from disagg.api.crd import crd_yaml

    text = crd_yaml()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import kopf
    from kubernetes.config import ConfigException
    from pydantic import ValidationError

    from disagg import handlers
    from disagg.kube.client import FAILPOINT_ENV, load_api_client, parse_failpoint
    from disagg.settings import load_settings

    try:
        settings = load_settings()
        parse_failpoint(os.environ.get(FAILPOINT_ENV))
    except (OSError, ValueError, ValidationError) as exc:
        raise CliError(f"invalid operator settings: {exc}".replace("\n", " ")) from exc
    try:
        api = load_api_client()
    except ConfigException as exc:
        raise CliError(f"no cluster credentials: {exc} (set KUBECONFIG or run in a pod)") from exc
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` dumps every thread's stack
    if args.namespace:  # the flag narrows what the resync lists, not only what kopf watches
        settings = settings.model_copy(update={"namespaces": list(args.namespace)})
    if not args.verbose:  # kopf logs every handler success at INFO; ours say what changed
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    namespaces: list[str] = list(args.namespace or settings.namespaces)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,  # HA is the operator's own Lease (disagg.leader), not kopf peering
        liveness_endpoint=args.liveness or None,
        memo=handlers.memo_for(settings, api, args.metrics),
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="disagg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"disagg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the current kubeconfig or in-cluster")
    run.add_argument("-n", "--namespace", action="append", default=[], help="watch only this namespace (repeat)")
    run.add_argument("--liveness", default="", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument(
        "--metrics",
        default=os.environ.get("DISAGG_METRICS_ADDRESS", ""),
        metavar="HOST:PORT",
        help="serve the operator's Prometheus metrics on http://HOST:PORT/metrics (env DISAGG_METRICS_ADDRESS)",
    )
    run.set_defaults(func=cmd_run)

    render = sub.add_parser("render", help="print the manifests a DisaggregatedModel produces (offline)")
    render.add_argument("-f", "--filename", required=True, help="YAML file with DisaggregatedModel(s), - for stdin")
    render.add_argument("-n", "--namespace", default="default", help="namespace when the CR names none")
    render.add_argument(
        "--node-gpu",
        metavar="PRODUCT",
        help="for models without accelerator.type: the nvidia.com/gpu.product their nodes carry "
        "(offline there are no nodes to read it from)",
    )
    render.set_defaults(func=cmd_render)

    from disagg.planner.cli import add_subcommands

    add_subcommands(sub)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinition generated from the API models")
    crd.add_argument("-o", "--output", help="write to this file instead of stdout")
    crd.set_defaults(func=cmd_crd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except (CliError, ValueError) as exc:  # the planner raises ValueError subclasses with one-line messages
        print(f"disagg: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
