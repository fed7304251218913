"""Pod networking for the e2e runtime: one network namespace per pod on a bridge the run creates.

Layout (all created by the run, all removed by ``PodBridge.close``):

- bridge ``dgbr0`` in the host's namespace with ``10.250.0.1/16``; per-bridge netfilter off, so
  no host firewall rule sees (or drops) pod-to-pod frames;
- per pod a namespace ``dgp-<id>`` with ``lo`` and ``eth0`` (one end of a veth pair whose other
  end is on the bridge), the pod IP ``10.250.x.y/16``, and one route: the Service range
  ``10.96.0.0/16`` via the bridge address. There is no default route, so nothing a pod sends can
  leave the pod range and the Service range;
- each Service ClusterIP a ``/32`` on the bridge, where the runtime's Service proxy listens.

The host's namespace reaches pod IPs over the bridge (Prometheus, probes, the tests' clients);
``net.ipv4.ip_forward`` is not changed, and a blackhole route for the Service range keeps a
ClusterIP that has no listener from being routed anywhere.
"""

from __future__ import annotations

import ipaddress
import subprocess
import threading
from pathlib import Path

BRIDGE = "dgbr0"
POD_CIDR = ipaddress.ip_network("10.250.0.0/16")
GATEWAY = ipaddress.ip_address("10.250.0.1")
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
NETNS_DIR = Path("/var/run/netns")


def ip(*args: str, check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


class PodBridge:
    """The bridge, the pod address pool and the namespaces hanging off it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: dict[str, str] = {}
        """pod IP -> namespace name"""
        self._next = 0
        """offset of the next address to try, from the first pod address (gateway + 1)"""
        self._service_ips: set[str] = set()

    def open(self) -> None:
        if ip("link", "show", BRIDGE, check=False).returncode == 0:
            ip("link", "delete", BRIDGE)  # left over by a run that was killed
        for name in stale_namespaces():
            ip("netns", "delete", name, check=False)
        ip("link", "add", BRIDGE, "type", "bridge")
        Path(f"/sys/class/net/{BRIDGE}/bridge/nf_call_iptables").write_text("0\n")
        Path(f"/sys/class/net/{BRIDGE}/bridge/nf_call_ip6tables").write_text("0\n")
        ip("addr", "add", f"{GATEWAY}/{POD_CIDR.prefixlen}", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        ip("route", "replace", "blackhole", str(SERVICE_CIDR))

    def close(self) -> None:
        with self._lock:
            names = list(self._used.values())
            self._used.clear()
        for name in names:
            ip("netns", "delete", name, check=False)
        ip("route", "delete", "blackhole", str(SERVICE_CIDR), check=False)
        ip("link", "delete", BRIDGE, check=False)

    def _allocate(self, netns: str) -> str:
        first, size = int(GATEWAY) + 1, POD_CIDR.num_addresses - 3
        with self._lock:
            for step in range(size):
                offset = (self._next + step) % size
                candidate = str(ipaddress.ip_address(first + offset))
                if candidate not in self._used:
                    self._used[candidate] = netns
                    self._next = offset + 1
                    return candidate
        raise RuntimeError("pod address pool exhausted")

    def add_pod(self, key: str) -> tuple[str, str]:
        """Create the namespace of one pod; returns (namespace name, pod IP)."""
        netns = f"dgp-{key}"
        pod_ip = self._allocate(netns)
        host_end = f"vh{key}"[:15]
        try:
            ip("netns", "add", netns)
            ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", netns)
            ip("link", "set", host_end, "master", BRIDGE, "up")
            ip("addr", "add", f"{pod_ip}/{POD_CIDR.prefixlen}", "dev", "eth0", netns=netns)
            ip("link", "set", "lo", "up", netns=netns)
            ip("link", "set", "eth0", "up", netns=netns)
            ip("route", "add", str(SERVICE_CIDR), "via", str(GATEWAY), "dev", "eth0", netns=netns)
        except Exception:
            self.remove_pod(netns, pod_ip)
            raise
        return netns, pod_ip

    def remove_pod(self, netns: str, pod_ip: str) -> None:
        ip("netns", "delete", netns, check=False)  # takes the veth pair with it
        with self._lock:
            self._used.pop(pod_ip, None)

    def add_service_ip(self, address: str) -> None:
        with self._lock:
            if address in self._service_ips:
                return
            self._service_ips.add(address)
        ip("addr", "replace", f"{address}/32", "dev", BRIDGE)

    def remove_service_ip(self, address: str) -> None:
        with self._lock:
            if address not in self._service_ips:
                return
            self._service_ips.discard(address)
        ip("addr", "delete", f"{address}/32", "dev", BRIDGE, check=False)


def stale_namespaces() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith("dgp-"))
