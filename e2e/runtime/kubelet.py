"""The e2e runtime: a kubelet for the pods the operator creates, so they really run.

kwok's nodes stay kwok's (heartbeats, capacity, racks); pods annotated
``kwok.x-k8s.io/status=custom`` are ones kwok leaves alone (``cluster.sh`` passes that selector
to kwok), and this program plays their kubelet: for each such pod bound to a node it creates a
network namespace with a pod IP on the run's bridge (``network.py``), materialises the pod's
volumes (ConfigMap, Secret, projected service-account token, downward API, emptyDir), resolves
env (downward API and ``$(VAR)`` expansion included), starts the init, sidecar and app containers
through ``launch.py`` with the program its image stands for (``images.py``), runs startup,
readiness and liveness probes (HTTP, TCP, gRPC) against the pod IP, restarts exited containers
with kubelet's back-off, and reports all of it in the pod's status. Deleting a pod stops its
containers within the grace period and then removes the pod, as a kubelet does. ``proxy.py``
plays kube-proxy for ClusterIP Services.

Run: ``python -m e2e.runtime.kubelet --kubeconfig K --bin-dir B --workdir W`` (root; one per
machine). Container logs are ``W/pods/<namespace>_<pod>/<container>.log``, main pids
``.../<container>.pid``; ``W/runtime.log`` is this program's own log.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from e2e.runtime import images
from e2e.runtime.api import Api, ApiError
from e2e.runtime.network import GATEWAY, PodBridge
from e2e.runtime.proxy import ServiceProxy
from e2e.runtime.vllm_args import DEFAULT_SOCKET

VLLM_PARSER_DIR = os.path.dirname(DEFAULT_SOCKET)

MANAGED_ANNOTATION = ("kwok.x-k8s.io/status", "custom")
LOG = logging.getLogger("disagg.runtime")
BACKOFF_START, BACKOFF_MAX = 10.0, 300.0
"""kubelet's container restart back-off: 10 s doubling to 5 min."""


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def managed(pod: dict[str, Any]) -> bool:
    annotations = pod["metadata"].get("annotations") or {}
    return annotations.get(MANAGED_ANNOTATION[0]) == MANAGED_ANNOTATION[1] and bool(pod["spec"].get("nodeName"))


class PodLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{(self.extra or {}).get('pod')} {msg}", kwargs


class ConfigError(Exception):
    """What kubelet reports as CreateContainerConfigError (a missing Secret key, say)."""


# -- env, volumes ---------------------------------------------------------------------------------

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names replaced, unknown ones kept, ``$$`` -> ``$``."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR.sub(sub, text)


