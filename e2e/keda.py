"""KEDA's own operator and metrics API server beside the local cluster, for the KEDA backend's e2e.

Both are built from KEDA's Go module (``e2e/tools.sh`` group ``keda``, ``KEDA_VERSION``) and run
as processes on 127.0.0.1, as prometheus-adapter does in ``e2e/metrics.py``:

- ``keda-operator`` reconciles ScaledObjects into HPAs (``keda-hpa-<name>``), runs the scalers
  (the Prometheus trigger queries the e2e Prometheus), honours the pause annotation and serves
  metric values over mutual-TLS gRPC;
- ``keda-adapter`` serves ``external.metrics.k8s.io`` to the HPA controller through the
  aggregator, asking the operator over that gRPC channel;
- one throwaway CA signs one certificate (server and client use) for both, valid for 127.0.0.1
  and for the Service name the aggregator verifies; the APIService carries that CA, so the
  aggregator checks the adapter's certificate instead of skipping verification.

KEDA's CRDs are applied on start and deleted on stop (other tests need a cluster without KEDA).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from e2e.harness import ROOT, ClusterEnv, Kubectl, wait_for
from e2e.metrics import Process, bin_dir, free_port

NAMESPACE = "disagg-e2e-keda"
SERVICE = "keda-metrics-apiserver"
APISERVICE = "v1beta1.external.metrics.k8s.io"
BINARIES = ("keda-operator", "keda-adapter")


def crd_dir() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "e2e" / "tools.sh"), "--keda-crd"], capture_output=True, text=True, timeout=600, check=False
    )
    assert out.returncode == 0, f"tools.sh --keda-crd failed: {out.stderr[-2000:]}"
    return Path(out.stdout.strip()).parent


def make_certs(directory: Path) -> str:
    """ca.crt, tls.crt, tls.key in ``directory`` (KEDA's gRPC file names); returns the CA PEM."""
    names = f"IP:127.0.0.1,DNS:localhost,DNS:{SERVICE}.{NAMESPACE}.svc,DNS:{SERVICE}.{NAMESPACE}.svc.cluster.local"
    ext = directory / "ext.cnf"
    ext.write_text(
        f"subjectAltName={names}\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=disagg-e2e-keda-ca",
         "-keyout", "ca.key", "-out", "ca.crt"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=keda", "-keyout", "tls.key", "-out", "tls.csr"],
        ["x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
         "-extfile", str(ext), "-out", "tls.crt"],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run(
            ["openssl", *step], cwd=directory, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"openssl {' '.join(step)}: {done.stderr}"
    return (directory / "ca.crt").read_text()


def _registration(port: int, ca_pem: str) -> list[dict[str, Any]]:
    """Namespace, ExternalName Service (no kube-proxy here), APIService, the HPA controller's read access."""
    import base64

    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": NAMESPACE},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1", "ports": [{"port": port, "protocol": "TCP"}]},
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": APISERVICE},
            "spec": {
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "service": {"name": SERVICE, "namespace": NAMESPACE, "port": port},
                "caBundle": base64.b64encode(ca_pem.encode()).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "disagg-e2e-external-metrics-reader"},
            "rules": [
                {"apiGroups": ["external.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list", "watch"]}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "disagg-e2e-hpa-external-metrics"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "disagg-e2e-external-metrics-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"}],
        },
    ]


