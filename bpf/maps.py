"""Pinned BPF maps and the ring buffer through libbpf (ctypes): what the agent uses once bcc, in a child
process (bpf/compile.py), has compiled, loaded and pinned everything.

Why not bcc's tables: importing bcc maps LLVM and clang into the process (~60 MB resident here) and the
compile leaves ~40 MB more behind; the agent only needs map reads and writes and the ring buffer.
Values of per-CPU maps are lists with one entry per possible CPU, as bcc returns them.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

BPF_ANY = 0


@cache
def lib() -> ct.CDLL:
    so = ct.CDLL("libbpf.so.1", use_errno=True)
    so.bpf_obj_get.argtypes = [ct.c_char_p]
    so.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
    for name in ("bpf_map_lookup_elem", "bpf_map_get_next_key"):
        getattr(so, name).argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
    so.bpf_map_update_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]
    so.bpf_map_delete_elem.argtypes = [ct.c_int, ct.c_void_p]
    so.bpf_map_lookup_batch.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_void_p, ct.c_void_p,
                                        ct.POINTER(ct.c_uint32), ct.c_void_p]  # fmt: skip
    so.ring_buffer__new.restype = ct.c_void_p
    so.ring_buffer__new.argtypes = [ct.c_int, RING_CB, ct.c_void_p, ct.c_void_p]
    for name in ("ring_buffer__poll",):
        getattr(so, name).argtypes = [ct.c_void_p, ct.c_int]
    so.ring_buffer__consume.argtypes = [ct.c_void_p]
    so.ring_buffer__free.argtypes = [ct.c_void_p]
    return so


RING_CB = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_size_t)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = -ret if ret != -1 else ct.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def obj_get(path: str) -> int:
    return _check(lib().bpf_obj_get(path.encode()), f"bpf_obj_get {path}")


def obj_pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), f"bpf_obj_pin {path}")


class MapInfo(ct.Structure):
    """The head of struct bpf_map_info (uapi/linux/bpf.h): what decides whether a pin can be reused."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
        ("rest", ct.c_uint8 * 64),
    ]


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    size = ct.c_uint32(ct.sizeof(info))
    so = lib()
    so.bpf_obj_get_info_by_fd.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
    _check(so.bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "bpf_obj_get_info_by_fd")
    return info


BPF_PROG_TYPE_SCHED_CLS = 3
# mov64 r0, 0 (TC_ACT_OK); exit
_NOOP_INSNS = bytes.fromhex("b700000000000000") + bytes.fromhex("9500000000000000")


