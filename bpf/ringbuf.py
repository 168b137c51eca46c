"""The flow event reader: pulls flow_event records out of the pinned ring buffer in batches.

The caller asks (`read`); libbpf's callback (through plugin/bpfsys.py) only appends the record's bytes
to this object's batch, so nothing on the kernel side of the house calls into the agent. A batch holds at
most `max_batch` records (the callback stops the round there; the rest waits in the ring for the next
read), so a consumer that falls behind a fast producer does not build an unbounded batch. Events
submitted with BPF_RB_NO_WAKEUP never wake epoll: the poll timeout is what bounds their delay.
"""

from __future__ import annotations

import ctypes as ct
import os

from bpf import abi
from bpf.maps import RingBuffer, obj_get

EVENT_SIZE = ct.sizeof(abi.FlowEvent)
MAX_BATCH = 4096


class EventReader:
    """Raw flow_event records (bytes, EVENT_SIZE each) from `<pin_dir>/lumen_events`."""

    def __init__(self, pin_dir: str, max_batch: int = MAX_BATCH) -> None:
        self.max_batch = max_batch
        self.short = 0  # records shorter than a flow_event (never written by our C; counted, skipped)
        self._batch: list[bytes] = []
        batch = self._batch

        def _take(data: int, length: int) -> bool:
            if length >= EVENT_SIZE and data:
                batch.append(ct.string_at(data, EVENT_SIZE))
            else:
                self.short += 1
            return len(batch) >= self.max_batch

        self._fd = obj_get(os.path.join(pin_dir, abi.MAP_EVENTS))
        try:
            self._ring: RingBuffer | None = RingBuffer(self._fd, _take)
        except OSError:
            os.close(self._fd)
            raise

    def read(self, timeout_ms: int) -> list[bytes]:
        """Up to max_batch records: waits up to `timeout_ms` for a wake-up, then drains; after a full
        batch, takes what is waiting without waiting."""
        ring = self._ring
        assert ring is not None, "reader closed"
        if ring.stopped:
            ring.consume()  # the previous round stopped with a full batch: go on without waiting
        else:
            ring.poll(timeout_ms)
            if not ring.stopped:
                ring.consume()
        out = self._batch[:]
        self._batch.clear()
        return out

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
            os.close(self._fd)
