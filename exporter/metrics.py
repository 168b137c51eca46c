"""Prometheus metrics read from the BPF maps at scrape time.

Nothing here is bumped per packet or per event, and nothing is summed from flow table entries (the LRU
may evict a flow at any time): every counter is a kernel counter keyed by what it counts (per pod slot,
per pod pair, per protocol/verdict/direction, per drop reason, per policy decision; bpf/include/maps.h),
read as is. The pinned maps outlive the agent, so a restart loses nothing. Labels are bounded: verdict,
protocol, direction, drop reason, and namespace/pod of pods that currently have an endpoint record, so a
pod's series go away after its DEL (its slot, reused by a later pod, starts from zero). Never a per-flow
label.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bpf import abi
from exporter.enrich import EndpointDirectory, LocalPod
from exporter.flows import FlowStore

#: datapath counters (bpf stats map) -> metric name and help
DATAPATH_STATS = {
    "lost_events": ("lumen_lost_events", "Events the kernel could not put in the ring buffer (full)."),
    "events": ("lumen_datapath_events", "Events the kernel put in the ring buffer."),
    "flows_created": ("lumen_flows_created", "Flow table entries created by the datapath."),
    "flow_insert_failed": (
        "lumen_flow_insert_failed",
        "Flow table inserts that failed; the flow has no entry (its packets are still counted).",
    ),
    "redirected": ("lumen_redirected_packets", "Packets sent straight into the destination pod."),
    "unparsed": (
        "lumen_unparsed_packets",
        "IP packets whose headers the datapath could not read: not accounted.",
    ),
}


class PodCounts(NamedTuple):
    """One pod slot's counters, summed over CPUs."""

    tx_packets: int
    tx_bytes: int
    rx_packets: int
    rx_bytes: int


class MapSource(Protocol):
    """What the Collector reads; the agent's implementation (exporter.mapsource.DatapathSource) reads the
    pinned BPF maps and names protocols, verdicts, directions and drop reasons."""

    flow_capacity: int

    def flow_table_entries(self) -> int: ...

    def flow_counts(self) -> Mapping[tuple[str, str, str], int]:
        """(verdict, protocol, direction) -> flows created."""
        ...

    def drops(self) -> Mapping[tuple[str, str], int]:
        """(drop reason, protocol) -> packets."""
        ...

    def policy_counts(self) -> Mapping[tuple[int, str, str, bool], int]:
        """(policy id, verdict, direction of the side, denied) -> flow decisions; a denied side (no rule
        admitted it) has the id of the policy isolating it (0: not known)."""
        ...

    def tcp_flags(self) -> Mapping[tuple[str, str], int]:
        """(flag: SYN, SYN-ACK, FIN, RST; family: IPv4, IPv6) -> TCP packets."""
        ...

    def pod_counters(self) -> Mapping[int, PodCounts]:
        """Endpoint id -> counters, for every pod holding a counter slot."""
        ...

    def pair_bytes(self) -> Mapping[tuple[int, int, str], int]:
        """(source endpoint id, destination endpoint id, verdict) -> bytes."""
        ...

    def source_counters(self) -> Iterable[tuple[str, int, int]]:
        """(source address, packets, bytes) of sources that are not a local pod with a slot."""
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
    #: flow batches a sink of the pipeline failed to take, by sink name (memory, tracer, history)
    sink_errors: dict[str, int] = field(default_factory=dict)
    #: counts attached endpoints now (the plugin attaches at ADD, between two housekeeping rounds)
    count_attached: Callable[[], int] | None = None


def policy_label(policy_id: int, names: Mapping[int, str]) -> str:
    """The policy label of a decision: the policy that admitted the side, or for a denied side the policy
    isolating it (whose default deny it is); "unknown" when the kernel did not say."""
    if not policy_id or policy_id == abi.POLICY_DENIED_ID:
        return "unknown"
    return names.get(policy_id, f"#{policy_id}")


#: TCP header bits (bpf/vocab.py TCP_FLAG_NAMES order)
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10


