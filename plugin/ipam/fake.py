"""In-memory store for allocator tests (no root, no disk); it also checks the locking discipline."""

from __future__ import annotations

from contextlib import contextmanager

from plugin.ipam.config import IPAddress

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator


class FakeStore:
    def __init__(self) -> None:
        self.held: dict[IPAddress, tuple[str, str]] = {}
        self.last: dict[int, IPAddress] = {}
        self.locked = False

    @contextmanager
    def lock(self) -> Iterator[None]:
        assert not self.locked, "the allocator must not nest locks"
        self.locked = True
        try:
            yield
        finally:
            self.locked = False

    def reserve(self, ip: IPAddress, container_id: str, ifname: str) -> bool:
        assert self.locked, "reserve outside lock()"
        if ip in self.held:
            return False
        self.held[ip] = (container_id, ifname)
        return True

    def release(self, ip: IPAddress) -> None:
        assert self.locked, "release outside lock()"
        self.held.pop(ip, None)

    def release_by_owner(self, container_id: str, ifname: str) -> list[IPAddress]:
        mine = self.get_by_owner(container_id, ifname)
        for ip in mine:
            self.release(ip)
        return mine

    def get_by_owner(self, container_id: str, ifname: str) -> list[IPAddress]:
        return [ip for ip, owner in self.held.items() if owner == (container_id, ifname)]

    def allocations(self) -> list[tuple[IPAddress, str, str]]:
        return [(ip, cid, ifn) for ip, (cid, ifn) in self.held.items()]

    def sweep(self) -> int:
        assert self.locked, "sweep outside lock()"
        return 0

    def last_reserved(self, set_index: int) -> IPAddress | None:
        return self.last.get(set_index)

    def set_last_reserved(self, set_index: int, ip: IPAddress) -> None:
        assert self.locked, "set_last_reserved outside lock()"
        self.last[set_index] = ip
