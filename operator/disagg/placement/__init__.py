"""Topology placement (pure): pick the domain that can hold a model's GPUs, render affinity to it.

The stock kube-scheduler does the binding; we only choose *which* rack (block, zone) a model
should live in and express it as node affinity, plus a pod-affinity preference so replicas
added later by an autoscaler follow their siblings. A domain fits when the model's pods can be
bin-packed (first-fit decreasing) onto its nodes' free GPUs, not merely when the sum is enough:
an 8-GPU pod needs 8 free GPUs on one node, on a node it may use (Ready, not cordoned, matching
its role's nodeSelector, every NoSchedule/NoExecute taint tolerated), as the scheduler would judge.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from disagg.api.spec import TopologySpec
from disagg.api.types import parse_quantity
from disagg.settings import OperatorSettings


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str]
    allocatable_gpus: int
    requested_gpus: int
    """GPUs requested by pods on the node that do not belong to the model being placed."""
    schedulable: bool = True
    taints: tuple[Taint, ...] = ()
    """NoSchedule and NoExecute taints (PreferNoSchedule never keeps a pod off a node)."""

    @property
    def free_gpus(self) -> int:
        return max(self.allocatable_gpus - self.requested_gpus, 0) if self.schedulable else 0


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Taint) -> bool:
    """Kubernetes' matching: an empty key with Exists tolerates everything; an empty effect any effect."""
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint.effect:
            continue
        key = toleration.get("key") or ""
        if toleration.get("operator") == "Exists":
            if not key or key == taint.key:
                return True
        elif key == taint.key and (toleration.get("value") or "") == taint.value:
            return True
    return False


@dataclass(frozen=True)
class PodDemand:
    """One engine pod a domain must hold: its GPUs and the role's limits on where it may run."""

    gpus: int
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()

    def can_use(self, node: NodeInfo) -> bool:
        return all(node.labels.get(k) == v for k, v in self.node_selector.items()) and all(
            tolerates(self.tolerations, t) for t in node.taints
        )


@dataclass(frozen=True)
class DomainReport:
    domain: str
    free_gpus: int
    fits: bool


