"""The agent's one door to rtnetlink: the only exporter module that imports pyroute2 (a ruff banned-api
rule keeps it so). The plugin speaks rtnetlink itself (plugin/netlink.py, stdlib only, fast start-up).
pyroute2 costs the agent ~10 MB resident and ~120 ms, so it is imported on the first `Netlink()`, not
with this module: a node with nothing to route asks `owns_anything` (the plugin's stdlib client) and
never opens it.

Every call goes through `_retry`: a dump the kernel marks interrupted (NLM_F_DUMP_INTR: the table changed
while it was read) or a call interrupted by a signal is repeated, so a reconciler never decides on half a
table. Addresses and prefixes are strings in the kernel's canonical text form.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

log = logging.getLogger("lumen.netlink")

T = TypeVar("T")

RETRIES = 5
RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
NTF_SELF = 0x02


class NetlinkFailure(OSError):
    """A netlink request the kernel refused: errno and what was asked."""


@dataclass(frozen=True, order=True)
class Route:
    """A unicast route in the main table: `dst` (canonical CIDR) via `gateway`, on `oif` if given."""

    dst: str
    gateway: str
    oif: int = 0
    onlink: bool = False


def family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def owns_anything(proto: int, vxlan_device: str | None) -> bool:
    """Whether this namespace holds routes tagged `proto` or (if named) a VXLAN device of that name:
    two dumps through the stdlib client, so a node with nothing to route or remove skips pyroute2."""
    from plugin.netlink import RT_TABLE_MAIN
    from plugin.netlink import Netlink as Dumper

    with Dumper() as nl:
        routes = (r for version in (4, 6) for r in nl.routes(version))
        if any(r.proto == proto and r.table == RT_TABLE_MAIN for r in routes):
            return True
        if vxlan_device is None:
            return False
        link = nl.link(name=vxlan_device)
        return link is not None and link.kind == "vxlan"


def _retry(what: str, fn: Callable[[], T]) -> T:
    # Only called inside Netlink's methods: pyroute2 is loaded by then, this import is a dict lookup.
    from pyroute2.netlink.exceptions import (  # type: ignore[import-untyped]
        NetlinkDumpInterrupted,
        NetlinkError,
    )

    for attempt in range(RETRIES):
        try:
            return fn()
        except NetlinkDumpInterrupted:
            if attempt == RETRIES - 1:
                raise NetlinkFailure(errno.EINTR, f"{what}: dump interrupted {RETRIES} times") from None
            time.sleep(0.01 * (attempt + 1))
        except InterruptedError:
            continue
        except NetlinkError as e:
            raise NetlinkFailure(e.code, f"{what}: {e}") from None
    raise NetlinkFailure(errno.EINTR, f"{what}: interrupted {RETRIES} times")


class Netlink:
    """One rtnetlink socket (in the calling thread's network namespace). Use as a context manager."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute  # type: ignore[import-untyped]  # here, not at import: see above

        self._ipr: Any = IPRoute()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._ipr.close()

    # -- links ---------------------------------------------------------------------------------

    def link_index(self, name: str) -> int | None:
        found = _retry(f"lookup {name}", lambda: self._ipr.link_lookup(ifname=name))
        return int(found[0]) if found else None

    def link_info(self, index: int) -> dict[str, Any]:
        """name, mtu, mac, kind and (for vxlan) its id, port and local address."""
        msg = _retry(f"get link {index}", lambda: self._ipr.link("get", index=index))[0]
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        out: dict[str, Any] = {
            "name": msg.get_attr("IFLA_IFNAME"),
            "mtu": msg.get_attr("IFLA_MTU"),
            "mac": msg.get_attr("IFLA_ADDRESS"),
            "kind": kind,
            "up": bool(msg["flags"] & 1),
        }
        data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
        if kind == "vxlan" and data is not None:
            out["vni"] = data.get_attr("IFLA_VXLAN_ID")
            out["port"] = data.get_attr("IFLA_VXLAN_PORT")
            out["local"] = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
            out["learning"] = data.get_attr("IFLA_VXLAN_LEARNING")
        return out

    def add_vxlan(self, name: str, vni: int, port: int, local: str, mac: str, mtu: int) -> int:
        """A VXLAN device without learning (the agent writes every FDB entry), up; its index."""
        local_key = "vxlan_local6" if family_of(local) == socket.AF_INET6 else "vxlan_local"
        kw = {
            "ifname": name,
            "kind": "vxlan",
            "vxlan_id": vni,
            "vxlan_port": port,
            local_key: local,
            "vxlan_learning": 0,
            "address": mac,
            "mtu": mtu,
        }
        _retry(f"add vxlan {name}", lambda: self._ipr.link("add", **kw))
        index = self.link_index(name)
        if index is None:
            raise NetlinkFailure(errno.ENODEV, f"vxlan {name} vanished after it was created")
        self.set_up(index)
        return index

    def set_up(self, index: int) -> None:
        _retry(f"set link {index} up", lambda: self._ipr.link("set", index=index, state="up"))

    def set_mtu(self, index: int, mtu: int) -> None:
        _retry(f"set link {index} mtu", lambda: self._ipr.link("set", index=index, mtu=mtu))

    def delete_link(self, index: int) -> None:
        _retry(f"delete link {index}", lambda: self._ipr.link("del", index=index))

    # -- addresses -----------------------------------------------------------------------------

    def addresses(self) -> list[tuple[int, str]]:
        """(ifindex, address) of every address in this namespace."""
        msgs = _retry("dump addresses", lambda: self._ipr.get_addr())
        return [(int(m["index"]), str(m.get_attr("IFA_ADDRESS"))) for m in msgs]

    # -- routes --------------------------------------------------------------------------------

    def routes(self, proto: int) -> list[Route]:
        """Main-table routes of both families tagged with this routing protocol number."""
        out: list[Route] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            msgs = _retry("dump routes", partial(self._ipr.get_routes, family=family, table=254, proto=proto))
            for m in msgs:
                if m["proto"] != proto:
                    continue
                dst = m.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                cidr = str(ipaddress.ip_network(f"{dst}/{m['dst_len']}", strict=False))
                out.append(
                    Route(
                        cidr,
                        str(m.get_attr("RTA_GATEWAY") or ""),
                        int(m.get_attr("RTA_OIF") or 0),
                        bool(m["flags"] & RTNH_F_ONLINK),
                    )
                )
        return out

    def replace_route(self, route: Route, proto: int) -> None:
        kw: dict[str, Any] = {
            "dst": route.dst,
            "gateway": route.gateway,
            "proto": proto,
            "family": family_of(route.dst),
        }
        if route.oif:
            kw["oif"] = route.oif
        if route.onlink:
            kw["flags"] = RTNH_F_ONLINK
        _retry(f"replace route {route.dst}", lambda: self._ipr.route("replace", **kw))

    def delete_route(self, route: Route, proto: int) -> None:
        kw = {"dst": route.dst, "proto": proto, "family": family_of(route.dst)}
        try:
            _retry(f"delete route {route.dst}", lambda: self._ipr.route("del", **kw))
        except NetlinkFailure as e:
            if e.errno != errno.ESRCH:  # gone already: what we wanted
                raise

    # -- neighbours and forwarding database (VXLAN) -------------------------------------------

    def neighbours(self, index: int) -> dict[str, str]:
        """Permanent neighbour entries of a device: address -> MAC."""
        msgs = _retry("dump neighbours", lambda: self._ipr.get_neighbours(ifindex=index))
        return {
            str(m.get_attr("NDA_DST")): str(m.get_attr("NDA_LLADDR"))
            for m in msgs
            if m["ifindex"] == index and m["state"] & NUD_PERMANENT and m.get_attr("NDA_LLADDR")
        }

    def replace_neighbour(self, index: int, address: str, mac: str) -> None:
        kw = {
            "dst": address,
            "lladdr": mac,
            "ifindex": index,
            "state": NUD_PERMANENT,
            "family": family_of(address),
        }
        _retry(f"replace neighbour {address}", lambda: self._ipr.neigh("replace", **kw))

    def delete_neighbour(self, index: int, address: str) -> None:
        kw = {"dst": address, "ifindex": index, "family": family_of(address)}
        try:
            _retry(f"delete neighbour {address}", lambda: self._ipr.neigh("del", **kw))
        except NetlinkFailure as e:
            if e.errno not in (errno.ENOENT, errno.ESRCH):
                raise

    def fdb(self, index: int) -> set[tuple[str, str]]:
        """(MAC, remote underlay address) of a VXLAN device's own forwarding entries."""
        msgs = _retry("dump fdb", lambda: self._ipr.fdb("dump", ifindex=index))
        return {
            (str(m.get_attr("NDA_LLADDR")), str(m.get_attr("NDA_DST")))
            for m in msgs
            if m["ifindex"] == index and m.get_attr("NDA_DST") and m["flags"] & NTF_SELF
        }

    def append_fdb(self, index: int, mac: str, dst: str) -> None:
        _retry(f"append fdb {mac}", lambda: self._ipr.fdb("append", ifindex=index, lladdr=mac, dst=dst))

    def delete_fdb(self, index: int, mac: str, dst: str) -> None:
        try:
            _retry(f"delete fdb {mac}", lambda: self._ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst))
        except NetlinkFailure as e:
            if e.errno not in (errno.ENOENT, errno.ESRCH):
                raise
