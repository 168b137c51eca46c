"""`lumen relay --history clickhouse://...` against a real clickhouse-server (tests/clickhouse_server.py:
its own config, data directory and free loopback ports): two nodes' older flows written to ClickHouse as
their history sinks would, recent flows in the agents; a time range older than the agents hold is
answered from ClickHouse, a cross-node flow paired, and paged with the relay's history cursor."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from exporter.filters import FlowQuery
from exporter.flows import Flow
from exporter.history.clickhouse import ClickHouseHistory
from exporter.history.sink import HistorySink
from exporter.relay.app import create_app as create_relay_app
from exporter.relay.discovery import Static, Target
from exporter.relay.fanout import Fanout
from exporter.relay.history import open_history
from exporter.relay.service import Relay
from exporter.relay.wire import iso_us
from exporter.relay.writer import HistoryWriter
from tests import clickhouse_server
from tests.relay_harness import Served, agents, relay, wait_until
from tests.unit.exporter_fixtures import make_flow


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[clickhouse_server.ClickHouse]:
    assert clickhouse_server.available(), "clickhouse-server is not installed: run make setup"
    ch = clickhouse_server.start(tmp_path_factory.mktemp("rl-clickhouse"))
    try:
        yield ch
    finally:
        clickhouse_server.remove(ch)


def end(direction: str, t: int, node: str, verdict: str = "FORWARDED"):
    f = make_flow(
        src="10.1.0.5", dst="10.2.0.7", sport=42000, dport=5432, direction=direction,
        src_pod=("shop", "web") if direction == "egress" else None,
        dst_pod=("db", "pg") if direction == "ingress" else None,
        verdict=verdict, type="DROP" if verdict == "DROPPED" else "NEW", time_ns=t,
    )  # fmt: skip
    f.node = node
    return f


def test_an_old_time_range_comes_from_clickhouse_paired_and_paged(clickhouse):
    url = clickhouse.url.replace("/lumen", "/relay_test")
    writer = ClickHouseHistory(url)  # what each node's history sink does
    hours_ago = time.time_ns() - 3 * 3600 * 10**9
    olds = []
    for i in range(4):
        f = make_flow(sport=700 + i, time_ns=hours_ago + i * 10**9)
        f.node = "n1" if i % 2 else "n2"
        olds.append(f)
    writer.write(olds)
    writer.write([end("egress", hours_ago + 10 * 10**9, "n1")])
    writer.write([end("ingress", hours_ago + 10 * 10**9 + 5000, "n2", verdict="DROPPED")])
    with (
        agents(["n1", "n2"]) as nodes,
        relay([Target(n.name, n.url) for n in nodes], history=open_history(url)) as r,
    ):
        nodes[0].store.add(make_flow(sport=1))
        since = {"since": iso_us(hours_ago // 1000 - 60 * 10**6)}
        page = httpx.get(f"{r.url}/api/flows", params={**since, "limit": 4}).json()
        assert page["source"] == "history", page
        assert [f["source"]["port"] for f in page["flows"]] == [702, 703, 42000]
        pair = page["flows"][-1]
        assert pair["paired"] and (pair["source_node"], pair["destination_node"]) == ("n1", "n2")
        assert (pair["source"]["pod"], pair["destination"]["pod"], pair["verdict"]) == (
            "web",
            "pg",
            "DROPPED",
        )
        rest = httpx.get(f"{r.url}/api/flows", params={**since, "limit": 4, "cursor": page["cursor"]}).json()
        assert [f["source"]["port"] for f in rest["flows"]] == [700, 701] and rest["cursor"] is None
        assert httpx.get(f"{r.url}/api/flows").json()["source"] == "agents"


def test_the_relay_writes_every_agents_flows_to_clickhouse(clickhouse):
    """`--history-write`: the relay streams both agents' live flows and writes what their history sinks
    would keep (ends, drops, first non-FORWARDED verdicts; not REPORTs), each with its fields intact,
    counted on the relay's /metrics and shown in its status."""
    url = clickhouse.url.replace("/lumen", "/relay_write")
    with agents(["w1", "w2"]) as nodes:
        fanout = Fanout(Static([Target(n.name, n.url) for n in nodes]), timeout_s=2.0)
        sink = HistorySink(ClickHouseHistory(url, retention_s=86400.0), flush_interval_s=0.1)
        r = Relay(fanout, history=open_history(url), writer=HistoryWriter(fanout, sink))
        served = Served(create_relay_app(r))
        served.server.config.lifespan = "on"  # the writer starts and stops with the app
        served.start()
        try:
            wait_until(lambda: all(fanout.health.get(n.name) and fanout.health[n.name].up for n in nodes))
            now = time.time_ns() // 1000 * 1000  # the wire carries microseconds
            kept: list[Flow] = []
            for i, node in enumerate(nodes):
                flows = [
                    make_flow(sport=900 + i, type="END", time_ns=now + i),
                    make_flow(sport=910 + i, type="DROP", verdict="DROPPED", time_ns=now + 10 + i),
                    make_flow(sport=920 + i, type="REPORT", time_ns=now + 20 + i),  # not history
                ]
                for f in flows:
                    f.node = node.name
                node.store.add_many(flows)
                kept += flows[:2]
            wait_until(lambda: sink.written >= len(kept))
            stored = ClickHouseHistory(url).query(FlowQuery((), ()), None, None, 100, None).flows
            by_key = {(f.node, f.source.port): f.to_dict() for f in stored}
            assert len(stored) == len(kept) == 4
            for f in kept:
                assert by_key[(f.node, f.source.port)] == f.to_dict()
            metrics = httpx.get(f"{served.url}/metrics").text
            assert 'lumen_history_written_total{backend="clickhouse"} 4.0' in metrics
            status = httpx.get(f"{served.url}/api/status").json()["history"]
            assert (status["backend"], status["written"], status["ok"]) == ("clickhouse", 4, True)
        finally:
            served.server.should_exit = True  # graceful: the lifespan closes the writer and its sink
            served.thread.join(timeout=30)
    assert not served.thread.is_alive()
    assert r.writer is not None and not r.writer.streams
    assert not sink._thread.is_alive() and not sink.dropped