@dataclass(frozen=True)
class PlacementDecision:
    level: str
    node_label: str
    required: bool
    gpus_needed: int
    domain: str | None
    fits: bool
    gpus_free: int
    message: str
    domains: tuple[DomainReport, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Placement:
    """What the renderer needs: the domain decisions and which label siblings should follow."""

    required: PlacementDecision | None = None
    preferred: PlacementDecision | None = None
    follow_label: str | None = None

    @property
    def decisions(self) -> list[PlacementDecision]:
        return [d for d in (self.required, self.preferred) if d is not None]


def place(
    topology: TopologySpec,
    *,
    pods: Sequence[PodDemand],
    inventory: Sequence[NodeInfo] | None,
    settings: OperatorSettings,
    previous: Mapping[str, str | None],
) -> Placement | None:
    """Decisions for the spec's pack levels; ``inventory=None`` (offline) leaves the domain open."""
    required_level = topology.required_level()
    preferred_level = topology.preferred_level()
    if required_level is None and preferred_level is None:
        return None

    def decide(level: str, required: bool) -> PlacementDecision:
        label = settings.level_label(level)
        if inventory is None:
            return PlacementDecision(
                level=level,
                node_label=label,
                required=required,
                gpus_needed=sum(p.gpus for p in pods),
                domain=None,
                fits=False,
                gpus_free=0,
                message=f"{level} chosen by the operator from live node capacity",
            )
        return choose_domain(
            inventory, level=level, node_label=label, pods=pods, required=required, previous=previous.get(level)
        )

    required = decide(required_level.value, True) if required_level is not None else None
    preferred = None
    follow = required.node_label if required is not None else None
    if preferred_level is not None:
        if preferred_level.value == "host":
            follow = settings.level_label("host")  # a model rarely fits one host: prefer siblings' hosts
        else:
            preferred = decide(preferred_level.value, False)
            follow = follow or preferred.node_label
    return Placement(required=required, preferred=preferred, follow_label=follow)


def _pods_fit(pods: Sequence[PodDemand], nodes: Sequence[NodeInfo]) -> bool:
    """First-fit decreasing: largest pods first, each onto the first usable node with room."""
    order = sorted(nodes, key=lambda n: (-n.free_gpus, n.name))
    free = [n.free_gpus for n in order]
    for pod in sorted(pods, key=lambda p: -p.gpus):
        for index, node in enumerate(order):
            if free[index] >= pod.gpus and pod.can_use(node):
                free[index] -= pod.gpus
                break
        else:
            return False
    return True


def _usable_by_some(pods: Sequence[PodDemand], node: NodeInfo) -> bool:
    return not pods or any(p.can_use(node) for p in pods)


def choose_domain(
    nodes: Sequence[NodeInfo],
    *,
    level: str,
    node_label: str,
    pods: Sequence[PodDemand],
    required: bool,
    previous: str | None,
) -> PlacementDecision:
    """Best fit: the domain with the fewest free GPUs that still holds every pod; stable if possible."""
    by_domain: dict[str, list[NodeInfo]] = defaultdict(list)
    for node in nodes:
        value = node.labels.get(node_label)
        if value:
            by_domain[value].append(node)
    need = sum(p.gpus for p in pods)
    reports = tuple(
        DomainReport(
            domain=name,
            free_gpus=sum(n.free_gpus for n in members if _usable_by_some(pods, n)),
            fits=_pods_fit(pods, members),
        )
        for name, members in sorted(by_domain.items())
    )
    summary = ", ".join(f"{r.domain} {r.free_gpus} free" for r in reports) or "none labelled"
    if not reports:
        return PlacementDecision(
            level=level,
            node_label=node_label,
            required=required,
            gpus_needed=need,
            domain=None,
            fits=False,
            gpus_free=0,
            message=f"no node carries the {level} label {node_label!r}",
            domains=reports,
        )
    fitting = [r for r in reports if r.fits]
    kept = next((r for r in fitting if r.domain == previous), None)
    if kept is not None:
        chosen, fits = kept, True
    elif fitting:
        chosen, fits = min(fitting, key=lambda r: (r.free_gpus, r.domain)), True
    else:
        chosen, fits = max(reports, key=lambda r: (r.free_gpus, r.domain)), False
        spill = "pods that do not fit stay Pending" if required else "pods spill over to other domains"
        why = f"no {level} has room for {need} GPUs ({summary}); using {chosen.domain}, {spill}"
        # only worth counting when nothing fits (the common, fitting path stays cheap)
        barred = sum(1 for n in nodes if n.free_gpus and n.labels.get(node_label) and not _usable_by_some(pods, n))
        if barred:
            why += f"; {barred} node(s) with free GPUs not counted: untolerated taints or nodeSelector"
    if fits:
        # Worded without live free counts so the status (and its writes) stay quiet while we stay put.
        why = f"{level} {chosen.domain} holds the {need} GPUs needed"
    return PlacementDecision(
        level=level,
        node_label=node_label,
        required=required,
        gpus_needed=need,
        domain=chosen.domain,
        fits=fits,
        gpus_free=chosen.free_gpus,
        message=why,
        domains=reports,
    )


def _gpu_request(pod: Mapping[str, Any], resource: str) -> int:
    spec = pod.get("spec") or {}
    regular = 0
    for container in spec.get("containers") or []:
        value = ((container.get("resources") or {}).get("requests") or {}).get(resource)
        if value is not None:
            regular += int(parse_quantity(value))
    init_peak = 0
    sidecars = 0
    for container in spec.get("initContainers") or []:
        value = ((container.get("resources") or {}).get("requests") or {}).get(resource)
        amount = int(parse_quantity(value)) if value is not None else 0
        if container.get("restartPolicy") == "Always":
            sidecars += amount
        else:
            init_peak = max(init_peak, sidecars + amount)
    return max(regular + sidecars, init_peak)


def pod_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """Every extended resource (``vendor/name``, e.g. ``nvidia.com/gpu``) the pod requests, counted
    as the scheduler does (init containers' peak, sidecars)."""
    spec = pod.get("spec") or {}
    names = {
        name
        for container in (*(spec.get("containers") or []), *(spec.get("initContainers") or []))
        for name in ((container.get("resources") or {}).get("requests") or {})
        if "/" in name
    }
    amounts = {name: _gpu_request(pod, name) for name in sorted(names)}
    return {name: amount for name, amount in amounts.items() if amount}


def holds_resources(pod: Mapping[str, Any]) -> bool:
    """Bound to a node and not finished: its requests count against the node."""
    phase = (pod.get("status") or {}).get("phase")
    return bool((pod.get("spec") or {}).get("nodeName")) and phase not in ("Succeeded", "Failed")


def is_own(pod: Mapping[str, Any], namespace: str, labels: Mapping[str, str]) -> bool:
    meta = pod.get("metadata") or {}
    have = meta.get("labels") or {}
    return meta.get("namespace") == namespace and all(have.get(k) == v for k, v in labels.items())


def gpu_usage(
    pods: Iterable[Mapping[str, Any]], *, resource: str, exclude_labels: Mapping[str, str], exclude_namespace: str
) -> dict[str, int]:
    """GPUs requested per node by bound pods, leaving out the placed model's own pods (so its
    domain stays stable). A watch-fed cache keeps the same sums incrementally."""
    used: dict[str, int] = defaultdict(int)
    for pod in pods:
        if holds_resources(pod) and not is_own(pod, exclude_namespace, exclude_labels):
            used[str((pod.get("spec") or {}).get("nodeName"))] += _gpu_request(pod, resource)
    return dict(used)


def node_inventory(nodes: Iterable[Mapping[str, Any]], used: Mapping[str, int], *, resource: str) -> list[NodeInfo]:
    """Free GPUs per node, given what other pods request on each (:func:`gpu_usage`)."""
    inventory = []
    for node in nodes:
        meta = node.get("metadata") or {}
        status = node.get("status") or {}
        allocatable = (status.get("allocatable") or {}).get(resource)
        if allocatable is None:
            continue
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        unschedulable = bool((node.get("spec") or {}).get("unschedulable"))
        taints = tuple(
            Taint(key=t.get("key") or "", value=t.get("value") or "", effect=t["effect"])
            for t in (node.get("spec") or {}).get("taints") or []
            if t.get("effect") in ("NoSchedule", "NoExecute")
        )
        inventory.append(
            NodeInfo(
                name=meta.get("name", ""),
                labels=meta.get("labels") or {},
                allocatable_gpus=int(parse_quantity(allocatable)),
                requested_gpus=used.get(meta.get("name", ""), 0),
                schedulable=ready and not unschedulable,
                taints=taints,
            )
        )
    return inventory


def gpu_products(
    nodes: Iterable[Mapping[str, Any]], pods: Sequence[PodDemand], *, resource: str, label: str
) -> dict[str, int]:
    """GPU product -> count of the nodes that offer ``resource`` and that some of ``pods`` may use (their
    node selectors match, their tolerations cover the taints), by the product ``label`` they carry
    (GPU Feature Discovery's ``nvidia.com/gpu.product``); nodes without the label are not counted.
    Readiness does not matter: a cordoned node still says which GPUs the model's nodes have."""
    counts: dict[str, int] = {}
    for node in node_inventory(nodes, {}, resource=resource):
        product = node.labels.get(label)
        if product and node.allocatable_gpus > 0 and _usable_by_some(pods, node):
            counts[product] = counts.get(product, 0) + 1
    return counts


def affinity(
    *,
    model_selector: Mapping[str, str],
    required: PlacementDecision | None,
    preferred: PlacementDecision | None,
    follow_label: str | None,
) -> dict[str, Any]:
    """Pod affinity block: node affinity to the chosen domain(s) plus a preference to follow siblings."""
    node_affinity: dict[str, Any] = {}
    if required is not None:
        # No domain known (offline render, or no node carries the label): still require the label,
        # so a "required" constraint never silently degrades into "anywhere".
        expression: dict[str, Any] = (
            {"key": required.node_label, "operator": "In", "values": [required.domain]}
            if required.domain is not None
            else {"key": required.node_label, "operator": "Exists"}
        )
        node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {
            "nodeSelectorTerms": [{"matchExpressions": [expression]}]
        }
    if preferred is not None and preferred.domain is not None:
        node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] = [
            {
                "weight": 100,
                "preference": {
                    "matchExpressions": [{"key": preferred.node_label, "operator": "In", "values": [preferred.domain]}]
                },
            }
        ]
    result: dict[str, Any] = {}
    if node_affinity:
        result["nodeAffinity"] = node_affinity
    if follow_label:
        result["podAffinity"] = {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 50,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": dict(model_selector)},
                        "topologyKey": follow_label,
                    },
                }
            ]
        }
    return result


