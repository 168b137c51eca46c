"""Routes to the other nodes' pods, owned by the agent. Two modes (one config key, `routing_mode`):

  direct  nodes share an L2 segment: per remote pod CIDR a route via that node's InternalIP of the same
          family (flannel's host-gw, Cilium's auto-direct-node-routes).
  vxlan   nodes anywhere the underlay routes: one kernel VXLAN device (UDP 8472, no learning), and per
          remote node and pod CIDR a route `cidr via <the CIDR's network address> dev <vxlan> onlink`,
          a permanent neighbour entry for that address (the remote device's MAC) and an FDB entry sending
          that MAC to the remote node's address. Each device's MAC derives from its node's name, so no
          node has to publish it. Pods get an MTU 50 bytes lower (the VXLAN header).

`plan` is pure: the wanted state from the node list. `Router.apply` makes the kernel match it, touching
only routes tagged with Lumen's route protocol number (ROUTE_PROTO), and the neighbour and FDB entries
of its own VXLAN device, so whatever else is in the table stays.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from exporter.netlink import Netlink, NetlinkFailure, Route, owns_anything
from exporter.nodes import NodeInfo

log = logging.getLogger("lumen.routing")

#: rtm_protocol of every route Lumen adds (`ip route show proto 176`); 176 is unassigned in
#: /etc/iproute2/rt_protos, and naming it there (`176 lumen`) makes `ip route` print "proto lumen".
ROUTE_PROTO = 176
MODES = ("direct", "vxlan")
VXLAN_PORT = 8472  # Linux's historical VXLAN port, as flannel and Cilium use
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VXLAN_OVERHEAD6 = 70  # an IPv6 underlay: 20 bytes more


@dataclass(frozen=True)
class RoutingConfig:
    node: str
    mode: str = "direct"
    vxlan_device: str = "lumen-vxlan"
    vxlan_vni: int = 1
    vxlan_port: int = VXLAN_PORT

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"routing mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 < self.vxlan_vni < 2**24:
            raise ValueError(f"VXLAN id must be 1..16777215, got {self.vxlan_vni}")
        if not 0 < self.vxlan_port < 65536:
            raise ValueError(f"VXLAN port must be 1..65535, got {self.vxlan_port}")
        if not 0 < len(self.vxlan_device) < 16:
            raise ValueError(f"VXLAN device name must be 1..15 characters, got {self.vxlan_device!r}")


@dataclass(frozen=True)
class Plan:
    """What the kernel should hold. Routes' `oif` is 0 here: `onlink` ones go on the VXLAN device."""

    routes: frozenset[Route] = frozenset()
    #: vxlan: remote gateway address -> the remote device's MAC
    neighbours: Mapping[str, str] = field(default_factory=dict)
    #: vxlan: (remote device's MAC, remote node's underlay address)
    fdb: frozenset[tuple[str, str]] = frozenset()
    #: vxlan: this node's underlay address (the device's local end), None without one
    local: str | None = None
    #: why a node or CIDR is not routed (said in the log once per change)
    problems: tuple[str, ...] = ()


def vtep_mac(node: str) -> str:
    """The VXLAN device MAC of a node: locally administered, unicast, stable per name."""
    digest = hashlib.sha256(node.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0E, *digest[:5]))


def plan(cfg: RoutingConfig, nodes: Mapping[str, NodeInfo]) -> Plan:
    local = nodes.get(cfg.node)
    own = [ipaddress.ip_network(c) for c in (local.pod_cidrs if local else ())]
    problems: list[str] = []
    routes: set[Route] = set()
    neighbours: dict[str, str] = {}
    fdb: set[tuple[str, str]] = set()
    underlay = local.addresses[0] if local and local.addresses else None
    if cfg.mode == "vxlan" and underlay is None:
        problems.append(f"node {cfg.node} has no InternalIP: no VXLAN device, no routes")
        return Plan(problems=tuple(problems))
    for name in sorted(nodes):
        if name == cfg.node:
            continue
        node = nodes[name]
        for cidr in node.pod_cidrs:
            net = ipaddress.ip_network(cidr)
            if any(net.overlaps(o) for o in own):
                problems.append(f"node {name}: pod CIDR {cidr} overlaps this node's own, not routed")
                continue
            if cfg.mode == "direct":
                via = node.address(net.version)
                if via is None:
                    problems.append(f"node {name}: no IPv{net.version} InternalIP to route {cidr} via")
                    continue
                routes.add(Route(cidr, via))
            else:
                assert underlay is not None
                remote = node.address(ipaddress.ip_address(underlay).version)
                if remote is None:
                    problems.append(f"node {name}: no InternalIP of the underlay's family, {cidr} not routed")
                    continue
                gateway = str(net.network_address)
                mac = vtep_mac(name)
                routes.add(Route(cidr, gateway, onlink=True))
                neighbours[gateway] = mac
                fdb.add((mac, remote))
    return Plan(frozenset(routes), neighbours, frozenset(fdb), underlay, tuple(problems))


