"""The one door to the kernel's BPF side: bpf(2) commands, and libbpf's ring buffer consumer.

Used by the plugin (open pins, write endpoint entries), the agent (bpf/maps.py views over pinned maps, the
compile step's pins, the ring buffer), the benches and the tests; ruff's banned-api keeps every other
module off ctypes library loading (pyproject.toml). Stdlib only, and `ctypes` is imported on the first
call, not at import: importing this module costs the plugin about 0.1 ms, and a cold ADD on a node without
an agent never loads ctypes (~4 ms). Keys and values are bytes in the kernel's layout; the layouts
themselves live in bpf/abi.py (ctypes mirrors) and plugin/pinned.py (what the plugin packs).

Each command packs its `union bpf_attr` member with struct (include/uapi/linux/bpf.h); the kernel takes an
attr shorter than its union as long as the fields it reads are there.
"""

from __future__ import annotations

import errno
import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26

BPF_ANY = 0
BPF_NOEXIST = 1  # map_update flag: fail with EEXIST if the key is there (an atomic claim)
BPF_PROG_TYPE_SCHED_CLS = 3

_SYSCALL_NR = {"x86_64": 321, "aarch64": 280}  # os.uname(), not platform: platform imports re

_ELEM = struct.Struct("=I4xQQQ")  # map_fd, key, value|next_key, flags
_OBJ = struct.Struct("=QII")  # pathname, bpf_fd, file_flags
_BATCH = struct.Struct("=QQQQIIQQ")  # in_batch, out_batch, keys, values, count, map_fd, elem_flags, flags
_INFO = struct.Struct("=IIQ")  # bpf_fd, info_len, info
_MAP_CREATE = struct.Struct("=IIIIIII16s")  # type, key, value, max_entries, flags, inner fd, numa, name
_PROG_LOAD = struct.Struct("=IIQQIIQII16s")  # type, insn_cnt, insns, license, log level/size/buf, ...
_TEST_RUN = struct.Struct("=IIIIQQIIIIQQIII4x")
# struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, name[16], ...
_MAP_INFO = struct.Struct("=IIIIII16s")
_MAP_INFO_SIZE = 88

_cache: dict[str, Any] = {}


def _ctypes() -> Any:
    """ctypes on first use (see the module docstring), and libc's syscall(2) with its types set once."""
    if "ct" not in _cache:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
        syscall.restype = ctypes.c_long
        syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_uint]
        _cache.update(ct=ctypes, syscall=syscall, nr=_SYSCALL_NR[os.uname().machine])
    return _cache["ct"]


def _buffer(data: bytes | int) -> tuple[int, Any]:
    """(address, buffer) of a C buffer holding `data`, or of `data` zeroed bytes. Keep the buffer alive
    for the call."""
    ct = _ctypes()
    buf = ct.create_string_buffer(data) if isinstance(data, int) else ct.create_string_buffer(data, len(data))
    return ct.addressof(buf), buf


def _call(cmd: int, attr: bytes, what: str, ok_errnos: tuple[int, ...] = ()) -> tuple[int, int, Any]:
    """(result, errno, the attr buffer as the kernel left it). OSError unless the call worked or failed
    with one of `ok_errnos` (result -1 then)."""
    ct = _ctypes()
    buf = ct.create_string_buffer(attr, len(attr))
    ret = int(_cache["syscall"](_cache["nr"], cmd, buf, len(attr)))
    if ret >= 0:
        return ret, 0, buf
    err = ct.get_errno()
    if err in ok_errnos:
        return -1, err, buf
    raise OSError(err, f"{what}: {os.strerror(err)}")


# -- objects -------------------------------------------------------------------------------------


def obj_get(path: str) -> int:
    """fd of a pinned map or program."""
    addr, keep = _buffer(os.fsencode(path) + b"\0")
    fd = _call(BPF_OBJ_GET, _OBJ.pack(addr, 0, 0), f"bpf_obj_get {path}")[0]
    del keep
    return fd


def obj_pin(fd: int, path: str) -> None:
    addr, keep = _buffer(os.fsencode(path) + b"\0")
    _call(BPF_OBJ_PIN, _OBJ.pack(addr, fd, 0), f"bpf_obj_pin {path}")
    del keep


