"""Service-map aggregates shared by the history stores.

An edge row sums the flows of one (source endpoint, destination endpoint, verdict, protocol, service port,
drop reason, reply or not): what exporter.servicemap needs to draw nodes and edges exactly as it would from
the flows themselves. The SQLite store keeps these sums per minute, ten minutes, hour and six-hour block as
flows are written, so a 24-hour map reads a few sums per edge instead of millions of flows.

Rows are plain tuples, as the database hands them over (a day's map is thousands of them):

    (src, dst, verdict, protocol, port, reason, reply, flows, packets, bytes, first_ns, last_ns)
     endpoint ids, verdict and reason string ids, IP protocol number, port 0 for replies, reply 1 for
     replies (the map draws them on their request's edge),
     first_ns the earliest start and last_ns the latest time of its flows
"""

from __future__ import annotations

from collections.abc import Iterable

EdgeRow = tuple[int, int, int, int, int, int, int, int, int, int, int, int]


def merge(rows: Iterable[EdgeRow]) -> list[EdgeRow]:
    """Rows with the same key summed (partial results of several partitions or buckets)."""
    out: dict[tuple[int, ...], list[int]] = {}
    for r in rows:
        key = r[:7]
        have = out.get(key)
        if have is None:
            out[key] = list(r[7:])
            continue
        have[0] += r[7]
        have[1] += r[8]
        have[2] += r[9]
        have[3] = min(have[3], r[10])
        have[4] = max(have[4], r[11])
    return [(*k, *v) for k, v in out.items()]  # type: ignore[misc]
