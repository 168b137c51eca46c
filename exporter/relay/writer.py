"""The relay as the cluster's one history writer (`lumen relay --history clickhouse://... --history-write`),
for clusters whose agents run with `--history off`.

    every agent's /api/flows/stream --wire.flow_from_dict--> history.sink.HistorySink --> ClickHouseHistory

One stream per agent, unfiltered and unpaired: each agent's own records, as its own history sink would
receive them; the sink keeps what it keeps on an agent (sink.wanted) and counts what it writes and drops
(lumen_history_* on the relay's /metrics). Agents are looked up again every `refresh_s` (follow.Follow, as
the live streams' hubs do): a new node gets a stream, a node that left loses its stream, a node whose URL
changed is streamed from the new one. Flows an agent sends while its stream is down (reconnecting)
are not seen by the relay; a stream's `lost` events (a slow relay) are counted as dropped
`agent_stream_lost`, unreadable rows as `unreadable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import httpx

from exporter.history.sink import HistorySink
from exporter.relay.discovery import Target
from exporter.relay.fanout import Fanout, StreamError, describe
from exporter.relay.follow import Follow
from exporter.relay.streams import RETRY_S, dropped_of
from exporter.relay.wire import flow_from_dict

log = logging.getLogger("lumen.relay")

REFRESH_S = 10.0


#: how long an agent that writes to this history itself is left alone before it is asked again
SELF_WRITER_RECHECK_S = 60.0


class HistoryWriter:
    def __init__(
        self, fanout: Fanout, sink: HistorySink, refresh_s: float = REFRESH_S, url: str | None = None
    ) -> None:
        self.fanout = fanout
        self.sink = sink
        self.url = url  # the history written to, as agents name it in /api/status (clickhouse://h:p/db)
        self.follow = Follow(fanout, self._pump, refresh_s)
        self.skipped: set[str] = set()  # agents that write to the same history themselves

    async def _writes_itself(self, target: Target) -> bool:
        """True when the agent's own history sink writes to this very history: its flows would be
        stored twice (an agent left at --history clickhouse://... while the relay has --history-write)."""
        if self.url is None:
            return False
        r = await self.fanout.get(target, "/api/status")
        history = r.data.get("history") if r.error is None and isinstance(r.data, dict) else None
        same = isinstance(history, dict) and history.get("url") == self.url
        if same and target.name not in self.skipped:
            log.warning(
                "agent writes its own flows to this history: the relay does not write them again",
                extra={"node": target.name, "history": self.url},
            )
        if same:
            self.skipped.add(target.name)
        else:
            self.skipped.discard(target.name)
        return same

    @property
    def streams(self) -> dict[str, asyncio.Task[None]]:
        """Agent name -> its pump."""
        return self.follow.tasks

    def start(self) -> None:
        """Start in the running event loop (the relay app's lifespan)."""
        self.follow.start()

    async def aclose(self) -> None:
        """Stop the streams, then write what is pending (the sink's last try) and close the store."""
        await asyncio.gather(*self.follow.cancel(), return_exceptions=True)
        await asyncio.to_thread(self.sink.close)

    async def _pump(self, target: Target) -> None:
        """One agent's live flows into the sink; reconnects until the agent leaves."""
        attempt = 0
        while True:
            if await self._writes_itself(target):
                await asyncio.sleep(SELF_WRITER_RECHECK_S)
                continue
            reported = 0  # the stream's `lost` count is cumulative
            try:
                async with contextlib.aclosing(
                    self.fanout.stream(target, "/api/flows/stream", [("last", "0")])
                ) as events:
                    async for event, data in events:
                        if event == "flow":
                            try:
                                flow = flow_from_dict(json.loads(data))
                            except (ValueError, KeyError, TypeError, AttributeError):
                                self.sink.dropped["unreadable"] += 1
                                continue
                            self.sink.on_flows((flow,))
                        elif event == "open":
                            attempt = 0
                        elif event == "lost":
                            lost = dropped_of(data)
                            if lost > reported:
                                self.sink.dropped["agent_stream_lost"] += lost - reported
                                reported = lost
                error, label = "stream ended", "eof"
            except StreamError as exc:
                error, label = str(exc), exc.label
            except httpx.HTTPError as exc:
                label, error = describe(exc)
            if not self.follow.follows(target):
                return  # it left: neither unreachable nor asked again
            self.fanout.mark(target, error, label)
            await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            attempt += 1
