"""Which agents the relay asks: given on the command line, or found in the cluster.

In a cluster, `nodes` lists the Node objects (every node is expected to run an agent, so a node whose
agent does not answer is named as unreachable) and reaches each at its InternalIP; `endpointslices`
lists the headless agent Service's EndpointSlices (only agents that exist as pods). Both re-list every
REFRESH_S, so nodes coming and going are followed. The `kubernetes` client is imported only then.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("lumen.relay")

REFRESH_S = 15.0
KINDS = ("nodes", "endpointslices")


@dataclass(frozen=True, order=True)
class Target:
    name: str  # the node name where known; how the relay names the agent everywhere
    url: str  # base URL, no trailing slash


class Discovery(Protocol):
    def targets(self) -> list[Target]: ...

    async def refresh(self) -> None: ...


def parse_agent(arg: str) -> Target:
    """`--agent URL` or `--agent name=URL`; ValueError with the reason."""
    name, eq, url = arg.partition("=")
    if not eq or "://" in name:
        name, url = "", arg
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--agent {arg!r}: expected http(s)://host:port or name=http(s)://host:port")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"--agent {arg!r}: bad port") from None
    return Target(name or parts.netloc, url.rstrip("/"))


class Static:
    """Agents named on the command line."""

    def __init__(self, targets: Sequence[Target]) -> None:
        names = [t.name for t in targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"agent names given twice: {', '.join(dupes)} (use name=URL)")
        self._targets = list(targets)

    def targets(self) -> list[Target]:
        return list(self._targets)

    async def refresh(self) -> None:
        return None


def _url(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"{scheme}://{host}:{port}"


def targets_from_nodes(nodes: Iterable[Any], scheme: str, port: int) -> list[Target]:
    """Node objects (kubernetes client models) -> one target per node with an InternalIP."""
    out = []
    for node in nodes:
        addresses = getattr(node.status, "addresses", None) or []
        internal = [a.address for a in addresses if a.type == "InternalIP"]
        if not internal:
            log.warning("node without an InternalIP: not asked", extra={"node": node.metadata.name})
            continue
        out.append(Target(node.metadata.name, _url(scheme, internal[0], port)))
    return sorted(out)


def targets_from_slices(
    slices: Iterable[Any], scheme: str, port_name: str | None, default_port: int
) -> list[Target]:
    """EndpointSlices of the agents' Service -> one target per endpoint, named by its node."""
    out: dict[str, Target] = {}
    for s in slices:
        ports = s.ports or []
        port = next((p.port for p in ports if port_name is None or p.name == port_name), None)
        for ep in s.endpoints or []:
            if not ep.addresses:
                continue
            address = ep.addresses[0]
            name = getattr(ep, "node_name", None) or address
            out[name] = Target(name, _url(scheme, address, port or default_port))
    return sorted(out.values())


class Kube:
    """Agents found through the API server (in-cluster config)."""

    def __init__(
        self,
        kind: str,
        scheme: str = "http",
        port: int = 9465,
        namespace: str = "lumen-system",
        service: str = "lumen-agent",
        port_name: str | None = "metrics",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"discovery {kind!r}: expected one of {', '.join(KINDS)}")
        self.kind, self.scheme, self.port = kind, scheme, port
        self.namespace, self.service, self.port_name = namespace, service, port_name
        self._targets: list[Target] = []
        self._listed = 0.0
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self._api: Any = None

    def targets(self) -> list[Target]:
        return list(self._targets)

    async def refresh(self) -> None:
        """List now if nothing was listed yet; a stale list is re-listed in the background, so a
        query never waits on the API server once the relay knows its agents."""
        if self._listed and time.monotonic() - self._listed < REFRESH_S:
            return
        if not self._listed:
            await self._relist()
        elif self._background is None or self._background.done():
            self._background = asyncio.create_task(self._relist())

    async def _relist(self) -> None:
        async with self._lock:
            if self._listed and time.monotonic() - self._listed < REFRESH_S:
                return
            try:
                self._targets = await asyncio.to_thread(self._list)
                self._listed = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - keep the last list while the API server is away
                log.warning("agent discovery failed; keeping the last list", extra={"error": str(exc)})

    def _list(self) -> list[Target]:
        from kubernetes import client, config  # type: ignore[import-not-found]  # only in a cluster

        if self._api is None:
            config.load_incluster_config()
            self._api = client
        if self.kind == "nodes":
            items = self._api.CoreV1Api().list_node(timeout_seconds=10).items
            return targets_from_nodes(items, self.scheme, self.port)
        slices = self._api.DiscoveryV1Api().list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"kubernetes.io/service-name={self.service}", timeout_seconds=10
        )
        return targets_from_slices(slices.items, self.scheme, self.port_name, self.port)
