"""The service map: flows from the store aggregated into nodes (pods, or bare IPs outside the node's pods;
multicast, link-local and unspecified addresses as one node each) and edges (client -> server per verdict,
connections folded: exporter/connections.py), so the browser draws a summary instead of every event.

Each stored flow is one 5-tuple as of its latest event, with cumulative packets and bytes. An edge's rate
is its bytes over the time its flows were seen (first start to last event, at least one second), so a
long-lived quiet connection does not outweigh a short busy one. Per-pod counters (what each pod sent and
received, flows and drops) feed the Endpoints page.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from exporter import connections
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
    ports: set[int] = field(default_factory=set)  # the server's (destination) ports
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
            "flows": self.flows,  # connections (a request and its reply count once)
            "connections": self.flows,
            "packets": self.packets,
            "bytes": self.bytes,
            "bytes_per_s": round(self.bytes_per_s, 1),
            "protocols": sorted(self.protocols),
            "ports": sorted(self.ports)[:20],
            "messages": sorted(self.messages),
            "drop_reasons": sorted(self.drop_reasons - {"none"}),
        }


def _node(nodes: dict[str, Node], ep: Endpoint) -> Node:
    # Addresses that are no one's endpoint get one node each kind, not one per group or host.
    key = ep.name() if ep.pod else address_kind(ep.ip) or ep.ip
    node = nodes.get(key)
    if node is None:
        node = nodes[key] = Node(key, ep.namespace if ep.pod else EXTERNAL, ep.pod or key)
    node.ips.add(ep.ip)
    return node


def build(flows: Iterable[Flow]) -> dict[str, Any]:
    """Nodes sorted by namespace then name (external last), edges sorted by source and destination.

    Flows are folded into connections first (exporter/connections.py): an edge goes from client to
    server and lists the server's ports only, so replies do not draw a second edge full of ephemeral
    ports; a connection's verdict is the worse of its halves."""
    nodes: dict[str, Node] = {}
    edges: dict[tuple[str, str, str], Edge] = {}
    for conn in connections.fold(flows):
        client, server = _node(nodes, conn.client), _node(nodes, conn.server)
        # The datapath accounts each flow once (where it enters the pod network): no record repeats another.
        for half, (sender, receiver) in ((conn.request, (client, server)), (conn.reply, (server, client))):
            if half is None:
                continue
            sender.tx_packets += half.packets
            sender.tx_bytes += half.bytes
            receiver.rx_packets += half.packets
            receiver.rx_bytes += half.bytes
        verdict = conn.verdict
        dropped = verdict == "DROPPED"
        for node in {client.id: client, server.id: server}.values():
            node.flows += 1
            node.dropped += dropped
        edge = edges.get((client.id, server.id, verdict))
        if edge is None:
            edge = edges[(client.id, server.id, verdict)] = Edge(
                client.id, server.id, verdict, first_ns=conn.start_ns
            )
        edge.flows += 1
        edge.packets += conn.packets
        edge.bytes += conn.bytes
        edge.first_ns = min(edge.first_ns, conn.start_ns)
        edge.last_ns = max(edge.last_ns, conn.time_ns)
        edge.protocols.add(conn.protocol)
        if conn.server_port is not None:
            edge.ports.add(conn.server_port)
        if conn.first.message is not None:
            edge.messages.add(conn.first.message_name())
        edge.drop_reasons.add(conn.drop_reason)
    ordered = sorted(nodes.values(), key=lambda n: (n.namespace == EXTERNAL, n.namespace, n.name))
    return {
        "nodes": [n.to_dict() for n in ordered],
        "edges": [e.to_dict() for _, e in sorted(edges.items())],
    }
