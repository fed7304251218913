"""Private network namespaces for running the real programs a pod would run, one pod per namespace.

Each :class:`PodNetwork` is a Linux network namespace of its own (``ip netns``) with only its
loopback up: a program in it has its own ``localhost`` and its own ports, as in a pod, and nothing
routes in or out. What a test must reach crosses by Unix sockets (the file system is shared, the
network is not), through :func:`bridge` processes started inside the namespace:

- ``export PORT=SOCKET``: a TCP port of the namespace's loopback, reachable from the host as a
  Unix socket (a probe, a scrape, a gRPC call);
- ``import SOCKET=PORT``: a Unix socket served on the host (e.g. a path to the kube-apiserver)
  reachable inside the namespace as ``127.0.0.1:PORT``.

Needs root (``ip netns add``). Every namespace, process and socket is removed by
:meth:`PodNetwork.close`; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

CHUNK = 65536


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def splice(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both sides are done, then close both."""
    there = threading.Thread(target=_pipe, args=(a, b), daemon=True)
    there.start()
    _pipe(b, a)
    there.join(timeout=600)
    for s in (a, b):
        with contextlib.suppress(OSError):
            s.close()


def serve(listener: socket.socket, connect: Callable[[], socket.socket], stop: threading.Event) -> threading.Thread:
    """Accept on ``listener`` and splice every connection to a fresh ``connect()`` (threads)."""
    listener.settimeout(0.2)

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = connect()
            except OSError:
                conn.close()
                continue
            threading.Thread(target=splice, args=(conn, upstream), daemon=True).start()
        listener.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def unix_listener(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(64)
    return sock


def tcp_listener(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


def unix_connect(path: str, timeout: float = 10) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    sock.settimeout(None)
    return sock


def tcp_connect(host: str, port: int, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)
    return sock


def bridge(argv: Sequence[str]) -> None:
    """Entry point run inside a namespace: serve the requested exports/imports until SIGTERM."""
    parser = argparse.ArgumentParser(prog="e2e.netns bridge")
    parser.add_argument("--export", action="append", default=[], metavar="PORT=SOCKET")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="SOCKET=PORT")
    parser.add_argument("--ready", required=True, help="file written once every listener is up")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for spec in args.export:
        port, path = spec.split("=", 1)
        serve(unix_listener(path), lambda p=int(port): tcp_connect("127.0.0.1", p), stop)
    for spec in args.imports:
        path, port = spec.split("=", 1)
        serve(tcp_listener(int(port)), lambda s=path: unix_connect(s), stop)
    Path(args.ready).write_text("ready\n")
    while not stop.wait(0.5):
        pass


class PodNetwork:
    """One network namespace standing for one pod's network: loopback only, bridged by Unix sockets."""

    def __init__(self, workdir: Path, label: str = "pod") -> None:
        if os.geteuid() != 0:
            raise RuntimeError("network namespaces need root (ip netns add)")
        if shutil.which("ip") is None:
            raise RuntimeError("`ip` (iproute2) is not installed")
        self.name = f"disagg-{label[:20]}-{uuid.uuid4().hex[:6]}"
        self.workdir = workdir
        # Unix socket paths are limited to 108 bytes: keep them short, outside long pytest paths
        self.sockets = Path(f"/tmp/dn-{uuid.uuid4().hex[:8]}")
        self.sockets.mkdir(mode=0o700)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        try:
            subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=30)
            subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True, timeout=30)
        except BaseException:
            subprocess.run(["ip", "netns", "delete", self.name], check=False, timeout=30)
            shutil.rmtree(self.sockets, ignore_errors=True)
            raise

    def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the namespace (its own process group), output to ``log``."""
        out = open(log or os.devnull, "ab")  # noqa: SIM115 - owned by the child process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv],
            env=dict(env) if env is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        self._procs.append(proc)
        return proc

    def bridge(self, *, exports: Sequence[int] = (), imports: Mapping[str, int] | None = None) -> dict[int, str]:
        """Start a bridge inside the namespace; returns the host-side Unix socket of each exported port."""
        ready = self.sockets / f"ready-{uuid.uuid4().hex[:6]}"
        paths = {port: str(self.sockets / f"p{port}") for port in exports}
        argv = [sys.executable, "-m", "e2e.netns", "bridge", "--ready", str(ready)]
        for port, path in paths.items():
            argv += ["--export", f"{port}={path}"]
        for path, port in (imports or {}).items():
            argv += ["--import", f"{path}={port}"]
        root = str(Path(__file__).resolve().parent.parent)
        proc = self.spawn(argv, env={**os.environ, "PYTHONPATH": root}, log=self.workdir / f"{self.name}-bridge.log")
        deadline = time.monotonic() + 20
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bridge in {self.name} did not start (exit {proc.poll()})")
            time.sleep(0.05)
        return paths

    def host_socket_to(self, host: str, port: int) -> str:
        """A Unix socket on the host side that leads to ``host:port`` of the host's network."""
        path = str(self.sockets / f"h{port}")
        self._threads.append(serve(unix_listener(path), lambda: tcp_connect(host, port), self._stop))
        return path

    def close(self) -> None:
        """Stop every process (TERM, then KILL), the bridges, the namespace and its sockets."""
        try:
            for proc in self._procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
            for proc in self._procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=10)
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=5)
            subprocess.run(["ip", "netns", "delete", self.name], check=False, timeout=30)
            shutil.rmtree(self.sockets, ignore_errors=True)


class TlsPipe:
    """A plaintext TCP port on the host's loopback that reaches a TLS server behind a Unix socket.

    Stands in for Envoy's ``UpstreamTlsContext`` with an empty validation context: TLS (ALPN h2),
    no certificate verification, as llm-d's Envoy talks to the endpoint picker's self-signed
    certificate. gRPC clients then use a plaintext channel to :attr:`port`. One asyncio loop in
    one thread owns every TLS connection (an SSL object is never used from two threads); the
    handshake is bounded.
    """

    HANDSHAKE_SECONDS = 10.0

    def __init__(self, unix_path: str) -> None:
        self._context = ssl.create_default_context()
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE
        self._context.set_alpn_protocols(["h2"])
        self._path = unix_path
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(timeout=10):
            raise RuntimeError("TLS pipe did not start")

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port: int = self._server.sockets[0].getsockname()[1]
        started.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self._path, ssl=self._context, server_hostname="localhost"),
                timeout=self.HANDSHAKE_SECONDS,
            )
        except (OSError, TimeoutError, ssl.SSLError):
            writer.close()
            return
        self._writers.add(up_writer)

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(CHUNK):
                    sink.write(data)
                    await sink.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                sink.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in self._writers:
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "bridge":
        bridge(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m e2e.netns bridge --export PORT=SOCKET --import SOCKET=PORT --ready FILE")
