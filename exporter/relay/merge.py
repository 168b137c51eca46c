"""The relay's pure logic: many agents' answers into one page, and the two ends of a cross-node flow into
one row.

Every record gets a position: (time in microseconds, agent name, 5-tuple and direction). No two records
share one (an agent holds one record per 5-tuple and direction), so positions order all agents' records
totally, newest first. A cursor is the position of the oldest record a page consumed; the next page is
the records strictly older, whatever the agents hold by then, so no record is shown twice or skipped.

Limit after the merge: each agent returns its newest N matching records. A record is safe to show only
if no truncated answer (N returned, more may exist) could still hold a newer one; the merge stops at the
first unsafe record and says the page is short, and the caller asks those agents for more. An answer
may say from which position on it holds everything (`safe_from`); by default from the microsecond after
its oldest record's, since agents cut by nanoseconds and more records of that microsecond may have been
cut. An answer read in several pieces (exporter.relay.walk) or a copy (exporter.relay.mirror) knows more.

Pairing: a flow between pods on two nodes is recorded twice, as egress on the source's node and as
ingress on the destination's. Two records pair when they come from different nodes, carry the same
5-tuple in opposite directions and started within PAIR_WINDOW_US of each other (two nodes' clocks). Only
records consumed by the same page pair, so a cursor never splits what a row holds.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.relay.wire import five_tuple, flow_from_dict, iso_us, time_us

Position = tuple[int, str, str]

PAIR_WINDOW_US = 10_000_000
VERDICT_RANK = {"FORWARDED": 0, "AUDIT": 1, "DROPPED": 2}


class CursorError(ValueError):
    """A cursor this relay cannot continue from (HTTP 400)."""


class MalformedAnswer(ValueError):
    """An agent's flow the relay cannot read (another version's JSON?): that agent is left out, named."""

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"unreadable flow in the answer: {reason}")
        self.node = node


@dataclass(frozen=True)
class Answer:
    """One agent's answer to a flows query."""

    node: str  # the agent's name in the relay (unique)
    flows: Sequence[dict[str, Any]]
    truncated: bool  # it returned as many as asked: it may hold more
    records: Sequence[Record] | None = None  # the flows as records already (the relay's copies keep them)
    #: with truncated: every record at or after this position is in the answer (a copy, which orders by
    #: position itself, knows exactly where it stopped)
    safe_from: Position | None = None


@dataclass(eq=False)
class Record:
    node: str
    flow: dict[str, Any]
    pos: Position
    tuple5: str

    @property
    def start_us(self) -> int:
        return time_us(self.flow["start"])  # only pairing candidates need it: parsed on demand


#: which end a direction's record counts, and the field naming that end's node
_SIDE = {"egress": ("source", "source_node"), "ingress": ("destination", "destination_node")}


def record(node: str, flow: dict[str, Any]) -> Record:
    """An agent's flow, stamped (in place: it is the relay's own decoded copy) with the node it came
    from and the node each end is on when the direction says so (egress is counted at the source's
    node, ingress at the destination's)."""
    if not flow.get("node"):
        flow["node"] = node
    where = _SIDE.get(flow.get("direction", ""))
    if where is not None:
        end, key = where
        flow.setdefault(key, flow["node"])
        ep = flow.get(end)
        if isinstance(ep, dict) and ep.get("pod") and not ep.get("node"):
            ep["node"] = flow[key]  # the pod on the node that counted this end
    tuple5 = five_tuple(flow)
    return Record(node, flow, (time_us(flow["time"]), node, f"{tuple5}|{flow['direction']}"), tuple5)


def records(node: str, flows: Iterable[dict[str, Any]]) -> list[Record]:
    """An agent's flows as records; MalformedAnswer naming the agent if one cannot be read."""
    try:
        return [record(node, f) for f in flows]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedAnswer(node, f"{type(exc).__name__}: {exc}") from None


