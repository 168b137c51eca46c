"""Prometheus metrics read from the BPF maps at scrape time.

Nothing here is bumped per packet or per event: every flow figure is summed from the kernel's flow table
(packets and bytes are exact there, whatever the ring buffer lost) plus the totals of flows the agent has
swept out of that table (`Retired`, persisted so an agent restart loses no counter). Labels are bounded:
verdict, protocol, direction, drop reason, and namespace/pod of pods that currently have an endpoint
record, so a pod's series go away after its DEL. Never a per-flow label.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bpf import abi
from exporter.enrich import EndpointDirectory
from exporter.flows import FlowStore

#: datapath counters (bpf stats map) -> metric name and help
DATAPATH_STATS = {
    "lost_events": ("lumen_lost_events", "Events the kernel could not put in the ring buffer (full)."),
    "events": ("lumen_datapath_events", "Events the kernel put in the ring buffer."),
    "flows_created": ("lumen_flows_created", "Flow table entries created by the datapath."),
    "flow_insert_failed": (
        "lumen_flow_insert_failed",
        "Flow table inserts that failed; packets not accounted.",
    ),
    "redirected": ("lumen_redirected_packets", "Packets sent straight into the destination pod."),
    "unparsed": (
        "lumen_unparsed_packets",
        "IP packets whose headers the datapath could not read: not accounted.",
    ),
}


class FlowTotals(NamedTuple):
    """One flow table entry as the metrics need it (decoded by exporter.mapsource)."""

    protocol: str
    direction: str
    verdict: str
    drop_reason: str
    src_ep: int  # endpoint id of the source pod, 0 if not local
    dst_ep: int
    packets: int
    bytes: int
    egress_policy: int = 0  # policy id admitting the source's egress; 0 not isolated; POLICY_DENIED_ID none
    ingress_policy: int = 0


def policy_verdicts(t: FlowTotals, names: Mapping[int, str]) -> Iterator[tuple[str, str, str]]:
    """(verdict, direction, policy) of each isolated side of a flow; policy "none" = default deny."""
    for direction, pid in (("egress", t.egress_policy), ("ingress", t.ingress_policy)):
        if pid:
            yield t.verdict, direction, "none" if pid == abi.POLICY_DENIED_ID else names.get(pid, f"#{pid}")


class MapSource(Protocol):
    """What the Collector reads; the agent's implementation reads the pinned BPF maps."""

    flow_capacity: int

    def flow_totals(self) -> Iterable[FlowTotals]: ...

    def source_counters(self) -> Iterable[tuple[str, int, int]]:
        """(source address, packets, bytes) summed over CPUs."""
        ...

    def datapath_stats(self) -> Mapping[str, int]:
        """Keys of DATAPATH_STATS."""
        ...


@dataclass
class AgentHealth:
    """The agent's own figures. Written by the ring-buffer thread, read at scrape time."""

    events_consumed: int = 0
    decode_errors: int = 0
    poll_lag_seconds: float = 0.0  # kernel timestamp of the latest event to its decoding
    last_poll_monotonic: float = 0.0
    attached_endpoints: int = 0
    swept_flows: int = 0
    #: counts attached endpoints now (the plugin attaches at ADD, between two housekeeping rounds)
    count_attached: Callable[[], int] | None = None


