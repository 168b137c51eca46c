"""What a store of flows offers the API, whatever holds the flows: the agent's memory (exporter/flows.py
FlowStore), the history on disk (exporter/history/), a relay's view of several nodes.

    page = source.query(q, since_ns, until_ns, limit, cursor)   # newest first
    page.flows, page.cursor (None: no more), page.complete (False: the window reaches past what it holds)

`q` is an exporter.filters.FlowQuery (data: a SQL source translates it, a memory source evaluates it);
`since_ns`/`until_ns` bound the flows' `time_ns` (inclusive, None: open), `limit` <= 0 means no limit.
The cursor is opaque and only valid with the same query and window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from exporter.filters import FlowQuery
    from exporter.flows import Flow


@dataclass
class Page:
    flows: list[Flow] = field(default_factory=list)  # newest first
    cursor: str | None = None  # pass back for the next (older) page; None: nothing more
    complete: bool = True  # False: the window reaches back past the oldest flow this source holds


class FlowSource(Protocol):
    def query(
        self,
        q: FlowQuery | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        limit: int = 0,
        cursor: str | None = None,
    ) -> Page: ...


class CursorError(ValueError):
    """A cursor this source did not hand out (HTTP 400)."""


class SourceError(Exception):
    """The source cannot answer now (a history store that is down or damaged): HTTP 503 with the reason."""
