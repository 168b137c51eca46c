"""Typed views over pinned BPF maps: what the agent uses once bcc, in a child process (bpf/compile.py),
has compiled, loaded and pinned everything. Every kernel call goes through plugin/bpfsys.py.

Why not bcc's tables: importing bcc maps LLVM and clang into the process (~60 MB resident here) and the
compile leaves ~40 MB more behind; the agent only needs map reads and writes and the ring buffer.
Values of per-CPU maps are lists with one entry per possible CPU, as bcc returns them.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from collections.abc import Iterator
from typing import Any

from plugin import bpfsys
from plugin.bpfsys import RingBuffer, map_info, obj_get, obj_pin, possible_cpus

__all__ = ["Map", "RingBuffer", "load_noop_tc_prog", "map_info", "obj_get", "obj_pin", "possible_cpus"]

# mov64 r0, 0 (TC_ACT_OK); exit
_NOOP_INSNS = bytes.fromhex("b700000000000000") + bytes.fromhex("9500000000000000")


def load_noop_tc_prog(name: str = "lumen_noop") -> int:
    """A TC program that does nothing: what bpf_stats charges any program on this machine (its clock
    reads), the floor under bench/datapath's per-packet costs. Returns its fd."""
    return bpfsys.prog_load(bpfsys.BPF_PROG_TYPE_SCHED_CLS, _NOOP_INSNS, name)


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
        self._vsize = self._slot * self.total_cpu
        self.Leaf = (leaf * self.total_cpu) if percpu else leaf

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _key(self, key: Any) -> bytes:
        return bytes(key)

    def _unpack(self, data: Any, offset: int = 0) -> Any:
        """The value at `offset` of a buffer; u32/u64 values come back as ints, as in bcc."""
        scalar = issubclass(self.sLeaf, ct._SimpleCData)
        if not self.percpu:
            v = self.sLeaf.from_buffer_copy(data, offset)
            return v.value if scalar else v
        out = [self.sLeaf.from_buffer_copy(data, offset + i * self._slot) for i in range(self.total_cpu)]
        return [v.value for v in out] if scalar else out

    def __getitem__(self, key: Any) -> Any:
        raw = bpfsys.map_lookup(self.fd, self._key(key), self._vsize)
        if raw is None:
            raise KeyError(key)
        return self._unpack(raw)

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.percpu and isinstance(value, list | tuple):
            size = ct.sizeof(self.sLeaf)
            data = b"".join(bytes(v)[:size].ljust(self._slot, b"\0") for v in value).ljust(self._vsize, b"\0")
        elif self.percpu:
            data = bytes(value).ljust(self._vsize, b"\0")
        else:
            data = bytes(value)
        bpfsys.map_update(self.fd, self._key(key), data)

    def __delitem__(self, key: Any) -> None:
        if not bpfsys.map_delete(self.fd, self._key(key)):
            raise KeyError(key)

    def keys(self) -> Iterator[Any]:
        """Every key; entries deleted meanwhile may be skipped, as with any get_next_key walk."""
        size = ct.sizeof(self.Key)
        prev: bytes | None = None
        while (nxt := bpfsys.map_next_key(self.fd, prev, size)) is not None:
            yield self.Key.from_buffer_copy(nxt)
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
        ksize, vsize = ct.sizeof(self.Key), self._vsize
        token: bytes | None = None
        while True:
            kb, vb, count, token = bpfsys.map_lookup_batch(self.fd, token, ksize, vsize, chunk)
            for i in range(count):
                yield self.Key.from_buffer_copy(kb, i * ksize), self._unpack(vb, i * vsize)
            if token is None:
                return

    def raw_values(self, start: int, count: int) -> bytes:
        """Values of array keys start .. start+count-1, back to back (per-CPU: each key's CPUs in turn,
        8-byte aligned), in one BPF_MAP_LOOKUP_BATCH per 4096 keys, without a Python object per key."""
        out = []
        while count > 0:
            chunk = min(count, 4096)
            after = (start - 1).to_bytes(4, "little") if start else None  # the batch starts after `after`
            _, values, got, _ = bpfsys.map_lookup_batch(self.fd, after, 4, self._vsize, chunk)
            if got != chunk:
                raise OSError(errno.EIO, f"batch lookup in {self.path}: {got} of {chunk} values")
            out.append(values)
            start += chunk
            count -= chunk
        return b"".join(out)