class MapInfo:
    """The head of struct bpf_map_info: what decides whether a pin can be reused."""

    __slots__ = ("type", "id", "key_size", "value_size", "max_entries", "map_flags", "name")

    def __init__(self, raw: bytes) -> None:
        fields = _MAP_INFO.unpack_from(raw)
        self.type, self.id, self.key_size, self.value_size, self.max_entries, self.map_flags = fields[:6]
        self.name = fields[6].split(b"\0", 1)[0]


def map_info(fd: int) -> MapInfo:
    addr, buf = _buffer(_MAP_INFO_SIZE)
    _call(BPF_OBJ_GET_INFO_BY_FD, _INFO.pack(fd, _MAP_INFO_SIZE, addr), "bpf_obj_get_info_by_fd")
    return MapInfo(buf.raw)


def map_max_entries(fd: int) -> int:
    return int(map_info(fd).max_entries)


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str = "") -> int:
    attr = _MAP_CREATE.pack(map_type, key_size, value_size, max_entries, 0, 0, 0, name.encode()[:15])
    return _call(BPF_MAP_CREATE, attr, f"bpf_map_create {name}")[0]


def possible_cpus() -> int:
    """Values a per-CPU map holds per key (the kernel's possible CPUs, e.g. "0-1" or "0,2-3")."""
    if "cpus" not in _cache:
        with open("/sys/devices/system/cpu/possible") as f:
            spans = f.read().strip().split(",")
        _cache["cpus"] = max(int(span.split("-")[-1]) for span in spans) + 1
    return int(_cache["cpus"])


