"""Flow history in ClickHouse, against a real clickhouse-server (Debian's package, which `make setup`
installs) started with its own config, data directory and free loopback ports, stopped by PID."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import servicemap
from exporter.flows import FlowStore
from exporter.history.clickhouse import ClickHouseHistory, parse_url
from exporter.history.sink import HistorySink
from exporter.history.sqlite import SqliteHistory
from exporter.history.views import build_map
from tests import clickhouse_server
from tests.unit.exporter_fixtures import make_flow
from tests.unit.history_fixtures import HOUR, T0, flow_lists, queries

DAY = 24 * HOUR
_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[clickhouse_server.ClickHouse]:
    assert clickhouse_server.available(), "clickhouse-server is not installed: run make setup"
    ch = clickhouse_server.start(tmp_path_factory.mktemp("hs-clickhouse"))
    try:
        yield ch
    finally:
        clickhouse_server.remove(ch)


def _db(server: clickhouse_server.ClickHouse, now: int, **kw) -> ClickHouseHistory:
    """A store on a database of its own (tests share the server)."""
    url = server.url.replace("/lumen", f"/t{next(_names)}")
    return ClickHouseHistory(url, clock=lambda: now, **kw)


def _all(source, q=None, since=None, until=None, page=7):
    out, cursor = [], None
    while True:
        p = source.query(q, since, until, page, cursor)
        out += p.flows
        if p.cursor is None:
            return out
        cursor = p.cursor


def test_urls_name_host_port_and_database():
    assert parse_url("clickhouse://ch.example:9440/flows") == ("ch.example", 9440, "flows")
    assert parse_url("clickhouse://10.0.0.1") == ("10.0.0.1", 9000, "lumen")
    for bad in ("http://x/y", "clickhouse:///db", "clickhouse://h/a;drop"):
        with pytest.raises(ValueError):
            parse_url(bad)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    flows=flow_lists(),
    q=queries,
    limit=st.sampled_from([0, 3]),
    window=st.tuples(st.integers(0, 3 * HOUR), st.integers(0, 3 * HOUR)),
)
def test_the_same_filter_returns_the_same_flows_from_memory_sqlite_and_clickhouse(
    server, tmp_path_factory, flows, q, limit, window
):
    mem = FlowStore(10_000)
    mem.on_flows(flows)
    lite = SqliteHistory(str(tmp_path_factory.mktemp("prop") / "h.sqlite"), clock=lambda: T0 + 3 * HOUR)
    lite.write(flows)
    ch = _db(server, T0 + 3 * HOUR)
    ch.write(flows)
    since, until = T0 + min(window), T0 + max(window)
    for args in ((q, None, None), (q, since, until)):
        results = [(_all(s, *args) if not limit else s.query(*args, limit).flows) for s in (mem, lite, ch)]
        dicts = [[f.to_dict() for f in r] for r in results]
        assert dicts[1] == dicts[0] and dicts[2] == dicts[0]
    want_map = servicemap.build(f for f in flows if q.matches(f) and since <= f.time_ns <= until)
    for s in (lite, ch):
        got = build_map(s, q, since, until)
        got.pop("complete")
        assert got == want_map
    lite.close()
    ch._run(f"DROP DATABASE {ch.db}")


def test_flows_come_back_with_the_same_fields_from_another_reader(server):
    flows = [make_flow(sport=i, time_ns=T0 + i * 10**9, type="END", labels={"app": "a"}) for i in range(20)]
    flows[2].egress_policy, flows[2].ingress_policy, flows[2].is_reply = "shop/p", "", True
    writer = _db(server, T0 + HOUR)
    writer.write(flows)
    reader = ClickHouseHistory(writer.url, clock=lambda: T0 + HOUR)  # as the relay: a fresh process
    assert _all(reader, since=T0) == flows[::-1]
    # a reader leaves retention to the writers: complete from the oldest flow stored
    assert reader.query(None, T0, None, 1).complete and not reader.query(None, T0 - 1, None, 1).complete
    assert reader.enforce_retention() == []


def test_retention_drops_whole_days_and_queries_stop_at_the_bound(server):
    now = T0 + 3 * DAY
    store = _db(server, now, retention_s=36 * 3600)
    times = [T0 + k * 5 * HOUR for k in range(15)]
    store.write([make_flow(sport=i, time_ns=t, type="END") for i, t in enumerate(times)])
    bound = now - 36 * HOUR
    days_before = {r[0] for r in store._run(f"SELECT DISTINCT day FROM {store.db}.lumen_flows")}
    dropped = store.enforce_retention()
    days_after = {r[0] for r in store._run(f"SELECT DISTINCT day FROM {store.db}.lumen_flows")}
    assert len(dropped) == len(days_before - days_after) >= 1
    assert all(d.toordinal() >= 0 for d in days_after)
    assert sorted(f.time_ns for f in _all(store, since=T0)) == [t for t in times if t >= bound]
    assert not store.query(None, T0, None, 5).complete and store.query(None, bound, None, 5).complete


def test_a_killed_clickhouse_costs_no_live_flows_and_history_catches_up(tmp_path):
    ch = clickhouse_server.start(tmp_path / "ch")
    try:
        store = ClickHouseHistory(ch.url)
        sink, live = HistorySink(store, flush_interval_s=0.1, max_pending=10_000), FlowStore(100_000)
        now = time.time_ns()

        def feed(first: int, n: int) -> None:
            batch = [
                make_flow(sport=first + i, dport=1, time_ns=now + first + i, type="END") for i in range(n)
            ]
            for s in (live, sink):
                s.on_flows(batch)

        feed(0, 100)
        _deadline(lambda: sink.written == 100)
        ch.kill()
        feed(100, 300)
        _deadline(lambda: "unreachable" in sink.error)
        assert len(live) == 400 and sink.pending == 300 and sink.health().startswith("degraded")
        feed(400, 9_900)  # past the bound: the oldest 200 are dropped and counted
        assert sink.dropped["backlog_full"] == 200
        ch.start()
        _deadline(lambda: sink.written == 100 + 10_000, timeout=60)
        assert sink.error == "" and sink.pending == 0
        got = store.query(None, now - 10**9, None, 0).flows
        assert len(got) == 10_100 and len(live) == 10_300
        sink.close()
    finally:
        clickhouse_server.remove(ch)


def _deadline(cond, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.05)
    assert cond()


def test_the_fixture_leaves_nothing_running(tmp_path: Path):
    ch = clickhouse_server.start(tmp_path / "ch")
    proc = ch.proc
    assert proc is not None
    clickhouse_server.remove(ch)
    assert proc.poll() is not None and not (tmp_path / "ch").exists()


def test_a_column_a_newer_release_adds_is_added_to_an_older_table(server):
    flows = [make_flow(sport=i, time_ns=T0 + i * 10**9, type="END") for i in range(5)]
    old = _db(server, T0 + HOUR)
    old.write(flows)
    old._run(f"ALTER TABLE {old.db}.lumen_flows DROP COLUMN ifindex")  # as an older schema had it
    again = ClickHouseHistory(old.url, clock=lambda: T0 + HOUR)
    cols = {r[0] for r in again._run(f"DESCRIBE TABLE {again.db}.lumen_flows")}
    assert "ifindex" in cols
    assert [f.source.port for f in _all(again, since=T0)] == [4, 3, 2, 1, 0]  # rows kept, default 0
