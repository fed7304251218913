"""Test harness for the local control plane: cluster lifecycle, kubectl, the operator process, audit log.

Everything goes through the real binaries built by ``e2e/tools.sh`` (kubectl included), so what
the tests see is what a user sees. All waits are bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

E2E_DIR = Path(__file__).resolve().parent
ROOT = E2E_DIR.parent
CLUSTER_SH = E2E_DIR / "cluster.sh"
T = TypeVar("T")


class ClusterEnv:
    """Connection facts of a running cluster (from ``cluster.sh env`` or an existing KUBECONFIG)."""

    def __init__(
        self,
        kubeconfig: str,
        bin_dir: str | None,
        audit_log: str | None,
        name: str | None,
        cluster_dir: str | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.bin_dir = bin_dir
        self.audit_log = audit_log
        self.name = name
        self.cluster_dir = cluster_dir
        """kwokctl's state dir of a private cluster (pids/, logs/); None for an existing cluster."""

    @property
    def controls_processes(self) -> bool:
        """A local cluster whose processes the tests may stop and restart (name and state dir known)."""
        return bool(self.name and self.cluster_dir and (Path(self.cluster_dir) / "pids").is_dir())

    def restart_component(self, component: str, down_seconds: float = 0) -> None:
        """Stop one control-plane process, keep it down a while, start it again (``cluster.sh restart``)."""
        if not (self.controls_processes and self.cluster_dir and self.name):
            raise RuntimeError("restarting components needs the local cluster's name and state dir")
        workdir = Path(self.cluster_dir).parent.parent  # <workdir>/clusters/<name>
        subprocess.run(
            ["bash", str(CLUSTER_SH), "restart", component, f"{down_seconds:.3f}"],
            env={**os.environ, "DISAGG_CLUSTER_NAME": self.name, "DISAGG_KWOK_WORKDIR": str(workdir)},
            check=True,
            timeout=240,
        )

    @property
    def kubectl_path(self) -> str:
        if self.bin_dir and (Path(self.bin_dir) / "kubectl").exists():
            return str(Path(self.bin_dir) / "kubectl")
        found = shutil.which("kubectl")
        if not found:
            raise RuntimeError("kubectl not found: run `make e2e-tools`")
        return found


def cluster_env(name: str) -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(CLUSTER_SH), "env"],
        env={**os.environ, "DISAGG_CLUSTER_NAME": name},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def cluster_up(name: str) -> ClusterEnv:
    subprocess.run(
        ["bash", str(CLUSTER_SH), "up"],
        env={**os.environ, "DISAGG_CLUSTER_NAME": name},
        check=True,
        timeout=900,
    )
    env = cluster_env(name)
    return ClusterEnv(
        env["KUBECONFIG"],
        env.get("DISAGG_E2E_BIN_DIR"),
        env.get("DISAGG_E2E_AUDIT_LOG"),
        name,
        env.get("DISAGG_E2E_CLUSTER_DIR"),
    )


def cluster_down(name: str) -> None:
    subprocess.run(
        ["bash", str(CLUSTER_SH), "down"],
        env={**os.environ, "DISAGG_CLUSTER_NAME": name},
        check=False,
        timeout=300,
    )


