"""The metrics' view of the pinned maps (a metrics.MapSource): flow table entries as FlowTotals, per-source
counters and the datapath's statistics, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from bpf import abi
from bpf.vocab import DIRECTION_NAMES, DROP_REASON_NAMES, VERDICT_NAMES, protocol_name
from exporter.metrics import FlowTotals

STAT_KEYS = {s.name.lower(): s for s in abi.Stat}


def totals(key: abi.FlowKey, st: abi.FlowStats) -> FlowTotals:
    return FlowTotals(
        protocol=protocol_name(key.proto),
        direction=DIRECTION_NAMES.get(key.direction, str(key.direction)),
        verdict=VERDICT_NAMES.get(st.verdict, str(st.verdict)),
        drop_reason=DROP_REASON_NAMES.get(st.drop_reason, str(st.drop_reason)),
        src_ep=st.src_ep,
        dst_ep=st.dst_ep,
        packets=st.packets,
        bytes=st.bytes,
        egress_policy=st.egress_policy,
        ingress_policy=st.ingress_policy,
    )


class Datapath(Protocol):
    """The parts of bpf.loader.Datapath the agent's map source reads."""

    cfg: Any

    def flows(self) -> Iterable[tuple[abi.FlowKey, abi.FlowStats]]: ...

    def source_counters(self) -> dict[str, tuple[int, int]]: ...

    def stat(self, which: abi.Stat) -> int: ...


class DatapathSource:
    """metrics.MapSource over the loaded datapath's pinned maps."""

    def __init__(self, dp: Datapath) -> None:
        self.dp = dp
        self.flow_capacity = int(dp.cfg.flow_table_size)

    def flow_totals(self) -> Iterator[FlowTotals]:
        for key, st in self.dp.flows():
            yield totals(key, st)

    def source_counters(self) -> Iterator[tuple[str, int, int]]:
        for ip, (packets, nbytes) in self.dp.source_counters().items():
            yield ip, packets, nbytes

    def datapath_stats(self) -> Mapping[str, int]:
        return {name: self.dp.stat(which) for name, which in STAT_KEYS.items()}
