"""Live flows through the relay: one set of agent streams per distinct filter, shared by every viewer
with that filter (ten browser tabs on fifty nodes open fifty agent streams, not five hundred).

A hub reads every agent's /api/flows/stream into one queue, pairs the two ends of cross-node flows once
(exporter.relay.merge.StreamPairer), encodes each row once, and offers the SSE text to its viewers. A
viewer that reads too slowly loses rows, counted for it alone. The hub keeps the agents' states (which
stream is open, which failed and why) for the `nodes` event, and reconnects failed agent streams while
it has viewers; the last viewer to leave closes it. While open it follows the discovery (follow.Follow,
every FOLLOW_S): a node that joins gets a stream ("connecting", then open), a node that leaves has its
stream closed and drops out of the `nodes` event (it left; it is not unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from exporter.relay import merge
from exporter.relay.discovery import Target
from exporter.relay.fanout import Fanout, StreamError, describe
from exporter.relay.follow import Follow

UPSTREAM_QUEUE = 16384  # agent events waiting for the hub
VIEWER_QUEUE = 16384  # rows waiting for one viewer, beyond which they are counted lost for it
BATCH = 512
KEEPALIVE_S = 15.0
RETRY_S = (0.5, 1.0, 2.0, 5.0)  # reconnect delays of a lost agent stream
FOLLOW_S = 5.0  # how often an open hub looks for agents that joined or left

Key = tuple[tuple[str, str], ...]

_CLOSING: set[asyncio.Future[Any]] = set()  # hubs closing after their request was cancelled


@dataclass
class AgentStates:
    nodes: set[str] = field(default_factory=set)  # every agent the hub follows, feeding it or not
    errors: dict[str, str] = field(default_factory=dict)  # agents not feeding it now, and why
    lost: int = 0  # dropped by the hub: agents sent faster than it read
    upstream_lost: dict[str, int] = field(default_factory=dict)  # reported by each agent
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # no agent still "connecting"

    def __post_init__(self) -> None:
        self._settle()

    def join(self, name: str) -> bool:
        """An agent to follow (or followed at a new URL): "connecting" until its stream opens."""
        self.nodes.add(name)
        return self.set(name, "connecting")

    def forget(self, name: str) -> bool:
        """An agent left: no longer named at all (it is not unreachable); True if it was named."""
        if name not in self.nodes:
            return False
        self.nodes.discard(name)
        self.errors.pop(name, None)
        self._settle()
        return True

    def set(self, name: str, error: str | None) -> bool:
        """Record an agent's state; True if it changed."""
        if error is None:
            if name not in self.errors:
                return False
            del self.errors[name]
        else:
            if self.errors.get(name) == error:
                return False
            self.errors[name] = error
        self._settle()
        return True

    def _settle(self) -> None:
        # a viewer's first `nodes` event waits (a little) for agents still connecting, joined late too
        if "connecting" in self.errors.values():
            self.settled.clear()
        else:
            self.settled.set()

    def event(self) -> str:
        body = {
            "nodes": sorted(self.nodes),
            "unreachable": sorted(n for n, e in self.errors.items() if e != "connecting"),
            "connecting": sorted(n for n, e in self.errors.items() if e == "connecting"),
            "errors": {n: e for n, e in sorted(self.errors.items()) if e != "connecting"},
        }
        return f"event: nodes\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"


def sse_row(row: dict[str, object]) -> str:
    return f"event: flow\ndata: {json.dumps(row, separators=(',', ':'))}\n\n"


