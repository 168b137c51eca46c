"""The in-memory flow store: bounded, evicts the oldest record and counts it, queries by time window with
filters and cursors (newest first), live readers."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import filters
from exporter.flows import Endpoint, FlowStore, reverse_key
from tests.unit.exporter_fixtures import NOW_NS, make_flow


def test_events_of_one_flow_update_one_record_and_make_it_newest():
    store = FlowStore(10)
    store.add(make_flow(sport=1, type="NEW", packets=1))
    store.add(make_flow(sport=2))
    store.add(make_flow(sport=1, type="END", packets=9))
    flows = store.query().flows
    assert [f.source.port for f in flows] == [1, 2]  # newest first
    assert flows[0].type == "END" and flows[0].packets == 9
    assert store.added == 3 and len(store) == 2


def test_full_store_evicts_oldest_first_and_counts_it():
    store = FlowStore(3)
    for port in range(1, 6):
        store.add(make_flow(sport=port))
    assert [f.source.port for f in store.query().flows] == [5, 4, 3]
    assert store.evicted == 2


def test_an_updated_flow_is_not_the_one_evicted():
    store = FlowStore(2)
    store.add(make_flow(sport=1))
    store.add(make_flow(sport=2))
    store.add(make_flow(sport=1, type="REPORT"))
    store.add(make_flow(sport=3))
    assert sorted(f.source.port for f in store.query().flows) == [1, 3]


def test_query_returns_newest_matches_first():
    store = FlowStore(100)
    for port in range(10):
        store.add(make_flow(sport=port, time_ns=NOW_NS + port))
    got = store.query(lambda f: f.source.port % 2 == 0, limit=3).flows
    assert [f.source.port for f in got] == [8, 6, 4]


S = 10**9


def test_time_window_filter_and_cursor_walk_back_page_by_page():
    store = FlowStore(1000)
    # 5 flows per second over 20 s, some in the same nanosecond, added slightly out of order
    flows = [make_flow(sport=i, time_ns=NOW_NS + (i // 5) * S + (i % 5 // 2)) for i in range(100)]
    for i in range(0, 100, 2):
        store.add_many([flows[i + 1], flows[i]])
    q = filters.parse({"not_port": ["3"]})
    want = sorted(
        (f for f in flows if NOW_NS + 2 * S <= f.time_ns <= NOW_NS + 15 * S and f.source.port != 3),
        key=lambda f: f.time_ns,
        reverse=True,
    )
    got, cursor, pages = [], None, 0
    while True:
        page = store.query(q, NOW_NS + 2 * S, NOW_NS + 15 * S, limit=7, cursor=cursor)
        got += page.flows
        pages += 1
        cursor = page.cursor
        if cursor is None:
            break
    assert [f.time_ns for f in got] == [f.time_ns for f in want]
    assert {f.source.port for f in got} == {f.source.port for f in want} and len(got) == len(want)
    assert pages == -(-len(want) // 7)


def test_a_window_inside_what_memory_holds_is_complete():
    store = FlowStore(2)
    for i in range(3):
        store.add(make_flow(sport=i, time_ns=NOW_NS + i * S))
    assert store.evicted == 1 and store.covers_from_ns == NOW_NS + 1
    assert store.query(since_ns=NOW_NS + S).complete
    assert not store.query(since_ns=NOW_NS).complete
    assert not store.query().complete  # no start: reaches back past what is held


def test_a_foreign_cursor_is_refused():
    from exporter.store import CursorError

    with pytest.raises(CursorError):
        FlowStore().query(cursor="x123")


def test_reverse_key_pairs_request_and_reply():
    f = make_flow(sport=40000, dport=80)
    assert reverse_key(f.key) == (4, 6, "10.22.0.6", "10.22.0.5", 80, 40000, "egress")
    assert reverse_key(reverse_key(f.key)) == f.key


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        FlowStore(0)


def test_subscriber_gets_matching_flows_and_counts_what_it_could_not_take():
    async def run() -> tuple[list[int], int, bool]:
        store = FlowStore(100)
        sub = store.subscribe(lambda f: f.destination.port == 80)
        sub.maxsize = 2  # a reader that keeps two flows at most
        for port in (80, 443, 80, 80):
            store.add(make_flow(sport=port, dport=port))
        await asyncio.wait_for(sub.ready.wait(), 1)
        got = [f.destination.port for f in sub.take(10)]
        woken_after = sub.ready.is_set()
        store.unsubscribe(sub)
        store.add(make_flow(dport=80))
        await asyncio.sleep(0)
        return got, sub.dropped + len(sub.pending), woken_after

    got, dropped_plus_after_unsubscribe, woken_after = asyncio.run(run())
    assert got == [80, 80]
    assert dropped_plus_after_unsubscribe == 1
    assert not woken_after, "an emptied subscription waits for the next flow"


def test_a_burst_wakes_the_reader_once_and_is_taken_in_batches():
    async def run() -> tuple[int, list[int]]:
        loop = asyncio.get_running_loop()
        store = FlowStore(10000)
        sub = store.subscribe(None, loop)
        wakes = 0
        real_set = sub.ready.set

        def counting_set() -> None:
            nonlocal wakes
            wakes += 1
            real_set()

        sub.ready.set = counting_set  # type: ignore[method-assign]
        await loop.run_in_executor(None, lambda: [store.add(make_flow(sport=i % 60000)) for i in range(3000)])
        await asyncio.wait_for(sub.ready.wait(), 1)
        sizes = []
        while batch := sub.take(1000):
            sizes.append(len(batch))
        return wakes, sizes

    wakes, sizes = asyncio.run(run())
    assert wakes == 1 and sizes == [1000, 1000, 1000]


def test_flow_json_shape():
    d = make_flow(type="END").to_dict()
    assert d["source"] == {
        "ip": "10.22.0.5",
        "port": 40000,
        "namespace": "default",
        "pod": "client",
        "labels": {},
        "node": "",
        "workload": None,
        "identity": 0,
    }
    assert d["tcp_flags"] == ["SYN", "ACK"]
    assert d["special"] is False and "icmp" not in d
    assert d["duration_ms"] == 1000.0
    assert d["time"].endswith("Z")


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.integers(0, 12), st.integers(0, 40).map(lambda k: k * 10**8)),  # (flow, 0-4 s, ties)
        min_size=1,
        max_size=120,
    ),
    window=st.tuples(*[st.none() | st.integers(0, 40).map(lambda k: k * 10**8)] * 2),
    limit=st.integers(1, 9),
    odd_ports=st.booleans(),
)
def test_pages_of_the_time_index_are_the_latest_records_in_time_order(events, window, limit, odd_ports):
    """Whatever the arrival order, walking the cursor gives each flow's latest record once, newest first
    (ties: the later arrival first), inside the window and the filter: what a full sort would give."""
    store = FlowStore(1000)
    latest: dict[int, tuple[int, int]] = {}  # flow -> (time, arrival)
    for arrival, (n, offset) in enumerate(events):
        store.add(make_flow(sport=n, time_ns=NOW_NS + offset))
        latest[n] = (NOW_NS + offset, arrival)
    since, until = (None if w is None else NOW_NS + w for w in window)
    q = filters.parse({"port": [",".join(str(p) for p in range(1, 13, 2))]}) if odd_ports else None
    want = [
        n
        for n, (t, _) in sorted(latest.items(), key=lambda kv: kv[1], reverse=True)
        if (since is None or t >= since) and (until is None or t <= until) and (not odd_ports or n % 2)
    ]
    got: list[int] = []
    cursor = None
    for _ in range(len(events) + 2):
        page = store.query(q, since, until, limit, cursor)
        assert len(page.flows) <= limit
        got += [f.source.port for f in page.flows]
        cursor = page.cursor
        if cursor is None:
            break
    assert got == want


def test_endpoints_share_their_facts_and_read_and_write_them_as_attributes():
    a = Endpoint("10.0.0.1", 80, "shop", "cart", {"app": "cart"}, "n1", "Deployment", "cart", 300)
    b = Endpoint("10.0.0.1", 81, "shop", "cart", {"app": "cart"}, "n1", "Deployment", "cart", 300)
    assert a.facts is b.facts and a != b and a == b.with_port(80)
    assert (a.namespace, a.pod, dict(a.labels), a.node, a.identity) == (
        "shop",
        "cart",
        {"app": "cart"},
        "n1",
        300,
    )
    labels = {"app": "web"}
    c = Endpoint("10.0.0.2", 0, "shop", "web", labels)
    labels["app"] = "changed"  # the caller's dict is copied: shared facts do not change under other flows
    assert c.labels == {"app": "web"}
    b.node = "n2"  # a write changes this endpoint only
    assert (a.node, b.node, b.pod) == ("n1", "n2", "cart") and a.facts is not b.facts
    assert b.to_dict()["node"] == "n2" and a.to_dict()["workload"] == {"kind": "Deployment", "name": "cart"}
    assert Endpoint("10.0.0.3", 1).to_dict()["labels"] == {} and Endpoint("10.0.0.3", 1).name() == "10.0.0.3"