class Router:
    """Applies plans. Keeps nothing between calls but the last problems said (to say them once)."""

    def __init__(
        self,
        cfg: RoutingConfig,
        netlink: Callable[[], Netlink] = Netlink,
        owns: Callable[[int, str | None], bool] = owns_anything,
    ) -> None:
        self.cfg = cfg
        self._netlink = netlink
        self._owns = owns
        self._said: tuple[str, ...] = ()

    def apply(self, p: Plan) -> None:
        if p.problems != self._said:
            for problem in p.problems:
                log.warning("not routed", extra={"reason": problem})
            self._said = p.problems
        if self._nothing_to_do(p):
            return
        with self._netlink() as nl:
            vxlan = self._vxlan(nl, p) if self.cfg.mode == "vxlan" else None
            if self.cfg.mode == "direct":
                self._remove_vxlan(nl)
            want = {r.dst: Route(r.dst, r.gateway, vxlan or 0, r.onlink) for r in p.routes}
            have = {r.dst: r for r in nl.routes(ROUTE_PROTO)}
            for dst, route in sorted(want.items()):
                if not _same(have.get(dst), route):
                    self._try(nl.replace_route, route, ROUTE_PROTO)
            for dst, route in sorted(have.items()):
                if dst not in want:
                    self._try(nl.delete_route, route, ROUTE_PROTO)
            if vxlan is not None:
                self._vxlan_entries(nl, vxlan, p)

    def _nothing_to_do(self, p: Plan) -> bool:
        """A plan that wants nothing in the kernel (no remote node, no VXLAN device) against a kernel
        holding nothing of Lumen's: asked through the stdlib client, so a lone node never loads pyroute2."""
        wants_device = self.cfg.mode == "vxlan" and p.local is not None
        if p.routes or wants_device:
            return False
        # direct mode removes a VXLAN device left from vxlan mode; vxlan mode without an underlay leaves it
        return not self._owns(ROUTE_PROTO, self.cfg.vxlan_device if self.cfg.mode == "direct" else None)

    def remove(self) -> None:
        """Everything Lumen added: its routes and its VXLAN device (with its entries)."""
        with self._netlink() as nl:
            for route in nl.routes(ROUTE_PROTO):
                self._try(nl.delete_route, route, ROUTE_PROTO)
            self._remove_vxlan(nl)

    def _try(self, fn: Callable[..., None], *args: object) -> None:
        # One refused route (e.g. a gateway not on any link) must not keep the others out.
        try:
            fn(*args)
        except NetlinkFailure as e:
            log.error("route change refused", extra={"error": str(e)})

    def _remove_vxlan(self, nl: Netlink) -> None:
        index = nl.link_index(self.cfg.vxlan_device)
        if index is not None and nl.link_info(index).get("kind") == "vxlan":
            nl.delete_link(index)
            log.info("VXLAN device removed", extra={"device": self.cfg.vxlan_device})

    def _vxlan(self, nl: Netlink, p: Plan) -> int | None:
        """The VXLAN device as configured (re-created if its identity changed); its index."""
        if p.local is None:
            return None
        cfg = self.cfg
        mac = vtep_mac(cfg.node)
        # the device holding the underlay address (a route lookup of a local address answers `lo`)
        uplink = next((index for index, addr in nl.addresses() if addr == p.local), 0)
        uplink_mtu = int(nl.link_info(uplink).get("mtu") or 1500) if uplink else 1500
        overhead = VXLAN_OVERHEAD6 if ipaddress.ip_address(p.local).version == 6 else VXLAN_OVERHEAD
        mtu = uplink_mtu - overhead
        index = nl.link_index(cfg.vxlan_device)
        if index is not None:
            info = nl.link_info(index)
            same = (info.get("kind"), info.get("vni"), info.get("port"), info.get("local"), info.get("mac"))
            if same == ("vxlan", cfg.vxlan_vni, cfg.vxlan_port, p.local, mac):
                if info.get("mtu") != mtu:
                    nl.set_mtu(index, mtu)
                if not info.get("up"):
                    nl.set_up(index)
                return index
            if info.get("kind") != "vxlan":
                log.error(
                    "a device that is not VXLAN has the VXLAN device's name; not touched",
                    extra={"device": cfg.vxlan_device},
                )
                return None
            nl.delete_link(index)
        index = nl.add_vxlan(cfg.vxlan_device, cfg.vxlan_vni, cfg.vxlan_port, p.local, mac, mtu)
        log.info(
            "VXLAN device created",
            extra={"device": cfg.vxlan_device, "vni": cfg.vxlan_vni, "local": p.local, "mtu": mtu},
        )
        return index

    def _vxlan_entries(self, nl: Netlink, index: int, p: Plan) -> None:
        have_n = nl.neighbours(index)
        for addr, mac in sorted(p.neighbours.items()):
            if have_n.get(addr) != mac:
                self._try(nl.replace_neighbour, index, addr, mac)
        for addr in sorted(set(have_n) - set(p.neighbours)):
            self._try(nl.delete_neighbour, index, addr)
        have_f = nl.fdb(index)
        for mac, dst in sorted(p.fdb - have_f):
            self._try(nl.append_fdb, index, mac, dst)
        for mac, dst in sorted(have_f - p.fdb):
            self._try(nl.delete_fdb, index, mac, dst)


def _same(have: Route | None, want: Route) -> bool:
    """The kernel's route is the wanted one (a wanted route without a device takes the kernel's)."""
    if have is None:
        return False
    return (have.gateway, have.onlink) == (want.gateway, want.onlink) and want.oif in (0, have.oif)


def pod_mtu(mode: str, uplink_mtu: int = 1500, ipv6_underlay: bool = False) -> int:
    """The MTU pods get in this mode: the uplink's, less the VXLAN header in vxlan mode."""
    if mode != "vxlan":
        return uplink_mtu
    return uplink_mtu - (VXLAN_OVERHEAD6 if ipv6_underlay else VXLAN_OVERHEAD)
