"""The flow event reader: pulls flow_event records out of the pinned ring buffer in batches.

The caller asks (`read`); libbpf's callback only appends the record's bytes to this object's batch, so
nothing on the kernel side of the house calls into the agent. Events submitted with BPF_RB_NO_WAKEUP never
wake epoll: the poll timeout is what bounds their delay.
"""

from __future__ import annotations

import ctypes as ct
import os

from bpf import abi
from bpf.maps import RingBuffer, obj_get

EVENT_SIZE = ct.sizeof(abi.FlowEvent)


class EventReader:
    """Raw flow_event records (bytes, EVENT_SIZE each) from `<pin_dir>/lumen_events`."""

    def __init__(self, pin_dir: str) -> None:
        self._fd = obj_get(os.path.join(pin_dir, abi.MAP_EVENTS))
        self._batch: list[bytes] = []
        self.short = 0  # records shorter than a flow_event (never written by our C; counted, skipped)
        batch = self._batch

        def _take(data: int, length: int) -> None:
            if length >= EVENT_SIZE:
                batch.append(ct.string_at(data, EVENT_SIZE))
            else:
                self.short += 1

        self._take = _take
        try:
            self._ring: RingBuffer | None = RingBuffer(self._fd, _take)
        except OSError:
            os.close(self._fd)
            raise

    def read(self, timeout_ms: int) -> list[bytes]:
        """Wait up to `timeout_ms` for a wake-up, then drain what is there."""
        assert self._ring is not None, "reader closed"
        self._ring.poll(timeout_ms)
        self._ring.consume()
        out = self._batch[:]
        self._batch.clear()
        return out

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
            os.close(self._fd)
