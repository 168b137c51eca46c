"""The relay's copy of each agent's newest flows, kept current by the agent's live stream, so that the
newest page of /api/flows (what the UI polls and `lumen observe` asks first) is answered from memory
instead of by asking every agent.

Why: asking every agent costs every agent a request per viewer per poll, and the relay waits for the
slowest. On three simulated nodes sharing 2 vCPUs (bench/cluster) a fan-out page took 6-7x one agent's
answer; from the copies it takes about as long as one agent's. Agents pay once per flow (the stream)
whatever the number of viewers.

A copy holds what its agent's store holds, newest first: the agent's backlog (`last=N`), then every live
flow, replacing the flow's previous record (the store keeps one per flow and direction) and dropping the
oldest past N (N at most the agent's capacity, so a copy never holds a record the agent dropped). It is
used only while it is in sync: its stream is open, the backlog was read to its end (the agent's first
`stats` event), the agent lost nothing for it since, and the agent spoke within FRESH_S (it says its
counts every second, so a node that vanished without closing the connection is noticed within FRESH_S).
Whenever a copy is out of sync, or the copies cannot prove a page complete (a filter that matches too
few of the newest flows, a cursor, a time window), the relay asks the agents (exporter.relay.service).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import jsonbody
from exporter.flows import Flow, insert_in_order
from exporter.relay import merge
from exporter.relay.discovery import Target
from exporter.relay.fanout import Fanout, StreamError, describe
from exporter.relay.follow import Follow
from exporter.relay.wire import flow_from_dict

log = logging.getLogger("lumen.relay")

DEFAULT_SIZE = 2048  # flows per agent: twenty pages of the UI's hundred
FRESH_S = 3.0  # an agent's silence after which its copy is not trusted (it speaks every second)
RETRY_S = (0.5, 1.0, 2.0, 5.0)
OLD_AGENT_RETRY_S = 60.0
FOLLOW_S = 5.0  # how often the copies look for agents that joined or left

Matcher = Any  # exporter.filters.FlowQuery, or any predicate on a Flow


@dataclass(eq=False)
class _Entry:
    rec: merge.Record
    flow: Flow | None = None  # built on first need: a filter that looks at it

    def matches(self, q: Matcher | None) -> bool:
        if q is None:
            return True
        if self.flow is None:
            self.flow = flow_from_dict(self.rec.flow)
        return bool(q(self.flow))


@dataclass
class Copy:
    """One agent's newest flows, as merge records (stamped with the node once, on arrival)."""

    target: Target
    size: int
    entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)  # oldest first
    synced: bool = False
    complete: bool = False  # holds every record the agent holds
    heard: float = 0.0  # monotonic time of the agent's last word
    stats: dict[str, int] = field(default_factory=dict)  # the agent's latest store counts

    def reset(self) -> None:
        self.entries.clear()
        self.synced = self.complete = False
        self.stats = {}

    def apply(self, row: dict[str, Any]) -> None:
        """One flow from the agent's stream, as its store takes it."""
        rec = merge.record(self.target.name, row)
        key = rec.pos[2]  # the 5-tuple and direction: the store keeps one record each
        entries = self.entries
        entries.pop(key, None)
        pos = rec.pos
        insert_in_order(entries, key, _Entry(rec), lambda e: e.rec.pos > pos)  # late: where its time says
        if len(entries) > self.size:
            entries.popitem(last=False)
            self.complete = False

    def newest(self, q: Matcher | None, limit: int) -> merge.Answer:
        """The `limit` (0: all) newest flows matching `q`, and how far down the answer is whole: entries
        are in position order, so the last one taken is exactly where it stops (an agent's answer is
        ordered by nanoseconds and only whole down to the microsecond after its last)."""
        out: list[merge.Record] = []
        more = False  # a match beyond the limit: older pages exist
        for entry in reversed(self.entries.values()):
            if entry.matches(q):
                if limit and len(out) >= limit:
                    more = True
                    break
                out.append(entry.rec)
        flows = [r.flow for r in out]
        if more:
            return merge.Answer(self.target.name, flows, True, records=out, safe_from=out[-1].pos)
        if self.complete or not self.entries:
            return merge.Answer(self.target.name, flows, not self.complete, records=out)
        # every match of the copy is here, but the agent holds older flows: whole down to the copy's oldest
        oldest = self.entries[next(iter(self.entries))].rec.pos
        return merge.Answer(self.target.name, flows, True, records=out, safe_from=oldest)

    def fresh(self, now: float) -> bool:
        return self.synced and now - self.heard <= FRESH_S


