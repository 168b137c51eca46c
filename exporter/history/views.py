"""What the API builds from a history store: the service map from its aggregates."""

from __future__ import annotations

from typing import Any, Protocol

from bpf.vocab import protocol_name
from exporter.filters import FlowQuery
from exporter.history.rollup import EdgeRow
from exporter.history.schema import Dictionaries
from exporter.servicemap import MapBuilder


class EdgeSource(Protocol):
    dicts: Dictionaries

    def edge_rows(
        self, q: FlowQuery | None = None, since_ns: int | None = None, until_ns: int | None = None
    ) -> tuple[list[EdgeRow], bool]: ...


def build_map(
    store: EdgeSource, q: FlowQuery | None, since_ns: int | None, until_ns: int | None
) -> dict[str, Any]:
    """The /api/map document over [since, until] from the store's sums, as exporter.servicemap draws it
    from flows; `complete` is False when the window reaches past what the history holds."""
    rows, complete = store.edge_rows(q, since_ns, until_ns)
    d = store.dicts
    endpoints, strings = d.endpoints, d.strings
    b = MapBuilder()
    add = b.add
    for src, dst, verdict, proto, port, reason, reply, flows, packets, nbytes, first, last in rows:
        add(
            endpoints[src],
            endpoints[dst],
            strings[verdict],
            protocol_name(proto),
            port,
            strings[reason],
            flows,
            packets,
            nbytes,
            first,
            last,
            bool(reply),
        )
    out = b.result()
    out["complete"] = complete
    return out