class Viewer:
    """One client's stream: rows as (position, SSE text); (None, "") when the nodes' states changed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[merge.Position | None, str]] = asyncio.Queue(VIEWER_QUEUE)
        self.lost = 0

    def offer(self, item: tuple[merge.Position | None, str]) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.lost += 1


class Hub:
    def __init__(
        self,
        fanout: Fanout,
        targets: Sequence[Target],
        forward: Sequence[tuple[str, str]],
        pair_wait_s: float,
        follow_s: float = FOLLOW_S,
    ) -> None:
        self.fanout = fanout
        self.states = AgentStates()  # each agent joins it as the follower starts its pump
        self.viewers: set[Viewer] = set()
        self._queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue(UPSTREAM_QUEUE)
        self._pair_wait_s = pair_wait_s
        self._pairer = merge.StreamPairer(0.0)
        self._runner = asyncio.create_task(self._run())
        self.follow = Follow(fanout, lambda t: self._pump(t, forward), follow_s, self._changed)
        self.follow.start(targets)  # the pumps of the agents known now start at once

    async def close(self) -> None:
        """Cancel the pumps and wait while they close their agent streams. Shielded: the last viewer
        leaves from a cancelled request, and cancelling this wait would cancel the pumps a second
        time, in the middle of closing (their agents would keep serving streams nobody reads)."""
        self._runner.cancel()
        closing = asyncio.gather(self._runner, *self.follow.cancel(), return_exceptions=True)
        _CLOSING.add(closing)
        closing.add_done_callback(_CLOSING.discard)
        await asyncio.shield(closing)

    async def _run(self) -> None:
        """Agent events -> paired rows, each encoded once -> every viewer."""
        while True:
            deadline = self._pairer.next_deadline()
            wait = KEEPALIVE_S if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                items = [await asyncio.wait_for(self._queue.get(), wait)]
                while len(items) < BATCH and not self._queue.empty():
                    items.append(self._queue.get_nowait())
            except TimeoutError:
                items = []
            out: list[tuple[merge.Position | None, str]] = []
            if any(kind == "nodes" for kind, _, _ in items):
                out.append((None, ""))  # the nodes' states changed: each viewer says how they are now
            rows = []
            for kind, node, data in items:
                if kind == "flow":
                    try:
                        rows.extend(self._pairer.add(merge.record(node, json.loads(data)), time.monotonic()))
                    except (ValueError, KeyError, TypeError, AttributeError):
                        self.states.lost += 1  # not a flow this relay can read
            rows.extend(self._pairer.due(time.monotonic()))
            out.extend((merge.record(str(r.get("node", "")), r).pos, sse_row(r)) for r in rows)
            for viewer in self.viewers:
                for item in out:
                    viewer.offer(item)

    async def _pump(self, target: Target, forward: Sequence[tuple[str, str]]) -> None:
        """One agent's live flows into the hub's queue; reconnects while the hub is open."""
        attempt = 0
        while True:
            try:
                # aclosing: a cancelled pump closes the agent's stream now, not when the generator is
                # collected (the agent would keep serving a stream nobody reads)
                async with contextlib.aclosing(
                    self.fanout.stream(target, "/api/flows/stream", [*forward, ("last", "0")])
                ) as events:
                    async for event, data in events:
                        if event == "open":
                            attempt = 0
                            if self.states.set(target.name, None):
                                self._wake(target.name)
                        elif event == "flow":
                            try:
                                self._queue.put_nowait(("flow", target.name, data))
                            except asyncio.QueueFull:
                                self.states.lost += 1
                        elif event == "lost":
                            self.states.upstream_lost[target.name] = dropped_of(data)
                error, label = "stream ended", "eof"
            except StreamError as exc:
                error, label = str(exc), exc.label
            except httpx.HTTPError as exc:
                label, error = describe(exc)
            if not self.follow.follows(target):
                return  # it left: neither unreachable nor asked again
            self.fanout.mark(target, error, label)
            if self.states.set(target.name, error):
                self._wake(target.name)
            await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            attempt += 1

    def _changed(self, gone: Sequence[Target], new: Sequence[Target]) -> None:
        """Agents left or joined (a moved one did both): the `nodes` event names them as they are now."""
        for t in gone:
            if self.states.forget(t.name):
                self._wake(t.name)
        for t in new:
            if self.states.join(t.name):
                self._wake(t.name)
        # a single agent has no other end to wait for: its flows go out at once
        self._pairer.wait_s = self._pair_wait_s if len(self.follow.targets) > 1 else 0.0

    def _wake(self, name: str) -> None:
        """Have the hub tell its viewers an agent came or went (a full queue wakes it anyway)."""
        try:
            self._queue.put_nowait(("nodes", name, ""))
        except asyncio.QueueFull:
            pass

    def lost_for(self, viewer: Viewer) -> int:
        return viewer.lost + self.states.lost + sum(self.states.upstream_lost.values())


def dropped_of(data: str) -> int:
    """An agent's `lost` event: how many flows its stream to the relay missed (0 if unreadable)."""
    try:
        return int(json.loads(data).get("dropped", 0))
    except (ValueError, TypeError, AttributeError):
        return 0


class Hubs:
    """The open hubs by filter."""

    def __init__(
        self, fanout: Fanout, pair_wait_s: Callable[[], float], follow_s: float | None = None
    ) -> None:
        self.fanout = fanout
        self._pair_wait_s = pair_wait_s
        self.follow_s = FOLLOW_S if follow_s is None else follow_s
        self._hubs: dict[Key, Hub] = {}

    def join(self, targets: Sequence[Target], forward: Sequence[tuple[str, str]]) -> tuple[Hub, Viewer]:
        key = tuple(forward)
        hub = self._hubs.get(key)
        if hub is None:
            hub = self._hubs[key] = Hub(self.fanout, targets, forward, self._pair_wait_s(), self.follow_s)
            self.fanout.metrics.hubs.inc()
        viewer = Viewer()
        hub.viewers.add(viewer)
        return hub, viewer

    async def leave(self, hub: Hub, viewer: Viewer) -> None:
        hub.viewers.discard(viewer)
        if not hub.viewers:
            for key, h in list(self._hubs.items()):
                if h is hub:
                    del self._hubs[key]
                    self.fanout.metrics.hubs.dec()
            await hub.close()

    def __len__(self) -> int:
        return len(self._hubs)