class KedaStack:
    """KEDA's CRDs, operator and metrics API server for one cluster; ``stop()`` undoes all of it."""

    def __init__(self, cluster: ClusterEnv, kubectl: Kubectl) -> None:
        self.kubectl = kubectl
        binaries = bin_dir()
        for name in BINARIES:
            if not (binaries / name).exists():
                raise AssertionError(f"{binaries / name} missing: run `e2e/tools.sh keda` (or `make e2e-tools`)")
        self.workdir = Path(tempfile.mkdtemp(prefix="disagg-e2e-keda-"))
        certs = self.workdir / "certs"
        certs.mkdir()
        self.ca_pem = make_certs(certs)
        self.crds = crd_dir()
        self.grpc_port = free_port()
        self.adapter_port = free_port()
        self.registered = False
        env = {
            "KUBECONFIG": cluster.kubeconfig,
            "WATCH_NAMESPACE": "",  # every namespace
            "POD_NAMESPACE": NAMESPACE,
            "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
        }
        self.operator = Process(
            [
                str(binaries / "keda-operator"),
                f"--cert-dir={certs}",
                f"--metrics-service-bind-address=127.0.0.1:{self.grpc_port}",
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{free_port()}",
                "--enable-cert-rotation=false",
                "--enable-webhook-patching=false",
                f"--ca-dir={certs}",
                "--zap-log-level=info",
            ],
            self.workdir / "keda-operator.log",
            env,
        )
        self.adapter = Process(
            [
                str(binaries / "keda-adapter"),
                f"--secure-port={self.adapter_port}",
                "--bind-address=127.0.0.1",
                f"--cert-dir={certs}",
                f"--tls-cert-file={certs / 'tls.crt'}",
                f"--tls-private-key-file={certs / 'tls.key'}",
                f"--lister-kubeconfig={cluster.kubeconfig}",
                f"--authentication-kubeconfig={cluster.kubeconfig}",
                f"--authorization-kubeconfig={cluster.kubeconfig}",
                f"--metrics-service-address=127.0.0.1:{self.grpc_port}",
                f"--port={free_port()}",
                "--zap-log-level=info",
            ],
            self.workdir / "keda-adapter.log",
            env,
        )

    def start(self, timeout: float = 120) -> KedaStack:
        try:
            self.kubectl.run("apply", "--server-side", "-f", str(self.crds), timeout=120)
            wait_for("KEDA's CRDs to be established", self._established, timeout=60)
            self.kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
            self.operator.start()
            self.adapter.start()
            self.registered = True
            self.kubectl.apply("\n---\n".join(yaml.safe_dump(o) for o in _registration(self.adapter_port, self.ca_pem)))

            def available() -> bool:
                for process in (self.operator, self.adapter):
                    if not process.alive():
                        raise AssertionError(f"{process.argv[0]} exited:\n{process.tail()}")
                result = self.kubectl.run(
                    "get", "--raw", "/apis/external.metrics.k8s.io/v1beta1", check=False, timeout=20
                )
                return result.returncode == 0 and "APIResourceList" in result.stdout

            wait_for("external.metrics.k8s.io to answer through the aggregator", available, timeout=timeout, interval=1)
        except BaseException as exc:
            logs = self.logs()
            self.stop()
            raise AssertionError(f"KEDA did not start: {exc}\n{logs}") from exc
        return self

    def _established(self) -> bool:
        names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in sorted(self.crds.glob("*.yaml"))]
        return all(self.kubectl.established(name) for name in names)

    def external_metric(self, namespace: str, metric: str, scaled_object: str) -> float | None:
        """The value the HPA controller would read for one of KEDA's metrics (None if not served)."""
        path = (
            f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}"
            f"?labelSelector=scaledobject.keda.sh%2Fname%3D{scaled_object}"
        )
        result = self.kubectl.run("get", "--raw", path, check=False, timeout=20)
        if result.returncode != 0:
            return None
        import json

        items = json.loads(result.stdout).get("items") or []
        if not items:
            return None
        from e2e.metrics import _quantity

        return _quantity(str(items[0]["value"]))

    def stop(self) -> None:
        # unregister first: an APIService without a backend breaks discovery (and namespace deletion)
        if self.registered:
            self.kubectl.run(
                "delete", "apiservice", APISERVICE, "--ignore-not-found", "--wait=false", check=False, timeout=60
            )
            for kind, name in (("clusterrolebinding", "disagg-e2e-hpa-external-metrics"),
                               ("clusterrole", "disagg-e2e-external-metrics-reader")):  # fmt: skip
                self.kubectl.run("delete", kind, name, "--ignore-not-found", "--wait=false", check=False, timeout=60)
            self.registered = False
        # CRDs before the operator stops: their objects go, and with them (owner references) KEDA's HPAs
        self.kubectl.run("delete", "-f", str(self.crds), "--ignore-not-found", "--wait=true", check=False, timeout=180)
        self.adapter.stop()
        self.operator.stop()
        self.kubectl.run(
            "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False, timeout=60
        )

    def logs(self, lines: int = 60) -> str:
        return f"--- keda-operator\n{self.operator.tail(lines)}\n--- keda-adapter\n{self.adapter.tail(lines)}"