@dataclass(frozen=True)
class Claim:
    """GPUs a model was placed on in a domain but whose pods may not be bound to nodes yet."""

    namespace: str
    model_labels: Mapping[str, str]
    node_label: str
    domain: str
    pods: tuple[PodDemand, ...]


def _bound_gpus(pods: Iterable[Mapping[str, Any]], claim: Claim, resource: str, nodes: set[str]) -> list[int]:
    """GPU requests of the claimant's pods already bound to a node of the claimed domain."""
    sizes = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("namespace") != claim.namespace or any(labels.get(k) != v for k, v in claim.model_labels.items()):
            continue
        if (pod.get("spec") or {}).get("nodeName") in nodes:
            sizes.append(_gpu_request(pod, resource))
    return sizes


def reserve(
    inventory: Sequence[NodeInfo], claims: Iterable[Claim], pods: Iterable[Mapping[str, Any]], *, resource: str
) -> list[NodeInfo]:
    """The inventory with other models' claims taken out where their pods are not bound yet.

    Two models placed moments apart would otherwise both see a rack as free (the first one's pods
    are not on nodes yet) and choose it, and one would have to move once its pods fail to schedule.
    A claim's pods that are already bound count through the node inventory; the rest are put
    first-fit onto the claimed domain's nodes, as the scheduler would.
    """
    pods = list(pods)
    nodes = list(inventory)
    for claim in claims:
        pending = sorted(claim.pods, key=lambda p: -p.gpus)
        in_domain = {n.name for n in nodes if n.labels.get(claim.node_label) == claim.domain}
        for size in _bound_gpus(pods, claim, resource, in_domain):
            match = next((p for p in pending if p.gpus == size), None)
            if match is not None:
                pending.remove(match)
        members = sorted(
            (i for i, n in enumerate(nodes) if n.labels.get(claim.node_label) == claim.domain),
            key=lambda i: (-nodes[i].free_gpus, nodes[i].name),
        )
        for pod in pending:
            for index in members:
                node = nodes[index]
                if node.free_gpus >= pod.gpus and pod.can_use(node):
                    nodes[index] = dataclasses.replace(node, requested_gpus=node.requested_gpus + pod.gpus)
                    break
    return nodes
