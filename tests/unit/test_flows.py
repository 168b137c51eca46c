"""The recent-flows store: bounded, evicts the least recently updated flow and counts it, live readers."""

from __future__ import annotations

import asyncio

import pytest

from exporter.flows import FlowStore
from tests.unit.exporter_fixtures import NOW_NS, make_flow


def test_events_of_one_flow_update_one_record_and_make_it_newest():
    store = FlowStore(10)
    store.add(make_flow(sport=1, type="NEW", packets=1))
    store.add(make_flow(sport=2))
    store.add(make_flow(sport=1, type="END", packets=9))
    flows = store.query()
    assert [f.source.port for f in flows] == [2, 1]
    assert flows[-1].type == "END" and flows[-1].packets == 9
    assert store.added == 3 and len(store) == 2


def test_full_store_evicts_oldest_first_and_counts_it():
    store = FlowStore(3)
    for port in range(1, 6):
        store.add(make_flow(sport=port))
    assert [f.source.port for f in store.query()] == [3, 4, 5]
    assert store.evicted == 2


def test_an_updated_flow_is_not_the_one_evicted():
    store = FlowStore(2)
    store.add(make_flow(sport=1))
    store.add(make_flow(sport=2))
    store.add(make_flow(sport=1, type="REPORT"))
    store.add(make_flow(sport=3))
    assert sorted(f.source.port for f in store.query()) == [1, 3]


def test_query_returns_newest_matches_oldest_first():
    store = FlowStore(100)
    for port in range(10):
        store.add(make_flow(sport=port, time_ns=NOW_NS + port))
    got = store.query(lambda f: f.source.port % 2 == 0, limit=3)
    assert [f.source.port for f in got] == [4, 6, 8]


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        FlowStore(0)


def test_subscriber_gets_matching_flows_and_counts_what_it_could_not_take():
    async def run() -> tuple[list[int], int, bool]:
        store = FlowStore(100)
        sub = store.subscribe(asyncio.get_running_loop(), lambda f: f.destination.port == 80)
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
        sub = store.subscribe(loop, lambda f: True)
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
    }
    assert d["tcp_flags"] == ["SYN", "ACK"]
    assert d["duration_ms"] == 1000.0
    assert d["time"].endswith("Z")
