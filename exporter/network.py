"""The node's share of the cluster network, reconciled from the node list: routes to the other nodes' pods
(exporter/routing.py), egress masquerade (exporter/masquerade.py) and IP forwarding.

`sync()` runs at agent start and every housekeeping round; it works only when the node list changed, or
every RESYNC_S anyway so a route someone deleted by hand comes back. The node list is the API server's
Node objects in a cluster, else the `Node` manifests of the policy directories.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from exporter.masquerade import Masquerade
from exporter.nodes import NodeInfo
from exporter.routing import Router, RoutingConfig, plan

log = logging.getLogger("lumen.network")

RESYNC_S = 30.0
RETRY_S = 5.0  # after a failed sync (netlink refused, nft missing): not every housekeeping second
FORWARDING = {4: "net/ipv4/ip_forward", 6: "net/ipv6/conf/all/forwarding"}


@dataclass
class NetworkStatus:
    """For /api/v1/status-style reporting and tests: what the last sync saw and did."""

    nodes: list[str] = field(default_factory=list)
    routes: int = 0
    problems: list[str] = field(default_factory=list)
    error: str = ""
    synced_at: float = 0.0


def set_forwarding(version: int, proc: str = "/proc/sys") -> bool:
    """Switch IP forwarding on for one family (this network namespace); True if it was off."""
    path = f"{proc}/{FORWARDING[version]}"
    with open(path) as f:
        if f.read().strip() == "1":
            return False
    with open(path, "w") as f:
        f.write("1\n")
    return True


class NodeNetwork:
    def __init__(
        self,
        routing: RoutingConfig,
        nodes: Callable[[], Mapping[str, NodeInfo]],
        masquerade: Masquerade | None = None,
        router: Router | None = None,
        forwarding: Callable[[int], bool] = set_forwarding,
    ) -> None:
        self.cfg = routing
        self._nodes = nodes
        self.router = router or Router(routing)
        self.masquerade = masquerade
        self._forwarding = forwarding
        self._last: Mapping[str, NodeInfo] | None = None
        self._last_at = 0.0
        self._said_error = ""
        self.status = NetworkStatus()

    def sync(self, force: bool = False) -> bool:
        """Reconcile if the nodes changed (or force, or the resync interval passed); True if it did."""
        nodes = dict(self._nodes())
        # after a failure, a retry waits RETRY_S whatever changed; otherwise a change acts at once
        wait = RETRY_S if self.status.error else RESYNC_S
        changed = nodes != self._last and not self.status.error
        if not force and not changed and time.monotonic() - self._last_at < wait:
            return False
        if nodes != self._last:
            cidrs = {n: list(i.pod_cidrs) for n, i in sorted(nodes.items())}
            log.info("nodes", extra={"nodes": cidrs, "mode": self.cfg.mode})
        self._last, self._last_at = nodes, time.monotonic()
        p = plan(self.cfg, nodes)
        self.status = NetworkStatus(sorted(nodes), len(p.routes), list(p.problems), "", time.time())
        local = nodes.get(self.cfg.node)
        try:
            if local is not None:
                for version in sorted({ipaddress.ip_network(c).version for c in local.pod_cidrs}):
                    if self._forwarding(version):
                        log.info(
                            "IP forwarding switched on (pods reach other nodes and the world)",
                            extra={"family": f"IPv{version}"},
                        )
            self.router.apply(p)
            if self.masquerade is not None and local is not None:
                cluster = [c for n in nodes.values() for c in n.pod_cidrs]
                self.masquerade.apply(list(local.pod_cidrs), cluster)
        except OSError as e:
            if str(e) != self._said_error:  # said once per distinct error, retried every RETRY_S
                log.error("node network sync failed", extra={"error": str(e)})
            self.status.error = self._said_error = str(e)
            return True
        self._said_error = ""
        return True