class Kubectl:
    def __init__(self, env: ClusterEnv) -> None:
        self.env = env

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.env.kubectl_path, "--kubeconfig", self.env.kubeconfig, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def established(self, crd: str) -> bool:
        """The CRD serves (``Established=True``); False while it is missing or has no status yet."""
        name = crd.removeprefix("crd/").removeprefix("customresourcedefinition/")
        found = self.get("crd", name, namespace="default")
        conditions = ((found or {}).get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

    def wait_established(self, crd: str, timeout: float = 60) -> None:
        """Wait until a CRD serves. Not `kubectl wait`: it fails outright ("accessor error: <nil>")
        on a CRD the API server has stored but not yet given a status."""
        wait_for(f"{crd} to be Established", lambda: self.established(crd), timeout=timeout)

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def get(self, kind: str, name: str, namespace: str, managed_fields: bool = False) -> dict[str, Any] | None:
        extra = ["--show-managed-fields"] if managed_fields else []
        result = self.run("get", kind, name, "-n", namespace, "-o", "json", *extra, check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        value: dict[str, Any] = json.loads(result.stdout)
        return value

    def items(self, kind: str, namespace: str | None = None, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind]
        args += ["-n", namespace] if namespace else ["-A"]
        if selector:
            args += ["-l", selector]
        items: list[dict[str, Any]] = self.json(*args)["items"]
        return items

    def apply(self, obj: dict[str, Any] | str, namespace: str | None = None, server_side: bool = True) -> None:
        text = obj if isinstance(obj, str) else yaml.safe_dump(obj)
        args = ["apply", "-f", "-"]
        if server_side:
            args.append("--server-side")
        if namespace:
            args += ["-n", namespace]
        self.run(*args, stdin=text)

    def dry_run(
        self, obj: dict[str, Any] | str, *extra: str, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Server-side apply with ``--dry-run=server``: admission, schema and CEL, nothing stored.
        Not checked: callers assert on acceptance or on the rejection message."""
        text = obj if isinstance(obj, str) else yaml.safe_dump(obj)
        args = ["apply", "--server-side", "--dry-run=server", *extra, "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        return self.run(*args, stdin=text, check=False)


CHILD_KINDS = "deployments,services,configmaps,hpa,pdb,serviceaccounts,roles,rolebindings,networkpolicies"
MANAGED = "app.kubernetes.io/managed-by=disagg-operator"


def model_children(kubectl: Kubectl, namespace: str, name: str, kinds: str = CHILD_KINDS) -> list[dict[str, Any]]:
    return kubectl.items(kinds, namespace, f"{MANAGED},disagg.dev/model={name}")


def assert_clean(kubectl: Kubectl, namespace: str, name: str, *, one_rollout: bool = True) -> dict[str, Any]:
    """After a fault: no duplicate or orphaned child, status complete and, unless the fault
    legitimately changed the pod template (a move to another rack), one ReplicaSet per Deployment."""
    body = kubectl.get("disaggregatedmodel", name, namespace)
    assert body is not None, f"{namespace}/{name} is gone"
    uid = body["metadata"]["uid"]
    children = model_children(kubectl, namespace, name)
    names = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert len(names) == len(set(names)), "duplicate children"
    for child in children:
        assert [r["uid"] for r in child["metadata"]["ownerReferences"]] == [uid], "orphaned child"
    conditions = {c["type"] for c in body["status"]["conditions"]}
    assert {"Ready", "Progressing", "Degraded", "Planned"} <= conditions, "status lost"
    if one_rollout:
        deployments = [c for c in children if c["kind"] == "Deployment"]
        replicasets = model_children(kubectl, namespace, name, "replicasets")
        assert len(replicasets) == len(deployments), [r["metadata"]["name"] for r in replicasets]
    return body


def assert_floors_kept(kubectl: Kubectl, namespace: str, body: dict[str, Any]) -> None:
    """Every engine Deployment, as the cluster has it, holds at least its planned floor, all ready:
    nothing was scaled down (or to zero) because of the fault."""
    name, status = body["metadata"]["name"], body["status"]
    roles = [("prefill-decode", "prefill")] if status["mode"] == "aggregated" else [("prefill",) * 2, ("decode",) * 2]
    for role, key in roles:
        floor = status["plan"][key]["replicas"]
        deployment = kubectl.get("deployment", f"{name}-{role}", namespace)
        assert deployment is not None, f"{name}-{role} is gone"
        assert deployment["spec"]["replicas"] >= floor >= 1, (role, deployment["spec"]["replicas"], floor)
        assert (deployment["status"].get("readyReplicas") or 0) >= floor, (role, deployment["status"])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 90, interval: float = 0.5) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class OperatorProcess:
    """``disagg run`` as a local process against the test cluster."""

    def __init__(self, env: ClusterEnv, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_address: str | None = None
        """host:port of the operator's own /metrics while a fixture serves them."""

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "operator already running"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "disagg.cli", *(["-v"] if os.environ.get("DISAGG_E2E_VERBOSE") else []), "run"],
            env={
                **os.environ,
                "KUBECONFIG": self.env.kubeconfig,
                "DISAGG_RESYNC_SECONDS": "3",
                "DISAGG_EXCLUDE_NAMESPACES": "op-*",  # namespaces where tests run operators of their own
                **self.extra_env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    @classmethod
    def for_namespace(
        cls, env: ClusterEnv, namespace: str, log_path: Path, extra_env: dict[str, str] | None = None
    ) -> OperatorProcess:
        """An operator of a test's own that watches only ``namespace`` (an ``op-*`` one)."""
        scoped = {"DISAGG_NAMESPACES": namespace, "DISAGG_EXCLUDE_NAMESPACES": "", **(extra_env or {})}
        return cls(env, log_path, extra_env=scoped)

    def exit_code(self) -> int | None:
        """None while running (or never started)."""
        return None if self.proc is None else self.proc.poll()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def starts(self) -> int:
        """How many times this log has seen the operator come up."""
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count("disagg operator started")

    def restart(self, extra_env: dict[str, str] | None = None, *, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with ``kill``) and start again (with ``extra_env`` if given),
        returning once the new process is up."""
        before = self.starts()
        if kill:
            self.kill()
            assert not self.alive()
        else:
            self.stop()
        if extra_env is not None:
            self.extra_env = extra_env
        self.start()
        wait_for("the operator to restart", lambda: self.starts() > before or None, timeout=60)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def audit_events(path: str | None) -> Iterator[dict[str, Any]]:
    if not path or not Path(path).exists():
        return
    with open(path, encoding="utf-8", errors="replace") as handle:
        for raw in handle:
            line = raw.strip()
            if line:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def operator_writes(
    path: str | None, since: float, user_agents: tuple[str, ...] = ("disagg-operator", "kopf")
) -> list[str]:
    """Write requests the operator (our client or kopf's) made after ``since`` (epoch seconds)."""
    return operator_requests(path, since, WRITE_VERBS, user_agents)


def operator_requests(
    path: str | None,
    since: float,
    verbs: set[str] | frozenset[str],
    user_agents: tuple[str, ...] = ("disagg-operator", "kopf"),
) -> list[str]:
    """``verb requestURI`` of the operator's requests with one of ``verbs`` after ``since``."""
    found = []
    for event in audit_events(path):
        if event.get("stage") != "ResponseComplete" or event.get("verb") not in verbs:
            continue
        if not str(event.get("userAgent", "")).startswith(user_agents):
            continue
        stamp = event.get("requestReceivedTimestamp", "")
        try:
            when = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        except ValueError:
            continue
        if when >= since:
            found.append(f"{event['verb']} {event.get('requestURI')}")
    return found
