"""The bpf(2) calls the plugin needs to use what the agent pinned: open a pinned object, update and
delete map elements. ctypes is imported lazily: only ADD/DEL on an observed node pay for it.

The endpoint map's key and value layouts are packed here with `struct` (the plugin cannot import
bpf/abi.py); tests/unit/test_abi.py checks these bytes against the ctypes mirrors and the compiled C.
"""

from __future__ import annotations

import os
import struct

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_OBJ_GET = 7
_SYSCALL_NR = {"x86_64": 321, "aarch64": 280}

# struct endpoint_key { u8 addr[16]; u8 family; u8 pad[3]; }
ENDPOINT_KEY = struct.Struct("=16sB3x")
# struct endpoint_info { u32 ifindex; u32 endpoint_id; u8 mac[6]; u8 pad[2]; u32 identity; }
ENDPOINT_INFO = struct.Struct("=II6s2xI")
IDENTITY_UNMANAGED = 3  # enum lumen_identity: labels unknown at ADD


def _bpf(cmd: int, attr: bytes) -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = libc.syscall(_SYSCALL_NR[os.uname().machine], cmd, buf, len(attr))  # not platform: it imports re
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return int(ret)


def _ptr(data: bytes) -> tuple[int, object]:
    """Address of a buffer holding `data`, and the buffer (keep it alive during the call)."""
    import ctypes

    buf = ctypes.create_string_buffer(data, len(data))
    return ctypes.addressof(buf), buf


def obj_get(path: str) -> int:
    """fd of a pinned map or program."""
    addr, keep = _ptr(path.encode() + b"\0")
    fd = _bpf(BPF_OBJ_GET, struct.pack("=QII", addr, 0, 0))
    del keep
    return fd


def map_update(fd: int, key: bytes, value: bytes) -> None:
    kaddr, kkeep = _ptr(key)
    vaddr, vkeep = _ptr(value)
    _bpf(BPF_MAP_UPDATE_ELEM, struct.pack("=I4xQQQ", fd, kaddr, vaddr, 0))
    del kkeep, vkeep


def map_delete(fd: int, key: bytes) -> bool:
    """False when the key was not there."""
    kaddr, keep = _ptr(key)
    try:
        _bpf(BPF_MAP_DELETE_ELEM, struct.pack("=I4xQQQ", fd, kaddr, 0, 0))
    except FileNotFoundError:
        return False
    finally:
        del keep
    return True


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    import ctypes

    kaddr, keep = _ptr(key)
    out = ctypes.create_string_buffer(value_size)
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, struct.pack("=I4xQQQ", fd, kaddr, ctypes.addressof(out), 0))
    except FileNotFoundError:
        return None
    finally:
        del keep
    return out.raw


def endpoint_key(address: str) -> bytes:
    from plugin.ip import ip_address

    ip = ip_address(address.split("/")[0])
    return ENDPOINT_KEY.pack(ip.packed.ljust(16, b"\0"), ip.version)


def endpoint_info(ifindex: int, endpoint_id: int, mac: str, identity: int = IDENTITY_UNMANAGED) -> bytes:
    return ENDPOINT_INFO.pack(ifindex, endpoint_id, bytes(int(b, 16) for b in mac.split(":")), identity)
