"""The relay's history writer follows the agents the discovery knows of: a node that joins gets a stream
and its flows are written, a node that leaves loses its stream (over a real SQLite history store; the
ClickHouse end to end is in test_relay_history.py)."""

from __future__ import annotations

import asyncio
import time

from exporter.filters import FlowQuery
from exporter.flows import Flow
from exporter.history.sink import HistorySink
from exporter.history.sqlite import SqliteHistory
from exporter.relay.discovery import Static, Target
from exporter.relay.fanout import Fanout
from exporter.relay.writer import HistoryWriter
from tests.relay_harness import agents
from tests.unit.exporter_fixtures import make_flow


async def until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {cond}"
        await asyncio.sleep(0.02)


def end(node: str, sport: int) -> Flow:
    f = make_flow(sport=sport, type="END", time_ns=time.time_ns() // 1000 * 1000)
    f.node = node
    return f


def test_agents_that_come_and_go_get_and_lose_their_stream(tmp_path):
    with agents(["j1", "j2"]) as (j1, j2):
        found = Static([Target("j1", j1.url)])
        fanout = Fanout(found, timeout_s=2.0)
        sink = HistorySink(SqliteHistory(str(tmp_path / "h.sqlite")), flush_interval_s=0.05)
        writer = HistoryWriter(fanout, sink, refresh_s=0.05)

        def up(name: str) -> bool:
            return bool(fanout.health.get(name) and fanout.health[name].up)

        async def run() -> None:
            writer.start()
            try:
                await until(lambda: up("j1"))
                j1.store.add(end("j1", 1))
                await until(lambda: sink.written == 1)
                found._targets = [Target("j2", j2.url)]  # j1 leaves, j2 joins
                await until(lambda: set(writer.streams) == {"j2"} and up("j2"))
                j1.store.add(end("j1", 2))  # nobody streams j1 now
                j2.store.add(end("j2", 3))
                await until(lambda: sink.written == 2)
                await asyncio.sleep(0.3)
                assert sink.written == 2
            finally:
                await writer.aclose()
                await fanout.aclose()

        asyncio.run(run())
    assert sink.dropped == {}
    stored = SqliteHistory(str(tmp_path / "h.sqlite")).query(FlowQuery((), ()), None, None, 10, None).flows
    assert sorted((f.node, f.source.port) for f in stored) == [("j1", 1), ("j2", 3)]


def test_an_agent_that_writes_to_the_same_history_itself_is_not_written_again(tmp_path):
    url = "clickhouse://clickhouse.lumen-system:9000/lumen"
    with agents(["w1", "w2"]) as (w1, w2):
        # w1 runs with --history clickhouse://... (the relay's own store); w2 with --history off
        w1_status = w1.status
        w1.status = lambda: {**w1_status(), "history": {"backend": "clickhouse", "url": url}}  # type: ignore[method-assign]
        fanout = Fanout(Static([Target("w1", w1.url), Target("w2", w2.url)]), timeout_s=2.0)
        sink = HistorySink(SqliteHistory(str(tmp_path / "h.sqlite")), flush_interval_s=0.05)
        writer = HistoryWriter(fanout, sink, refresh_s=0.05, url=url)

        async def run() -> None:
            writer.start()
            try:
                await until(lambda: writer.skipped == {"w1"} and bool(w2.store.subscribers))
                w1.store.add(end("w1", 1))
                w2.store.add(end("w2", 2))
                await until(lambda: sink.written == 1)
                await asyncio.sleep(0.3)
                assert sink.written == 1 and not w1.store.subscribers, "w1 is not streamed at all"
            finally:
                await writer.aclose()
                await fanout.aclose()

        asyncio.run(run())
    stored = SqliteHistory(str(tmp_path / "h.sqlite")).query(FlowQuery((), ()), None, None, 10, None).flows
    assert [(f.node, f.source.port) for f in stored] == [("w2", 2)]
