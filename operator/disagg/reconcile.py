"""Level-based reconcile of one DisaggregatedModel: observe -> plan -> place -> render -> apply -> status.

Every pass recomputes the whole desired state from the spec and what it observes, so missed
events, restarts and hand edits all converge the same way. Writes happen only where the
observed world differs from the desired one: an unchanged model costs reads only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from disagg.api.spec import DisaggregatedModelSpec, Mode, ModeSwitch, semantic_errors
from disagg.api.status import ConditionType, DisaggregatedModelStatus, ObservedWorkload, ReplanStatus, condition
from disagg.api.types import duration_seconds
from disagg.drift import apply_reason, stamp
from disagg.kube import ApiError, Cluster, NotFoundError, identity, owned_by
from disagg.placement import Claim, Placement, PodDemand, gpu_products, node_inventory, place, reserve
from disagg.planner.catalog import GPU_PRODUCT_LABEL
from disagg.planner.plan import (
    ENGINE_ROLES,
    ROLE_DECODE,
    ROLE_PREFILL,
    ROLE_ROUTER,
    Plan,
    engine_role_plans,
    engine_roles,
)
from disagg.planner.replan import apply_floors, replan
from disagg.planner.resolve import resolve_plan
from disagg.render import ModelRef, model_labels, render
from disagg.render.autoscaling import KEDA_PAUSED_REPLICAS, backend_for
from disagg.render.names import child_name
from disagg.scaling import (
    Action,
    Decision,
    Queries,
    Signals,
    WorkloadQueries,
    decide,
    held_asleep,
    queries,
    workload_queries,
)
from disagg.settings import OperatorSettings
from disagg.status import READY_AT_ZERO_REASON, RoleObservation, failed_status, healthy_status

log = logging.getLogger(__name__)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Outcome:
    """What one pass did (for logs, tests and benchmarks)."""

    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    scaled: list[str] = field(default_factory=list)
    status_written: bool = False
    zero: ZeroState | None = None
    ready: bool = False
    error: str | None = None
    status: DisaggregatedModelStatus | None = None
    """The status this pass computed (written or not): what the operator's metrics report."""
    placement: str | None = None
    """``placed`` (computed this pass), ``reused`` (the memo) or None (the model is not packed)."""
    placement_failed: bool = False
    """A required topology domain could not be found for every pod."""
    slo_seconds: tuple[float, float] | None = None
    """The spec's (TTFT, ITL) targets, for the metrics' SLO lines."""

    @property
    def writes(self) -> int:
        return len(self.applied) + len(self.deleted) + len(self.scaled) + int(self.status_written)


