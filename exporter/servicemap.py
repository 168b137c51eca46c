"""The service map: flows from the store aggregated into nodes (pods, or bare IPs outside the node's pods;
multicast, link-local and unspecified addresses as one node each)
and edges (client -> server per verdict: a reply is drawn on its request's edge, which names the server's
ports only), so the browser draws a summary instead of every event.

Each stored flow is one 5-tuple as of its latest event, with cumulative packets and bytes. An edge's rate
is its bytes over the time its flows were seen (first start to last event, at least one second), so a
long-lived quiet connection does not outweigh a short busy one. Per-pod counters (what each pod sent and
received, flows and drops) feed the Endpoints page.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from exporter.flows import Endpoint, Flow, address_kind

EXTERNAL = ""  # namespace of nodes that are not pods on this node


@dataclass
class Node:
    id: str  # namespace/pod, or the IP
    namespace: str
    name: str
    ips: set[str] = field(default_factory=set)
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    flows: int = 0
    dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "namespace": self.namespace,
            "name": self.name,
            "pod": bool(self.namespace),
            "ips": sorted(self.ips),
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "flows": self.flows,
            "dropped": self.dropped,
        }


@dataclass
class Edge:
    source: str
    destination: str
    verdict: str
    flows: int = 0
    packets: int = 0
    bytes: int = 0
    first_ns: int = 0
    last_ns: int = 0
    protocols: set[str] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)  # the server's (destination of requests) ports
    messages: set[str] = field(default_factory=set)  # ICMP/ICMPv6/IGMP message names
    drop_reasons: set[str] = field(default_factory=set)

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / max((self.last_ns - self.first_ns) / 1e9, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "verdict": self.verdict,
            "flows": self.flows,
            "packets": self.packets,
            "bytes": self.bytes,
            "bytes_per_s": round(self.bytes_per_s, 1),
            "protocols": sorted(self.protocols),
            "ports": sorted(self.ports)[:20],
            "messages": sorted(self.messages),
            "drop_reasons": sorted(self.drop_reasons - {"none"}),
        }


def _node(nodes: dict[str, Node], ep: Endpoint) -> Node:
    key = ep.name() if ep.pod else address_kind(ep.ip) or ep.ip
    node = nodes.get(key)
    if node is None:
        node = nodes[key] = Node(key, ep.namespace if ep.pod else EXTERNAL, ep.pod or key)
    node.ips.add(ep.ip)
    return node


class MapBuilder:
    """Adds flows, or sums of flows (a history store's aggregates), into nodes and edges."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.edges: dict[tuple[str, str, str], Edge] = {}
        # endpoint object -> its node: a history's aggregates name the same few endpoints many times
        self._node_of: dict[int, tuple[Endpoint, Node]] = {}

    def _node(self, ep: Endpoint) -> Node:
        hit = self._node_of.get(id(ep))
        if hit is not None and hit[0] is ep:
            return hit[1]
        node = _node(self.nodes, ep)
        self._node_of[id(ep)] = (ep, node)
        return node

    def add(
        self,
        source: Endpoint,
        destination: Endpoint,
        verdict: str,
        protocol: str,
        port: int,
        drop_reason: str,
        flows: int,
        packets: int,
        nbytes: int,
        first_ns: int,
        last_ns: int,
        reply: bool = False,
        message: str = "",
    ) -> None:
        """`reply`: these flows answer connections opened the other way; their edge is drawn from client
        to server like the requests' (one edge per connection, not two)."""
        src, dst = self._node(source), self._node(destination)
        # The datapath accounts each flow once (where it enters the pod network): no record repeats another.
        src.tx_packets += packets
        src.tx_bytes += nbytes
        dst.rx_packets += packets
        dst.rx_bytes += nbytes
        dropped = flows if verdict == "DROPPED" else 0
        for node in (src, dst):
            node.flows += flows
            node.dropped += dropped
        if reply:
            src, dst = dst, src
        edge = self.edges.get((src.id, dst.id, verdict))
        if edge is None:
            edge = self.edges[(src.id, dst.id, verdict)] = Edge(src.id, dst.id, verdict, first_ns=first_ns)
        edge.flows += flows
        edge.packets += packets
        edge.bytes += nbytes
        edge.first_ns = min(edge.first_ns, first_ns)
        edge.last_ns = max(edge.last_ns, last_ns)
        edge.protocols.add(protocol)
        if port:
            edge.ports.add(port)
        if message:
            edge.messages.add(message)
        edge.drop_reasons.add(drop_reason)

    def add_flow(self, f: Flow) -> None:
        self.add(
            f.source,
            f.destination,
            f.verdict,
            f.protocol,
            service_port(f),
            f.drop_reason,
            1,
            f.packets,
            f.bytes,
            f.start_ns,
            f.time_ns,
            f.is_reply,
            f.message_name(),
        )

    def result(self) -> dict[str, Any]:
        """Nodes sorted by namespace then name (external last), edges sorted by source and destination."""
        ordered = sorted(self.nodes.values(), key=lambda n: (n.namespace == EXTERNAL, n.namespace, n.name))
        return {
            "nodes": [n.to_dict() for n in ordered],
            "edges": [e.to_dict() for _, e in sorted(self.edges.items())],
        }


def service_port(f: Flow) -> int:
    """The port an edge names: the destination port of a request. A reply's destination port is the
    client's ephemeral one, which says nothing about the service (and would make every reply its own
    aggregate in the history's rollups), so replies name none."""
    return 0 if f.is_reply else f.destination.port


def build(flows: Iterable[Flow]) -> dict[str, Any]:
    """Nodes sorted by namespace then name (external last), edges sorted by source and destination."""
    builder = MapBuilder()
    for f in flows:
        builder.add_flow(f)
    return builder.result()
