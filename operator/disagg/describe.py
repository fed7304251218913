"""What ``kubectl disagg`` prints: one model on one screen, and what a manifest would change.

Pure: objects as the API server returns them in, plain text out (aligned columns, no colour), so
every line is unit-tested without a cluster. The reads are in ``kube/inspect.py``, the command in
``kubectl.py``.
"""

from __future__ import annotations

import datetime as dt
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from disagg.api.spec import DisaggregatedModelSpec
from disagg.api.status import (
    ConditionType,
    DisaggregatedModelStatus,
    PlanSummary,
    ReplanStatus,
    RolePlanSummary,
)
from disagg.render.autoscaling import KEDA_PAUSED_REPLICAS

WRAP = 100
"""Long sentences (the planner's reason) are wrapped to this width."""
NONE = "-"
INVALID_SPEC = "unknown (the spec does not validate: see Conditions)"


@dataclass(frozen=True)
class ModelSnapshot:
    """One model and what scales its roles, as read from the cluster."""

    model: Mapping[str, Any]
    hpas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per role: the HPA that scales it (the operator's own, or the one KEDA made for its ScaledObject)."""
    scaled_objects: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per role: its KEDA ScaledObject."""
    events: Sequence[Mapping[str, Any]] = ()
    """The model's Events (events.k8s.io/v1)."""


# --- small pieces -------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[str]], indent: int = 2) -> list[str]:
    """Rows with every column padded to its widest cell (the last one is not padded)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(len(r) for r in rows))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append((" " * indent + "  ".join(cells)).rstrip())
    return lines


def parse_time(text: str | None) -> dt.datetime | None:
    """An RFC 3339 time as Kubernetes writes it (``...Z``, with or without fractions); None if not one."""
    if not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def age(seconds: float) -> str:
    """Elapsed time as kubectl prints an AGE (its HumanDuration): 90s, 5m12s, 45m, 3h4m, 30h, 2d5h, 20d."""
    total = max(int(seconds), 0)
    minutes, hours, days = total // 60, total // 3600, total // 86_400
    if total < 120:
        return f"{total}s"
    if minutes < 10:
        return f"{minutes}m{total % 60}s" if total % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 730:
        return f"{days}d"
    return f"{days // 365}y{days % 365}d" if days < 365 * 8 and days % 365 else f"{days // 365}y"


def since(text: str | None, now: dt.datetime) -> str:
    """``2026-12-02T17:59:48Z (3m ago)``; ``-`` without a time."""
    when = parse_time(text)
    if when is None or text is None:
        return NONE
    return f"{text} ({age((now - when).total_seconds())} ago)"


def ago(text: str | None, now: dt.datetime) -> str:
    when = parse_time(text)
    return age((now - when).total_seconds()) if when is not None else NONE


def milliseconds(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms"


def wrapped(label: str, text: str, indent: int = 2) -> list[str]:
    """``label`` then ``text`` wrapped to :data:`WRAP`, continuation lines under the text."""
    head = " " * indent + label
    lines = textwrap.wrap(
        " ".join(text.split()),
        width=WRAP,
        initial_indent=head,
        subsequent_indent=" " * len(head),
        break_on_hyphens=False,
    )
    return lines or [head.rstrip()]


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    """A nested field of a raw object, None where any step is missing or not a mapping."""
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _conditions(obj: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    found = _get(obj, "status", "conditions") or []
    return [c for c in found if isinstance(c, Mapping)]


def _condition(obj: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    return next((c for c in _conditions(obj) if c.get("type") == ctype), None)


def ratio(plan: PlanSummary) -> str:
    """``5P:1D`` (disaggregated) or ``3PD`` (aggregated), from the floors, as ``status.ratio``."""
    prefill = plan.prefill.replicas if plan.prefill else 0
    if plan.decode is None:
        return f"{prefill}PD"
    return f"{prefill}P:{plan.decode.replicas}D"


# --- autoscalers ----------------------------------------------------------------------------------


def _quantity(value: Any) -> str:
    return NONE if value is None else str(value)


def _metric_value(block: Mapping[str, Any] | None, target_type: str | None) -> str:
    """A current or target value of an HPA metric, as kubectl prints it (``<unknown>`` when absent)."""
    if not isinstance(block, Mapping):
        return "<unknown>"
    if target_type == "Utilization" and block.get("averageUtilization") is not None:
        return f"{block['averageUtilization']}%"
    for key in ("averageValue", "value", "averageUtilization"):
        if block.get(key) is not None:
            return f"{block[key]}%" if key == "averageUtilization" else str(block[key])
    return "<unknown>"


def _metric_source(metric: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """(name, source block) of one HPA metric of any type."""
    kind = str(metric.get("type") or "")
    source = metric.get(kind[:1].lower() + kind[1:]) if kind else None
    if not isinstance(source, Mapping):
        return NONE, {}
    name = _get(source, "metric", "name") or source.get("name") or NONE
    return str(name), source


def hpa_metrics(hpa: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Per metric of the HPA's spec: (name, ``current/target``) with the current value from its status."""
    current_by_name: dict[tuple[str, str], Mapping[str, Any]] = {}
    for current in _get(hpa, "status", "currentMetrics") or []:
        if isinstance(current, Mapping):
            name, source = _metric_source(current)
            current_by_name[(str(current.get("type")), name)] = source
    out = []
    for metric in _get(hpa, "spec", "metrics") or []:
        if not isinstance(metric, Mapping):
            continue
        name, source = _metric_source(metric)
        target = source.get("target")
        target = target if isinstance(target, Mapping) else {}
        target_type = str(target.get("type") or "") or None
        now = current_by_name.get((str(metric.get("type")), name))
        current = _metric_value(now.get("current") if now else None, target_type)
        out.append((name, f"{current}/{_metric_value(target, target_type)}"))
    return out


def _keda_metric(scaled: Mapping[str, Any]) -> str:
    """A ScaledObject's triggers in short: ``prometheus sum(vllm:num_requests_waiting)``."""
    names = []
    for trigger in _get(scaled, "spec", "triggers") or []:
        if not isinstance(trigger, Mapping):
            continue
        query = _get(trigger, "metadata", "query")
        what = re.sub(r"\{[^}]*\}", "", str(query)) if query else str(_get(trigger, "metadata", "value") or "")
        names.append(f"{trigger.get('type')} {what}".strip())
    return ", ".join(names) or NONE


@dataclass(frozen=True)
class ScalerView:
    kind: str
    """``HPA``, ``KEDA`` or ``fixed``."""
    floor: str
    ceiling: str
    wants: str
    """The replicas the autoscaler asks for now."""
    metric: str
    value: str
    """``current/target``."""
    notes: tuple[str, ...] = ()


HPA_HEALTHY = {"AbleToScale": "True", "ScalingActive": "True", "ScalingLimited": "False"}
"""Each HPA condition's status when nothing needs saying; any other is shown."""


def scaler_view(hpa: Mapping[str, Any] | None, scaled: Mapping[str, Any] | None) -> ScalerView:
    """What scales one role and where it stands (``fixed``: no autoscaler, the plan's replicas)."""
    notes: list[str] = []
    metrics = hpa_metrics(hpa) if hpa is not None else []
    # the HPA's desiredReplicas means something only while it can compute one (ScalingActive)
    active = (_condition(hpa, "ScalingActive") or {}).get("status") == "True"
    wants = _quantity(_get(hpa, "status", "desiredReplicas")) if active else NONE
    for cond in _conditions(hpa):
        ctype, status = str(cond.get("type")), cond.get("status")
        healthy = HPA_HEALTHY.get(ctype)
        if (status != healthy) if healthy is not None else (status == "False"):
            notes.append(f"HPA {ctype}={status} ({cond.get('reason')}): {cond.get('message') or ''}".strip())
    if scaled is not None:
        annotations = _get(scaled, "metadata", "annotations") or {}
        paused = annotations.get(KEDA_PAUSED_REPLICAS)
        if paused is not None:
            notes.append(f"KEDA paused at {paused} replicas ({KEDA_PAUSED_REPLICAS})")
            wants = str(paused)
        for cond in _conditions(scaled):
            if cond.get("type") == "Ready" and cond.get("status") != "True":
                notes.append(f"ScaledObject Ready={cond.get('status')} ({cond.get('reason')}): {cond.get('message')}")
        values = ", ".join(value for _, value in metrics) or NONE
        return ScalerView(
            kind="KEDA",
            floor=_quantity(_get(scaled, "spec", "minReplicaCount")),
            ceiling=_quantity(_get(scaled, "spec", "maxReplicaCount")),
            wants=wants,
            metric=_keda_metric(scaled),
            value=values,
            notes=tuple(notes),
        )
    if hpa is not None:
        return ScalerView(
            kind="HPA",
            floor=_quantity(_get(hpa, "spec", "minReplicas")),
            ceiling=_quantity(_get(hpa, "spec", "maxReplicas")),
            wants=wants,
            metric=", ".join(name for name, _ in metrics) or NONE,
            value=", ".join(value for _, value in metrics) or NONE,
            notes=tuple(notes),
        )
    return ScalerView(kind="fixed", floor=NONE, ceiling=NONE, wants=NONE, metric=NONE, value=NONE)


# --- kubectl disagg status --------------------------------------------------------------------------


def _status(model: Mapping[str, Any]) -> tuple[DisaggregatedModelStatus | None, str | None]:
    try:
        return DisaggregatedModelStatus.model_validate(model.get("status") or {}), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return None, f"status.{where}: {first['msg']}"


def _spec(model: Mapping[str, Any]) -> DisaggregatedModelSpec | None:
    """The typed spec (defaults filled in), None when it does not validate (the conditions say why)."""
    try:
        return DisaggregatedModelSpec.model_validate(model.get("spec") or {})
    except ValidationError:
        return None


def _role_plan(plan: PlanSummary | None, role: str) -> RolePlanSummary | None:
    if plan is None:
        return None
    return plan.decode if role == "decode" else plan.prefill if role in ("prefill", "prefill-decode") else None


def _header(model: Mapping[str, Any], now: dt.datetime) -> list[str]:
    meta = model.get("metadata") or {}
    spec = model.get("spec") or {}
    status = model.get("status") or {}
    ready = _condition(model, ConditionType.READY.value)
    what = str(_get(spec, "model", "name") or NONE)
    preset = _get(spec, "model", "preset")
    if preset:
        what += f" (preset {preset})"
    accelerator = _get(spec, "accelerator", "type")
    if accelerator:
        what += f" on {accelerator}"
    ready_text = NONE
    if ready is not None:
        ready_text = f"{ready.get('status')} ({ready.get('reason')}) for {ago(ready.get('lastTransitionTime'), now)}"
    generation = f"{meta.get('generation', NONE)} (status observed {status.get('observedGeneration', NONE)})"
    return table(
        [
            ["Name:", str(meta.get("name", NONE))],
            ["Namespace:", str(meta.get("namespace", NONE))],
            ["Model:", what],
            ["Ready:", ready_text],
            ["Generation:", generation],
        ],
        indent=0,
    )


def _plan_section(model: Mapping[str, Any], status: DisaggregatedModelStatus) -> list[str]:
    spec = _spec(model)
    planned = _condition(model, ConditionType.PLANNED.value)
    verdict = f"Planned={planned.get('status')} ({planned.get('reason')})" if planned else "Planned: -"
    plan = status.plan
    if plan is None:
        lines = [f"Plan: none, {verdict}"]
        if planned and planned.get("message"):
            lines += wrapped("Why: ", str(planned["message"]))
        return lines
    roles = []
    for name, role in (("prefill", plan.prefill), ("decode", plan.decode)):
        if role is not None:
            label = "prefill-decode" if plan.decode is None else name
            roles.append(f"{label} TP{role.tensor_parallel} floor {role.replicas} max {role.max_replicas}")
    ttft, itl = milliseconds(plan.predicted_ttft_ms), milliseconds(plan.predicted_itl_ms)
    if spec is not None:
        ttft += f" (SLO {spec.slo.ttft} p{spec.slo.percentile})"
        itl += f" (SLO {spec.slo.itl} p{spec.slo.percentile})"
    met = {True: ": SLOs met", False: ": SLOs at risk", None: ""}[plan.slo_met]
    rows = [
        ["Mode:", f"{plan.mode}, {status.ratio or ratio(plan)} on {plan.gpus} GPUs at the floor"],
        ["Roles:", "; ".join(roles) or NONE],
    ]
    if plan.disagg_threshold is not None:
        rows.append(["Threshold:", f"prompts under {plan.disagg_threshold} uncached tokens skip prefill"])
    rows.append(["Predicted:", f"TTFT {ttft}, ITL {itl}{met}"])
    lines = [f"Plan: {plan.source}, {verdict}", *table(rows)]
    reason = plan.reason or (str(planned.get("message")) if planned else "")
    if reason:
        lines += wrapped("Reason:     ", reason)
    return lines


def _roles_section(snapshot: ModelSnapshot, status: DisaggregatedModelStatus) -> list[str]:
    if not status.roles:
        return ["Roles: none reported yet"]
    rows = [["ROLE", "TP", "DESIRED", "READY", "UPDATED", "AUTOSCALER", "MIN", "MAX", "WANTS", "METRIC", "NOW/TARGET"]]
    notes: list[str] = []
    for role in status.roles:
        view = scaler_view(snapshot.hpas.get(role.name), snapshot.scaled_objects.get(role.name))
        planned = _role_plan(status.plan, role.name)
        floor, ceiling = view.floor, view.ceiling
        if view.kind == "fixed" and planned is not None:
            floor = ceiling = str(planned.replicas)
        rows.append(
            [
                role.name,
                str(role.tensor_parallel) if role.tensor_parallel else NONE,
                str(role.desired),
                str(role.ready),
                str(role.updated),
                view.kind,
                floor,
                ceiling,
                view.wants,
                view.metric,
                view.value,
            ]
        )
        for note in view.notes:
            notes += wrapped(f"{role.name}: ", note)
    return ["Roles:", *table(rows), *notes]


def _placement_section(status: DisaggregatedModelStatus) -> list[str]:
    if not status.placement:
        return ["Placement: not packed (spec.topology names no pack level)"]
    rows = [["LEVEL", "DOMAIN", "PACK", "GPUS", "NODE LABEL"]]
    for p in status.placement:
        rows.append(
            [
                p.level,
                p.domain or "<none fits>",
                "required" if p.required else "preferred",
                str(p.gpus_needed),
                p.node_label,
            ]
        )
    return ["Placement:", *table(rows)]


def _last_event(snapshot: ModelSnapshot, reason: str) -> Mapping[str, Any] | None:
    uid = _get(snapshot.model, "metadata", "uid")
    found = [
        e
        for e in snapshot.events
        if e.get("reason") == reason and (uid is None or _get(e, "regarding", "uid") in (None, uid))
    ]
    return max(found, key=lambda e: parse_time(event_time(e)) or dt.datetime.min.replace(tzinfo=dt.UTC), default=None)


def event_time(event: Mapping[str, Any]) -> str | None:
    """When an event last happened: its series' last observation, else its time."""
    for value in (
        _get(event, "series", "lastObservedTime"),
        event.get("eventTime"),
        event.get("deprecatedLastTimestamp"),
        event.get("lastTimestamp"),
    ):
        if value:
            return str(value)
    return None


def _sleep_section(snapshot: ModelSnapshot, now: dt.datetime) -> list[str]:
    spec = _spec(snapshot.model)
    if spec is None:
        return [f"Scale to zero: {INVALID_SPEC}"]
    if not spec.scale_to_zero.enabled:
        return ["Scale to zero: off"]
    marker = _condition(snapshot.model, ConditionType.SCALED_TO_ZERO.value)
    lines = [f"Scale to zero: on, idle after {spec.scale_to_zero.idle_after}"]
    rows = []
    if marker is None:
        rows.append(["Now:", "not decided yet (no ScaledToZero condition)"])
    else:
        state = "asleep" if marker.get("status") == "True" else "serving"
        rows.append(
            [
                "Now:",
                f"{state} since {since(marker.get('lastTransitionTime'), now)}, "
                f"ScaledToZero={marker.get('status')} ({marker.get('reason')})",
            ]
        )
    for label, reason in (("Slept:", "ScaledToZeroTrue"), ("Woke:", "ScaledToZeroFalse")):
        event = _last_event(snapshot, reason)
        if event is None:
            rows.append([label, f"no {reason} among the model's Events (kept 1h by default)"])
        else:
            note = event.get("note") or event.get("message") or ""
            rows.append([label, f"{since(event_time(event), now)}: {note}".rstrip(": ")])
    return [*lines, *table(rows)]


def _observed(replan: ReplanStatus) -> str:
    o = replan.observed
    parts = []
    if o.request_rate is not None:
        parts.append(f"{o.request_rate:.2f} req/s")
    if o.input_tokens is not None or o.output_tokens is not None:
        tokens_in = f"{o.input_tokens:.0f}" if o.input_tokens is not None else NONE
        tokens_out = f"{o.output_tokens:.1f}" if o.output_tokens is not None else NONE
        parts.append(f"{tokens_in} in / {tokens_out} out tokens")
    if o.ttft_ms is not None:
        parts.append(f"TTFT {milliseconds(o.ttft_ms)}")
    if o.itl_ms is not None:
        parts.append(f"ITL {milliseconds(o.itl_ms)}")
    return ", ".join(parts) or "no traffic data"


def _replan_section(model: Mapping[str, Any], status: DisaggregatedModelStatus, now: dt.datetime) -> list[str]:
    spec = _spec(model)
    if spec is None:
        return [f"Re-plan: {INVALID_SPEC}"]
    if not spec.planner.replan.enabled:
        return ["Re-plan: off"]
    head = f"Re-plan: on, every {spec.planner.replan.interval}"
    last = status.replan
    if last is None:
        return [f"{head}; no decision yet"]
    floors = [
        f"{name} {value}"
        for name, value in (("prefill", last.prefill_floor), ("decode", last.decode_floor))
        if value is not None
    ]
    if last.disagg_threshold is not None:
        floors.append(f"threshold {last.disagg_threshold} tokens")
    if not last.time:  # the floors read back from the autoscalers when status.replan was lost
        rows = [["Last:", f"none yet ({last.decision})"], ["Floors:", ", ".join(floors) or NONE]]
        return [head, *table(rows)]
    rows = [
        ["Last:", f"{since(last.time, now)}: {last.decision or NONE}"],
        ["Observed:", _observed(last)],
        ["Correction:", f"TTFT x{last.ttft_correction:.2f}, ITL x{last.itl_correction:.2f}"],
        ["Floors:", ", ".join(floors) or NONE],
    ]
    return [head, *table(rows)]


def _conditions_section(model: Mapping[str, Any], plan_reason: str | None, now: dt.datetime) -> list[str]:
    conditions = _conditions(model)
    if not conditions:
        return ["Conditions: none yet (is the operator running?)"]
    rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
    for cond in conditions:
        message = " ".join(str(cond.get("message") or "").split())
        if plan_reason and message == " ".join(plan_reason.split()):
            message = "(the plan's reason above)"
        rows.append(
            [
                str(cond.get("type")),
                str(cond.get("status")),
                str(cond.get("reason")),
                ago(cond.get("lastTransitionTime"), now),
                message,
            ]
        )
    return ["Conditions:", *table(rows)]


def status_text(snapshot: ModelSnapshot, now: dt.datetime) -> str:
    """``kubectl disagg status``: plan, roles and their autoscalers, placement, sleep/wake,
    re-planning and conditions."""
    model = snapshot.model
    sections = [_header(model, now)]
    status, unreadable = _status(model)
    if status is None:
        sections.append([f"Status: not readable by this kubectl-disagg ({unreadable}); showing conditions only"])
    else:
        sections += [
            _plan_section(model, status),
            _roles_section(snapshot, status),
            _placement_section(status),
            _sleep_section(snapshot, now),
            _replan_section(model, status, now),
        ]
    plan_reason = status.plan.reason if status is not None and status.plan is not None else None
    sections.append(_conditions_section(model, plan_reason, now))
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


# --- kubectl disagg plan ----------------------------------------------------------------------------


def plan_fields(plan: PlanSummary | None, verdict: str | None) -> dict[str, str]:
    """The figures a plan is judged by, as printed (so float noise is no change); ``-`` where absent."""
    if plan is None:
        return {"verdict": verdict} if verdict else {}
    fields = {"mode": plan.mode, "ratio": ratio(plan), "GPUs at the floor": str(plan.gpus)}
    for name, role in (("prefill", plan.prefill), ("decode", plan.decode)):
        label = "prefill-decode" if name == "prefill" and plan.decode is None else name
        fields[f"{label} floor"] = str(role.replicas) if role else NONE
        fields[f"{label} ceiling"] = str(role.max_replicas) if role else NONE
        fields[f"{label} TP"] = str(role.tensor_parallel) if role else NONE
    fields["disagg threshold"] = str(plan.disagg_threshold) if plan.disagg_threshold is not None else NONE
    fields["predicted TTFT"] = milliseconds(plan.predicted_ttft_ms)
    fields["predicted ITL"] = milliseconds(plan.predicted_itl_ms)
    fields["SLOs met"] = {True: "yes", False: "no", None: NONE}[plan.slo_met]
    fields["planner"] = plan.source
    fields["verdict"] = verdict or NONE
    return fields


@dataclass(frozen=True)
class PlanChange:
    """A manifest's plan beside the live model's (``live_plan`` None with ``deployed``: no plan yet)."""

    name: str
    namespace: str
    plan: PlanSummary
    verdict: str
    """The reason the ``Planned`` condition would carry (SLOsMet, SLOsAtRisk, NoModelShape)."""
    message: str
    deployed: bool
    live_plan: PlanSummary | None = None
    live_verdict: str | None = None
    notes: tuple[str, ...] = ()


def changed_fields(change: PlanChange) -> list[tuple[str, str, str]]:
    """(field, live, manifest) of every field that differs."""
    new = plan_fields(change.plan, change.verdict)
    old = plan_fields(change.live_plan, change.live_verdict)
    return [(key, old.get(key, NONE), value) for key, value in new.items() if old.get(key, NONE) != value]


def would_change(change: PlanChange) -> bool:
    """Applying the manifest would change the model: it is not deployed, or a plan field differs."""
    return not change.deployed or bool(changed_fields(change))


def plan_change_text(change: PlanChange) -> str:
    """``kubectl disagg plan``: per field live -> manifest, ``no change``, or ``not deployed``."""
    where = f"disaggregatedmodel/{change.name} in namespace {change.namespace}"
    if not change.deployed:
        rows = [["FIELD", "PLAN"], *([k, v] for k, v in plan_fields(change.plan, change.verdict).items())]
        lines = [f"{where}: not deployed; applying the manifest would plan:", *table(rows)]
    else:
        changes = changed_fields(change)
        if not changes:
            lines = [f"{where}: no change (the live plan is what this manifest plans)"]
        else:
            count = f"{len(changes)} field{'s' if len(changes) != 1 else ''}"
            head = f"{where}: {count} would change" + ("" if change.live_plan else " (the live model has no plan yet)")
            rows = [["FIELD", "LIVE", "", "MANIFEST"], *([k, old, "->", new] for k, old, new in changes)]
            lines = [head, *table(rows)]
    lines += [f"  {note}" for note in change.notes]
    lines += wrapped("Planned: ", f"{change.verdict}: {change.message}")
    return "\n".join(lines) + "\n"
