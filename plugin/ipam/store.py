"""What the allocator needs from storage; the disk store and the fake store both provide it."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from typing import Protocol

    from plugin.ipam.config import IPAddress

    class Store(Protocol):
        def lock(self) -> AbstractContextManager[None]:
            """Exclusive access for one allocate/release sequence (across processes for the disk store)."""

        def reserve(self, ip: IPAddress, container_id: str, ifname: str) -> bool:
            """Record `ip` for the owner; False when it is already taken."""

        def release(self, ip: IPAddress) -> None: ...

        def allocations(self) -> list[tuple[IPAddress, str, str]]:
            """Every (ip, container_id, ifname) held."""

        def sweep(self) -> int:
            """Remove debris of killed writers (temp files); how many."""

        def last_reserved(self, set_index: int) -> IPAddress | None: ...

        def set_last_reserved(self, set_index: int, ip: IPAddress) -> None: ...