class CopyCollector(Collector):
    """Each copy's size and whether it answers pages, read at scrape time."""

    def __init__(self, mirrors: Mirrors) -> None:
        self.mirrors = mirrors

    def collect(self) -> Iterator[Metric]:
        flows = GaugeMetricFamily(
            "lumen_relay_mirror_flows", "flows in the relay's copy of the agent's store", labels=["node"]
        )
        in_sync = GaugeMetricFamily(
            "lumen_relay_mirror_in_sync",
            f"1 while the copy answers pages (stream open, backlog read, agent heard within {FRESH_S:g} s)",
            labels=["node"],
        )
        now = time.monotonic()
        for name, copy in sorted(list(self.mirrors.copies.items())):  # a snapshot: the loop changes it
            flows.add_metric([name], len(copy.entries))
            in_sync.add_metric([name], 1 if copy.fresh(now) else 0)
        yield flows
        yield in_sync


class Mirrors:
    """A copy per agent, each fed by its own stream task; follows the agents discovery finds."""

    def __init__(self, fanout: Fanout, size: int = DEFAULT_SIZE, refresh_s: float = FOLLOW_S) -> None:
        self.fanout = fanout
        self.size = size
        self.copies: dict[str, Copy] = {}
        self.pairs = merge.PairCache(4 * size)
        self._follow = Follow(fanout, self._pump, refresh_s, self._changed)
        fanout.registry.register(CopyCollector(self))

    def start(self, known: Sequence[Target] | None = None) -> None:
        self._follow.start(known)

    def _changed(self, gone: Sequence[Target], new: Sequence[Target]) -> None:
        for t in gone:
            self.copies.pop(t.name, None)
        for t in new:
            self.copies[t.name] = Copy(t, self.size)

    def ready(self, targets: Sequence[Target]) -> list[Copy] | None:
        """Every agent's copy, if all are in sync now; else None (ask the agents)."""
        self._follow.start()  # (once) a relay started without its lifespan
        self._follow.sync(targets)  # the agents this page is about: a copy for each, now
        now = time.monotonic()
        out = [self.copies[t.name] for t in targets]
        return out if out and all(c.fresh(now) for c in out) else None

    async def aclose(self) -> None:
        await asyncio.gather(*self._follow.cancel(), return_exceptions=True)
        self.copies.clear()

    async def _size_for(self, target: Target) -> int:
        """N for `last=N`: the copy's size, at most what the agent holds (it refuses more)."""
        capacity = self.fanout.capacity.get(target.name)
        if capacity is None:
            r = await self.fanout.get(target, "/api/flows", [("limit", "1")])
            if r.error is not None:
                raise StreamError(r.error, str(r.status or "connect"))
            capacity = int(r.data.get("capacity") or self.size)
            self.fanout.capacity[target.name] = capacity
        return max(1, min(self.size, capacity))

    async def _pump(self, target: Target) -> None:
        copy, attempt = self.copies[target.name], 0
        while self._follow.follows(target):
            copy.reset()
            try:
                last = await self._size_for(target)
                backlog, lost = 0, False
                params = [("last", str(last)), ("stats", "1")]
                async with contextlib.aclosing(
                    self.fanout.stream(target, "/api/flows/stream", params)
                ) as events:
                    async for event, data in events:
                        copy.heard = time.monotonic()
                        if event == "flow":
                            copy.apply(jsonbody.loads(data))
                            backlog += not copy.synced
                        elif event == "stats":
                            copy.stats = {k: int(v) for k, v in jsonbody.loads(data).items()}
                            if not copy.synced:  # the backlog's end: all of it is in
                                copy.synced, copy.complete = True, backlog < last
                                attempt = 0
                        elif event == "lost":  # the copy misses flows: read it again, from a backlog
                            log.warning("mirror lost flows, reading again", extra={"node": target.name})
                            lost = True
                            break
                if lost:  # the agent is fine: only this copy is behind
                    copy.reset()
                    await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
                    attempt += 1
                    continue
                error, label = "stream ended", "eof"
            except StreamError as exc:
                if exc.label == "400":  # an agent without `stats` (an older version): not down, no copy
                    log.info("agent keeps no mirror: pages are asked from it", extra={"node": target.name})
                    copy.reset()
                    await asyncio.sleep(OLD_AGENT_RETRY_S)
                    continue
                error, label = str(exc), exc.label
            except httpx.HTTPError as exc:
                label, error = describe(exc)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:  # not a flow this relay reads
                error, label = f"unreadable stream: {type(exc).__name__}: {exc}", "format"
            copy.reset()
            self.fanout.mark(target, error, label)
            await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            attempt += 1
