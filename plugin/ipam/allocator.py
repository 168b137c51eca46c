"""Pure allocation logic over a Store: round-robin per range set, requested IPs, all-or-nothing."""

from __future__ import annotations

import ipaddress

from plugin.errors import ALREADY_EXISTS, INVALID_CONFIG, IPAM_EXHAUSTED, CNIError
from plugin.ipam.config import IPAddress, IPAMConfig, Range

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from plugin.ipam.store import Store


class IPConfig:
    """One allocated address with its subnet's prefix, and the range's gateway."""

    __slots__ = ("address", "gateway")

    def __init__(
        self, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface, gateway: IPAddress | None
    ) -> None:
        self.address = address
        self.gateway = gateway

    def __repr__(self) -> str:
        return f"IPConfig({self.address}, gw={self.gateway})"


def _config_for(ip: IPAddress, rset: list[Range]) -> IPConfig:
    for r in rset:
        if ip in r.subnet:
            return IPConfig(ipaddress.ip_interface(f"{ip}/{r.subnet.prefixlen}"), r.gateway)
    raise ValueError(f"{ip} not in range set")


def _candidates(rset: list[Range], last: IPAddress | None) -> Iterator[tuple[IPAddress, Range]]:
    """Every address of the set once, starting right after `last` (round robin) and wrapping."""
    start_range, start_at = 0, None
    if last is not None:
        for i, r in enumerate(rset):
            if last in r:
                start_range, start_at = i, int(last) + 1
                break
    n = len(rset)
    for k in range(n + 1):
        r = rset[(start_range + k) % n]
        lo, hi = int(r.start), int(r.end)
        if k == 0 and start_at is not None:
            lo = start_at
        elif k == n:
            if start_at is None:
                return
            hi = start_at - 1  # the wrapped part of the first range
        family = type(r.start)
        for value in range(lo, hi + 1):
            yield family(value), r


def _pick(rset: list[Range], taken: set[IPAddress], last: IPAddress | None) -> IPAddress | None:
    for ip, r in _candidates(rset, last):
        if ip != r.gateway and ip not in taken:
            return ip
    return None


def allocate(
    conf: IPAMConfig, store: Store, container_id: str, ifname: str, requested: list[IPAddress]
) -> list[IPConfig]:
    """One address per range set for (container_id, ifname); nothing is kept if any set fails."""
    with store.lock():
        held = store.allocations()
        mine = [ip for ip, cid, ifn in held if (cid, ifn) == (container_id, ifname)]
        if mine:
            raise CNIError(
                ALREADY_EXISTS,
                f"{container_id[:12]}/{ifname} already holds {', '.join(map(str, mine))}",
                "release it (DEL) first",
            )
        taken = {ip for ip, _, _ in held}
        unmatched = list(requested)
        reserved: list[IPAddress] = []
        out: list[IPConfig] = []
        try:
            for idx, rset in enumerate(conf.ranges):
                want = [ip for ip in unmatched if any(ip in r for r in rset)]
                if want:
                    ip = want[0]
                    unmatched.remove(ip)
                    if any(ip == r.gateway for r in rset):
                        raise CNIError(INVALID_CONFIG, f"requested IP {ip} is the gateway")
                    if ip in taken:
                        raise CNIError(ALREADY_EXISTS, f"requested IP {ip} is already allocated")
                else:
                    picked = _pick(rset, taken, store.last_reserved(idx))
                    if picked is None:
                        subnets = ", ".join(str(r.subnet) for r in rset)
                        raise CNIError(IPAM_EXHAUSTED, f"no free IP address in range set {idx} ({subnets})")
                    ip = picked
                if not store.reserve(ip, container_id, ifname):
                    raise CNIError(ALREADY_EXISTS, f"IP {ip} was taken concurrently")
                reserved.append(ip)
                taken.add(ip)
                if not want:
                    store.set_last_reserved(idx, ip)
                out.append(_config_for(ip, rset))
            if unmatched:
                raise CNIError(
                    INVALID_CONFIG,
                    f"requested IP {', '.join(map(str, unmatched))} is in none of the ranges",
                )
        except BaseException:
            for ip in reserved:
                store.release(ip)
            raise
        return out


def release(store: Store, container_id: str, ifname: str) -> list[IPAddress]:
    with store.lock():
        mine = [ip for ip, cid, ifn in store.allocations() if (cid, ifn) == (container_id, ifname)]
        for ip in mine:
            store.release(ip)
        return mine


def get(conf: IPAMConfig, store: Store, container_id: str, ifname: str) -> list[IPConfig]:
    out = []
    for ip, cid, ifn in store.allocations():
        if (cid, ifn) != (container_id, ifname):
            continue
        for rset in conf.ranges:
            if any(ip in r.subnet for r in rset):
                out.append(_config_for(ip, rset))
    return out


def gc(store: Store, valid: set[tuple[str, str]]) -> list[tuple[IPAddress, str, str]]:
    with store.lock():
        store.sweep()
        stale = [a for a in store.allocations() if (a[1], a[2]) not in valid]
        for ip, _, _ in stale:
            store.release(ip)
        return stale


def free_count(conf: IPAMConfig, store: Store) -> int:
    """Free addresses in the fullest range set: ADD needs one from every set."""
    taken = {ip for ip, _, _ in store.allocations()}
    counts = []
    for rset in conf.ranges:
        size = sum(r.size() for r in rset)
        used = sum(1 for ip in taken if any(ip in r and ip != r.gateway for r in rset))
        counts.append(size - used)
    return min(counts)
