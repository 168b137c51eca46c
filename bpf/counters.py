"""Reading the datapath's tables: flows, per-pod, pod-pair, per-source, policy and drop counters, the
statistics; and the idle sweep's removal of flow entries."""

from __future__ import annotations

import ctypes as ct
from collections.abc import Iterator

from bpf import abi
from bpf.pins import PinnedMaps, table_entries


class CounterMaps(PinnedMaps):
    def flows(self) -> Iterator[tuple[abi.FlowKey, abi.FlowStats]]:
        table = self._map(abi.MAP_FLOWS)
        try:
            yield from table.items_lookup_batch()
        except OSError:  # kernels without batch ops on LRU maps
            yield from table.items()

    def source_counters(self) -> dict[str, tuple[int, int]]:
        """Source address -> (packets, bytes) of sources that are not a local pod with a counter slot."""
        out = {}
        for key, per_cpu in self._map(abi.MAP_SOURCES).items():
            packets = sum(v.packets for v in per_cpu)
            nbytes = sum(v.bytes for v in per_cpu)
            out[abi.addr_str(key.addr, key.family)] = (packets, nbytes)
        return out

    def pod_counters(self) -> dict[int, tuple[int, int, int, int]]:
        """Endpoint id -> (tx packets, tx bytes, rx packets, rx bytes) of every pod holding a slot."""
        pods = self._map(abi.MAP_PODS)
        out = {}
        for slot, ep in self.slot_claims().items():
            try:
                per_cpu = pods[ct.c_uint32(slot)]
            except KeyError:
                continue
            if per_cpu[0].endpoint_id != ep:
                continue  # claimed, not yet zeroed for its pod
            out[ep] = (
                sum(v.tx_packets for v in per_cpu),
                sum(v.tx_bytes for v in per_cpu),
                sum(v.rx_packets for v in per_cpu),
                sum(v.rx_bytes for v in per_cpu),
            )
        return out

    def pair_bytes(self) -> dict[tuple[int, int, int], int]:
        """(source endpoint id, destination endpoint id, verdict) -> bytes, between pods holding slots."""
        claims = self.slot_claims()
        n = table_entries(self._map(abi.MAP_PODS))
        pairs = self._map(abi.MAP_PAIRS)
        out = {}
        for src, src_ep in claims.items():
            row = memoryview(pairs.raw_values(src * n, n)).cast("Q")  # n x u64[4]
            for dst, dst_ep in claims.items():
                for verdict in abi.Verdict:
                    nbytes = row[dst * 4 + verdict]
                    if nbytes:
                        out[(src_ep, dst_ep, int(verdict))] = int(nbytes)
        return out

    def _percpu_u64_array(self, name: str) -> list[int]:
        table = self._map(name)
        entries = table_entries(table)
        raw = memoryview(table.raw_values(0, entries)).cast("Q")
        cpus = table.total_cpu
        return [sum(raw[i * cpus : (i + 1) * cpus]) for i in range(entries)]

    def flow_counts(self) -> dict[tuple[int, int, int], int]:
        """(protocol number, verdict, direction) -> flows created."""
        out = {}
        for i, n in enumerate(self._percpu_u64_array(abi.MAP_FLOW_COUNTS)):
            if n:
                out[(i >> 3, i >> 1 & 3, (i & 1) + 1)] = n
        return out

    def drops(self) -> dict[tuple[int, int], int]:
        """(drop reason, protocol number) -> packets dropped."""
        return {(i >> 8, i & 0xFF): n for i, n in enumerate(self._percpu_u64_array(abi.MAP_DROPS)) if n}

    def policy_decisions(self) -> dict[tuple[int, int, int, bool], int]:
        """(policy id, verdict, direction of the side, denied) -> flow decisions. A denied side is named
        by the policy isolating it (0: not known)."""
        out: dict[tuple[int, int, int, bool], int] = {}
        for k, per_cpu in self._map(abi.MAP_POLICY_COUNTS).items():
            denied = bool(k.denied) or k.policy_id == abi.POLICY_DENIED_ID  # the latter: an older build's
            pid = 0 if k.policy_id == abi.POLICY_DENIED_ID else int(k.policy_id)
            key = (pid, int(k.verdict), int(k.direction), denied)
            out[key] = out.get(key, 0) + sum(per_cpu)
        return out

    def policy_counts(self) -> dict[tuple[int, int, int], int]:
        """(policy id, verdict, direction of the side) -> flow decisions; POLICY_DENIED_ID for a side no
        rule admitted."""
        out: dict[tuple[int, int, int], int] = {}
        for (pid, verdict, direction, denied), n in self.policy_decisions().items():
            key = (abi.POLICY_DENIED_ID if denied else pid, verdict, direction)
            out[key] = out.get(key, 0) + n
        return out

    def tcp_flags(self) -> dict[tuple[int, int], int]:
        """(IP version, TCP flag byte) -> packets, for packets with SYN, FIN or RST."""
        counts = self._percpu_u64_array(abi.MAP_TCP_FLAGS)
        return {(6 if i >> 8 else 4, i & 0xFF): n for i, n in enumerate(counts) if n}

    def stat(self, which: abi.Stat) -> int:
        return int(sum(self._map(abi.MAP_STATS)[ct.c_uint32(int(which))]))

    def lost_events(self) -> int:
        return self.stat(abi.Stat.LOST_EVENTS)

    def flow_table_entries(self) -> int:
        return sum(1 for _ in self.flows())

    def sweep_idle(self, idle_ns: int, now_ns: int) -> list[tuple[abi.FlowKey, abi.FlowStats]]:
        """Remove flows idle for `idle_ns` and return them: the agent emits their END."""
        table = self._map(abi.MAP_FLOWS)
        ended = [(k, v) for k, v in self.flows() if now_ns - v.last_seen_ns >= idle_ns]
        for key, _ in ended:
            try:
                del table[key]
            except KeyError:
                pass
        return ended