# -- map elements --------------------------------------------------------------------------------


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value (per-CPU maps: every CPU's, each rounded up to 8 bytes), or None without the key."""
    kaddr, kkeep = _buffer(key)
    vaddr, out = _buffer(value_size)
    ret = _call(BPF_MAP_LOOKUP_ELEM, _ELEM.pack(fd, kaddr, vaddr, 0), "map lookup", (errno.ENOENT,))[0]
    del kkeep
    return None if ret < 0 else bytes(out.raw)


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    """Raises FileExistsError with BPF_NOEXIST when the key is there."""
    kaddr, kkeep = _buffer(key)
    vaddr, vkeep = _buffer(value)
    _call(BPF_MAP_UPDATE_ELEM, _ELEM.pack(fd, kaddr, vaddr, flags), "map update")
    del kkeep, vkeep


def map_delete(fd: int, key: bytes) -> bool:
    """False when the key was not there."""
    kaddr, keep = _buffer(key)
    ret = _call(BPF_MAP_DELETE_ELEM, _ELEM.pack(fd, kaddr, 0, 0), "map delete", (errno.ENOENT,))[0]
    del keep
    return ret >= 0


def map_next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after `key` (the first with None), or None at the end."""
    kaddr, kkeep = _buffer(key) if key is not None else (0, None)
    naddr, out = _buffer(key_size)
    ret = _call(BPF_MAP_GET_NEXT_KEY, _ELEM.pack(fd, kaddr, naddr, 0), "map walk", (errno.ENOENT,))[0]
    del kkeep
    return None if ret < 0 else bytes(out.raw)


def map_lookup_batch(
    fd: int, after: bytes | None, key_size: int, value_size: int, count: int
) -> tuple[bytes, bytes, int, bytes | None]:
    """Up to `count` elements after the batch token `after` (None: from the start): (keys, values back to
    back, how many, the token for the next call or None when the map is done)."""
    in_addr, in_keep = _buffer(after) if after is not None else (0, None)
    out_addr, out_batch = _buffer(key_size)
    kaddr, keys = _buffer(key_size * count)
    vaddr, values = _buffer(value_size * count)
    attr = _BATCH.pack(in_addr, out_addr, kaddr, vaddr, count, fd, 0, 0)
    _, err, back = _call(BPF_MAP_LOOKUP_BATCH, attr, "map batch lookup", (errno.ENOENT,))
    del in_keep
    got = _BATCH.unpack(back.raw)[4]
    more = None if err == errno.ENOENT else bytes(out_batch.raw)
    return keys.raw[: key_size * got], values.raw[: value_size * got], got, more


def map_update_batch(fd: int, keys: bytes, values: bytes, count: int) -> None:
    """`count` elements in one call: keys and values packed back to back."""
    kaddr, kkeep = _buffer(keys)
    vaddr, vkeep = _buffer(values)
    _call(BPF_MAP_UPDATE_BATCH, _BATCH.pack(0, 0, kaddr, vaddr, count, fd, 0, 0), "map batch update")
    del kkeep, vkeep


# -- programs ------------------------------------------------------------------------------------


def prog_load(prog_type: int, insns: bytes, name: str, license: str = "GPL") -> int:
    """fd of a program loaded from raw instructions (8 bytes each)."""
    iaddr, ikeep = _buffer(insns)
    laddr, lkeep = _buffer(license.encode() + b"\0")
    attr = _PROG_LOAD.pack(prog_type, len(insns) // 8, iaddr, laddr, 0, 0, 0, 0, 0, name.encode()[:15])
    fd = _call(BPF_PROG_LOAD, attr, f"bpf_prog_load {name}")[0]
    del ikeep, lkeep
    return fd


class TestRun:
    """BPF_PROG_TEST_RUN on one packet, reusable: the buffers are made once (bench/pipeline calls it in a
    tight loop)."""

    __test__ = False  # not a pytest class

    def __init__(self, prog_fd: int, packet: bytes, repeat: int = 1) -> None:
        self._data_addr, self._data = _buffer(packet)
        self._out_addr, self._out = _buffer(len(packet) + 256)
        self._attr = _TEST_RUN.pack(
            prog_fd, 0, len(packet), len(packet) + 256, self._data_addr, self._out_addr, repeat,
            0, 0, 0, 0, 0, 0, 0, 0,
        )  # fmt: skip

    def __call__(self) -> tuple[int, int]:
        """(the program's return value, average ns per run)."""
        back = _call(BPF_PROG_TEST_RUN, self._attr, "BPF_PROG_TEST_RUN")[2]
        fields = _TEST_RUN.unpack(back.raw)
        return fields[1], fields[7]


# -- libbpf's ring buffer consumer ---------------------------------------------------------------

_STOP = -errno.E2BIG  # a callback's "stop here"


def _libbpf() -> Any:
    if "libbpf" not in _cache:
        ct = _ctypes()
        so = ct.CDLL("libbpf.so.1", use_errno=True)
        cb = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_size_t)
        so.ring_buffer__new.restype = ct.c_void_p
        so.ring_buffer__new.argtypes = [ct.c_int, cb, ct.c_void_p, ct.c_void_p]
        so.ring_buffer__poll.argtypes = [ct.c_void_p, ct.c_int]
        so.ring_buffer__consume.argtypes = [ct.c_void_p]
        so.ring_buffer__free.argtypes = [ct.c_void_p]
        _cache.update(libbpf=so, ring_cb=cb)
    return _cache["libbpf"]


class RingBuffer:
    """libbpf's consumer over one BPF_MAP_TYPE_RINGBUF fd: `callback(address, size)` per record, called
    from poll/consume (the record is only valid during the call). A callback that returns True stops the
    round after that record (the rest stays in the ring for the next call) and sets `stopped`."""

    def __init__(self, fd: int, callback: Callable[[int, int], bool | None]) -> None:
        so = _libbpf()
        self.stopped = False

        def _cb(_ctx: int | None, data: int | None, size: int) -> int:
            # libbpf keeps a record consumed when its callback fails, and stops the round there
            return _STOP if callback(data or 0, size) else 0

        self._cb = _cache["ring_cb"](_cb)  # kept referenced: libbpf calls it
        self.rb = so.ring_buffer__new(fd, self._cb, None, None)
        if not self.rb:
            err = _ctypes().get_errno() or errno.EINVAL
            raise OSError(err, f"ring_buffer__new: {os.strerror(err)}")

    def _result(self, ret: int, what: str) -> int:
        self.stopped = ret == _STOP
        if ret < 0 and not self.stopped and -ret != errno.EINTR:
            raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
        return max(ret, 0)

    def poll(self, timeout_ms: int) -> int:
        return self._result(int(_libbpf().ring_buffer__poll(self.rb, timeout_ms)), "ring_buffer__poll")

    def consume(self) -> int:
        return self._result(int(_libbpf().ring_buffer__consume(self.rb)), "ring_buffer__consume")

    def close(self) -> None:
        if self.rb:
            _libbpf().ring_buffer__free(self.rb)
            self.rb = None
