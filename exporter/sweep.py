"""The idle sweep: flows the kernel table still holds but that saw no packet for `idle_timeout` are taken
out of it, and their final record, an END read straight from the table entry, goes into the pipeline's
fan-out. Counters live apart from flow entries (bpf/include/maps.h), so nothing is lost with them; the
sweep also frees the counter slots of pods that are gone (an ADD killed half way leaves one behind)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from bpf import abi
from exporter.metrics import AgentHealth

if TYPE_CHECKING:
    from exporter.flows import Flow

log = logging.getLogger("lumen.sweep")


class FlowTable(Protocol):
    def sweep_idle(self, idle_ns: int, now_ns: int) -> list[tuple[abi.FlowKey, abi.FlowStats]]: ...

    def release_stale_slots(self, alive: set[int]) -> int: ...


class EndOf(Protocol):
    def ended(self, key: abi.FlowKey, st: abi.FlowStats, now_mono_ns: int) -> Flow: ...


class Sweeper:
    def __init__(
        self,
        table: FlowTable,
        decoder: EndOf,
        publish: Callable[[Sequence[Flow]], None],
        health: AgentHealth,
        alive_endpoints: Callable[[], set[int]],
    ) -> None:
        self.table = table
        self.decoder = decoder
        self.publish = publish
        self.health = health
        self.alive_endpoints = alive_endpoints

    def sweep(self, idle_s: float) -> int:
        now = time.monotonic_ns()
        ended = self.table.sweep_idle(int(idle_s * 1e9), now)
        flows = []
        for key, st in ended:
            try:
                flows.append(self.decoder.ended(key, st, now))
            except Exception:  # noqa: BLE001 - only this record is lost
                self.health.decode_errors += 1
        self.publish(flows)
        self.health.swept_flows += len(ended)
        freed = self.table.release_stale_slots(self.alive_endpoints())
        if freed:
            log.info("freed counter slots of pods that are gone", extra={"slots": freed})
        return len(ended)