class Retired:
    """Totals of flows removed from the kernel table by the agent's idle sweep."""

    def __init__(self) -> None:
        self.flows: Counter[tuple[str, str, str]] = Counter()  # (verdict, protocol, direction) -> flows
        self.drops: Counter[tuple[str, str]] = Counter()  # (reason, protocol) -> packets
        self.tx: dict[int, list[int]] = {}  # endpoint id -> [packets, bytes]
        self.rx: dict[int, list[int]] = {}
        self.policy: Counter[tuple[str, str, str]] = Counter()  # (verdict, direction, policy) -> flows
        self.pairs: dict[tuple[int, int, str], int] = {}  # (src endpoint, dst endpoint, verdict) -> bytes

    def add(self, t: FlowTotals, names: Mapping[int, str] | None = None) -> None:
        self.flows[(t.verdict, t.protocol, t.direction)] += 1
        self.policy.update(policy_verdicts(t, names or {}))
        if t.verdict == "DROPPED":
            self.drops[(t.drop_reason, t.protocol)] += t.packets
        if t.src_ep:
            _bump(self.tx, t.src_ep, t.packets, t.bytes)
        if t.dst_ep:
            _bump(self.rx, t.dst_ep, t.packets, t.bytes)
        if t.src_ep and t.dst_ep:
            key = (t.src_ep, t.dst_ep, t.verdict)
            self.pairs[key] = self.pairs.get(key, 0) + t.bytes

    def copy(self) -> Retired:
        out = Retired()
        out.flows, out.drops, out.policy = Counter(self.flows), Counter(self.drops), Counter(self.policy)
        out.tx = {ep: list(v) for ep, v in self.tx.items()}
        out.rx = {ep: list(v) for ep, v in self.rx.items()}
        out.pairs = dict(self.pairs)
        return out

    def forget_endpoints(self, alive: set[int]) -> None:
        """A DEL'd pod's totals go with it (its endpoint id, a host ifindex, may be reused)."""
        for table in (self.tx, self.rx):
            for ep in [ep for ep in table if ep not in alive]:
                del table[ep]
        for pair in [p for p in self.pairs if p[0] not in alive or p[1] not in alive]:
            del self.pairs[pair]

    def to_json(self) -> str:
        return json.dumps(
            {
                "flows": [[*k, v] for k, v in self.flows.items()],
                "drops": [[*k, v] for k, v in self.drops.items()],
                "tx": {str(k): v for k, v in self.tx.items()},
                "rx": {str(k): v for k, v in self.rx.items()},
                "policy": [[*k, v] for k, v in self.policy.items()],
                "pairs": [[*k, v] for k, v in self.pairs.items()],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Retired:
        data = json.loads(text)
        r = cls()
        r.flows.update({(a, b, c): n for a, b, c, n in data.get("flows", [])})
        r.drops.update({(a, b): n for a, b, n in data.get("drops", [])})
        r.tx = {int(k): list(v) for k, v in data.get("tx", {}).items()}
        r.rx = {int(k): list(v) for k, v in data.get("rx", {}).items()}
        r.policy.update({(a, b, c): n for a, b, c, n in data.get("policy", [])})
        r.pairs = {(int(a), int(b), str(c)): int(n) for a, b, c, n in data.get("pairs", [])}
        return r

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> Retired:
        try:
            with open(path) as f:
                return cls.from_json(f.read())
        except FileNotFoundError:
            return cls()
        except (ValueError, TypeError):
            # A corrupt file must not stop the agent; counters restart from the live table.
            return cls()


def _bump(table: dict[int, list[int]], ep: int, packets: int, nbytes: int) -> None:
    cell = table.get(ep)
    if cell is None:
        table[ep] = [packets, nbytes]
    else:
        cell[0] += packets
        cell[1] += nbytes


class LumenCollector(Collector):
    """A custom Collector: register it once, it reads the maps on every scrape."""

    def __init__(
        self,
        source: MapSource,
        directory: EndpointDirectory,
        retired: Retired,
        health: AgentHealth,
        store: FlowStore | None = None,
        policy_names: Mapping[int, str] | None = None,
    ) -> None:
        self.policy_names: Mapping[int, str] = policy_names if policy_names is not None else {}
        self.source = source
        self.directory = directory
        self.retired = retired
        self.health = health
        self.store = store
        # LRU evictions under pressure can shrink a live sum; a counter must never go down.
        self._floor: dict[tuple[str, tuple[str, ...]], float] = {}
        self.last_scrape_seconds = 0.0

    def describe(self) -> list[Metric]:
        return []  # collected on demand only; registering must not read the maps

    def _counter(self, name: str, doc: str, labels: list[str], values: Mapping[Any, float]) -> Metric:
        fam = CounterMetricFamily(name, doc, labels=labels)
        for key, value in sorted(values.items()):
            floor_key = (name, key)
            value = max(value, self._floor.get(floor_key, 0.0))
            self._floor[floor_key] = value
            fam.add_metric(list(key), value)
        return fam

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        self.directory.refresh()
        # live table entries summed on top of the swept ones, the same way the sweep retires them
        totals = self.retired.copy()
        entries = 0
        for t in self.source.flow_totals():
            entries += 1
            totals.add(t, self.policy_names)
        flows, drops, policy = totals.flows, totals.drops, totals.policy
        tx, rx, pairs = totals.tx, totals.rx, totals.pairs

        yield self._counter(
            "lumen_flows_processed",
            "Flows seen by the datapath (each flow counted once, where it enters the pod network).",
            ["verdict", "protocol", "direction"],
            flows,
        )
        yield self._counter("lumen_drop", "Packets dropped by the datapath.", ["reason", "protocol"], drops)
        yield self._counter(
            "lumen_policy_verdicts",
            "Flows decided by NetworkPolicy, per isolated side (egress of the source pod, ingress of the "
            'destination pod) and the policy that admitted it ("none": no rule did).',
            ["verdict", "direction", "policy"],
            policy,
        )

        # Per pod: sum over the pod's attachments; pods without a record (DEL'd) have no series.
        pods = self.directory.pods
        pod_figures: dict[str, dict[tuple[str, str], float]] = {
            m: {} for m in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")
        }
        for p in pods:
            key = (p.namespace, p.pod)
            for side, table in (("rx", rx), ("tx", tx)):
                packets, nbytes = table.get(p.endpoint_id, (0, 0))
                pod_figures[f"{side}_packets"][key] = pod_figures[f"{side}_packets"].get(key, 0) + packets
                pod_figures[f"{side}_bytes"][key] = pod_figures[f"{side}_bytes"].get(key, 0) + nbytes
        units = {"packets": "Packets (skbs)", "bytes": "Bytes (Ethernet frames)"}
        for metric, values in pod_figures.items():
            side, unit = metric.split("_")
            what = "received by" if side == "rx" else "sent by"
            yield self._counter(
                f"lumen_pod_{metric}", f"{units[unit]} {what} the pod.", ["namespace", "pod"], values
            )

        # Pod to pod (both ends local): the service-map matrix. Pods without a record have no series.
        matrix: dict[tuple[str, str, str, str, str], float] = {}
        for (src_ep, dst_ep, verdict), nbytes in pairs.items():
            s, d = self.directory.by_id.get(src_ep), self.directory.by_id.get(dst_ep)
            if s is not None and d is not None:
                key5 = (s.namespace, s.pod, d.namespace, d.pod, verdict)
                matrix[key5] = matrix.get(key5, 0) + nbytes
        yield self._counter(
            "lumen_pod_to_pod_bytes",
            "Bytes from one local pod to another, by verdict (the pod-to-pod matrix).",
            ["source_namespace", "source_pod", "destination_namespace", "destination_pod", "verdict"],
            matrix,
        )

        src_packets: dict[tuple[str, str], float] = {}
        src_bytes: dict[tuple[str, str], float] = {}
        other = [0, 0]
        for ip, packets, nbytes in self.source.source_counters():
            pod = self.directory.by_ip.get(ip)
            if pod is None:
                other[0] += packets
                other[1] += nbytes
                continue
            key = (pod.namespace, pod.pod)
            src_packets[key] = src_packets.get(key, 0) + packets
            src_bytes[key] = src_bytes.get(key, 0) + nbytes
        yield self._counter(
            "lumen_source_packets",
            "Packets by source pod (per-CPU source counters).",
            ["namespace", "pod"],
            src_packets,
        )
        yield self._counter(
            "lumen_source_bytes",
            "Bytes by source pod (per-CPU source counters).",
            ["namespace", "pod"],
            src_bytes,
        )
        yield self._counter(
            "lumen_other_source_packets",
            "Packets from sources that are not a current local pod.",
            [],
            {(): other[0]},
        )
        yield self._counter(
            "lumen_other_source_bytes",
            "Bytes from sources that are not a current local pod.",
            [],
            {(): other[1]},
        )

        stats = self.source.datapath_stats()
        for stat, (name, doc) in DATAPATH_STATS.items():
            yield self._counter(name, doc, [], {(): stats.get(stat, 0)})

        h = self.health
        yield self._counter(
            "lumen_agent_events_consumed",
            "Ring-buffer events the agent decoded.",
            [],
            {(): h.events_consumed},
        )
        yield self._counter(
            "lumen_agent_decode_errors",
            "Ring-buffer events the agent could not decode.",
            [],
            {(): h.decode_errors},
        )
        yield self._counter(
            "lumen_agent_swept_flows",
            "Idle flows the agent removed from the flow table.",
            [],
            {(): h.swept_flows},
        )
        yield _gauge(
            "lumen_agent_poll_lag_seconds",
            "Time from the kernel emitting the latest event to the agent decoding it.",
            h.poll_lag_seconds,
        )
        since_poll = time.monotonic() - h.last_poll_monotonic if h.last_poll_monotonic else -1.0
        yield _gauge(
            "lumen_agent_seconds_since_poll",
            "Seconds since the ring buffer was last polled (-1: never).",
            since_poll,
        )
        yield _gauge(
            "lumen_attached_endpoints",
            "Pod veths with the Lumen programs attached.",
            h.count_attached() if h.count_attached else h.attached_endpoints,
        )
        yield _gauge("lumen_flow_table_entries", "Entries in the kernel flow table.", entries)
        yield _gauge("lumen_flow_table_capacity", "Size of the kernel flow table.", self.source.flow_capacity)
        yield _gauge(
            "lumen_flow_table_fill_ratio",
            "Entries over capacity of the kernel flow table (LRU: at 1 old flows are evicted).",
            entries / self.source.flow_capacity if self.source.flow_capacity else 0.0,
        )
        if self.store is not None:
            yield _gauge(
                "lumen_flow_store_flows", "Flows held in the agent's recent-flows store.", len(self.store)
            )
            yield _gauge(
                "lumen_flow_store_capacity", "Capacity of the recent-flows store.", self.store.capacity
            )
            yield self._counter(
                "lumen_flow_store_evicted",
                "Flows evicted from the full store, oldest first.",
                [],
                {(): self.store.evicted},
            )
            yield _gauge("lumen_flow_subscribers", "Live flow streams (SSE) open.", self.store.subscribers)
        yield _gauge(
            "lumen_agent_scrape_duration_seconds",
            "Time the previous scrape took to read the maps.",
            self.last_scrape_seconds,
        )
        self.last_scrape_seconds = time.perf_counter() - started
        alive = {(p.namespace, p.pod) for p in pods}
        self._floor = {
            k: v
            for k, v in self._floor.items()
            if not k[0].startswith(("lumen_pod_", "lumen_source_"))
            or k[1] in alive
            or (k[0] == "lumen_pod_to_pod_bytes" and k[1][:2] in alive and k[1][2:4] in alive)
        }


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)
