"""kube-proxy for the e2e runtime: ClusterIP Services answered on their ClusterIPs.

For every TCP port of every ClusterIP Service, a listener on ``clusterIP:port`` (the address is
put on the run's bridge, where pods route the Service range). A connection goes to the next
*ready* endpoint of the Service's EndpointSlices (round robin), on the port whose name matches,
as kube-proxy does; no ready endpoint means the connection is refused. ``default/kubernetes``
goes to the API server the kubeconfig names (it listens on loopback here, which no
EndpointSlice can express).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

import aiohttp

from e2e.runtime.api import Api, ApiError
from e2e.runtime.network import PodBridge

LOG = logging.getLogger("disagg.runtime.proxy")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()


class ServiceProxy:
    def __init__(self, api: Api, bridge: PodBridge) -> None:
        self.api = api
        self.bridge = bridge
        self.ready = asyncio.Event()
        self.services: dict[str, dict[str, Any]] = {}
        self.slices: dict[str, dict[str, Any]] = {}
        """slice uid -> slice"""
        self.listeners: dict[tuple[str, int], tuple[asyncio.Server, str, str]] = {}
        """(clusterIP, port) -> (server, service key, port name)"""
        self._turn = itertools.count()
        self.kubernetes_address: tuple[str, int] | None = None

    async def run(self) -> None:
        await asyncio.gather(self._watch_services(), self._watch_slices())

    async def _watch_services(self) -> None:
        while True:
            try:
                async for kind, service in self.api.watch("/api/v1/services"):
                    key = f"{service['metadata']['namespace']}/{service['metadata']['name']}"
                    if kind == "DELETED":
                        self.services.pop(key, None)
                    else:
                        self.services[key] = service
                    await self._reconcile()
                    if key == "default/kubernetes" and kind != "DELETED":
                        self.kubernetes_address = (service["spec"]["clusterIP"], 443)
                        self.ready.set()
            except (ApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                LOG.warning("service watch: %s", exc)
            await asyncio.sleep(1)

    async def _watch_slices(self) -> None:
        while True:
            try:
                async for kind, item in self.api.watch("/apis/discovery.k8s.io/v1/endpointslices"):
                    uid = item["metadata"]["uid"]
                    if kind == "DELETED":
                        self.slices.pop(uid, None)
                    else:
                        self.slices[uid] = item
            except (ApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                LOG.warning("endpointslice watch: %s", exc)
            await asyncio.sleep(1)

    def _wanted(self) -> dict[tuple[str, int], tuple[str, str]]:
        wanted: dict[tuple[str, int], tuple[str, str]] = {}
        for key, service in self.services.items():
            spec = service.get("spec") or {}
            address = spec.get("clusterIP")
            if spec.get("type", "ClusterIP") not in ("ClusterIP", "NodePort", "LoadBalancer"):
                continue
            if not address or address == "None":
                continue
            for port in spec.get("ports") or []:
                if port.get("protocol", "TCP") == "TCP":
                    wanted[(address, int(port["port"]))] = (key, str(port.get("name") or ""))
        return wanted

    async def _reconcile(self) -> None:
        wanted = self._wanted()
        for address, (server, _, _) in list(self.listeners.items()):
            if address not in wanted:
                server.close()
                del self.listeners[address]
                if not any(a[0] == address[0] for a in self.listeners):
                    await asyncio.to_thread(self.bridge.remove_service_ip, address[0])
        for address, (key, port_name) in wanted.items():
            if address in self.listeners:
                continue
            await asyncio.to_thread(self.bridge.add_service_ip, address[0])

            async def handle(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: tuple[str, int] = address
            ) -> None:
                await self._forward(address, reader, writer)

            try:
                server = await asyncio.start_server(handle, address[0], address[1], reuse_address=True)
            except OSError as exc:
                LOG.warning("cannot listen on %s:%d for %s: %s", address[0], address[1], key, exc)
                continue
            self.listeners[address] = (server, key, port_name)

    def endpoints(self, key: str, port_name: str) -> list[tuple[str, int]]:
        if key == "default/kubernetes":
            return [(self.api.host, self.api.port)]
        namespace, name = key.split("/", 1)
        found: list[tuple[str, int]] = []
        for item in self.slices.values():
            meta = item["metadata"]
            if (
                meta.get("namespace") != namespace
                or (meta.get("labels") or {}).get("kubernetes.io/service-name") != name
            ):
                continue
            port = next((p.get("port") for p in item.get("ports") or [] if str(p.get("name") or "") == port_name), None)
            if port is None:
                continue
            for endpoint in item.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                found += [(a, int(port)) for a in endpoint.get("addresses") or []]
        return sorted(found)

    async def _forward(
        self, address: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        entry = self.listeners.get(address)
        targets = self.endpoints(entry[1], entry[2]) if entry else []
        if not targets:
            writer.close()
            return
        host, port = targets[next(self._turn) % len(targets)]
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, TimeoutError):
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        for w in (writer, upstream_writer):
            w.close()

    async def close(self) -> None:
        for server, _, _ in self.listeners.values():
            server.close()
        for address in {a[0] for a in self.listeners}:
            await asyncio.to_thread(self.bridge.remove_service_ip, address)
        self.listeners.clear()
