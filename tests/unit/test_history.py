"""Flow history in SQLite: what users rely on. A restart keeps flows with every field; retention removes
exactly what is older than the bound; a filter returns the same flows from memory and from SQLite (and the
same service map); a window past the retention says so; a locked or corrupt database costs history
writes, counted, never the agent."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import filters, servicemap
from exporter.filters import FilterGroup, FlowQuery
from exporter.flows import FlowStore
from exporter.history.errors import HistoryError
from exporter.history.sink import HistoryCollector, HistorySink, wanted
from exporter.history.sqlite import SqliteHistory
from exporter.history.views import build_map
from exporter.store import CursorError
from tests.unit.exporter_fixtures import make_flow
from tests.unit.history_fixtures import HOUR, T0, flow_lists, queries


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _store(tmp_path: Path, now: int = T0 + 5 * HOUR, **kw) -> tuple[SqliteHistory, Clock]:
    clock = Clock(now)
    return SqliteHistory(str(tmp_path / "history.sqlite"), clock=clock, **kw), clock


def _all(source, q=None, since=None, until=None, page=7):
    """Every matching flow, newest first, read page by page through the cursor."""
    out, cursor = [], None
    while True:
        p = source.query(q, since, until, page, cursor)
        out += p.flows
        if p.cursor is None:
            return out
        cursor = p.cursor


def test_flows_written_before_a_restart_come_back_with_the_same_fields(tmp_path):
    flows = [
        make_flow(sport=40000 + i, time_ns=T0 + i * 10**9, type="END", labels={"app": "web", "v": str(i % 2)})
        for i in range(50)
    ]
    flows[3].egress_policy, flows[3].is_reply, flows[3].payload_bytes = "shop/allow", True, 77
    flows[4] = make_flow(
        src="fd00::5", dst="fd00::6", sport=1, time_ns=T0 + 4 * 10**9, type="DROP", verdict="DROPPED"
    )
    flows[5].protocol, flows[5].key = "253", (4, 253, *flows[5].key[2:])  # a number with no name
    store, clock = _store(tmp_path, now=T0 + HOUR)
    store.write(flows)
    store.close()
    again = SqliteHistory(store.path, clock=clock)
    back = _all(again, since=T0)
    assert back == flows[::-1]  # dataclass equality: every field, endpoints and labels included
    assert [f.to_dict() for f in back] == [f.to_dict() for f in flows[::-1]]
    # written again after the restart: new rows, same dictionaries
    again.write([make_flow(sport=1, time_ns=T0 + 100 * 10**9, type="END")])
    assert len(_all(again, since=T0)) == 51


def test_retention_removes_exactly_what_is_older_than_the_bound(tmp_path):
    store, clock = _store(tmp_path, now=T0 + 5 * HOUR, retention_s=2 * 3600)
    times = [T0 + k * 7 * 60 * 10**9 + 12345 for k in range(43)]  # every 7 min over 5 hours
    store.write([make_flow(sport=1000 + i, time_ns=t, type="END") for i, t in enumerate(times)])
    bound = clock.now - 2 * HOUR
    dropped = store.enforce_retention()
    assert dropped == [T0 // HOUR, T0 // HOUR + 1, T0 // HOUR + 2]  # hours that ended before the bound
    kept = _all(store, since=T0)
    assert sorted(f.time_ns for f in kept) == [t for t in times if t >= bound]
    tables = {r[0] for r in sqlite3.connect(store.path).execute("SELECT name FROM sqlite_master")}
    assert not {f"flows_{h}" for h in dropped} & tables and not {f"edges_{h}" for h in dropped} & tables
    m = build_map(store, None, T0, None)
    assert sum(e["flows"] for e in m["edges"]) == len(kept)  # the map is cut at the bound too


def test_size_bound_drops_the_oldest_hours_and_keeps_the_newest(tmp_path):
    store, clock = _store(tmp_path, now=T0 + 10 * HOUR, max_bytes=600_000)
    store.created_ns = T0  # as if it had run since T0
    for h in range(10):
        store.write(
            [make_flow(sport=i, dport=h, time_ns=T0 + h * HOUR + i * 10**6, type="END") for i in range(2000)]
        )
    store.enforce_retention()
    assert store.size_bytes() <= 600_000 + os.path.getsize(store.path + "-wal")
    left = _all(store, since=T0, page=5000)
    assert {f.destination.port for f in left} == set(range(10 - len({f.destination.port for f in left}), 10))
    page = store.query(None, T0, None, 10)
    assert not page.complete  # the oldest hours are gone: the window reaches past what is held
    assert store.query(None, store.horizon_ns, None, 10).complete


def test_a_window_past_the_retention_says_so(tmp_path):
    store, clock = _store(tmp_path, now=T0 + 3 * HOUR, retention_s=3600)
    store.created_ns = T0  # as if it had run since T0
    store.write([make_flow(sport=i, time_ns=T0 + i * 60 * 10**9, type="END") for i in range(180)])
    inside = store.query(None, clock.now - 1800 * 10**9, None, 10)
    past = store.query(None, clock.now - 2 * HOUR, None, 10)
    assert inside.complete and not past.complete
    assert all(f.time_ns >= clock.now - HOUR for f in _all(store, since=T0))


def test_paging_walks_every_flow_once_across_hours(tmp_path):
    store, _ = _store(tmp_path)
    flows = [make_flow(sport=i, time_ns=T0 + i * 97 * 10**9, type="END") for i in range(150)]
    flows += [make_flow(sport=1000 + i, time_ns=T0 + 5 * 10**9, type="END") for i in range(9)]  # same ns
    store.write(flows)
    got = _all(store, since=T0, page=4)
    assert len(got) == len(flows) and {f.key for f in got} == {f.key for f in flows}
    assert [f.time_ns for f in got] == sorted((f.time_ns for f in flows), reverse=True)
    with pytest.raises(CursorError):
        store.query(None, None, None, 5, "m123.4")


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    flows=flow_lists(),
    q=queries,
    limit=st.sampled_from([0, 1, 5]),
    window=st.tuples(st.integers(0, 3 * HOUR), st.integers(0, 3 * HOUR)),
)
def test_the_same_filter_returns_the_same_flows_from_memory_and_sqlite(
    tmp_path_factory, flows, q, limit, window
):
    mem = FlowStore(10_000)
    mem.on_flows(flows)
    path = tmp_path_factory.mktemp("prop")
    store, _ = _store(path, now=T0 + 3 * HOUR)
    store.write(flows)
    since, until = T0 + min(window), T0 + max(window)
    for args in ((q, None, None), (q, since, until)):
        want = _all(mem, *args) if not limit else mem.query(*args, limit).flows
        got = _all(store, *args) if not limit else store.query(*args, limit).flows
        assert [f.to_dict() for f in got] == [f.to_dict() for f in want]
    # the service map from the rollups equals the map drawn from the matching flows
    want_map = servicemap.build(f for f in flows if q.matches(f) and since <= f.time_ns <= until)
    got_map = build_map(store, q, since, until)
    got_map.pop("complete")
    assert got_map == want_map
    store.close()


def test_map_from_rollups_equals_the_map_of_the_flows_over_ragged_windows(tmp_path):
    store, _ = _store(tmp_path, now=T0 + 4 * HOUR)
    flows = [
        make_flow(sport=i, dport=80 + i % 3, time_ns=T0 + i * 7_777_777_777, type="END",
                  verdict="DROPPED" if i % 11 == 0 else "FORWARDED", packets=i, nbytes=i * 10)
        for i in range(1800)
    ]  # fmt: skip
    store.write(flows)
    for since, until in [
        (T0, T0 + 4 * HOUR),
        (T0 + 123 * 10**9, T0 + 3 * HOUR + 17),
        (T0 + 601 * 10**9, T0 + 1799 * 10**9),
    ]:
        want = servicemap.build(f for f in flows if since <= f.time_ns <= until)
        got = build_map(store, None, since, until)
        got.pop("complete")
        assert got == want
    q = FlowQuery((FilterGroup({"port": ["81"]}),))  # not in the rollup: read from the flows
    got = build_map(store, q, T0, T0 + 4 * HOUR)
    got.pop("complete")
    assert got == servicemap.build(f for f in flows if q.matches(f))


def test_a_newer_flow_model_field_is_kept_until_a_column_exists(tmp_path, monkeypatch):
    from exporter.history import schema

    store, _ = _store(tmp_path)
    flow = make_flow(time_ns=T0, type="END")
    store.write([flow])
    cols = {r[1] for r in sqlite3.connect(store.path).execute(f"PRAGMA table_info(flows_{T0 // HOUR})")}
    assert set(schema.COLUMN_NAMES) <= cols
    # an older file without a column a release added gets it on open (ALTER TABLE, rows kept)
    conn = sqlite3.connect(store.path)
    conn.execute(f"ALTER TABLE flows_{T0 // HOUR} DROP COLUMN extra")
    conn.commit()
    conn.close()
    store.close()
    again = SqliteHistory(store.path, clock=Clock(T0 + HOUR))
    assert _all(again, since=T0) == [flow]


def test_filters_without_sql_translation_still_filter_exactly(tmp_path):
    store, _ = _store(tmp_path)
    flows = [make_flow(sport=i, time_ns=T0 + i * 10**9, type="END") for i in range(30)]
    store.write(flows)
    # a criterion the translator does not know is evaluated in Python on the pre-filtered rows
    store.translator.criterion = lambda name, values: None  # type: ignore[method-assign]
    q = filters.parse({"from_port": ["3", "17"]})
    assert [f.source.port for f in _all(store, q, since=T0)] == [17, 3]
    assert [f.source.port for f in store.query(filters.parse({"not_port": ["29"]}), T0, None, 2).flows] == [
        28,
        27,
    ]


# -- the sink ---------------------------------------------------------------------------------------


def test_the_sink_keeps_ends_drops_and_first_policy_verdicts_only():
    assert wanted(make_flow(type="END")) and wanted(make_flow(type="DROP", verdict="DROPPED"))
    assert wanted(make_flow(type="NEW", verdict="AUDIT"))
    assert not wanted(make_flow(type="NEW")) and not wanted(make_flow(type="REPORT", verdict="AUDIT"))


def test_the_sink_writes_in_batches_within_about_a_second(tmp_path):
    store, _ = _store(tmp_path, now=time.time_ns())
    sink = HistorySink(store, flush_interval_s=0.2)
    now = time.time_ns()
    sink.on_flows(
        [make_flow(sport=i, time_ns=now, type="END") for i in range(100)] + [make_flow(type="REPORT")]
    )
    deadline = time.monotonic() + 5
    while sink.written < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink.written == 100 and sink.batches == 1 and not sink.dropped
    assert len(store.query(None, now - 10**9, None, 0).flows) == 100
    sink.close()


class _Broken:
    backend = "broken"

    def __init__(self, reason: str, retryable: bool = False) -> None:
        self.reason, self.retryable, self.fail = reason, retryable, True
        self.got: list = []

    def write(self, flows):
        if self.fail:
            raise HistoryError(self.reason, f"{self.reason}!", retryable=self.retryable)
        self.got += flows
        return len(flows)

    def enforce_retention(self, now_ns=None):
        return []

    def stats(self):
        return {"backend": self.backend}

    def close(self):
        pass


def _wait(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cond()


def test_a_failing_store_costs_history_writes_counted_and_shown_never_the_live_view():
    from prometheus_client import CollectorRegistry

    store = _Broken("disk_full")
    sink, live = HistorySink(store, flush_interval_s=0.05), FlowStore(100)
    reg = CollectorRegistry()
    reg.register(HistoryCollector(sink))
    batch = [make_flow(sport=i, type="END") for i in range(10)]
    for s in (live, sink):
        s.on_flows(batch)
    _wait(lambda: sink.dropped["disk_full"] == 10)
    assert len(live) == 10 and sink.health().startswith("degraded: disk_full")
    assert (
        reg.get_sample_value("lumen_history_dropped_total", {"backend": "broken", "reason": "disk_full"})
        == 10
    )
    assert reg.get_sample_value("lumen_history_up", {"backend": "broken"}) == 0
    store.fail = False
    sink.on_flows(batch)
    _wait(lambda: sink.written == 10)
    assert sink.health() == "ok" and reg.get_sample_value("lumen_history_up", {"backend": "broken"}) == 1
    sink.close()


def test_an_outage_buffers_within_the_bound_then_drops_the_oldest_and_recovers():
    store = _Broken("unreachable", retryable=True)
    sink = HistorySink(store, flush_interval_s=0.05, max_pending=50)
    flows = [make_flow(sport=i, type="END") for i in range(80)]
    sink.on_flows(flows[:30])
    _wait(lambda: sink.error != "")
    sink.on_flows(flows[30:])
    _wait(lambda: sink.dropped["backlog_full"] == 30)
    store.fail = False
    _wait(lambda: sink.written == 50)
    assert [f.source.port for f in store.got] == list(range(30, 80))  # the newest 50, in order
    assert sink.error == "" and sink.pending == 0
    sink.close()


def test_a_locked_database_drops_the_batch_with_a_reason_then_writes_again(tmp_path):
    store, _ = _store(tmp_path, now=time.time_ns())
    store._conn.execute("PRAGMA busy_timeout = 100")  # type: ignore[union-attr]
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    sink = HistorySink(store, flush_interval_s=0.05)
    sink.on_flows([make_flow(sport=i, time_ns=time.time_ns(), type="END") for i in range(5)])
    _wait(lambda: sink.dropped["locked"] == 5)
    holder.execute("ROLLBACK")
    sink.on_flows([make_flow(sport=9, time_ns=time.time_ns(), type="END")])
    _wait(lambda: sink.written == 1)
    assert sink.error == ""
    sink.close()


def test_a_corrupt_database_is_moved_aside_and_history_starts_again(tmp_path):
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"this is not a database" * 1000)
    store = SqliteHistory(str(path), clock=Clock(T0 + HOUR))
    assert store.moved_aside and Path(store.moved_aside[0]).read_bytes().startswith(b"this is not")
    store.write([make_flow(time_ns=T0, type="END")])
    assert len(_all(store, since=T0)) == 1


def test_readers_read_while_the_writer_writes(tmp_path):
    store, _ = _store(tmp_path, now=T0 + 5 * HOUR)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(30):
                store.query(None, T0, None, 50)
                build_map(store, None, T0, None)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=read)
    t.start()
    for b in range(30):
        store.write(
            [make_flow(sport=i, dport=b, time_ns=T0 + b * 10**10 + i, type="END") for i in range(200)]
        )
    t.join()
    assert not errors
    assert len(store.query(None, T0, None, 0).flows) == 6000


def test_flows_with_the_same_time_and_sequence_are_all_kept(tmp_path):
    store, _ = _store(tmp_path)
    store.write([make_flow(sport=1, time_ns=T0 + 5, type="END")])
    store._seq = (1 << 20) * 3  # the next flow gets the same sequence bits as the first
    store.write([make_flow(sport=i, time_ns=T0 + 5, type="END") for i in range(2, 5)])
    assert sorted(f.source.port for f in _all(store, since=T0)) == [1, 2, 3, 4]


def test_maps_over_many_hours_use_blocks_and_stay_exact_after_retention(tmp_path):
    store, clock = _store(tmp_path, now=T0 + 20 * HOUR, retention_s=20 * 3600)
    store.created_ns = T0
    flows = [
        make_flow(sport=i, dport=80 + i % 4, time_ns=T0 + i * 37_000_000_000, type="END",
                  verdict="DROPPED" if i % 13 == 0 else "FORWARDED", packets=i, nbytes=3 * i)
        for i in range(1900)
    ]  # fmt: skip  # about 19.5 hours
    store.write(flows)

    def check(since, until):
        want = servicemap.build(f for f in flows if max(since, clock.now - 20 * HOUR) <= f.time_ns <= until)
        got = build_map(store, None, since, until)
        got.pop("complete")
        assert got == want

    for since, until in [
        (T0, T0 + 20 * HOUR),
        (T0 + HOUR + 5, T0 + 19 * HOUR),
        (T0 + 6 * HOUR, T0 + 12 * HOUR - 1),
    ]:
        check(since, until)
    clock.now = T0 + 27 * HOUR + 10  # hours 0 to 6 expire: blocks 0-5 and 6-11 lose hours
    store.enforce_retention()
    for since, until in [(T0, T0 + 30 * HOUR), (T0 + 8 * HOUR, T0 + 30 * HOUR)]:
        check(since, until)


def test_a_database_damaged_while_open_is_said_then_replaced_by_the_next_batch(tmp_path):
    store, clock = _store(tmp_path, now=T0 + HOUR)
    store.write([make_flow(sport=i, time_ns=T0 + i, type="END") for i in range(500)])
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
    with open(store.path, "r+b") as f:  # another hand scribbles over the file
        f.seek(4096)
        f.write(b"\xde\xad" * 20000)
    with pytest.raises(HistoryError, match="corrupt") as err:
        store.query(None, T0, None, 0)
    assert err.value.reason == "corrupt"  # the API answers 503 with this
    sink = HistorySink(store, flush_interval_s=0.05)
    sink.on_flows([make_flow(sport=1000 + i, time_ns=T0 + 10**9 + i, type="END") for i in range(5)])
    assert sink.flush() and sink.written == 5 and sink.error == ""
    assert store.moved_aside and Path(store.moved_aside[0]).exists()  # kept for a post-mortem
    assert sorted(f.source.port for f in _all(store, since=T0)) == [1000, 1001, 1002, 1003, 1004]
    sink.close()
