"""Delivery on a real API server: the Helm chart, the kubectl bundle and the Argo CD way of applying.

The operator under test runs as a local process (kwok pods run no containers) but with the
chart's ServiceAccount token, the chart's settings ConfigMap and the chart's environment and
arguments: what it can do is exactly what the chart's RBAC grants.

Models live in ``op-*`` namespaces, which the session ``operator`` fixture (admin credentials)
leaves alone, so every write to a model's children comes from the identity under test (checked
in the audit log).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness import MANAGED, ROOT, ClusterEnv, Kubectl, OperatorProcess, audit_events, wait_for

pytestmark = pytest.mark.e2e

CHART = ROOT / "charts" / "disagg-operator"
CHART_CRDS = CHART / "crds"
INSTALL = ROOT / "manifests" / "install.yaml"
SAMPLE = ROOT / "manifests" / "samples" / "llama-8b-aggregated.yaml"
CRD_NAME = "customresourcedefinition/disaggregatedmodels.disagg.dev"
ARGOCD = "argocd-controller"
CRD_UPGRADE_STEP = ("apply", "--server-side", "--force-conflicts", "-f", str(CHART_CRDS))
"""The documented CRD upgrade step (charts/README.md): Helm never upgrades crds/."""


# -- tools --------------------------------------------------------------------------------------


class Helm:
    """The real helm binary against the test cluster, with its caches in a temporary directory."""

    def __init__(self, cluster: ClusterEnv, home: Path) -> None:
        self.kubeconfig = cluster.kubeconfig
        bin_dir = (
            cluster.bin_dir
            or subprocess.run(
                ["bash", str(ROOT / "e2e" / "tools.sh"), "--print-bin-dir"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
        self.path = str(Path(bin_dir) / "helm")
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.path, "--kubeconfig", self.kubeconfig, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result


@pytest.fixture(scope="module")
def helm(cluster: ClusterEnv, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(cluster, tmp_path_factory.mktemp("helm-home"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sa_kubeconfig(kubectl: Kubectl, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig with a TokenRequest token of the ServiceAccount (what the pod would mount)."""
    token = kubectl.run("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(Path(kubectl.env.kubeconfig).read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": service_account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def can_i(kubectl: Kubectl, kubeconfig: Path, *args: str) -> bool:
    result = subprocess.run(
        [kubectl.env.kubectl_path, "--kubeconfig", str(kubeconfig), "auth", "can-i", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.strip() in {"yes", "no"}, result.stderr
    return result.stdout.strip() == "yes"


class ChartOperator(OperatorProcess):
    """``disagg <args>`` exactly as the chart's Deployment runs it, but as a local process."""

    def __init__(self, env: ClusterEnv, log_path: Path, args: list[str], extra_env: dict[str, str]) -> None:
        super().__init__(env, log_path, extra_env)
        self.args = args

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "disagg.cli", *self.args],
            env={**os.environ, "DISAGG_RESYNC_SECONDS": "3", **self.extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()


@contextlib.contextmanager
def operator_as_the_chart_runs_it(
    kubectl: Kubectl, namespace: str, deployment: str, workdir: Path
) -> Iterator[tuple[ChartOperator, str]]:
    """Run the installed Deployment's container locally: its args, env, settings and SA token.

    Yields the process and the ServiceAccount's username (as the audit log records it).
    """
    body = kubectl.get("deployment", deployment, namespace)
    assert body is not None
    pod = body["spec"]["template"]["spec"]
    container = pod["containers"][0]
    service_account = pod["serviceAccountName"]
    settings_map = pod["volumes"][0]["configMap"]["name"]
    configmap = kubectl.get("configmap", settings_map, namespace)
    assert configmap is not None
    settings = workdir / "settings.yaml"
    settings.write_text(configmap["data"]["settings.yaml"])
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    downward = {"metadata.namespace": namespace}  # the downward API, as the kubelet resolves it (POD_NAMESPACE)
    for e in container.get("env", []):
        field = ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if field:
            assert field in downward, f"{e['name']}: the local run cannot resolve {field}"
            env[e["name"]] = downward[field]
    env.update(
        DISAGG_SETTINGS_FILE=str(settings),
        HOME=str(workdir),
        KUBECONFIG=str(sa_kubeconfig(kubectl, namespace, service_account, workdir / "sa.kubeconfig")),
    )
    port = free_port()
    args = [a.replace("http://0.0.0.0:8080/", f"http://127.0.0.1:{port}/") for a in container["args"]]
    assert f"http://127.0.0.1:{port}/healthz" in args, container["args"]
    proc = ChartOperator(kubectl.env, workdir / "operator.log", args, env)
    proc.start()
    try:
        wait_for("the operator to start", lambda: "disagg operator started" in proc.log_tail(200) or None, timeout=60)
        wait_for("its liveness endpoint", lambda: healthz(port), timeout=30)
        yield proc, f"system:serviceaccount:{namespace}:{service_account}"
    finally:
        proc.stop()
        if os.environ.get("DISAGG_E2E_SHOW_LOG"):
            print(proc.log_tail(400))


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def requests_by(audit_log: str | None, username: str, since: float) -> list[dict[str, Any]]:
    found = []
    for event in audit_events(audit_log):
        if event.get("stage") != "ResponseComplete" or (event.get("user") or {}).get("username") != username:
            continue
        stamp = event.get("requestReceivedTimestamp", "")
        when = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        if when >= since - 1:
            found.append(event)
    return found


def wait_ready(kubectl: Kubectl, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body = kubectl.get("disaggregatedmodel", name, namespace)
        status = (body or {}).get("status") or {}
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        if body and ready and ready["status"] == "True" and status.get("observedGeneration") == 1:
            return body
        return None

    return wait_for(f"{namespace}/{name} Ready", probe, timeout=timeout)


def sample(namespace: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    body["metadata"]["namespace"] = namespace
    return body


def release_objects(kubectl: Kubectl, release: str, namespaces: list[str]) -> list[str]:
    """Every object of a Helm release (by its instance label), cluster-scoped and in the namespaces."""
    selector = f"app.kubernetes.io/instance={release}"
    found = [
        f"{kind}/{item['metadata']['name']}"
        for kind in ("clusterroles", "clusterrolebindings")
        for item in kubectl.items(kind, None, selector)
    ]
    kinds = "deployments,replicasets,pods,configmaps,serviceaccounts,roles,rolebindings"
    for namespace in namespaces:
        found += [
            f"{namespace}/{item['kind']}/{item['metadata']['name']}"
            for item in kubectl.items(kinds, namespace, selector)
        ]
    return found


def restricted_namespace(kubectl: Kubectl, name: str) -> None:
    """Pod security `restricted`, enforced: the operator pod must comply to be created at all."""
    kubectl.run(
        "label",
        "namespace",
        name,
        "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )


def new_namespace(kubectl: Kubectl, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:5]}"
    kubectl.run("create", "namespace", name)
    return name


def delete_namespaces(kubectl: Kubectl, *names: str) -> None:
    for name in names:
        kubectl.run("delete", "namespace", name, "--wait=true", "--timeout=90s", check=False, timeout=120)


# -- lint, template, bundle ---------------------------------------------------------------------

VARIANTS: dict[str, list[str]] = {
    "defaults": [],
    "ha-cluster-wide": ["--set", "replicas=2"],
    "ha-namespaced-with-adapter-rules": [
        "--set",
        "replicas=3",
        "--set",
        "prometheusAdapterRules.enabled=true",
        "--set",
        "settings.prometheusUrl=http://prometheus.monitoring.svc:9090",
    ],
}


def test_helm_lint_is_clean(helm: Helm) -> None:
    for extra in [
        *VARIANTS.values(),
        ["--set", "watchNamespaces={team-a,team-b}", "--set", "replicas=2"],
        ["--set", "metrics.podMonitor.enabled=true", "--set", "metrics.serviceMonitor.enabled=true"],
    ]:
        result = helm.run("lint", "--strict", str(CHART), *extra)
        assert "0 chart(s) failed" in result.stdout, result.stdout
    bad = helm.run("lint", "--strict", str(CHART), "--set", "replica=2", check=False)
    assert bad.returncode != 0
    assert "additional properties 'replica' not allowed" in (bad.stdout + bad.stderr)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_helm_template_passes_server_side_dry_run(kubectl: Kubectl, helm: Helm, namespace: str, variant: str) -> None:
    restricted_namespace(kubectl, namespace)
    extra = list(VARIANTS[variant])
    if variant.startswith("ha-namespaced"):
        extra += ["--set", f"watchNamespaces={{{namespace}}}"]
    release = f"dry-{variant}"
    rendered = helm.run("template", release, str(CHART), "--namespace", namespace, *extra).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = sorted({d["kind"] for d in docs})
    result = kubectl.dry_run(rendered)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr  # deprecated APIs, pod security
    assert result.stdout.count("serverside-applied (server dry run)") == len(
        [d for d in yaml.safe_load_all(rendered) if d]
    ), result.stdout
    expected = {"ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "ServiceAccount"}
    assert expected <= set(kinds)
    assert not any(d["apiVersion"].startswith("kopf.dev/") for d in docs), "no kopf peering"
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith("--peering") for a in container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    lease_role = f"{release}-disagg-operator-leader-election"
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in {"Role", "RoleBinding"}}
    if variant == "defaults":
        assert "DISAGG_LEADER_ELECTION" not in env
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert not roles, "one replica: no Lease Role"
        return
    assert env["DISAGG_LEADER_ELECTION"]["value"] == "1"
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    role = roles[("Role", lease_role)]
    assert role["metadata"]["namespace"] == namespace
    granted = {
        verb
        for rule in role["rules"]
        if rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"]
        for verb in rule["verbs"]
    }
    assert granted == {"get", "create", "update"}, role["rules"]
    binding = roles[("RoleBinding", lease_role)]
    assert binding["metadata"]["namespace"] == namespace
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": lease_role}
    if variant.startswith("ha-namespaced"):
        assert ("Role", f"{release}-disagg-operator") in roles, "the watched namespace's Role"


def rendered_chart(helm: Helm, *values: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``--set`` values, as objects."""
    args = ["template", "disagg-operator", str(ROOT / "charts" / "disagg-operator"), "-n", "disagg-system"]
    for value in values:
        args += ["--set", value]
    return [d for d in yaml.safe_load_all(helm.run(*args).stdout) if d]


def operator_env(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container.get("env") or []}


def test_leader_election_is_on_only_for_several_replicas_and_the_lease_namespace_always(helm: Helm) -> None:
    for replicas in (1, 2):
        env = operator_env(rendered_chart(helm, f"replicas={replicas}"))
        assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}, replicas
        assert ("DISAGG_LEADER_ELECTION" in env) is (replicas > 1), (replicas, sorted(env))
        if replicas > 1:
            assert env["DISAGG_LEADER_ELECTION"]["value"] == "1"


def _granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


@pytest.mark.parametrize("scope", ["cluster", "namespaces"])
def test_chart_rbac_grants_what_the_caches_and_every_autoscaler_backend_need(helm: Helm, scope: str) -> None:
    from disagg.kube import CHILD_KINDS, NODE_KIND, POD_KIND
    from disagg.render.autoscaling import BACKENDS

    values = ["watchNamespaces={team-a}"] if scope == "namespaces" else []
    objects = rendered_chart(helm, *values)
    roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role")]
    granted = set().union(*(_granted(r.get("rules") or []) for r in roles))
    needed = {(kind.group, kind.plural, verb) for kind in CHILD_KINDS for verb in ("list", "watch", "patch", "delete")}
    needed |= {("", NODE_KIND.plural, "watch"), ("", POD_KIND.plural, "watch"), ("", POD_KIND.plural, "list")}
    for backend in BACKENDS.values():
        needed |= _granted(list(backend.rbac))
    assert needed <= granted, sorted(needed - granted)


def test_install_yaml_is_the_rendered_chart(helm: Helm) -> None:
    rendered = subprocess.run(
        ["bash", str(ROOT / "charts" / "render-install.sh"), "-"],
        env={**helm.env, "HELM": helm.path},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert rendered == INSTALL.read_text(), "manifests/install.yaml is stale: run make manifests"


def test_the_settings_configmap_loads_into_the_operator_settings(helm: Helm, tmp_path: Path) -> None:
    """Every settings value reaches the operator, nested ones included (whatever key style the loader takes)."""
    from disagg.settings import load_settings

    rendered = helm.run(
        "template", "cfg", str(CHART), "--show-only", "templates/configmap.yaml",
        "--set", "settings.metricNames.prefillQueue=queue_custom",
        "--set", "settings.metricNames.decodeKvCache=kv_custom",
        "--set", "settings.topologyLabels.rack=nvidia.com/gpu.clique",
        "--set", "settings.prometheusUrl=http://prometheus.monitoring.svc:9090",
        "--set", "settings.resyncSeconds=30",
        "--set", "settings.inferencePool=true",
    ).stdout  # fmt: skip
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_load(rendered)["data"]["settings.yaml"])
    loaded = load_settings({"DISAGG_SETTINGS_FILE": str(path)})
    assert loaded.metric_names.prefill_queue == "queue_custom"
    assert loaded.metric_names.decode_kv_cache == "kv_custom"
    assert loaded.topology_labels["rack"] == "nvidia.com/gpu.clique"
    assert loaded.prometheus_url == "http://prometheus.monitoring.svc:9090"
    assert loaded.resync_seconds == 30
    assert loaded.inference_pool is True


# -- helm install / upgrade / uninstall -----------------------------------------------------------


@pytest.mark.parametrize("scope", ["cluster-wide", "namespaced", "ha-namespaced"])
def test_helm_install_operator_runs_with_chart_rbac_and_uninstall_leaves_nothing(
    kubectl: Kubectl, helm: Helm, namespace: str, scope: str, tmp_path: Path
) -> None:
    """The chart's ServiceAccount is enough to bring a model to Ready, and no more than needed.

    ``ha-namespaced``: two replicas, so leader election on the Lease in the release namespace (a
    namespace the operator does not watch): the local process must win it with the chart's Role.
    """
    models = new_namespace(kubectl, "op-dlv-models")
    release = f"dlv-{uuid.uuid4().hex[:5]}"
    restricted_namespace(kubectl, namespace)
    ha = scope.startswith("ha-")
    extra = ["--set", f"watchNamespaces={{{models}}}"] if scope.endswith("namespaced") else []
    extra += ["--set", "replicas=2"] if ha else []
    try:
        helm.run("install", release, str(CHART), "-n", namespace, "--wait", "--timeout", "90s", *extra)
        deployment = f"{release}-disagg-operator"
        dep = kubectl.get("deployment", deployment, namespace)
        assert dep is not None
        replicas = 2 if ha else 1
        assert dep["status"].get("availableReplicas") == replicas, "pods admitted under pod security restricted"
        assert dep["spec"]["strategy"]["type"] == ("RollingUpdate" if ha else "Recreate")
        since = time.time()
        with operator_as_the_chart_runs_it(kubectl, namespace, deployment, tmp_path) as (proc, username):
            sa_config = tmp_path / "sa.kubeconfig"
            # minimal: what the operator must never be able to do
            assert not can_i(kubectl, sa_config, "get", "secrets", "-A")
            assert not can_i(kubectl, sa_config, "list", "secrets", "-n", models)
            assert not can_i(kubectl, sa_config, "delete", "nodes")
            assert not can_i(kubectl, sa_config, "create", "pods", "-n", models)
            assert not can_i(kubectl, sa_config, "update", "disaggregatedmodels.disagg.dev", "-n", models)
            assert not can_i(kubectl, sa_config, "create", "clusterroles")
            assert not can_i(kubectl, sa_config, "escalate", "roles", "-n", models)
            assert not can_i(kubectl, sa_config, "bind", "clusterroles")
            assert not can_i(kubectl, sa_config, "patch", "customresourcedefinitions")
            if ha:  # the Lease: in the release namespace, by name, nothing more
                assert can_i(kubectl, sa_config, "create", "leases.coordination.k8s.io", "-n", namespace)
                for verb in ("get", "update"):
                    assert can_i(
                        kubectl, sa_config, verb, "leases.coordination.k8s.io/disagg-operator", "-n", namespace
                    )
                    assert not can_i(kubectl, sa_config, verb, "leases.coordination.k8s.io/other", "-n", namespace)
                assert not can_i(
                    kubectl, sa_config, "delete", "leases.coordination.k8s.io/disagg-operator", "-n", namespace
                )
            assert not can_i(kubectl, sa_config, "create", "leases.coordination.k8s.io", "-n", models)
            if not ha:
                assert not can_i(kubectl, sa_config, "create", "leases.coordination.k8s.io", "-n", namespace)
            if scope.endswith("namespaced"):
                assert not can_i(kubectl, sa_config, "list", "deployments", "-A")
                assert not can_i(kubectl, sa_config, "patch", "deployments", "-n", "default")
            # sufficient: what it does
            assert can_i(kubectl, sa_config, "patch", "deployments.apps", "-n", models, "--subresource=scale")
            assert can_i(
                kubectl, sa_config, "patch", "disaggregatedmodels.disagg.dev", "-n", models, "--subresource=status"
            )
            assert can_i(kubectl, sa_config, "create", "events.events.k8s.io", "-n", models)
            assert can_i(kubectl, sa_config, "list", "nodes")

            kubectl.apply(sample(models))
            body = wait_ready(kubectl, models, "llama-8b-chat")
            assert body["status"]["mode"] == "aggregated"
            children = kubectl.items(
                "deployments,services,configmaps,serviceaccounts,roles,rolebindings,poddisruptionbudgets,"
                "horizontalpodautoscalers",
                models,
                MANAGED,
            )
            assert {c["kind"] for c in children} >= {"Deployment", "Role", "RoleBinding", "HorizontalPodAutoscaler"}
            lease = kubectl.get("lease", "disagg-operator", namespace)
            if ha:
                assert lease is not None, "leader election runs on the Lease in the release namespace"
                assert lease["spec"]["holderIdentity"], lease
                assert "became leader" in proc.log_tail(400)
            else:
                assert lease is None, "one replica: no leader election"
            assert proc.alive()
            log = proc.log_tail(400).lower()
            assert "forbidden" not in log, proc.log_tail(60)
            assert " 403" not in log, proc.log_tail(60)
        if kubectl.env.audit_log:
            mine = requests_by(kubectl.env.audit_log, username, since)
            denied = [f"{e['verb']} {e['requestURI']}" for e in mine if e["responseStatus"]["code"] == 403]
            assert not denied, f"the chart's RBAC denied: {denied}"
            wrote = [
                e for e in mine if e["verb"] in {"patch", "create"} and f"/namespaces/{models}/" in e["requestURI"]
            ]
            assert len(wrote) >= 8, "the children were written by the chart's ServiceAccount"
        kubectl.run("delete", "disaggregatedmodel", "llama-8b-chat", "-n", models, "--wait=true", "--timeout=60s")
        helm.run("uninstall", release, "-n", namespace, "--wait", "--timeout", "90s")
        wait_for(
            "no object of the release left",
            lambda: not release_objects(kubectl, release, [namespace, models]) or None,
            timeout=60,
        )
        assert kubectl.get("crd", "disaggregatedmodels.disagg.dev", "") is not None, "Helm keeps CRDs"
    finally:
        helm.run("uninstall", release, "-n", namespace, check=False)
        delete_namespaces(kubectl, models)


def test_helm_upgrade_across_a_crd_schema_change(kubectl: Kubectl, helm: Helm, namespace: str, tmp_path: Path) -> None:
    """Helm installs crds/ once and never upgrades them; the documented server-side apply does."""
    old_chart = tmp_path / "disagg-operator"
    shutil.copytree(CHART, old_chart)
    crd_file = old_chart / "crds" / "disagg.dev_disaggregatedmodels.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    del crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["planner"]
    crd_file.write_text(yaml.safe_dump(crd))
    models = new_namespace(kubectl, "op-dlv-upgrade")
    release = f"dlv-{uuid.uuid4().hex[:5]}"
    with_planner = sample(models)
    with_planner["spec"]["planner"] = {"replan": {"enabled": True, "interval": "10m"}}
    try:
        # a cluster that never had disagg: helm install creates the (old) CRD from crds/
        kubectl.run("delete", CRD_NAME, "--wait=true", "--timeout=60s")
        helm.run("install", release, str(old_chart), "-n", namespace, "--wait", "--timeout", "90s")
        kubectl.wait_established(CRD_NAME)
        rejected = kubectl.run("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(with_planner), check=False)
        assert rejected.returncode != 0
        assert ".spec.planner: field not declared in schema" in rejected.stderr, rejected.stderr

        # helm upgrade alone leaves the CRD as it was
        helm.run(
            "upgrade", release, str(CHART), "-n", namespace, "--wait", "--timeout", "90s",
            "--set", "settings.resyncSeconds=30",
        )  # fmt: skip
        still = kubectl.run("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(with_planner), check=False)
        assert ".spec.planner: field not declared in schema" in still.stderr, "helm upgraded the CRD after all?"
        history = json.loads(helm.run("history", release, "-n", namespace, "-o", "json").stdout)
        assert [h["status"] for h in history] == ["superseded", "deployed"]
        configmap = kubectl.get("configmap", f"{release}-disagg-operator", namespace)
        assert configmap is not None
        assert "resyncSeconds: 30" in configmap["data"]["settings.yaml"]

        # the documented CRD upgrade step
        kubectl.run(*CRD_UPGRADE_STEP)
        kubectl.wait_established(CRD_NAME)
        wait_for(
            "the upgraded schema to be served",
            lambda: (
                kubectl.run(
                    "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(with_planner), check=False
                ).returncode
                == 0
                or None
            ),
            timeout=30,
        )
        stored = kubectl.get("disaggregatedmodel", "llama-8b-chat", models)
        assert stored is not None
        assert stored["spec"]["planner"]["replan"] == {"enabled": True, "interval": "10m"}
    finally:
        kubectl.run("delete", "disaggregatedmodels", "--all", "-n", models, "--wait=true", check=False)
        helm.run("uninstall", release, "-n", namespace, check=False)
        kubectl.run(*CRD_UPGRADE_STEP, check=False)  # leave the current CRD for the other tests
        kubectl.wait_established(CRD_NAME)
        delete_namespaces(kubectl, models)


# -- kubectl and GitOps -------------------------------------------------------------------------


def bundle_objects(kubectl: Kubectl) -> list[str]:
    names = [
        "clusterrole/disagg-operator",
        "clusterrolebinding/disagg-operator",
        "namespace/disagg-system",
    ]
    return [n for n in names if kubectl.run("get", n, check=False).returncode == 0]


def test_kubectl_install_path_and_delete_leave_nothing(kubectl: Kubectl) -> None:
    try:
        kubectl.run("apply", "--server-side", "-f", str(ROOT / "crds"), "-f", str(INSTALL))
        kubectl.run(
            "rollout", "status", "deployment/disagg-operator", "-n", "disagg-system", "--timeout=90s", timeout=120
        )
        assert bundle_objects(kubectl) == [
            "clusterrole/disagg-operator",
            "clusterrolebinding/disagg-operator",
            "namespace/disagg-system",
        ]
    finally:
        kubectl.run("delete", "-f", str(INSTALL), "--wait=true", "--timeout=90s", "--ignore-not-found", timeout=120)
    assert bundle_objects(kubectl) == []
    assert kubectl.get("crd", "disaggregatedmodels.disagg.dev", "") is not None


def git_state(models: str) -> str:
    """What a Git repository would hold: the CRDs, the install bundle and one model."""
    crds = "\n---\n".join(p.read_text() for p in sorted((ROOT / "crds").glob("*.yaml")))
    return "\n---\n".join([crds, INSTALL.read_text(), yaml.safe_dump(sample(models))])


def versions(kubectl: Kubectl, models: str) -> dict[str, str]:
    kinds = (
        "disaggregatedmodels,deployments,services,configmaps,serviceaccounts,roles,rolebindings,"
        "poddisruptionbudgets,horizontalpodautoscalers"
    )
    found = {
        f"{i['kind']}/{i['metadata']['name']}": i["metadata"]["resourceVersion"] for i in kubectl.items(kinds, models)
    }
    for i in kubectl.items("deployments,configmaps,serviceaccounts", "disagg-system"):
        found[f"disagg-system/{i['kind']}/{i['metadata']['name']}"] = i["metadata"]["resourceVersion"]
    for name in ("clusterrole/disagg-operator", "clusterrolebinding/disagg-operator", CRD_NAME):
        found[name] = kubectl.json("get", name)["metadata"]["resourceVersion"]
    return found


def test_gitops_reapply_of_the_same_state_changes_nothing(
    kubectl: Kubectl, private_namespace: str, tmp_path: Path
) -> None:
    """Argo CD's server-side apply of Git, the operator and an autoscaler act, Argo CD re-applies."""
    namespace = private_namespace
    state = git_state(namespace)
    argo_apply = ("apply", "--server-side", f"--field-manager={ARGOCD}", "-f", "-")
    try:
        kubectl.run(*argo_apply, stdin=state)
        kubectl.run("rollout", "status", "deployment/disagg-operator", "-n", "disagg-system", "--timeout=90s")
        with operator_as_the_chart_runs_it(kubectl, "disagg-system", "disagg-operator", tmp_path):
            wait_ready(kubectl, namespace, "llama-8b-chat")
            # an autoscaler acts: the engine Deployment to 2 through /scale, as the HPA does
            engine = "llama-8b-chat-prefill-decode"
            hpa = kubectl.get("horizontalpodautoscaler", engine, namespace)
            assert hpa is not None
            assert hpa["spec"]["minReplicas"] < 2 <= hpa["spec"]["maxReplicas"]
            kubectl.run("scale", "deployment", engine, "-n", namespace, "--replicas=2")
            wait_for(
                "the scaled engine to be ready and the model Ready again",
                lambda: (
                    (kubectl.get("deployment", engine, namespace) or {}).get("status", {}).get("readyReplicas") == 2
                    or None
                ),
            )
            wait_ready(kubectl, namespace, "llama-8b-chat")
            time.sleep(7)  # two resync periods of the operator: it has settled
            before = versions(kubectl, namespace)
            assert len(before) >= 14, sorted(before)  # the model, its 8+ children, the bundle, the CRD
            kubectl.run(*argo_apply, stdin=state)
            time.sleep(7)
            after = versions(kubectl, namespace)
            changed = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
            assert not changed, f"re-applying Git changed: {changed}"
            assert set(after) == set(before)
            deployment = kubectl.get("deployment", engine, namespace)
            assert deployment is not None
            assert deployment["spec"]["replicas"] == 2, "the autoscaler's replicas survive the sync"
            diff = kubectl.run(
                "diff", "--server-side", f"--field-manager={ARGOCD}", "-f", "-", stdin=state, check=False
            )
            assert diff.returncode == 0, f"Argo CD would report drift:\n{diff.stdout}{diff.stderr}"
    finally:
        kubectl.run("delete", "disaggregatedmodel", "llama-8b-chat", "-n", namespace, "--wait=true", check=False)
        kubectl.run("delete", "-f", str(INSTALL), "--wait=true", "--timeout=90s", "--ignore-not-found", timeout=120)
