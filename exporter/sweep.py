"""The idle sweep: flows the kernel table still holds but that saw no packet for `idle_timeout` are taken
out of it; their totals move to the retired counters (so metrics stay exact) and their final record, an
END read straight from the table entry, goes into the pipeline's fan-out."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from bpf import abi
from exporter.mapsource import totals
from exporter.metrics import AgentHealth, Retired

if TYPE_CHECKING:
    from exporter.flows import Flow


class FlowTable(Protocol):
    def sweep_idle(self, idle_ns: int, now_ns: int) -> list[tuple[abi.FlowKey, abi.FlowStats]]: ...


class EndOf(Protocol):
    def ended(self, key: abi.FlowKey, st: abi.FlowStats, now_mono_ns: int) -> Flow: ...


class Sweeper:
    def __init__(
        self,
        table: FlowTable,
        decoder: EndOf,
        retired: Retired,
        policy_names: Mapping[int, str],
        publish: Callable[[Sequence[Flow]], None],
        health: AgentHealth,
        save: Callable[[], None],
    ) -> None:
        self.table = table
        self.decoder = decoder
        self.retired = retired
        self.policy_names = policy_names
        self.publish = publish
        self.health = health
        self.save = save  # persists the retired totals

    def sweep(self, idle_s: float) -> int:
        now = time.monotonic_ns()
        ended = self.table.sweep_idle(int(idle_s * 1e9), now)
        for key, st in ended:
            self.retired.add(totals(key, st), self.policy_names)  # first: the kernel entries are gone already
        flows = []
        for key, st in ended:
            try:
                flows.append(self.decoder.ended(key, st, now))
            except Exception:  # noqa: BLE001 - the totals are kept; only this record is lost
                self.health.decode_errors += 1
        self.publish(flows)
        self.health.swept_flows += len(ended)
        if ended:
            self.save()
        return len(ended)
