"""What the allocator needs from storage; the disk store and the fake store both provide it.

Every mutating call, and `sweep`, is made inside `lock()`; reads may run without it because records
appear and disappear whole.
"""

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
            """Record `ip` for the owner; False when it is already taken (never overwrites)."""

        def release(self, ip: IPAddress) -> None:
            """Forget `ip`; nothing happens if it is not held."""

        def release_by_owner(self, container_id: str, ifname: str) -> list[IPAddress]:
            """Forget every address of the owner; returns them."""

        def get_by_owner(self, container_id: str, ifname: str) -> list[IPAddress]: ...

        def allocations(self) -> list[tuple[IPAddress, str, str]]:
            """Every (ip, container_id, ifname) held."""

        def sweep(self) -> int:
            """Remove debris of killed writers (temp files); how many."""

        def last_reserved(self, set_index: int) -> IPAddress | None:
            """Where round robin resumes in range set `set_index`."""

        def set_last_reserved(self, set_index: int, ip: IPAddress) -> None: ...