def load_noop_tc_prog(name: str = "lumen_noop") -> int:
    """A TC program that does nothing: what bpf_stats charges any program on this machine (its clock
    reads), the floor under bench/datapath's per-packet costs. Returns its fd."""
    insns = ct.create_string_buffer(_NOOP_INSNS, len(_NOOP_INSNS))
    fn = lib().bpf_prog_load
    fn.argtypes = [ct.c_int, ct.c_char_p, ct.c_char_p, ct.c_void_p, ct.c_size_t, ct.c_void_p]
    return _check(fn(BPF_PROG_TYPE_SCHED_CLS, name.encode(), b"GPL", insns, len(_NOOP_INSNS) // 8, None),
                  "bpf_prog_load")  # fmt: skip


@cache
def possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


class Map:
    """One pinned map: key and value ctypes types, dict-like access. `Key`, `Leaf`, `sLeaf` and
    `total_cpu` are named as in bcc, for code written against both."""

    def __init__(self, path: str, key: type[Any], leaf: type[Any], percpu: bool = False) -> None:
        self.path = path
        self.fd = obj_get(path)
        self.Key = key
        self.sLeaf = leaf
        self.percpu = percpu
        self.total_cpu = possible_cpus() if percpu else 1
        # the kernel copies per-CPU values each rounded up to 8 bytes
        self._slot = (ct.sizeof(leaf) + 7) // 8 * 8 if percpu else ct.sizeof(leaf)
        self.Leaf = (leaf * self.total_cpu) if percpu else leaf

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _key(self, key: Any) -> Any:
        return key if isinstance(key, self.Key) else self.Key.from_buffer_copy(bytes(key))

    def _unpack(self, data: Any, offset: int = 0) -> Any:
        """The value at `offset` of a buffer; u32/u64 values come back as ints, as in bcc."""
        scalar = issubclass(self.sLeaf, ct._SimpleCData)
        if not self.percpu:
            v = self.sLeaf.from_buffer_copy(data, offset)
            return v.value if scalar else v
        out = [self.sLeaf.from_buffer_copy(data, offset + i * self._slot) for i in range(self.total_cpu)]
        return [v.value for v in out] if scalar else out

    def __getitem__(self, key: Any) -> Any:
        k = self._key(key)
        out = ct.create_string_buffer(self._slot * self.total_cpu)
        ret = lib().bpf_map_lookup_elem(self.fd, ct.byref(k), out)
        if ret < 0:
            err = -ret if ret != -1 else ct.get_errno()
            if err == errno.ENOENT:
                raise KeyError(key)
            raise OSError(err, f"lookup in {self.path}: {os.strerror(err)}")
        return self._unpack(out)

    def __setitem__(self, key: Any, value: Any) -> None:
        k = self._key(key)
        if self.percpu and isinstance(value, list | tuple):
            buf = ct.create_string_buffer(self._slot * self.total_cpu)
            for i, v in enumerate(value):
                ct.memmove(ct.addressof(buf) + i * self._slot, bytes(v), ct.sizeof(self.sLeaf))
            data: Any = buf
        elif self.percpu:
            data = ct.create_string_buffer(bytes(value), self._slot * self.total_cpu)
        else:
            data = value if isinstance(value, self.sLeaf) else self.sLeaf.from_buffer_copy(bytes(value))
        _check(
            lib().bpf_map_update_elem(self.fd, ct.byref(k), ct.byref(data), BPF_ANY), f"update {self.path}"
        )

    def __delitem__(self, key: Any) -> None:
        ret = lib().bpf_map_delete_elem(self.fd, ct.byref(self._key(key)))
        if ret < 0:
            err = -ret if ret != -1 else ct.get_errno()
            if err == errno.ENOENT:
                raise KeyError(key)
            raise OSError(err, f"delete in {self.path}: {os.strerror(err)}")

    def keys(self) -> Iterator[Any]:
        """Every key; entries deleted meanwhile may be skipped, as with any get_next_key walk."""
        prev: Any = None
        while True:
            nxt = self.Key()
            ret = lib().bpf_map_get_next_key(self.fd, None if prev is None else ct.byref(prev), ct.byref(nxt))
            if ret < 0:
                err = -ret if ret != -1 else ct.get_errno()
                if err == errno.ENOENT:
                    return
                raise OSError(err, f"walk {self.path}: {os.strerror(err)}")
            yield nxt
            prev = nxt

    def items(self) -> list[tuple[Any, Any]]:
        out = []
        for k in list(self.keys()):
            try:
                out.append((k, self[k]))
            except KeyError:
                continue  # deleted (or evicted) during the walk
        return out

    def items_lookup_batch(self, chunk: int = 4096) -> Iterator[tuple[Any, Any]]:
        """The whole map in a few syscalls (BPF_MAP_LOOKUP_BATCH)."""
        ksize, vsize = ct.sizeof(self.Key), self._slot * self.total_cpu
        keys = ct.create_string_buffer(ksize * chunk)
        values = ct.create_string_buffer(vsize * chunk)
        in_batch, out_batch = ct.create_string_buffer(ksize), ct.create_string_buffer(ksize)
        first = True
        while True:
            count = ct.c_uint32(chunk)
            ret = lib().bpf_map_lookup_batch(
                self.fd, None if first else in_batch, out_batch, keys, values, ct.byref(count), None
            )
            err = 0 if ret >= 0 else (-ret if ret != -1 else ct.get_errno())
            if err not in (0, errno.ENOENT):
                raise OSError(err, f"batch lookup in {self.path}: {os.strerror(err)}")
            kb, vb = keys.raw, values.raw
            for i in range(count.value):
                yield (
                    self.Key.from_buffer_copy(kb, i * ksize),
                    self._unpack(vb, i * vsize),
                )
            if err == errno.ENOENT:
                return
            ct.memmove(in_batch, out_batch, ksize)
            first = False

    def raw_values(self, start: int, count: int) -> bytes:
        """Values of array keys start .. start+count-1, back to back (per-CPU: each key's CPUs in turn,
        8-byte aligned), in one BPF_MAP_LOOKUP_BATCH per 4096 keys, without a Python object per key."""
        vsize = self._slot * self.total_cpu
        out = []
        while count > 0:
            chunk = min(count, 4096)
            keys = ct.create_string_buffer(4 * chunk)
            values = ct.create_string_buffer(vsize * chunk)
            prev, nxt = ct.c_uint32(start - 1), ct.c_uint32(0)  # the batch starts after `prev`
            got = ct.c_uint32(chunk)
            ret = lib().bpf_map_lookup_batch(
                self.fd, ct.byref(prev) if start else None, ct.byref(nxt), keys, values, ct.byref(got), None
            )
            err = 0 if ret >= 0 else (-ret if ret != -1 else ct.get_errno())
            if err not in (0, errno.ENOENT) or got.value != chunk:
                raise OSError(
                    err or errno.EIO, f"batch lookup in {self.path}: {os.strerror(err or errno.EIO)}"
                )
            out.append(values.raw)
            start += chunk
            count -= chunk
        return b"".join(out)


class RingBuffer:
    """libbpf's ring buffer consumer over one BPF_MAP_TYPE_RINGBUF fd."""

    def __init__(self, fd: int, callback: Callable[[int, int], None]) -> None:
        def _cb(_ctx: int | None, data: int | None, size: int) -> int:
            callback(data or 0, size)
            return 0

        self._cb = RING_CB(_cb)  # kept referenced: libbpf calls it
        self.rb = lib().ring_buffer__new(fd, self._cb, None, None)
        if not self.rb:
            err = ct.get_errno() or errno.EINVAL
            raise OSError(err, f"ring_buffer__new: {os.strerror(err)}")

    def poll(self, timeout_ms: int) -> int:
        ret = lib().ring_buffer__poll(self.rb, timeout_ms)
        if ret < 0 and -ret != errno.EINTR:
            _check(ret, "ring_buffer__poll")
        return max(ret, 0)

    def consume(self) -> int:
        return max(lib().ring_buffer__consume(self.rb), 0)

    def close(self) -> None:
        if self.rb:
            lib().ring_buffer__free(self.rb)
            self.rb = None