def encode_cursor(pos: Position) -> str:
    raw = json.dumps([pos[0], pos[1], pos[2]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> Position:
    """The position a cursor names; CursorError if it is not one this relay made."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        t, node, key = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise CursorError(f"cursor {text!r}: not a cursor from this relay") from None
    if not isinstance(t, int) or not isinstance(node, str) or not isinstance(key, str):
        raise CursorError(f"cursor {text!r}: not a cursor from this relay")
    return (t, node, key)


def until_for(after: Position) -> str:
    """The `until` to ask agents for records at or before a cursor: a little later than its time,
    because an agent compares nanoseconds and sends microseconds rounded through a float (and parses
    `until` through one); the merge drops the extra."""
    return iso_us(after[0] + 2)


def pairs(a: Record, b: Record, window_us: int = PAIR_WINDOW_US) -> bool:
    return (
        a.node != b.node
        and a.tuple5 == b.tuple5
        and {a.flow["direction"], b.flow["direction"]} == {"egress", "ingress"}
        and abs(a.start_us - b.start_us) <= window_us
    )


def _endpoint(local: dict[str, Any], remote: dict[str, Any]) -> dict[str, Any]:
    """One side of a paired flow: the node that hosts that side names it; the other node may too."""
    return local if local.get("pod") or not remote.get("pod") else remote


def _end(r: Record) -> dict[str, Any]:
    f = r.flow
    return {k: f.get(k) for k in ("node", "time", "type", "verdict", "drop_reason", "packets", "bytes")}


def paired(a: Record, b: Record) -> dict[str, Any]:
    """One row for both ends: counters of the egress end (what the source sent), the worse verdict,
    each side's pod as its own node names it, both nodes, and each end's own figures under `ends`."""
    egress, ingress = (a, b) if a.flow["direction"] == "egress" else (b, a)
    e, i = egress.flow, ingress.flow
    newer = e if egress.pos[0] >= ingress.pos[0] else i
    worse = i if VERDICT_RANK.get(i["verdict"], 0) > VERDICT_RANK.get(e["verdict"], 0) else e
    row = dict(e)
    row.update(
        time=newer["time"],
        type=newer["type"],
        start=iso_us(min(egress.start_us, ingress.start_us)),
        end=iso_us(max(time_us(e["end"]), time_us(i["end"]))),
        verdict=worse["verdict"],
        drop_reason=worse["drop_reason"],
        source=_endpoint(e["source"], i["source"]),
        destination=_endpoint(i["destination"], e["destination"]),
        source_node=e["node"],
        destination_node=i["node"],
        paired=True,
        ends={"egress": _end(egress), "ingress": _end(ingress)},
    )
    row["duration_ms"] = round((time_us(row["end"]) - time_us(row["start"])) / 1e3, 3)
    flow = flow_from_dict(row)
    flow.egress_policy = (e.get("policy") or {}).get("egress")
    flow.ingress_policy = (i.get("policy") or {}).get("ingress")
    row["policy"] = flow.to_dict()["policy"]
    return row


@dataclass
class Page:
    rows: list[dict[str, Any]]  # newest first
    cursor: Position | None  # where the next (older) page starts; None: nothing older
    short: bool  # fewer rows than asked while a truncated answer may hold more: ask for more
    taken: dict[str, int] = field(default_factory=dict)  # records the page holds, per agent
    oldest: Position | None = None  # the oldest record the page holds


@dataclass(eq=False)
class _Row:
    first: Record
    second: Record | None = None

    def to_dict(self, join: Callable[[Record, Record], dict[str, Any]]) -> dict[str, Any]:
        return self.first.flow if self.second is None else join(self.first, self.second)


def merge_page(
    answers: Iterable[Answer],
    limit: int,
    after: Position | None = None,
    pair: bool = True,
    join: Callable[[Record, Record], dict[str, Any]] = paired,
) -> Page:
    """The newest `limit` rows (0: all) strictly older than `after`, from every agent's answer; `join`
    makes a paired row (the relay's copies keep theirs: PairCache)."""
    answers = list(answers)
    recs: list[Record] = []
    floor: Position | None = None  # records older than this may be missing from a truncated answer
    for ans in answers:
        mine = list(ans.records) if ans.records is not None else records(ans.node, ans.flows)
        if ans.truncated and ans.safe_from is not None:
            floor = ans.safe_from if floor is None else max(floor, ans.safe_from)
        elif ans.truncated and mine:
            oldest = min(r.pos for r in mine)
            # Agents order by nanoseconds, positions by microseconds: records in the same microsecond as
            # the oldest returned may have been cut, so that whole microsecond is unsafe.
            bound = (oldest[0] + 1, "", "")
            floor = bound if floor is None else max(floor, bound)
        recs.extend(r for r in mine if after is None or r.pos < after)
    recs.sort(key=lambda r: r.pos, reverse=True)
    truncated = any(a.truncated for a in answers)

    rows: list[_Row] = []
    open_halves: dict[str, list[_Row]] = {}
    last: Position | None = None
    taken: dict[str, int] = {}
    for r in recs:
        if floor is not None and r.pos < floor:
            full = bool(limit) and len(rows) == limit
            return Page([x.to_dict(join) for x in rows], last if rows else after, not full, taken, last)
        partner = None
        if pair:
            for row in open_halves.get(r.tuple5, ()):
                if pairs(row.first, r):
                    partner = row
                    break
        if partner is not None:
            partner.second = r
            open_halves[r.tuple5].remove(partner)
        else:
            if limit and len(rows) == limit:
                return Page([x.to_dict(join) for x in rows], last, False, taken, last)
            row = _Row(r)
            rows.append(row)
            open_halves.setdefault(r.tuple5, []).append(row)
        last = r.pos
        taken[r.node] = taken.get(r.node, 0) + 1
    # Every record returned was consumed: older ones exist only if an answer was truncated.
    cursor = last if truncated else None
    if truncated and not rows:
        cursor = after
    short = truncated and (not limit or len(rows) < limit)
    return Page([x.to_dict(join) for x in rows], cursor, short, taken, last)


def reach(
    answers: Iterable[Answer], limit: int, after: Position | None = None, pair: bool = True
) -> int | None:
    """The time (µs) of the oldest record a page would hold if every answer were whole; None when the
    page would not be full. Only a truncated answer whose unknown records start above it (`safe_from`
    newer) may still hold some of the page."""
    whole = merge_page([Answer(a.node, a.flows, False, a.records) for a in answers], limit, after, pair)
    if not limit or len(whole.rows) < limit or whole.oldest is None:
        return None
    return whole.oldest[0]


class PairCache:
    """Paired rows kept for the next page that pairs the same two records (the relay's copies hand out
    the same record objects page after page; a record replaced by its flow's next one is a new object).
    Bounded, oldest out first."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._rows: OrderedDict[tuple[int, int], tuple[Record, Record, dict[str, Any]]] = OrderedDict()

    def __call__(self, a: Record, b: Record) -> dict[str, Any]:
        key = (id(a), id(b))
        hit = self._rows.get(key)
        if hit is not None and hit[0] is a and hit[1] is b:
            return hit[2]
        row = paired(a, b)
        self._rows[key] = (a, b, row)  # holding both keeps their ids unique
        if len(self._rows) > self.size:
            self._rows.popitem(last=False)
        return row


@dataclass
class StreamPairer:
    """Live pairing: each flow event waits up to `wait_s` for the other end of its flow from another
    node, then goes out alone. With wait_s 0 nothing waits (one agent: nothing to pair)."""

    wait_s: float
    window_us: int = PAIR_WINDOW_US
    _pending: dict[str, list[Record]] = field(default_factory=dict)
    _order: deque[tuple[float, Record]] = field(default_factory=deque)

    def add(self, rec: Record, now: float) -> list[dict[str, Any]]:
        waiting = self._pending.get(rec.tuple5, [])
        for other in waiting:
            if pairs(other, rec, self.window_us):
                waiting.remove(other)
                if not waiting:
                    del self._pending[rec.tuple5]  # a long stream sees many 5-tuples: keep none empty
                return [paired(other, rec)]
        if self.wait_s <= 0:
            return [rec.flow]
        self._pending.setdefault(rec.tuple5, []).append(rec)
        self._order.append((now + self.wait_s, rec))
        return []

    def due(self, now: float) -> list[dict[str, Any]]:
        """Events whose wait is over, in arrival order."""
        out = []
        while self._order and self._order[0][0] <= now:
            out.extend(self._release(self._order.popleft()[1]))
        return out

    def next_deadline(self) -> float | None:
        return self._order[0][0] if self._order else None

    def flush(self) -> list[dict[str, Any]]:
        out = []
        while self._order:
            out.extend(self._release(self._order.popleft()[1]))
        return out

    def _release(self, rec: Record) -> list[dict[str, Any]]:
        waiting = self._pending.get(rec.tuple5)
        if not waiting or not any(r is rec for r in waiting):
            return []  # already left in a pair
        waiting.remove(rec)
        if not waiting:
            del self._pending[rec.tuple5]
        return [rec.flow]
