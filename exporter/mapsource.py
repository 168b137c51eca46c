"""The metrics' view of the pinned maps (a metrics.MapSource): the datapath's counters keyed by what they
count, named with bpf/vocab.py as flows are, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from bpf import abi
from bpf.vocab import DIRECTION_NAMES, DROP_REASON_NAMES, VERDICT_NAMES, protocol_name
from exporter.metrics import PodCounts, tcp_flag_labels

STAT_KEYS = {s.name.lower(): s for s in abi.Stat}


class CounterReader(Protocol):
    """The parts of bpf.loader.Datapath the agent's map source reads."""

    cfg: Any

    def flow_table_entries(self) -> int: ...

    def flow_counts(self) -> dict[tuple[int, int, int], int]: ...

    def drops(self) -> dict[tuple[int, int], int]: ...

    def policy_decisions(self) -> dict[tuple[int, int, int, bool], int]: ...

    def tcp_flags(self) -> dict[tuple[int, int], int]: ...

    def pod_counters(self) -> dict[int, tuple[int, int, int, int]]: ...

    def pair_bytes(self) -> dict[tuple[int, int, int], int]: ...

    def source_counters(self) -> dict[str, tuple[int, int]]: ...

    def stat(self, which: abi.Stat) -> int: ...


class DatapathSource:
    """metrics.MapSource over the loaded datapath's pinned maps: numbers named as in flows."""

    def __init__(self, dp: CounterReader) -> None:
        self.dp = dp
        self.flow_capacity = int(dp.cfg.flow_table_size)

    def flow_table_entries(self) -> int:
        return self.dp.flow_table_entries()

    def flow_counts(self) -> dict[tuple[str, str, str], int]:
        out: dict[tuple[str, str, str], int] = {}
        for (proto, verdict, direction), n in self.dp.flow_counts().items():
            key = (
                VERDICT_NAMES.get(verdict) or str(verdict),
                protocol_name(proto),
                DIRECTION_NAMES.get(direction) or str(direction),
            )
            out[key] = out.get(key, 0) + n
        return out

    def drops(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for (reason, proto), n in self.dp.drops().items():
            key = (DROP_REASON_NAMES.get(reason) or str(reason), protocol_name(proto))
            out[key] = out.get(key, 0) + n
        return out

    def policy_counts(self) -> dict[tuple[int, str, str, bool], int]:
        return {
            (pid, VERDICT_NAMES.get(v) or str(v), DIRECTION_NAMES.get(d) or str(d), denied): n
            for (pid, v, d, denied), n in self.dp.policy_decisions().items()
        }

    def tcp_flags(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for (version, flags), n in self.dp.tcp_flags().items():
            for name in tcp_flag_labels(flags):
                key = (name, f"IPv{version}")
                out[key] = out.get(key, 0) + n
        return out

    def pod_counters(self) -> dict[int, PodCounts]:
        return {ep: PodCounts(*c) for ep, c in self.dp.pod_counters().items()}

    def pair_bytes(self) -> dict[tuple[int, int, str], int]:
        return {(s, d, VERDICT_NAMES.get(v) or str(v)): n for (s, d, v), n in self.dp.pair_bytes().items()}

    def source_counters(self) -> Iterator[tuple[str, int, int]]:
        for ip, (packets, nbytes) in self.dp.source_counters().items():
            yield ip, packets, nbytes

    def datapath_stats(self) -> Mapping[str, int]:
        return {name: self.dp.stat(which) for name, which in STAT_KEYS.items()}
