"""The relay as the cluster's one history writer (`lumen relay --history clickhouse://... --history-write`),
for clusters whose agents run with `--history off`.

    every agent's /api/flows/stream --wire.flow_from_dict--> history.sink.HistorySink --> ClickHouseHistory

One stream per agent, unfiltered and unpaired: each agent's own records, as its own history sink would
receive them; the sink keeps what it keeps on an agent (sink.wanted) and counts what it writes and drops
(lumen_history_* on the relay's /metrics). Agents are looked up again every `refresh_s`: a new node gets a
stream, a node that left loses its stream. Flows an agent sends while its stream is down (reconnecting)
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
from exporter.relay.streams import RETRY_S, dropped_of
from exporter.relay.wire import flow_from_dict

log = logging.getLogger("lumen.relay")

REFRESH_S = 10.0


class HistoryWriter:
    def __init__(self, fanout: Fanout, sink: HistorySink, refresh_s: float = REFRESH_S) -> None:
        self.fanout = fanout
        self.sink = sink
        self.refresh_s = refresh_s
        self.streams: dict[str, asyncio.Task[None]] = {}  # agent name -> its pump
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start in the running event loop (the relay app's lifespan)."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch())

    async def aclose(self) -> None:
        """Stop the streams, then write what is pending (the sink's last try) and close the store."""
        tasks = [t for t in (self._task, *self.streams.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.streams.clear()
        self._task = None
        await asyncio.to_thread(self.sink.close)

    async def _watch(self) -> None:
        """Keep one pump per agent the discovery knows of."""
        while True:
            try:
                targets = {t.name: t for t in await self.fanout.targets()}
            except Exception as exc:  # noqa: BLE001 - discovery failed: keep the streams, ask again
                log.warning("history writer: agent discovery failed", extra={"error": str(exc)})
                targets = None
            if targets is not None:
                for name in set(self.streams) - set(targets):
                    self.streams.pop(name).cancel()
                for name, target in targets.items():
                    if name not in self.streams:
                        self.streams[name] = asyncio.create_task(self._pump(target))
            await asyncio.sleep(self.refresh_s)

    async def _pump(self, target: Target) -> None:
        """One agent's live flows into the sink; reconnects until the agent leaves."""
        attempt = 0
        while True:
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
            self.fanout.mark(target, error, label)
            await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            attempt += 1