def with_removals(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` as a JSON merge patch over ``old``: keys ``new`` no longer has are set to null.

    A merge patch keeps every key it does not name, so without this a field that stopped being
    true (the decode plan after a switch to aggregated) would stay in the status for ever.
    """
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(before, Mapping) and isinstance(value, Mapping):
            patch[key] = with_removals(before, value)
        else:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def format_validation_error(exc: ValidationError) -> str:
    """One readable line per problem: ``spec.prefill.replicas.min: Input should be ...``."""
    parts = []
    for err in exc.errors():
        location = ".".join(str(p) for p in err["loc"])
        parts.append(f"spec.{location}: {err['msg']}" if location else err["msg"])
    return "; ".join(parts)


def parse_spec(raw: Mapping[str, Any] | None) -> DisaggregatedModelSpec:
    """The typed spec, or ValueError with a readable message."""
    try:
        spec = DisaggregatedModelSpec.model_validate(raw or {})
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc)) from exc
    errors = semantic_errors(spec)
    if errors:
        raise ValueError("; ".join(errors))
    return spec


def _previous_status(body: Mapping[str, Any]) -> DisaggregatedModelStatus:
    try:
        return DisaggregatedModelStatus.model_validate(body.get("status") or {})
    except ValidationError:
        log.warning("ignoring unreadable status of %s", (body.get("metadata") or {}).get("name"))
        return DisaggregatedModelStatus()


def node_products(
    spec: DisaggregatedModelSpec, cluster: Cluster, claims: PlacementClaims | None = None
) -> dict[str, int] | None:
    """GPU products of the nodes the model's engine roles may use (from the node cache, never a LIST),
    when the spec leaves the GPU type to them; None when it names one."""
    if spec.accelerator.type is not None:
        return None
    roles = [spec.prefill] if spec.mode == Mode.AGGREGATED else [spec.prefill, spec.decode]
    demands = [
        PodDemand(
            gpus=0,
            node_selector=dict(role.scheduling.node_selector),
            tolerations=tuple(t.wire() for t in role.scheduling.tolerations),
        )
        for role in roles
    ]
    resource = spec.accelerator.resource_name

    def count() -> dict[str, int]:
        return gpu_products(cluster.list_nodes(), demands, resource=resource, label=GPU_PRODUCT_LABEL)

    if claims is None:
        return count()
    return claims.node_products(repr((demands, resource)), cluster.inventory_version(), count)


def pod_demands(spec: DisaggregatedModelSpec, plan: Plan) -> list[PodDemand]:
    """The engine pods at the planned floor (what a domain must hold), each with its role's
    nodeSelector and tolerations, so placement only counts nodes the scheduler would use."""
    pods: list[PodDemand] = []
    for _, role_plan, role in engine_roles(spec, plan):
        demand = PodDemand(
            gpus=role_plan.gpus_per_pod,
            node_selector=dict(role.scheduling.node_selector),
            tolerations=tuple(t.wire() for t in role.scheduling.tolerations),
        )
        pods += [demand] * role_plan.replicas
    return pods


class PlacementClaims:
    """Where each packed model was last placed, shared by the operator's workers.

    Placing and recording happen under one lock, so models reconciled at the same moment (or
    before the first one's pods are bound) see each other's GPUs as taken.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: dict[tuple[str, str], list[Claim]] = {}
        self.memo: dict[tuple[str, str], tuple[str, Placement | None]] = {}
        """Per model: the inputs of its last placement and the result. While the cluster's
        inventory version and every input are unchanged, a pass reuses the result: a quiet
        resync then costs the same at 14 nodes and at 5,000."""
        self._products: dict[str, tuple[int, dict[str, int]]] = {}

    def node_products(self, key: str, version: int | None, count: Callable[[], dict[str, int]]) -> dict[str, int]:
        """GPU products of the nodes one selector admits (``count``), counted again only when the
        cluster's inventory version moved: models without accelerator.type read them every pass."""
        with self._lock:
            memo = self._products.get(key)
        if version is not None and memo is not None and memo[0] == version:
            return dict(memo[1])
        products = count()
        if version is not None:
            with self._lock:
                self._products[key] = (version, dict(products))
        return products

    @contextlib.contextmanager
    def placing(self, key: tuple[str, str]) -> Iterator[tuple[list[Claim], Callable[[list[Claim]], None]]]:
        """Other models' claims, and a function that records this model's; held for the whole pass."""
        with self._lock:
            others = [c for k, claims in self._claims.items() if k != key for c in claims]

            def record(claims: list[Claim]) -> None:
                self._claims[key] = claims

            yield others, record

    def release(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._claims.pop(key, None)
            self.memo.pop(key, None)


def _placement(
    spec: DisaggregatedModelSpec,
    plan: Plan,
    previous: DisaggregatedModelStatus,
    cluster: Cluster,
    settings: OperatorSettings,
    model: ModelRef,
    claims: PlacementClaims | None,
    at_zero: bool = False,
    outcome: Outcome | None = None,
) -> Placement | None:
    if spec.topology.required_level() is None and spec.topology.preferred_level() is None:
        if claims is not None:
            claims.release((model.namespace, model.name))
        return None
    demands = pod_demands(spec, plan)
    resource = spec.accelerator.resource_name
    ledger = claims or PlacementClaims()
    key = (model.namespace, model.name)
    earlier = {p.level: p.domain for p in previous.placement}
    with ledger.placing(key) as (others, record):
        version = cluster.inventory_version()
        inputs = repr((version, spec.topology, demands, earlier, resource, others, at_zero))
        memo = ledger.memo.get(key)
        reused = version is not None and memo is not None and memo[0] == inputs
        if outcome is not None:
            outcome.placement = "reused" if reused else "placed"
        if reused and memo is not None:
            placement = memo[1]
        else:
            labels = model_labels(model, settings)
            used = cluster.gpu_usage(resource, exclude_namespace=model.namespace, exclude_labels=labels)
            inventory = node_inventory(cluster.list_nodes(), used, resource=resource)
            claimants = [pod for claim in others for pod in cluster.bound_pods(claim.namespace, claim.model_labels)]
            placement = place(
                spec.topology,
                pods=demands,
                inventory=reserve(inventory, others, claimants, resource=resource),
                settings=settings,
                previous=earlier,
            )
            ledger.memo[key] = (inputs, placement)
        decisions = placement.decisions if placement is not None and not at_zero else []  # asleep: no GPUs held
        record(
            [
                Claim(model.namespace, model_labels(model, settings), d.node_label, d.domain, tuple(demands))
                for d in decisions
                if d.domain is not None and d.fits
            ]
        )
    return placement


def _role_observations(
    model: ModelRef,
    plan: Plan,
    deployments: Mapping[str, Mapping[str, Any]],
    *,
    engines_at_zero: bool = False,
    held_asleep: frozenset[str] = frozenset(),
    template_generations: Mapping[str, int | None] | None = None,
) -> list[RoleObservation]:
    roles: list[tuple[str, int, int | None]] = [
        (name, role_plan.replicas, role_plan.gpus_per_pod) for name, role_plan in engine_role_plans(plan)
    ]
    roles.append((ROLE_ROUTER, plan.router.replicas, None))
    return [
        RoleObservation(
            name=role,
            deployment=deployments.get(child_name(model.name, role)),
            planned=0 if (engines_at_zero and role != ROLE_ROUTER) or role in held_asleep else planned,
            tensor_parallel=tp,
            template_generation=(template_generations or {}).get(role),
        )
        for role, planned, tp in roles
    ]


class MetricsSource(Protocol):
    def signals(self, queries: Queries, *, at_zero: bool) -> Signals: ...

    def workload(self, queries: WorkloadQueries) -> ObservedWorkload: ...


MetricsLookup = Callable[[str], MetricsSource]


@dataclass(frozen=True)
class ZeroState:
    """Scale-to-zero state for this pass (``enabled`` False: the feature is off for the model)."""

    enabled: bool
    at_zero: bool = False
    decision: Decision | None = None
    queries: Queries | None = None
    url: str | None = None


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def observed_floors(model: ModelRef, live: Mapping[tuple[str, str, str, str], Mapping[str, Any]]) -> dict[str, int]:
    """The engine autoscalers' floors as they run (HPA ``minReplicas``, KEDA ``minReplicaCount``)."""
    floors: dict[str, int] = {}
    for (_, kind, _, name), obj in live.items():
        field_name = {"HorizontalPodAutoscaler": "minReplicas", "ScaledObject": "minReplicaCount"}.get(kind)
        if field_name is None:
            continue
        for role in (ROLE_PREFILL, ROLE_DECODE):
            value = (obj.get("spec") or {}).get(field_name)
            if name == child_name(model.name, role) and isinstance(value, int):
                floors[role] = value
    return floors


def observed_at_zero(
    model: ModelRef, plan: Plan, live: Mapping[tuple[str, str, str, str], Mapping[str, Any]]
) -> bool | None:
    """Whether the children show the model asleep: every engine role's scaler paused at 0 (KEDA)
    or every engine Deployment at 0 replicas. None when they cannot tell (no engine Deployment yet)."""
    names = {child_name(model.name, role) for role, _ in engine_role_plans(plan)}
    deployments = {key[3]: obj for key, obj in live.items() if key[1] == "Deployment" and key[3] in names}
    if set(deployments) != names:
        return None
    scalers = {key[3]: obj for key, obj in live.items() if key[1] == "ScaledObject" and key[3] in names}
    if scalers:
        return all(
            ((obj.get("metadata") or {}).get("annotations") or {}).get(KEDA_PAUSED_REPLICAS) == "0"
            for obj in scalers.values()
        )
    return all((obj.get("spec") or {}).get("replicas") == 0 for obj in deployments.values())


def _zero_state(
    spec: DisaggregatedModelSpec,
    previous: DisaggregatedModelStatus,
    meta: Mapping[str, Any],
    settings: OperatorSettings,
    metrics: MetricsLookup | None,
    now: str,
    observed: bool | None = None,
) -> ZeroState:
    """Asleep or awake, and what to do next. Where the model is comes from its children when they
    say (``observed``: every engine Deployment at 0, or its KEDA scaler paused at 0), so a lost
    status does not make the operator forget; the ScaledToZero condition is the fallback. The idle
    clock starts at the later of the last flip of ScaledToZero (or creation) and of Ready to True."""
    if not spec.scale_to_zero.enabled:
        return ZeroState(enabled=False)
    marker = condition(previous.conditions, ConditionType.SCALED_TO_ZERO.value)
    at_zero = observed if observed is not None else (marker is not None and marker.status == "True")
    url = settings.prometheus_for(spec.autoscaling.prometheus.url)
    model_queries = queries(spec, namespace=meta["namespace"], name=meta["name"])
    if url is None or metrics is None:
        why = "no Prometheus URL (spec.autoscaling.prometheus.url or the operator's prometheusUrl)"
        decision = Decision(Action.STAY, False, "NoPrometheus", f"scale-to-zero needs metrics: {why}")
        return ZeroState(enabled=True, at_zero=at_zero, decision=decision, queries=model_queries, url=url)
    since = _parse_time(marker.last_transition_time if marker is not None else meta.get("creationTimestamp"))
    ready = condition(previous.conditions, ConditionType.READY.value)
    # Ready with reason ScaledToZero is the sleeping model's: after a wake it means nothing is up yet
    ready_now = ready is not None and ready.status == "True" and ready.reason != READY_AT_ZERO_REASON
    became_ready = _parse_time(ready.last_transition_time) if ready is not None and ready_now else None
    if became_ready is not None:
        since = became_ready if since is None else max(since, became_ready)
    current = _parse_time(now)
    # Kubernetes timestamps carry whole seconds: the model may have woken up to 1 s after `since`,
    # so count from the latest moment it could have been and never sleep before the window is over.
    awake_for = (current - since - 1.0) if (since is not None and current is not None) else 0.0
    signals = metrics(url).signals(model_queries, at_zero=at_zero)
    decision = decide(spec, at_zero=at_zero, signals=signals, awake_for_seconds=awake_for, ready=ready_now)
    if decision.action == Action.SLEEP:
        at_zero = True
    elif decision.action == Action.WAKE:
        at_zero = False
    return ZeroState(enabled=True, at_zero=at_zero, decision=decision, queries=model_queries, url=url)


def _replanned(
    spec: DisaggregatedModelSpec,
    plan: Plan,
    previous: DisaggregatedModelStatus,
    meta: Mapping[str, Any],
    settings: OperatorSettings,
    metrics: MetricsLookup | None,
    now: str,
    live_floors: Mapping[str, int] | None = None,
    node_gpus: Mapping[str, int] | None = None,
) -> tuple[Plan, ReplanStatus | None]:
    """The plan with live re-planning applied: a new decision once per interval, else the last one.

    The floors of the last decision are in ``status.replan``; when that is gone (a restored or
    hand-cleared status) they are read back from the autoscalers' ``minReplicas``
    (``live_floors``), so floors still come down one replica per interval.
    """
    if not spec.planner.replan.enabled or plan.source != "planner":
        return plan, None
    last = previous.replan
    if last is None and live_floors:
        last = ReplanStatus(
            time="",
            observed=ObservedWorkload(),
            prefill_floor=live_floors.get(ROLE_PREFILL),
            decode_floor=live_floors.get(ROLE_DECODE),
            decision="floors read back from the autoscalers",
        )
    due = last is None
    if last is not None:
        then, current = _parse_time(last.time), _parse_time(now)
        due = then is None or current is None or current - then >= duration_seconds(spec.planner.replan.interval)
    url = settings.prometheus_for(spec.autoscaling.prometheus.url)
    if not due or url is None or metrics is None:
        return apply_floors(plan, last, spec), last
    # the traffic since the last decision: rates and means over one interval
    window = spec.planner.replan.interval
    observed = metrics(url).workload(
        workload_queries(spec, namespace=meta["namespace"], name=meta["name"], window=window)
    )

    def planner(candidate: DisaggregatedModelSpec) -> Plan | None:
        return resolve_plan(candidate, node_gpus).plan

    running = apply_floors(plan, last, spec)
    return replan(spec, running, observed, last, planner, now)


API_NEEDED_BY = {
    "keda.sh/v1alpha1": "autoscaling.engine: keda needs it (KEDA's ScaledObject); install KEDA or set"
    " autoscaling.engine: hpa",
    "inference.networking.k8s.io/v1": "the operator setting inferencePool: true needs it (the Gateway API Inference"
    " Extension's InferencePool); install its CRDs or turn the setting off",
    "gateway.networking.k8s.io/v1": "router.gateway needs it (Gateway API's HTTPRoute); install the Gateway API"
    " CRDs or remove router.gateway",
}


def missing_apis(cluster: Cluster, desired: Sequence[Mapping[str, Any]]) -> list[str]:
    """One message per API the desired children need but the cluster does not serve."""
    versions = sorted({str(obj["apiVersion"]) for obj in desired})
    return [
        f"{version} is not served by this cluster: {API_NEEDED_BY.get(version, 'a rendered child needs it')}"
        for version in versions
        if not cluster.served(version)
    ]


def _template_generations(
    model: ModelRef, previous: DisaggregatedModelStatus, applied: Mapping[str, int]
) -> dict[str, int | None]:
    """Per role: the Deployment generation of the operator's last template write (this pass's
    apply, else what the status recorded); None when unknown."""
    known: dict[str, int | None] = {r.name: r.template_generation for r in previous.roles}
    for role in (*sorted(ENGINE_ROLES), ROLE_ROUTER):
        name = child_name(model.name, role)
        if name in applied:
            known[role] = applied[name]
    return known


def _kept_for_mode_switch(
    spec: DisaggregatedModelSpec,
    plan: Plan,
    stale: Sequence[Mapping[str, Any]],
    roles: Sequence[RoleObservation],
    settings: OperatorSettings,
    at_zero: bool,
) -> list[Mapping[str, Any]]:
    """Children of engine roles the new mode no longer has, kept while the new roles are short.

    Make before break: the old roles keep serving (the router's config routes to both kinds of
    pod) until every new role holds its planned floor; then they go in one pass.
    """
    if spec.mode_switch != ModeSwitch.MAKE_BEFORE_BREAK or at_zero:
        return []
    role_key = f"{settings.prefix}/role"
    gone_roles = ENGINE_ROLES - {name for name, _ in engine_role_plans(plan)}
    # only the children of roles the new mode has no more; a stale HPA of a role that stays goes at once
    old = [o for o in stale if ((o.get("metadata") or {}).get("labels") or {}).get(role_key) in gone_roles]
    if not old or all(role.floor_available() for role in roles if role.name in ENGINE_ROLES):
        return []
    return old


def pause_acknowledged(
    model: ModelRef, plan: Plan, live: Mapping[tuple[str, str, str, str], Mapping[str, Any]]
) -> frozenset[str]:
    """The engine roles whose live KEDA ScaledObject is paused at 0 and says so (``Paused``)."""
    roles = set()
    for role, _ in engine_role_plans(plan):
        for (_, kind, _, name), obj in live.items():
            if kind != "ScaledObject" or name != child_name(model.name, role):
                continue
            annotations = (obj.get("metadata") or {}).get("annotations") or {}
            conditions = (obj.get("status") or {}).get("conditions") or []
            paused = any(c.get("type") == "Paused" and c.get("status") == "True" for c in conditions)
            if annotations.get(KEDA_PAUSED_REPLICAS) == "0" and paused:
                roles.add(role)
    return frozenset(roles)


def _held_asleep(
    model: ModelRef, plan: Plan, live: Mapping[tuple[str, str, str, str], Mapping[str, Any]], zero: ZeroState
) -> frozenset[str]:
    """While waking, the roles that stay at zero this pass (see ``scaling.held_asleep``)."""
    if not zero.enabled or zero.at_zero:
        return frozenset()
    names = {name for name, _ in engine_role_plans(plan)}
    if not {ROLE_PREFILL, ROLE_DECODE} <= names:
        return frozenset()
    deployments = {key[3]: obj for key, obj in live.items() if key[1] == "Deployment"}
    prefill = deployments.get(child_name(model.name, ROLE_PREFILL))
    decode = deployments.get(child_name(model.name, ROLE_DECODE))
    if prefill is None or decode is None:
        return frozenset()
    return held_asleep(
        waking=True,
        prefill_replicas=int((prefill.get("spec") or {}).get("replicas") or 0),
        decode_available=int((decode.get("status") or {}).get("availableReplicas") or 0),
    )


def _sync_scale(cluster: Cluster, deployment: Mapping[str, Any] | None, replicas: int, wake: bool) -> bool:
    """Move an autoscaled Deployment through its /scale subresource, as an autoscaler does.

    Going to zero sets 0 (the HPA then reports ScalingDisabled and leaves it alone); waking sets the
    floor when the Deployment sits below it, after which the HPA owns the count again. The applied
    configuration never contains ``replicas``, so no field changes hands in server-side apply.
    """
    if deployment is None:
        return False
    current = int((deployment.get("spec") or {}).get("replicas") or 0)
    if (not wake and current != 0) or (wake and current < replicas):
        cluster.scale(deployment, replicas)
        return True
    return False


def reconcile(
    body: Mapping[str, Any],
    cluster: Cluster,
    settings: OperatorSettings,
    now: Callable[[], str] = utc_now,
    metrics: MetricsLookup | None = None,
    claims: PlacementClaims | None = None,
) -> Outcome:
    """One level-based pass over a DisaggregatedModel body as read from the API server.

    ``claims``: the operator's shared placement ledger (one per process), so packed models placed
    close together never pick the same GPUs.
    """
    meta = body["metadata"]
    model = ModelRef(name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid"))
    generation = int(meta.get("generation") or 1)
    previous = _previous_status(body)
    outcome = Outcome()

    def write_status(status: DisaggregatedModelStatus) -> None:
        outcome.status = status
        wire = status.wire()
        if wire != previous.wire():
            patch = with_removals(body.get("status") or {}, wire)
            cluster.patch_model_status(model.namespace, model.name, patch, meta.get("resourceVersion"))
            outcome.status_written = True
            _events(cluster, body, previous, status)

    try:
        spec = parse_spec(body.get("spec"))
    except ValueError as exc:
        outcome.error = str(exc)
        write_status(failed_status(previous, generation=generation, reason="InvalidSpec", message=str(exc), now=now()))
        return outcome

    outcome.slo_seconds = (duration_seconds(spec.slo.ttft), duration_seconds(spec.slo.itl))
    products = node_products(spec, cluster, claims)
    resolution = resolve_plan(spec, products)
    if resolution.plan is None:
        outcome.error = resolution.message
        write_status(
            failed_status(
                previous,
                generation=generation,
                reason=resolution.reason,
                message=resolution.message,
                now=now(),
                planned=resolution,
            )
        )
        return outcome
    live = {
        identity(obj): obj
        for obj in cluster.list_children(model.namespace, model_labels(model, settings))
        if model.uid is None or owned_by(obj, model.uid)
    }
    plan, replan_record = _replanned(
        spec,
        resolution.plan,
        previous,
        meta,
        settings,
        metrics,
        now(),
        live_floors=observed_floors(model, live),
        node_gpus=products,
    )
    zero = _zero_state(
        spec, previous, meta, settings, metrics, now(), observed=observed_at_zero(model, resolution.plan, live)
    )
    outcome.zero = zero
    if zero.decision is not None and zero.decision.action in (Action.SLEEP, Action.WAKE):
        log.info("%s/%s: %s", model.namespace, model.name, zero.decision.message)
    placement = _placement(
        spec, plan, previous, cluster, settings, model, claims, at_zero=zero.at_zero, outcome=outcome
    )
    decisions = placement.decisions if placement is not None else []
    outcome.placement_failed = any(d.required and not d.fits for d in decisions)
    held = _held_asleep(model, plan, live, zero)
    rendered = render(
        model,
        spec,
        plan,
        settings,
        placement,
        engines_at_zero=zero.at_zero,
        held_asleep=held,
        pause_acknowledged=pause_acknowledged(model, plan, live),
    )
    desired = [stamp(obj, settings.prefix) for obj in rendered]
    missing = missing_apis(cluster, desired)
    if missing:
        # before any write: a half-applied model is worse than an unchanged one
        message = "; ".join(missing)
        outcome.error = message
        write_status(failed_status(previous, generation=generation, reason="MissingAPI", message=message, now=now()))
        return outcome
    current: dict[tuple[str, str, str, str], Mapping[str, Any]] = {}
    applied_generation: dict[str, int] = {}
    try:
        for obj in desired:
            key = identity(obj)
            reason = apply_reason(obj, live.get(key), settings.prefix)
            if reason is not None:
                log.debug(
                    "%s/%s: applying %s/%s: %s",
                    model.namespace,
                    model.name,
                    obj["kind"],
                    obj["metadata"]["name"],
                    reason,
                )
                current[key] = cluster.apply(obj)
                outcome.applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
                if obj["kind"] == "Deployment":
                    applied_generation[key[3]] = int((current[key].get("metadata") or {}).get("generation") or 0)
            else:
                current[key] = live[key]
    except (ApiError, NotFoundError) as exc:
        what = f"{obj['kind']} {obj['metadata']['name']}"
        outcome.error = f"{what}: {exc}"
        write_status(
            failed_status(previous, generation=generation, reason="ApplyFailed", message=outcome.error, now=now())
        )
        raise

    deployments = {key[3]: obj for key, obj in current.items() if key[1] == "Deployment"}
    if zero.enabled and backend_for(spec).sleeps_through_scale:
        for role, role_plan in engine_role_plans(plan):
            name = child_name(model.name, role)
            asleep = zero.at_zero or role in held
            target = 0 if asleep else role_plan.replicas
            if role_plan.autoscaled and _sync_scale(cluster, deployments.get(name), target, wake=not asleep):
                outcome.scaled.append(f"Deployment/{name}")
                scaled = dict(deployments[name])
                scaled["spec"] = {**scaled.get("spec", {}), "replicas": target}
                deployments[name] = scaled
    generations = _template_generations(model, previous, applied_generation)
    roles = _role_observations(
        model, plan, deployments, engines_at_zero=zero.at_zero, held_asleep=held, template_generations=generations
    )
    wanted = {identity(obj) for obj in desired}
    stale = [obj for key, obj in live.items() if key not in wanted]
    kept = _kept_for_mode_switch(spec, plan, stale, roles, settings, zero.at_zero)
    for obj in stale:
        if obj in kept:
            continue
        cluster.delete(obj)
        outcome.deleted.append(f"{obj['kind']}/{obj['metadata']['name']}")
    if any(not role.floor_available() for role in roles):
        # only a role short of its floor needs its pods read: they say why (quota, scheduling, images)
        role_key = f"{settings.prefix}/role"
        pods = cluster.list_model_pods(model.namespace, model_labels(model, settings))
        by_role: dict[str, list[Mapping[str, Any]]] = {}
        for pod in pods:
            by_role.setdefault(str(((pod.get("metadata") or {}).get("labels") or {}).get(role_key)), []).append(pod)
        roles = [dataclasses.replace(role, pods=by_role.get(role.name, [])) for role in roles]
    status = healthy_status(
        previous,
        generation=generation,
        plan=plan,
        planned=resolution,
        roles=roles,
        placements=decisions,
        now=now(),
        zero=(zero.at_zero, zero.decision) if zero.enabled else None,
        switching_from=sorted(
            {str(o["metadata"]["labels"][f"{settings.prefix}/role"]) for o in kept if o.get("kind") == "Deployment"}
        ),
    )
    status = status.model_copy(update={"replan": replan_record})
    ready = condition(status.conditions, ConditionType.READY.value)
    outcome.ready = ready is not None and ready.status == "True"
    write_status(status)
    if outcome.status_written:  # once: the status now carries the new domain
        _event_moves(cluster, body, previous, decisions)
    if outcome.applied or outcome.deleted:
        log.info("%s/%s: applied %s deleted %s", model.namespace, model.name, outcome.applied, outcome.deleted)
    return outcome


def _event_moves(
    cluster: Cluster, body: Mapping[str, Any], previous: DisaggregatedModelStatus, decisions: Sequence[Any]
) -> None:
    """An Event when a model leaves the domain it was placed in (its pods will be re-created)."""
    before = {p.level: p.domain for p in previous.placement}
    for decision in decisions:
        old = before.get(decision.level)
        if old and decision.domain and old != decision.domain:
            cluster.event(
                body,
                reason="Moved",
                message=f"{decision.level} {old} -> {decision.domain}: {decision.message}",
                warning=True,
            )


def _events(
    cluster: Cluster, body: Mapping[str, Any], before: DisaggregatedModelStatus, after: DisaggregatedModelStatus
) -> None:
    """An Event for every condition that flipped (never for a no-op)."""
    for cond in after.conditions:
        old = condition(before.conditions, cond.type)
        if old is not None and old.status == cond.status:
            continue
        if old is None and cond.status != "True" and cond.type != ConditionType.READY.value:
            continue
        warning = (cond.type == ConditionType.DEGRADED.value and cond.status == "True") or (
            cond.type == ConditionType.TOPOLOGY_SATISFIED.value and cond.status == "False"
        )
        cluster.event(body, reason=f"{cond.type}{cond.status}", message=cond.message or cond.reason, warning=warning)
