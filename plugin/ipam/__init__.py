"""Built-in IPAM (`"ipam": {"type": "lumen"}`): what the CNI verbs call.

Modelled on the reference host-local: pure allocator (allocator.py), a small store protocol (store.py),
one file per IP under an flock (disk.py), an in-memory store for tests (fake.py).
"""

from __future__ import annotations

from plugin.ipam import allocator
from plugin.ipam.allocator import IPConfig
from plugin.ipam.config import IPAddress, IPAMConfig, parse_ipam_config
from plugin.ipam.disk import DiskStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from plugin.ipam.store import Store

__all__ = [
    "IPConfig",
    "IPAMConfig",
    "allocate",
    "free_count",
    "gc",
    "get",
    "open_store",
    "parse_ipam_config",
    "release",
]


def open_store(conf: IPAMConfig) -> Store:
    return DiskStore(conf.data_dir, conf.network)


def allocate(
    conf: IPAMConfig, container_id: str, ifname: str, requested: list[IPAddress], store: Store | None = None
) -> list[IPConfig]:
    return allocator.allocate(conf, store or open_store(conf), container_id, ifname, requested)


def release(conf: IPAMConfig, container_id: str, ifname: str, store: Store | None = None) -> list[IPAddress]:
    return allocator.release(store or open_store(conf), container_id, ifname)


def get(conf: IPAMConfig, container_id: str, ifname: str, store: Store | None = None) -> list[IPConfig]:
    return allocator.get(conf, store or open_store(conf), container_id, ifname)


def gc(
    conf: IPAMConfig, valid: set[tuple[str, str]], store: Store | None = None
) -> list[tuple[IPAddress, str, str]]:
    return allocator.gc(store or open_store(conf), valid)


def free_count(conf: IPAMConfig, store: Store | None = None) -> int:
    return allocator.free_count(conf, store or open_store(conf))
