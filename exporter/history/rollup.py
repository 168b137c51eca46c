"""Service-map aggregates shared by the history stores.

An edge row sums the flows of one (source endpoint, destination endpoint, verdict, protocol, service port,
drop reason): what exporter.servicemap needs to draw nodes and edges exactly as it would from the flows
themselves. The SQLite store keeps these sums per minute and per hour as flows are written, so a 24-hour
map reads a few thousand rows instead of millions of flows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class EdgeRow:
    src: int  # endpoint ids
    dst: int
    verdict: int  # string id
    protocol: int  # IP protocol number
    port: int  # destination port of requests; 0 for replies (schema.service_port)
    reason: int
    flows: int
    packets: int
    bytes: int
    first_ns: int  # earliest start of its flows
    last_ns: int  # latest time of its flows

    @property
    def key(self) -> tuple[int, int, int, int, int, int]:
        return (self.src, self.dst, self.verdict, self.protocol, self.port, self.reason)


def merge(rows: Iterable[EdgeRow]) -> list[EdgeRow]:
    """Rows with the same key summed (partial results of several partitions or buckets)."""
    out: dict[tuple[int, ...], EdgeRow] = {}
    for r in rows:
        have = out.get(r.key)
        if have is None:
            out[r.key] = EdgeRow(*r.key, r.flows, r.packets, r.bytes, r.first_ns, r.last_ns)
            continue
        have.flows += r.flows
        have.packets += r.packets
        have.bytes += r.bytes
        have.first_ns = min(have.first_ns, r.first_ns)
        have.last_ns = max(have.last_ns, r.last_ns)
    return list(out.values())
