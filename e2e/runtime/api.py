"""A small asyncio client of the kube-apiserver for the e2e runtime (aiohttp, the kubeconfig's client cert)."""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import yaml


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


def _material(entry: dict[str, Any], key: str, scratch: Path) -> str | None:
    """A kubeconfig field given as a file path or as ``<key>-data``; always returned as a path."""
    if entry.get(key):
        return str(entry[key])
    data = entry.get(f"{key}-data")
    if not data:
        return None
    path = scratch / key
    path.write_bytes(base64.b64decode(data))
    return str(path)


class Api:
    def __init__(self, kubeconfig: str) -> None:
        config = yaml.safe_load(Path(kubeconfig).read_text())
        context_name = config.get("current-context")
        context = next((c["context"] for c in config["contexts"] if c["name"] == context_name), None)
        context = context or config["contexts"][0]["context"]
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        self._scratch = Path(tempfile.mkdtemp(prefix="disagg-runtime-api-"))
        self.server = str(cluster["server"]).rstrip("/")
        parsed = urlparse(self.server)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 443
        self.ca_file = _material(cluster, "certificate-authority", self._scratch)
        self.ssl = ssl.create_default_context(cafile=self.ca_file)
        cert, key = _material(user, "client-certificate", self._scratch), _material(user, "client-key", self._scratch)
        if cert and key:
            self.ssl.load_cert_chain(cert, key)
        self._headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl, limit=64),
            headers={**self._headers, "User-Agent": "disagg-e2e-runtime"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with Api(...)`"
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Any:
        data = None if body is None else json.dumps(body)
        async with self.session.request(
            method,
            self.server + path,
            data=data,
            params=params,
            headers={"Content-Type": content_type},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, text)
            return json.loads(text) if text else None

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def maybe_get(self, path: str) -> Any:
        try:
            return await self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def watch(self, path: str, params: dict[str, str] | None = None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """LIST (yields ("ADDED", obj) for each) then WATCH from that resourceVersion; ends on a
        410 / expired watch, so the caller relists."""
        listing = await self.request("GET", path, params=params, timeout=60)
        for item in listing.get("items", []):
            yield "ADDED", item
        query = {**(params or {}), "watch": "1", "resourceVersion": listing["metadata"]["resourceVersion"]}
        query["allowWatchBookmarks"] = "true"
        async with self.session.get(
            self.server + path, params=query, timeout=aiohttp.ClientTimeout(total=None, sock_read=300)
        ) as response:
            if response.status >= 400:
                raise ApiError(response.status, await response.text())
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":
                    return
                if event["type"] != "BOOKMARK":
                    yield event["type"], event["object"]
