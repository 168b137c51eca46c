"""One agent's records for one relayed page, read in pieces from the newest down when one answer is not
enough: what to ask next, and what the pieces read so far prove.

The merge (exporter.relay.merge) orders records by microsecond, then node and flow, so it shows a record
of an agent only once it holds every record of that microsecond from that agent. An agent answers newest
first by nanosecond, cut at `limit`, and stamps every record of one idle sweep (exporter/sweep.py) with the
same time: one microsecond may hold thousands of records (a full flow table is 65536). Asking again from
the top with a larger limit would make a page past such a microsecond cost the whole store. A walk goes
down instead:

- after an answer whose oldest microsecond holds two or more of its records (a tie: the rest of that
  microsecond may be any size), a window around that microsecond with limit 0 (all of it: bounded by the
  microsecond, not by the store), and alongside it the records under the window with a fresh limit;
- otherwise the records under the answer's oldest microsecond (re-sent with it: the rest of that one),
  with a fresh limit: the rest of the page and what comes back again.

Pieces join without a gap because each one's `until` is the text of the previous one's lower edge: the
agent parses the same text to the same nanosecond both times, and both ends are inclusive (the merge
drops the overlap by position). What a window proves is in microseconds, with a margin: the agent sends
times rounded to the microsecond through a float (up to ~0.62 µs off at today's epoch) and parses `since`
and `until` through one (up to ~0.25 µs), so a window reaches SLACK_US past the microsecond it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from exporter.relay import merge
from exporter.relay.wire import iso_us, time_us

SLACK_US = 2  # as merge.until_for's: float rounding on the way out and on the way in

#: what an answer's `source` says when it came from the agent's flow store (older agents send none)
MEMORY = (None, "memory")


@dataclass(frozen=True)
class Ask:
    """One request of a walk, beyond the client's filter."""

    limit: int  # 0: all
    until: str | None
    since: str | None
    window: int | None = None  # the microsecond this request holds whole (limit 0)

    def params(self) -> list[tuple[str, str]]:
        times = [("since", self.since), ("until", self.until)]
        return [*((k, v) for k, v in times if v is not None), ("limit", str(self.limit))]


#: one answered ask: the ask as sent, the flows, the answer's `source`
Piece = tuple[Ask, Sequence[dict[str, Any]], str | None]


class Walk:
    """One agent's answer to one page, as pieces join it. `until` and `since` are the client's bounds
    (the cursor's included), absolute, in microseconds: every piece stays inside them."""

    def __init__(self, node: str, until: str | None = None, since: str | None = None) -> None:
        self.node = node
        self.until, self.since = until, since
        self.held: dict[merge.Position, merge.Record] = {}  # by position: pieces overlap
        self.truncated = True  # records older than those held may exist
        self.known_from: int | None = None  # µs: every record at or after it is held (while truncated)
        self.below: int | None = None  # µs: the `until` that goes on under what is held, without a gap
        self.tie = False  # the last piece's oldest microsecond held several of its records
        self.windows = True  # windows come from the agent's flow store, as the first piece did
        self.source: str | None = None  # where the first piece came from
        self.started = False
        self.asked = 0  # the limit of the last piece asked with one

    def first(self, limit: int) -> Ask:
        return Ask(limit, self.until, self.since)

    def next(self, need: int) -> list[Ask]:
        """What to ask next for `need` more rows of the page (a truncated walk only)."""
        assert self.truncated and self.known_from is not None and self.below is not None
        if self.tie and self.windows:
            at = self.known_from - 1  # the newest microsecond not held whole
            window = Ask(0, self._until(at + SLACK_US), self._since(at - SLACK_US), at)
            if window.since == self.since:
                return [window]  # the window reaches the client's `since`: nothing is under it
            return [window, self._under(at - SLACK_US, need)]
        ask = self._under(self.below, need)
        if self.tie:  # no windows here: grow past the tie, as the relay did before walks
            ask = Ask(max(ask.limit, 2 * self.asked), ask.until, ask.since)
        return [ask]

    def _under(self, below: int, need: int) -> Ask:
        """Records at or before `below`: the page's need, plus the records held there, which come back."""
        again = sum(1 for pos in self.held if pos[0] <= below + 1)
        return Ask(need + again + 1, self._until(below), self.since)

    def _until(self, us: int) -> str:
        return self.until if self.until is not None and time_us(self.until) <= us else iso_us(us)

    def _since(self, us: int) -> str:
        return self.since if self.since is not None and time_us(self.since) >= us else iso_us(us)

    def take(self, pieces: Sequence[Piece]) -> None:
        """The answers to one round's asks, in the order asked. MalformedAnswer if a flow is unreadable."""
        for ask, flows, source in pieces:
            if not self.started:
                self.started = True
                self.source = source
                self.windows = source in MEMORY  # a first answer from history: its windows would be too
            if ask.window is not None and source != self.source:
                # A window older than the agent's memory holds is answered from its history, whose
                # records are not memory's: go on without windows; what was asked under it would leave
                # a gap.
                self.windows = False
                return
            held = merge.records(self.node, flows)
            for r in held:
                self.held.setdefault(r.pos, r)
            if ask.window is not None:
                self.known_from = ask.window
                if ask.since == self.since:
                    self.truncated = False
                    return
                self.below = ask.window - SLACK_US
                continue
            if not ask.limit or len(flows) < ask.limit:
                self.truncated = False  # all there is under this piece's `until`
                return
            oldest = min(r.pos[0] for r in held)
            self.known_from = oldest + 1 if self.known_from is None else min(self.known_from, oldest + 1)
            self.below = oldest + SLACK_US if self.below is None else min(self.below, oldest + SLACK_US)
            self.tie = sum(1 for r in held if r.pos[0] == oldest) > 1
            self.asked = ask.limit

    def answer(self) -> merge.Answer:
        recs = list(self.held.values())
        safe = None if self.known_from is None else (self.known_from, "", "")
        return merge.Answer(self.node, [r.flow for r in recs], self.truncated, recs, safe)