def field_value(pod: dict[str, Any], path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    keyed = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if keyed:
        return str((meta.get(keyed.group(1)) or {}).get(keyed.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise ConfigError(f"unsupported fieldRef {path!r}")


@dataclass
class Material:
    """ConfigMaps and Secrets of one namespace, read once per pod start."""

    api: Api
    namespace: str
    cache: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        key = (kind, name)
        if key not in self.cache:
            plural = "configmaps" if kind == "ConfigMap" else "secrets"
            self.cache[key] = await self.api.maybe_get(f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
        return self.cache[key]

    async def data(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        obj = await self.get(kind, name)
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{kind.lower()} "{name}" not found')
        if kind == "Secret":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return out


def _write_items(
    target: Path, data: dict[str, bytes], items: list[dict[str, Any]] | None, mode: int, what: str, optional: bool
) -> None:
    target.mkdir(parents=True, exist_ok=True)
    chosen = [(i["key"], i["path"], i.get("mode", mode)) for i in items] if items else [(k, k, mode) for k in data]
    for key, rel, file_mode in chosen:
        if key not in data:
            if optional:
                continue
            raise ConfigError(f"couldn't find key {key} in {what}")
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[key])
        path.chmod(file_mode)


# -- containers -----------------------------------------------------------------------------------


@dataclass
class Probe:
    spec: dict[str, Any]
    successes: int = 0
    failures: int = 0
    ok: bool = False
    next_at: float = 0.0

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1))

    def record(self, passed: bool) -> None:
        if passed:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= int(self.spec.get("successThreshold", 1)):
                self.ok = True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.ok = False

    @property
    def failed(self) -> bool:
        return self.failures >= int(self.spec.get("failureThreshold", 3))


@dataclass
class Container:
    spec: dict[str, Any]
    kind: str
    """init, sidecar or app"""
    process: asyncio.subprocess.Process | None = None
    started_at: str | None = None
    started_mono: float = 0.0
    restarts: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    backoff_until: float = 0.0
    backoff: float = BACKOFF_START
    crashes: int = 0
    startup: Probe | None = None
    readiness: Probe | None = None
    liveness: Probe | None = None
    exited_zero: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def reset_probes(self) -> None:
        for kind in ("startup", "readiness", "liveness"):
            spec = self.spec.get(f"{kind}Probe")
            probe = Probe(spec) if spec else None
            if probe:
                probe.next_at = time.monotonic() + float(spec.get("initialDelaySeconds", 0))
            setattr(self, kind, probe)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def started(self) -> bool:
        return self.running and (self.startup is None or self.startup.ok)

    @property
    def ready(self) -> bool:
        if not self.started or self.kind == "init":
            return False
        return self.readiness.ok if self.readiness else True


class PodWorker:
    """One pod from binding to removal."""

    def __init__(self, runtime: Runtime, pod: dict[str, Any]) -> None:
        self.runtime = runtime
        self.pod = pod
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.key = hashlib.sha256(self.uid.encode()).hexdigest()[:10]
        self.dir = runtime.workdir / "pods" / f"{self.namespace}_{self.name}"
        self.netns: str | None = None
        self.pod_ip: str | None = None
        spec = pod["spec"]
        self.init = [
            Container(c, "sidecar" if c.get("restartPolicy") == "Always" else "init")
            for c in spec.get("initContainers") or []
        ]
        self.apps = [Container(c, "app") for c in spec["containers"]]
        self.initialized = not any(c.kind == "init" for c in self.init)
        self.started_at = now()
        self.last_status: str | None = None
        self.deleting = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.config_error: str | None = None

    @property
    def log(self) -> PodLog:
        return PodLog(LOG, {"pod": f"{self.namespace}/{self.name}"})

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = {**pod, "status": {**(pod.get("status") or {}), "podIP": self.pod_ip}}
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.set()

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.netns, self.pod_ip = await asyncio.to_thread(self.runtime.bridge.add_pod, self.key)
            self.pod["status"] = {**(self.pod.get("status") or {}), "podIP": self.pod_ip, "hostIP": self.host_ip}
            await self.sync_status()
            try:
                await self.prepare_volumes()
            except ConfigError as exc:
                self.config_error = str(exc)
                self.log.warning("volumes: %s", exc)
            while not self.deleting.is_set():
                if self.config_error and not self.any_started():
                    # kubelet retries volume and config errors; so do we
                    self.config_error = None
                    try:
                        await self.prepare_volumes()
                    except ConfigError as exc:
                        self.config_error = str(exc)
                if not self.config_error:
                    await self.step()
                await self.sync_status()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.deleting.wait(), 0.5)
            await self.terminate()
        except asyncio.CancelledError:
            await self.kill_all()
            raise
        except Exception:
            self.log.exception("pod worker failed")
            await self.kill_all()
        finally:
            if self.netns and self.pod_ip:
                await asyncio.to_thread(self.runtime.bridge.remove_pod, self.netns, self.pod_ip)
            self.runtime.workers.pop(self.uid, None)

    def any_started(self) -> bool:
        return any(c.process is not None for c in [*self.init, *self.apps])

    @property
    def host_ip(self) -> str:
        return self.runtime.node_ips.get(self.pod["spec"]["nodeName"], str(GATEWAY))

    async def step(self) -> None:
        """One pass: start what may start, watch what runs, probe what is due."""
        for container in [*self.init, *self.apps]:
            await self.watch_exit(container)
        # init containers in order; a sidecar counts as done once started
        for container in self.init:
            if container.kind == "init" and container.exited_zero:
                continue
            if not container.running:
                await self.maybe_start(container)
            if container.kind == "init" or not container.started:
                await self.probe_all(container)
                return
        self.initialized = True
        for container in self.init:
            await self.probe_all(container)
        for container in self.apps:
            if not container.running:
                await self.maybe_start(container)
            await self.probe_all(container)

    async def watch_exit(self, container: Container) -> None:
        process = container.process
        if process is None or process.returncode is None:
            return
        code = process.returncode
        finished = now()
        terminated = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": container.started_at,
            "finishedAt": finished,
        }
        if code < 0 and -code == signal.SIGKILL and container.liveness and container.liveness.failed:
            terminated["reason"] = "Error"
        container.process = None
        container.last_state = {"terminated": terminated}
        if container.kind == "init" and code == 0:
            container.exited_zero = True
            container.state = {"terminated": terminated}
            return
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if container.kind == "sidecar" or policy == "Always" or (policy == "OnFailure" and code != 0):
            if time.monotonic() - container.started_mono > 600:
                container.backoff, container.crashes = BACKOFF_START, 0
            # as kubelet: the first restart at once, then 10 s, 20 s, ... while it keeps failing
            delay = 0.0 if container.crashes == 0 else container.backoff
            if container.crashes:
                container.backoff = min(container.backoff * 2, BACKOFF_MAX)
            container.crashes += 1
            container.backoff_until = time.monotonic() + delay
            if delay:
                container.state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off {int(delay)}s restarting failed container={container.name} "
                        f"pod={self.name}_{self.namespace}({self.uid})",
                    }
                }
            else:
                container.state = {"terminated": terminated}
        else:
            container.state = {"terminated": terminated}
        self.log.info("container %s exited with %s", container.name, code)

    async def maybe_start(self, container: Container) -> None:
        if container.exited_zero or time.monotonic() < container.backoff_until:
            return
        if (
            "terminated" in container.state
            and container.kind == "app"
            and self.pod["spec"].get("restartPolicy") == "Never"
        ):
            return
        try:
            spec_file = await self.container_spec(container)
        except ConfigError as exc:
            container.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
            return
        if container.process is None and container.started_at is not None:
            container.restarts += 1
        log_file = self.dir / f"{container.name}.log"
        with log_file.open("ab") as log:
            log.write(f"--- {now()} start #{container.restarts}\n".encode())
            log.flush()
            container.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "e2e.runtime.launch",
                str(spec_file),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(images.ROOT),
                env={"PYTHONPATH": str(images.ROOT), "PATH": os.environ.get("PATH", "")},
                start_new_session=True,
            )
        (self.dir / f"{container.name}.pid").write_text(f"{container.process.pid}\n")
        container.started_at = now()
        container.started_mono = time.monotonic()
        container.state = {"running": {"startedAt": container.started_at}}
        container.reset_probes()
        self.log.info("started %s (pid %d)", container.name, container.process.pid)

    async def container_spec(self, container: Container) -> Path:
        spec = container.spec
        image = images.image_of(spec.get("image", ""))
        if image is None:
            raise ConfigError(f"image {spec.get('image')!r} is not one this runtime can run (e2e/runtime/images.py)")
        env = await self.container_env(container, image)
        command = [expand(c, env) for c in spec.get("command") or []]
        args = [expand(a, env) for a in spec.get("args") or []]
        if command:
            argv = command + args
        else:
            argv = [*image.entrypoint, *(args if spec.get("args") is not None else image.cmd)]
        security = {**(self.pod["spec"].get("securityContext") or {}), **(spec.get("securityContext") or {})}
        uid = int(security.get("runAsUser", image.user))
        if security.get("runAsNonRoot") and uid == 0:
            raise ConfigError("container has runAsNonRoot and image will run as root")
        gid = int(security.get("runAsGroup", uid))
        binds: list[dict[str, Any]] = []
        for target, binary in image.binaries.items():
            binds.append({"source": str(self.runtime.bin_dir / binary), "target": target, "readOnly": True})
        for target, module in image.scripts.items():
            script = self.runtime.workdir / "scripts" / module
            binds.append({"source": str(script), "target": target, "readOnly": True})
        if image.vllm_parser:
            binds.append({"source": str(self.runtime.parser_dir), "target": VLLM_PARSER_DIR})
        if image.scripts:
            for host_dir in images.hidden_host_dirs():
                binds.append({"source": host_dir, "target": host_dir, "readOnly": True})
        for mount in spec.get("volumeMounts") or []:
            source = self.dir / "volumes" / mount["name"]
            if mount.get("subPath"):
                source = source / expand(mount["subPath"], env)
            if not source.exists():
                raise ConfigError(f"volume {mount['name']!r} is not prepared")
            binds.append({"source": str(source), "target": mount["mountPath"], "readOnly": bool(mount.get("readOnly"))})
        launch = {
            "netns": self.netns,
            "hostname": self.name[:63],
            "scratch": str(self.dir / "rootfs" / container.name / "scratch"),
            "root": str(self.dir / "rootfs" / container.name / "root"),
            "binds": binds,
            "traversable": images.interpreter_dirs() if image.scripts else [],
            "readOnlyRoot": bool(security.get("readOnlyRootFilesystem")),
            "uid": uid,
            "gid": gid,
            "workingDir": spec.get("workingDir") or "/",
            "argv": argv,
            "env": env,
        }
        path = self.dir / f"{container.name}.launch.json"
        path.write_text(json.dumps(launch, indent=1))
        return path

    async def container_env(self, container: Container, image: images.Image) -> dict[str, str]:
        material = Material(self.runtime.api, self.namespace)
        env: dict[str, str] = {"PATH": images.IMAGE_PATH, **image.env, "HOSTNAME": self.name}
        env.update(self.runtime.service_env())
        for source in container.spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source:
                    data = await material.data(kind, source[key]["name"], bool(source[key].get("optional")))
                    env.update({prefix + k: v.decode() for k, v in (data or {}).items()})
        for var in container.spec.get("env") or []:
            name = var["name"]
            if "value" in var:
                env[name] = expand(var["value"], env)
                continue
            ref = var.get("valueFrom") or {}
            if "fieldRef" in ref:
                env[name] = field_value(self.pod, ref["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in ref:
                resource = ref["resourceFieldRef"]["resource"]
                section, _, res = resource.partition(".")
                env[name] = str(((container.spec.get("resources") or {}).get(section) or {}).get(res, "0"))
            else:
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if key in ref:
                        sel = ref[key]
                        data = await material.data(kind, sel["name"], bool(sel.get("optional")))
                        if data is None or sel["key"] not in data:
                            if sel.get("optional"):
                                break
                            raise ConfigError(
                                f"couldn't find key {sel['key']} in {kind} {self.namespace}/{sel['name']}"
                            )
                        env[name] = data[sel["key"]].decode()
        return env

    async def prepare_volumes(self) -> None:
        material = Material(self.runtime.api, self.namespace)
        root = self.dir / "volumes"
        for volume in self.pod["spec"].get("volumes") or []:
            target = root / volume["name"]
            if "emptyDir" in volume:
                target.mkdir(parents=True, exist_ok=True)
                target.chmod(0o777)
            elif "configMap" in volume or "secret" in volume:
                kind = "ConfigMap" if "configMap" in volume else "Secret"
                source = volume["configMap"] if kind == "ConfigMap" else volume["secret"]
                name = source.get("name") or source.get("secretName")
                data = await material.data(kind, name, bool(source.get("optional")))
                _write_items(
                    target,
                    data or {},
                    source.get("items"),
                    source.get("defaultMode", 0o644),
                    f"{kind} {name}",
                    bool(source.get("optional")),
                )
            elif "projected" in volume:
                await self.projected(target, volume["projected"], material)
            elif "downwardAPI" in volume:
                target.mkdir(parents=True, exist_ok=True)
                for item in volume["downwardAPI"].get("items") or []:
                    (target / item["path"]).write_text(field_value(self.pod, item["fieldRef"]["fieldPath"]))
            else:
                raise ConfigError(f"volume {volume['name']!r}: kind not supported by the e2e runtime")

    async def projected(self, target: Path, projected: dict[str, Any], material: Material) -> None:
        target.mkdir(parents=True, exist_ok=True)
        mode = projected.get("defaultMode", 0o644)
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                body: dict[str, Any] = {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {
                        "expirationSeconds": int(token.get("expirationSeconds", 3607)),
                        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
                    },
                }
                if token.get("audience"):
                    body["spec"]["audiences"] = [token["audience"]]
                account = self.pod["spec"].get("serviceAccountName") or "default"
                answer = await self.runtime.api.request(
                    "POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token", body
                )
                path = target / token["path"]
                path.write_text(answer["status"]["token"])
                path.chmod(mode)
            elif "configMap" in source or "secret" in source:
                kind = "ConfigMap" if "configMap" in source else "Secret"
                sel = source["configMap"] if kind == "ConfigMap" else source["secret"]
                data = await material.data(kind, sel["name"], bool(sel.get("optional")))
                _write_items(
                    target, data or {}, sel.get("items"), mode, f"{kind} {sel['name']}", bool(sel.get("optional"))
                )
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items") or []:
                    path = target / item["path"]
                    path.write_text(field_value(self.pod, item["fieldRef"]["fieldPath"]))
                    path.chmod(mode)

    # -- probes ---------------------------------------------------------------------------------
    async def probe_all(self, container: Container) -> None:
        if not container.running:
            return
        moment = time.monotonic()
        order: list[tuple[str, Probe | None]] = [("startup", container.startup)]
        if container.startup is None or container.startup.ok:
            order += [("readiness", container.readiness), ("liveness", container.liveness)]
        for kind, probe in order:
            if probe is None or moment < probe.next_at or (kind == "startup" and probe.ok):
                continue
            probe.next_at = moment + probe.period
            passed = await self.run_probe(probe)
            probe.record(passed)
            if kind in ("startup", "liveness") and probe.failed:
                self.log.info("%s probe of %s failed %d times: restarting it", kind, container.name, probe.failures)
                await self.stop_container(
                    container, grace=float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
                )
                return

    async def run_probe(self, probe: Probe) -> bool:
        spec, host = probe.spec, self.pod_ip or "127.0.0.1"
        try:
            if "httpGet" in spec:
                get = spec["httpGet"]
                scheme = get.get("scheme", "HTTP").lower()
                port = self.resolve_port(get["port"])
                url = f"{scheme}://{get.get('host') or host}:{port}{get.get('path', '/')}"
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(
                        url, timeout=aiohttp.ClientTimeout(total=probe.timeout), ssl=False, allow_redirects=False
                    ) as response,
                ):
                    return 200 <= response.status < 400
            if "tcpSocket" in spec:
                port = self.resolve_port(spec["tcpSocket"]["port"])
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), probe.timeout)
                writer.close()
                return True
            if "grpc" in spec:
                return await grpc_health(
                    host, int(spec["grpc"]["port"]), spec["grpc"].get("service", ""), probe.timeout
                )
            if "exec" in spec:
                return False  # not rendered by the operator; a probe we cannot run fails, never passes
        except (OSError, TimeoutError, aiohttp.ClientError):
            return False
        return False

    def resolve_port(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for container in [*self.init, *self.apps]:
            for entry in container.spec.get("ports") or []:
                if entry.get("name") == port:
                    return int(entry["containerPort"])
        raise ConfigError(f"named port {port!r} not found")

    # -- stop -----------------------------------------------------------------------------------
    async def stop_container(self, container: Container, grace: float) -> None:
        """A kubelet's kill: the preStop hook, then SIGTERM, then SIGKILL once ``grace`` (which
        covers the hook too) is spent. Of the hooks only ``sleep`` is run; another one is logged
        as failed and the kill goes on, as a kubelet does with a failing hook (FailedPreStopHook)."""
        process = container.process
        if process is None or process.returncode is not None:
            return
        started = time.monotonic()
        pre_stop = (container.spec.get("lifecycle") or {}).get("preStop")
        if pre_stop:
            if set(pre_stop) == {"sleep"}:
                await asyncio.sleep(min(float(pre_stop["sleep"]["seconds"]), grace))
            else:
                self.log.error("FailedPreStopHook: %s: %s not run by this runtime", container.name, sorted(pre_stop))
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), max(grace - (time.monotonic() - started), 0.1))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        await self.watch_exit(container)

    async def kill_all(self) -> None:
        for container in [*self.apps, *reversed(self.init)]:
            if container.process and container.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    container.process.kill()
                with contextlib.suppress(Exception):
                    await container.process.wait()

    async def terminate(self) -> None:
        """Graceful stop on deletion: app containers first, then sidecars in reverse order."""
        grace = float(self.pod["metadata"].get("deletionGracePeriodSeconds") or 30)
        deadline = time.monotonic() + grace
        await asyncio.gather(*(self.stop_container(c, max(deadline - time.monotonic(), 0.1)) for c in self.apps))
        for container in reversed(self.init):
            await self.stop_container(container, max(deadline - time.monotonic(), 0.1))
        with contextlib.suppress(ApiError):
            await self.runtime.api.request(
                "DELETE",
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}",
                {
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )
        self.log.info("pod removed")

    # -- status ---------------------------------------------------------------------------------
    def container_status(self, container: Container) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": container.name,
            "image": container.spec.get("image"),
            "imageID": f"disagg-runtime/{container.spec.get('image')}",
            "ready": container.ready if container.kind != "init" else False,
            "started": container.started,
            "restartCount": container.restarts,
            "state": container.state,
        }
        if container.kind == "sidecar":
            status["ready"] = container.ready
        if container.process is not None:
            status["containerID"] = f"disagg-runtime://{self.key}-{container.name}-{container.process.pid}"
        if container.last_state:
            status["lastState"] = container.last_state
        return status

    def status(self) -> dict[str, Any]:
        stamp = now()
        apps_ready = all(c.ready for c in self.apps) and all(c.ready for c in self.init if c.kind == "sidecar")
        phase = "Running" if self.initialized and any(c.running for c in self.apps) else "Pending"
        previous = {c["type"]: c for c in (self.pod.get("status") or {}).get("conditions") or []}

        def condition(kind: str, value: bool, reason: str = "") -> dict[str, Any]:
            status = "True" if value else "False"
            old = previous.get(kind)
            changed = old is None or old.get("status") != status
            entry = {
                "type": kind,
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": stamp if changed else old.get("lastTransitionTime"),
            }
            if reason and not value:
                entry["reason"] = reason
            return entry

        not_ready = [c.name for c in [*self.init, *self.apps] if c.kind != "init" and not c.ready]
        reason = "ContainersNotReady" if not_ready else ""
        conditions = [
            condition("PodReadyToStartContainers", self.netns is not None),
            condition("Initialized", self.initialized, "ContainersNotInitialized"),
            condition("ContainersReady", apps_ready, reason),
            condition("Ready", apps_ready, reason),
        ]
        for entry in conditions:
            if entry["status"] == "False" and not_ready and entry["type"] in ("Ready", "ContainersReady"):
                entry["message"] = f"containers with unready status: [{' '.join(not_ready)}]"
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}] if self.pod_ip else [],
            "startTime": self.started_at,
            "containerStatuses": [self.container_status(c) for c in self.apps],
            "qosClass": (self.pod.get("status") or {}).get("qosClass") or "Burstable",
        }
        if self.init:
            status["initContainerStatuses"] = [self.container_status(c) for c in self.init]
        if self.config_error:
            for entry in status["containerStatuses"]:
                entry["state"] = {"waiting": {"reason": "CreateContainerConfigError", "message": self.config_error}}
        return status

    async def sync_status(self) -> None:
        status = self.status()
        text = json.dumps(status, sort_keys=True, default=str)
        comparable = re.sub(r'"lastTransitionTime": "[^"]*"', "", text)
        if comparable == self.last_status:
            return
        try:
            updated = await self.runtime.api.request(
                "PATCH",
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                {"status": status},
                content_type="application/strategic-merge-patch+json",
            )
        except ApiError as exc:
            if exc.status == 404:
                self.deleting.set()
                return
            raise
        self.last_status = comparable
        self.pod = {**self.pod, "status": updated.get("status", status)}


