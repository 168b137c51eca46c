"""`lumen relay --history clickhouse://...` against a real clickhouse-server (tests/clickhouse_server.py:
its own config, data directory and free loopback ports): two nodes' older flows written to ClickHouse as
their history sinks would, recent flows in the agents; a time range older than the agents hold is
answered from ClickHouse, a cross-node flow paired, and paged with the relay's history cursor."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from exporter.history.clickhouse import ClickHouseHistory
from exporter.relay.discovery import Target
from exporter.relay.history import open_history
from exporter.relay.wire import iso_us
from tests import clickhouse_server
from tests.relay_harness import agents, relay
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
