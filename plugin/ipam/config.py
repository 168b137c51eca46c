"""The `ipam` section of `"type": "lumen"`, validated: range sets, routes, dataDir."""

from __future__ import annotations

from plugin.errors import INVALID_CONFIG, CNIError
from plugin.ip import Address, Network, ip_address, ip_network

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

IPAddress = Address
IPNetwork = Network

DEFAULT_DATA_DIR = "/var/lib/cni/lumen"


class Range:
    """One range of a set: `start`..`end` inclusive inside `subnet`; `gateway` is never handed out."""

    __slots__ = ("subnet", "start", "end", "gateway")

    def __init__(
        self, subnet: IPNetwork, start: IPAddress, end: IPAddress, gateway: IPAddress | None
    ) -> None:
        self.subnet = subnet
        self.start = start
        self.end = end
        self.gateway = gateway

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, type(self.start)) and int(self.start) <= int(ip) <= int(self.end)

    def size(self) -> int:
        usable = int(self.end) - int(self.start) + 1
        return usable - (1 if self.gateway is not None and self.gateway in self else 0)


class Route:
    __slots__ = ("dst", "gw")

    def __init__(self, dst: IPNetwork, gw: IPAddress | None) -> None:
        self.dst = dst
        self.gw = gw


class IPAMConfig:
    """`ranges` is a list of range sets: one address is allocated from each set."""

    __slots__ = ("network", "ranges", "routes", "data_dir")

    def __init__(self, network: str, ranges: list[list[Range]], routes: list[Route], data_dir: str) -> None:
        self.network = network
        self.ranges = ranges
        self.routes = routes
        self.data_dir = data_dir


def _bad(field: str, why: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"invalid ipam {field}", why)


def _address(value: object, field: str) -> IPAddress:
    try:
        return ip_address(str(value))
    except ValueError:
        raise _bad(field, f"{value!r} is not an IP address") from None


def _check_network_name(network: object) -> str:
    # The name becomes a directory under dataDir: it must stay one path component.
    if (
        not isinstance(network, str)
        or not network
        or network in (".", "..")
        or "/" in network
        or "\0" in network
    ):
        raise _bad("name", f"network name {network!r} cannot name a directory under dataDir")
    return network


def _unencodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return True
    return False


def parse_range(raw: object, where: str) -> Range:
    if not isinstance(raw, dict) or "subnet" not in raw:
        raise _bad(f"{where}.subnet", "each range needs a subnet")
    try:
        subnet = ip_network(str(raw["subnet"]), strict=False)
    except ValueError:
        raise _bad(f"{where}.subnet", f"{raw['subnet']!r} is not a subnet") from None
    # Like host-local: /31, /32, /127 and /128 leave no room for a gateway and a pod.
    if subnet.num_addresses < 4:
        raise _bad(f"{where}.subnet", f"{subnet} is too small to hold a gateway and a pod")
    first = subnet.network_address + 1
    # IPv4's broadcast address is never a host.
    last = subnet.broadcast_address - (1 if subnet.version == 4 else 0)
    start = _address(raw["rangeStart"], f"{where}.rangeStart") if raw.get("rangeStart") else first
    end = _address(raw["rangeEnd"], f"{where}.rangeEnd") if raw.get("rangeEnd") else last
    gateway = _address(raw["gateway"], f"{where}.gateway") if raw.get("gateway") else first
    for name, ip in (("rangeStart", start), ("rangeEnd", end), ("gateway", gateway)):
        if ip.version != subnet.version or ip not in subnet:
            raise _bad(f"{where}.{name}", f"{ip} is outside subnet {subnet}")
    if int(start) < int(first):
        raise _bad(f"{where}.rangeStart", f"{start} is the network address of {subnet}")
    if int(end) > int(last):
        raise _bad(f"{where}.rangeEnd", f"{end} is the broadcast address of {subnet}")
    if int(start) > int(end):
        raise _bad(f"{where}.rangeStart", f"{start} is after rangeEnd {end}")
    return Range(subnet, start, end, gateway)


def _parse_route(raw: object, where: str) -> Route:
    if not isinstance(raw, dict) or "dst" not in raw:
        raise _bad(where, "a route needs dst")
    try:
        dst = ip_network(str(raw["dst"]), strict=False)
    except ValueError:
        raise _bad(f"{where}.dst", f"{raw['dst']!r} is not a network") from None
    gw = _address(raw["gw"], f"{where}.gw") if raw.get("gw") else None
    if gw is not None and gw.version != dst.version:
        raise _bad(f"{where}.gw", f"{gw} and dst {dst} are different IP families")
    return Route(dst, gw)


def parse_ipam_config(network: str, ipam: dict[str, Any]) -> IPAMConfig:
    """Raises CNIError(INVALID_CONFIG) whose message names the offending field."""
    if not isinstance(ipam, dict):
        raise _bad("section", "ipam must be a JSON object")
    network = _check_network_name(network)
    raw_sets = ipam.get("ranges", [])
    if not isinstance(raw_sets, list):
        raise _bad("ranges", "a list of range sets is required")
    if ipam.get("subnet"):
        # host-local's legacy single range goes first, before any `ranges`.
        legacy = {k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}
        raw_sets = [[legacy], *raw_sets]
    if not raw_sets:
        raise _bad("ranges", "at least one range set is required")
    sets: list[list[Range]] = []
    for i, raw_set in enumerate(raw_sets):
        if not isinstance(raw_set, list) or not raw_set:
            raise _bad(f"ranges[{i}]", "a range set is a non-empty list of ranges")
        rset = [parse_range(r, f"ranges[{i}][{j}]") for j, r in enumerate(raw_set)]
        if len({r.subnet.version for r in rset}) != 1:
            raise _bad(f"ranges[{i}]", "a range set mixes IPv4 and IPv6")
        sets.append(rset)
    every = [(i, r) for i, rset in enumerate(sets) for r in rset]
    for n, (i, a) in enumerate(every):
        for j, b in every[n + 1 :]:
            if (
                a.subnet.version == b.subnet.version
                and int(a.start) <= int(b.end)
                and int(b.start) <= int(a.end)
            ):
                raise _bad(f"ranges[{i}]", f"range {a.start}-{a.end} overlaps {b.start}-{b.end} (set {j})")
    raw_routes = ipam.get("routes") or []
    if not isinstance(raw_routes, list):
        raise _bad("routes", "routes must be a list")
    routes = [_parse_route(r, f"routes[{k}]") for k, r in enumerate(raw_routes)]
    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if (
        not isinstance(data_dir, str)
        or not data_dir.startswith("/")
        or "\0" in data_dir
        or _unencodable(data_dir)
    ):
        raise _bad("dataDir", f"{data_dir!r} must be an absolute path")
    return IPAMConfig(network, sets, routes, data_dir)
