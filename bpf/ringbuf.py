"""The flow event reader: pulls flow_event records out of the pinned ring buffer in batches.

The caller asks (`read`); libbpf's callback only appends the record's bytes to this object's batch, so
nothing on the kernel side of the house calls into the agent. A batch holds at most `max_batch` records
(the callback stops libbpf there; the rest waits in the ring for the next read), so a consumer that falls
behind a fast producer does not build an unbounded batch. Events submitted with BPF_RB_NO_WAKEUP never
wake epoll: the poll timeout is what bounds their delay.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os

from bpf import abi
from bpf.maps import RING_CB, lib, obj_get

EVENT_SIZE = ct.sizeof(abi.FlowEvent)
MAX_BATCH = 4096
_FULL = -errno.E2BIG  # the callback's "batch full": libbpf keeps that record consumed and stops


class EventReader:
    """Raw flow_event records (bytes, EVENT_SIZE each) from `<pin_dir>/lumen_events`."""

    def __init__(self, pin_dir: str, max_batch: int = MAX_BATCH) -> None:
        self.max_batch = max_batch
        self.short = 0  # records shorter than a flow_event (never written by our C; counted, skipped)
        self._batch: list[bytes] = []
        self._full = False
        batch = self._batch

        def _take(_ctx: int | None, data: int | None, length: int) -> int:
            if length >= EVENT_SIZE and data:
                batch.append(ct.string_at(data, EVENT_SIZE))
            else:
                self.short += 1
            return _FULL if len(batch) >= self.max_batch else 0

        self._cb = RING_CB(_take)  # kept referenced: libbpf calls it
        self._fd = obj_get(os.path.join(pin_dir, abi.MAP_EVENTS))
        self._rb = lib().ring_buffer__new(self._fd, self._cb, None, None)
        if not self._rb:
            err = ct.get_errno() or errno.EINVAL
            os.close(self._fd)
            raise OSError(err, f"ring_buffer__new: {os.strerror(err)}")

    def _check(self, ret: int, what: str) -> None:
        if ret == _FULL:
            self._full = True
        elif ret < 0 and -ret != errno.EINTR:
            raise OSError(-ret, f"{what}: {os.strerror(-ret)}")

    def read(self, timeout_ms: int) -> list[bytes]:
        """Up to max_batch records: waits up to `timeout_ms` for a wake-up, then drains; after a full
        batch, takes what is waiting without waiting."""
        assert self._rb, "reader closed"
        so = lib()
        full, self._full = self._full, False
        if not full:
            self._check(so.ring_buffer__poll(self._rb, timeout_ms), "ring_buffer__poll")
        if not self._full:
            self._check(so.ring_buffer__consume(self._rb), "ring_buffer__consume")
        out = self._batch[:]
        self._batch.clear()
        return out

    def close(self) -> None:
        if self._rb:
            lib().ring_buffer__free(self._rb)
            self._rb = None
            os.close(self._fd)
