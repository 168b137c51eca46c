"""Pure allocation logic over a Store: round-robin per range set, requested IPs, all-or-nothing."""

from __future__ import annotations

from plugin.config import check_container_id, check_ifname
from plugin.errors import ALREADY_EXISTS, INVALID_CONFIG, IPAM_EXHAUSTED, CNIError
from plugin.ip import Address, Interface, ip_interface
from plugin.ipam.config import IPAddress, IPAMConfig, Range

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from plugin.ipam.store import Store


class IPConfig:
    """One allocated address with its subnet's prefix, and the range's gateway."""

    __slots__ = ("address", "gateway")

    def __init__(self, address: Interface, gateway: IPAddress | None) -> None:
        self.address = address
        self.gateway = gateway

    def __repr__(self) -> str:
        return f"IPConfig({self.address}, gw={self.gateway})"


def _range_of(ip: IPAddress, rset: list[Range], loose: bool = False) -> Range | None:
    """The range that hands out `ip`; `loose` also takes one whose subnet holds it (edited ranges)."""
    for r in rset:
        if ip in r or (loose and ip in r.subnet):
            return r
    return None


def _config_for(ip: IPAddress, r: Range) -> IPConfig:
    return IPConfig(Interface(ip, r.subnet.prefixlen), r.gateway)


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
        version = r.start.version
        for value in range(lo, hi + 1):
            yield Address(version, value), r


def _pick(rset: list[Range], taken: set[IPAddress], last: IPAddress | None) -> IPAddress | None:
    for ip, r in _candidates(rset, last):
        if ip != r.gateway and ip not in taken:
            return ip
    return None


def allocate(
    conf: IPAMConfig, store: Store, container_id: str, ifname: str, requested: list[IPAddress]
) -> list[IPConfig]:
    """One address per range set for (container_id, ifname); nothing is kept if any set fails."""
    # The owner is written into records: keep newlines and paths out even if a caller skipped the env checks.
    check_container_id(container_id)
    check_ifname(ifname)
    with store.lock():
        held = store.allocations()
        mine = [ip for ip, cid, ifn in held if (cid, ifn) == (container_id, ifname)]
        if mine:
            raise CNIError(
                ALREADY_EXISTS,
                f"{container_id[:12]}/{ifname} already holds {', '.join(map(str, mine))}",
                "release it (DEL) first",
            )
        stray = [ip for ip in requested if not any(ip in r for rset in conf.ranges for r in rset)]
        if stray:
            raise CNIError(
                INVALID_CONFIG,
                f"requested IP {', '.join(map(str, stray))} is in none of the ranges",
                "ranges: " + ", ".join(f"{r.start}-{r.end}" for rset in conf.ranges for r in rset),
            )
        taken = {ip for ip, _, _ in held}
        unmatched = list(requested)
        reserved: list[IPAddress] = []
        out: list[IPConfig] = []
        try:
            for idx, rset in enumerate(conf.ranges):
                want = [ip for ip in unmatched if any(ip in r for r in rset)]
                if len(want) > 1:
                    raise CNIError(
                        INVALID_CONFIG,
                        f"requested IPs {', '.join(map(str, want))} are in the same range set {idx}",
                        "one address is allocated per range set",
                    )
                if want:
                    ip = want[0]
                    unmatched.remove(ip)
                    if any(ip == r.gateway for r in rset):
                        raise CNIError(INVALID_CONFIG, f"requested IP {ip} is the gateway")
                    if ip in taken:
                        owner = next(f"{c[:12]}/{i}" for a, c, i in held if a == ip)
                        raise CNIError(ALREADY_EXISTS, f"requested IP {ip} is already allocated to {owner}")
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
                r = _range_of(ip, rset)
                assert r is not None  # ip was picked from, or matched against, this set
                out.append(_config_for(ip, r))
        except BaseException:
            for ip in reserved:
                try:
                    store.release(ip)
                except CNIError:
                    pass  # keep the first error; GC reclaims what could not be released
            raise
        return out


def release(store: Store, container_id: str, ifname: str) -> list[IPAddress]:
    """Idempotent: releasing what is not held returns []."""
    with store.lock():
        return store.release_by_owner(container_id, ifname)


def get(conf: IPAMConfig, store: Store, container_id: str, ifname: str) -> list[IPConfig]:
    """What the owner holds, in range-set order; an address outside every subnet gets a host prefix."""
    held = store.get_by_owner(container_id, ifname)
    placed: dict[IPAddress, tuple[int, Range]] = {}
    for loose in (False, True):
        for ip in held:
            for idx, rset in enumerate(conf.ranges):
                r = _range_of(ip, rset, loose)
                if r is not None and ip not in placed:
                    placed[ip] = (idx, r)
    out = [_config_for(ip, r) for ip, (_, r) in sorted(placed.items(), key=lambda kv: kv[1][0])]
    for ip in held:
        if ip not in placed:
            out.append(IPConfig(ip_interface((ip, ip.max_prefixlen)), None))
    return out


def gc(store: Store, valid: set[tuple[str, str]]) -> list[tuple[IPAddress, str, str]]:
    """Release every allocation whose owner is not in `valid`, and debris of killed writers."""
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