def tcp_flag_labels(flags: int) -> list[str]:
    """The `flag` labels of one TCP flag byte, as Hubble's hubble_tcp_flags_total has them: SYN, SYN-ACK,
    FIN, RST (a packet with several counts for each)."""
    out = []
    if flags & _SYN:
        out.append("SYN-ACK" if flags & _ACK else "SYN")
    if flags & _FIN:
        out.append("FIN")
    if flags & _RST:
        out.append("RST")
    return out


class LumenCollector(Collector):
    """A custom Collector: register it once, it reads the maps on every scrape."""

    def __init__(
        self,
        source: MapSource,
        directory: EndpointDirectory,
        health: AgentHealth,
        store: FlowStore | None = None,
        policy_names: Mapping[int, str] | None = None,
    ) -> None:
        self.policy_names: Mapping[int, str] = policy_names if policy_names is not None else {}
        self.source = source
        self.directory = directory
        self.health = health
        self.store = store
        self.last_scrape_seconds = 0.0

    def describe(self) -> list[Metric]:
        return []  # collected on demand only; registering must not read the maps

    def _counter(self, name: str, doc: str, labels: list[str], values: Mapping[Any, float]) -> Metric:
        fam = CounterMetricFamily(name, doc, labels=labels)
        for key, value in sorted(values.items()):
            fam.add_metric(list(key), value)
        return fam

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        self.directory.refresh()
        src = self.source
        pods = self.directory.pods
        counts = src.pod_counters()
        stats = src.datapath_stats()
        yield from self._flows(src)
        yield from self._pods(pods, counts)
        yield from self._pairs(src)
        yield from self._sources(src, pods, counts, stats)
        for stat, (name, doc) in DATAPATH_STATS.items():
            yield self._counter(name, doc, [], {(): stats.get(stat, 0)})
        yield from self._agent()
        yield from self._tables(src)
        yield from self._store()
        yield _gauge(
            "lumen_agent_scrape_duration_seconds",
            "Time the previous scrape took to read the maps.",
            self.last_scrape_seconds,
        )
        self.last_scrape_seconds = time.perf_counter() - started

    def _flows(self, src: MapSource) -> Iterator[Metric]:
        """Flows, drops and policy decisions, counted in the kernel by what they count."""
        yield self._counter(
            "lumen_flows_processed",
            "Flows seen by the datapath (each counted once, where it enters the pod network, when its "
            "first packet creates its entry; verdict as decided on that packet).",
            ["verdict", "protocol", "direction"],
            src.flow_counts(),
        )
        yield self._counter(
            "lumen_drop", "Packets dropped by the datapath.", ["reason", "protocol"], src.drops()
        )
        policy: dict[tuple[str, str, str, str], float] = {}
        for (pid, verdict, direction, denied), n in src.policy_counts().items():
            match = "default-deny" if denied else "rule"
            decision = (verdict, direction, policy_label(pid, self.policy_names), match)
            policy[decision] = policy.get(decision, 0) + n
        yield self._counter(
            "lumen_policy_verdicts",
            "Flows decided by NetworkPolicy, per isolated side (egress of the source pod, ingress of the "
            "destination pod): match=rule names the policy whose rule admitted it, match=default-deny the "
            "policy isolating the pod, whose default deny it is. On a flow's first packet, and again when "
            "a policy change changes that side's verdict or policy.",
            ["verdict", "direction", "policy", "match"],
            policy,
        )
        yield self._counter(
            "lumen_tcp_flags",
            "TCP packets with SYN, SYN-ACK, FIN or RST, by IP family (as Hubble's hubble_tcp_flags_total); "
            "counted by the datapath where each flow is accounted, any verdict.",
            ["flag", "family"],
            src.tcp_flags(),
        )

    def _pods(self, pods: Sequence[LocalPod], counts: Mapping[int, PodCounts]) -> Iterator[Metric]:
        # Per pod: sum over the pod's attachments; pods without a record (DEL'd) have no series.
        pod_figures: dict[str, dict[tuple[str, str], float]] = {
            m: {} for m in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")
        }
        for p in pods:
            key = (p.namespace, p.pod)
            c = counts.get(p.endpoint_id, PodCounts(0, 0, 0, 0))
            for metric, value in zip(("tx_packets", "tx_bytes", "rx_packets", "rx_bytes"), c, strict=True):
                pod_figures[metric][key] = pod_figures[metric].get(key, 0) + value
        helps = {
            "rx_packets": "Packets (skbs) delivered to the pod (not dropped).",
            "rx_bytes": "Bytes (Ethernet frames) delivered to the pod (not dropped).",
            "tx_packets": "Packets (skbs) sent by the pod, any verdict.",
            "tx_bytes": "Bytes (Ethernet frames) sent by the pod, any verdict.",
        }
        for metric, values in pod_figures.items():
            yield self._counter(f"lumen_pod_{metric}", helps[metric], ["namespace", "pod"], values)

    def _pairs(self, src: MapSource) -> Iterator[Metric]:
        # Pod to pod (both ends local): the service-map matrix. Pods without a record have no series.
        matrix: dict[tuple[str, str, str, str, str], float] = {}
        for (src_ep, dst_ep, verdict), nbytes in src.pair_bytes().items():
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

    def _sources(
        self,
        src: MapSource,
        pods: Sequence[LocalPod],
        counts: Mapping[int, PodCounts],
        stats: Mapping[str, int],
    ) -> Iterator[Metric]:
        # By source: a pod holding a slot is its tx (counted at its veth); a pod without one (every slot
        # taken) by its addresses; any other address is "other" (host, other nodes, a gone pod's).
        src_packets: dict[tuple[str, str], float] = {}
        src_bytes: dict[tuple[str, str], float] = {}
        by_addr: dict[str, tuple[str, str]] = {}
        for p in pods:
            key = (p.namespace, p.pod)
            held = counts.get(p.endpoint_id)
            if held is not None:
                src_packets[key] = src_packets.get(key, 0) + held.tx_packets
                src_bytes[key] = src_bytes.get(key, 0) + held.tx_bytes
            else:
                by_addr.update(dict.fromkeys(p.ips, key))
        # sources that found the per-source table full are counted in the datapath stats instead
        other = [stats.get("sources_full_packets", 0), stats.get("sources_full_bytes", 0)]
        for ip, packets, nbytes in src.source_counters():
            owner = by_addr.get(ip)
            if owner is None:
                other[0] += packets
                other[1] += nbytes
                continue
            src_packets[owner] = src_packets.get(owner, 0) + packets
            src_bytes[owner] = src_bytes.get(owner, 0) + nbytes
        yield self._counter(
            "lumen_source_packets",
            "Packets by source pod (per-CPU counters of the pod's slot).",
            ["namespace", "pod"],
            src_packets,
        )
        yield self._counter(
            "lumen_source_bytes",
            "Bytes by source pod (per-CPU counters of the pod's slot).",
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

    def _agent(self) -> Iterator[Metric]:
        """The agent's own figures: consumption, decoding, sweeping, attachments."""
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
            "lumen_agent_sink_errors",
            "Flow batches a sink of the agent's pipeline failed to take (the other sinks still got them).",
            ["sink"],
            {(name,): n for name, n in h.sink_errors.items()},
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

    def _tables(self, src: MapSource) -> Iterator[Metric]:
        entries = src.flow_table_entries()
        yield _gauge("lumen_flow_table_entries", "Entries in the kernel flow table.", entries)
        yield _gauge("lumen_flow_table_capacity", "Size of the kernel flow table.", self.source.flow_capacity)
        yield _gauge(
            "lumen_flow_table_fill_ratio",
            "Entries over capacity of the kernel flow table (LRU: at 1 old flows are evicted).",
            entries / self.source.flow_capacity if self.source.flow_capacity else 0.0,
        )

    def _store(self) -> Iterator[Metric]:
        if self.store is None:
            return
        yield _gauge(
            "lumen_flow_store_flows", "Flows held in the agent's recent-flows store.", len(self.store)
        )
        yield _gauge("lumen_flow_store_capacity", "Capacity of the recent-flows store.", self.store.capacity)
        yield self._counter(
            "lumen_flow_store_evicted",
            "Flows evicted from the full store, oldest first.",
            [],
            {(): self.store.evicted},
        )
        yield _gauge("lumen_flow_subscribers", "Live flow streams (SSE) open.", self.store.subscribers)


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)