async def grpc_health(host: str, port: int, service: str, timeout: float) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


class Runtime:
    def __init__(self, kubeconfig: str, bin_dir: Path, workdir: Path, parser_python: Path) -> None:
        self.api = Api(kubeconfig)
        self.parser_python = parser_python
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.bridge = PodBridge()
        self.workers: dict[str, PodWorker] = {}
        self.node_ips: dict[str, str] = {}
        self.proxy = ServiceProxy(self.api, self.bridge)
        self.parser_dir = workdir / "vllm-parser"
        self.parser: asyncio.subprocess.Process | None = None

    def service_env(self) -> dict[str, str]:
        """What kubelet always injects, enableServiceLinks or not: the API server's Service."""
        address = self.proxy.kubernetes_address
        if address is None:
            return {}
        host, port = address
        return {
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
            "KUBERNETES_PORT": f"tcp://{host}:{port}",
            "KUBERNETES_PORT_443_TCP": f"tcp://{host}:{port}",
            "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
            "KUBERNETES_PORT_443_TCP_PORT": str(port),
            "KUBERNETES_PORT_443_TCP_ADDR": host,
        }

    def write_scripts(self) -> None:
        scripts = self.workdir / "scripts"
        scripts.mkdir(parents=True, exist_ok=True)
        for image in images.IMAGES.values():
            for module in image.scripts.values():
                path = scripts / module
                path.write_text(images.script_text(module))
                path.chmod(0o755)

    async def watch_nodes(self) -> None:
        while True:
            try:
                async for _, node in self.api.watch("/api/v1/nodes"):
                    addresses = (node.get("status") or {}).get("addresses") or []
                    internal = next((a["address"] for a in addresses if a["type"] == "InternalIP"), None)
                    if internal:
                        self.node_ips[node["metadata"]["name"]] = internal
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                LOG.warning("node watch: %s", exc)
            await asyncio.sleep(1)

    async def watch_pods(self) -> None:
        while True:
            try:
                async for kind, pod in self.api.watch("/api/v1/pods"):
                    uid = pod["metadata"]["uid"]
                    worker = self.workers.get(uid)
                    if kind == "DELETED":
                        if worker and worker.task:
                            worker.task.cancel()
                        continue
                    if worker is not None:
                        worker.update(pod)
                    elif managed(pod) and not pod["metadata"].get("deletionTimestamp"):
                        worker = PodWorker(self, pod)
                        self.workers[uid] = worker
                        worker.task = asyncio.create_task(worker.run(), name=f"pod {pod['metadata']['name']}")
                    elif managed(pod):
                        # terminating and not ours (left by a runtime that stopped): finish it
                        await self.api.request(
                            "DELETE",
                            f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}",
                            {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
                        )
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                LOG.warning("pod watch: %s", exc)
            await asyncio.sleep(1)

    async def start_parser(self, python: Path, timeout: float = 180) -> None:
        """vLLM's own argument parser as a server (importing vLLM takes seconds; every engine
        container start asks it through a socket bound into the container)."""
        self.parser_dir.mkdir(parents=True, exist_ok=True)
        self.parser_dir.chmod(0o755)
        ready = self.parser_dir / "ready"
        ready.unlink(missing_ok=True)
        socket_path = self.parser_dir / os.path.basename(DEFAULT_SOCKET)
        log = (self.workdir / "vllm-parser.log").open("ab")
        self.parser = await asyncio.create_subprocess_exec(
            str(python), "-m", "e2e.runtime.vllm_args", "--serve", str(socket_path), "--ready-file", str(ready),
            stdout=log, stderr=log, cwd=str(images.ROOT), env={**os.environ, "PYTHONPATH": str(images.ROOT)},
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.parser.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the vLLM parser server did not start (see {self.workdir / 'vllm-parser.log'})")
            await asyncio.sleep(0.2)

    async def run(self, ready_file: Path | None) -> None:
        self.write_scripts()
        await self.start_parser(self.parser_python)
        await asyncio.to_thread(self.bridge.open)
        async with self.api:
            tasks = [
                asyncio.create_task(self.watch_nodes()),
                asyncio.create_task(self.proxy.run()),
            ]
            await self.proxy.ready.wait()
            tasks.append(asyncio.create_task(self.watch_pods()))
            if ready_file:
                ready_file.write_text(f"{os.getpid()}\n")
            LOG.info("runtime ready")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            LOG.info("stopping: %d pods", len(self.workers))
            for task in tasks:
                task.cancel()
            workers = list(self.workers.values())
            for worker in workers:
                if worker.task:
                    worker.task.cancel()
            await asyncio.gather(*(w.task for w in workers if w.task), return_exceptions=True)
            await self.proxy.close()
        if self.parser and self.parser.returncode is None:
            self.parser.terminate()
            await self.parser.wait()
        await asyncio.to_thread(self.bridge.close)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.runtime.kubelet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument(
        "--bin-dir", required=True, type=Path, help="the tool bin dir (epp, pd-sidecar, llm-d-inference-sim)"
    )
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--ready-file", type=Path, help="written with the pid once the runtime serves")
    parser.add_argument(
        "--vllm-parser-python", type=Path, help="python with vLLM installed (default: BIN_DIR/vllm-parser-python)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the e2e runtime needs root (network and mount namespaces)", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    lock = open("/run/disagg-e2e-runtime.lock", "w")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(
            "another e2e runtime is running on this machine (/run/disagg-e2e-runtime.lock); `make demo` leaves"
            " one running with its cluster: `make cluster-down` stops it",
            file=sys.stderr,
        )
        return 3
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=[logging.FileHandler(args.workdir / "runtime.log")],
    )
    for binary in ("epp", "pd-sidecar", "llm-d-inference-sim", "vllm-parser-python"):
        if not (args.bin_dir / binary).exists() and not (binary == "vllm-parser-python" and args.vllm_parser_python):
            print(f"missing {args.bin_dir / binary}: run e2e/tools.sh", file=sys.stderr)
            return 2
    parser_python = args.vllm_parser_python or args.bin_dir / "vllm-parser-python"
    shutil.rmtree(args.workdir / "pods", ignore_errors=True)
    asyncio.run(Runtime(args.kubeconfig, args.bin_dir, args.workdir, parser_python).run(args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
