"""The relay's merge across agents: order by time, limit after the merge, cursors that page through
every agent's flows exactly once, and pairing of the two ends of a cross-node flow.

The agents here are real FlowStores queried with the real filters (as the agent's /api/flows does),
behind a Fanout whose HTTP request is replaced by that call; the relay's query loop is the real one."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from exporter.api import parse_request
from exporter.flows import Flow, FlowStore
from exporter.relay import merge, walk
from exporter.relay.discovery import Static, Target
from exporter.relay.fanout import Fanout, Result
from exporter.relay.service import Relay
from exporter.relay.wire import flow_from_dict, iso_us, time_us
from tests.unit.exporter_fixtures import NOW_NS, make_flow


class StoreFanout(Fanout):
    """Each target answers from its own FlowStore, as the agent's /api/flows would."""

    def __init__(self, stores: dict[str, FlowStore], down: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        super().__init__(Static([Target(n, f"http://{n}") for n in stores]))
        self.stores, self.down = stores, down
        self.asked: list[tuple[str, int]] = []
        self.requests: list[tuple[str, dict[str, str], int]] = []  # node, parameters, flows answered

    async def get(self, target, path, params=(), timeout=None) -> Result:
        if target.name in self.down:
            self.mark(target, "cannot connect", "connect")
            return Result(target, error="cannot connect")
        store = self.stores[target.name]
        criteria: dict[str, list[str]] = {}
        for k, v in params:
            criteria.setdefault(k, []).append(v)
        limit = int(criteria.get("limit", ["100"])[-1])
        if limit > store.capacity:
            return Result(target, error="HTTP 400: limit: expected a number from 0", status=400)
        self.asked.append((target.name, limit))
        req = parse_request(criteria)
        found = reversed(store.query(req.query, req.since_ns, req.until_ns, limit).flows)  # oldest first
        self.mark(target, None)
        data = {"flows": [f.to_dict() for f in found], "stored": len(store), "capacity": store.capacity,
                "evicted": 0}  # fmt: skip
        self.requests.append((target.name, dict(params), len(data["flows"])))
        return Result(target, data=data, status=200)


def pos(node: str, f: Flow) -> merge.Position:
    return merge.record(node, f.to_dict()).pos


def fill(times: dict[str, list[int]], capacity: int = 10000) -> tuple[dict[str, FlowStore], list]:
    """A store per node, flows added in time order (as events arrive); and every record's position."""
    stores, every = {}, []
    for node, ts in times.items():
        stores[node] = FlowStore(capacity)
        for i, t in enumerate(sorted(ts)):
            f = make_flow(sport=1000 + i, time_ns=t, src=f"10.0.{len(stores)}.1")
            stores[node].add(f)
        every.extend(pos(node, f) for f in stores[node].query().flows)  # what it holds, past evictions
    return stores, sorted(every, reverse=True)


def run_pages(relay: Relay, limit: int, forward=(), until: str | None = None) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    for _ in range(1000):
        answer = asyncio.run(relay.flows(list(forward), limit, cursor, until))
        pages.append(answer["flows"])
        if answer["cursor"] is None:
            return pages
        cursor = merge.decode_cursor(answer["cursor"])
    raise AssertionError("paging did not end")


def positions(rows: list[dict[str, Any]]) -> list[merge.Position]:
    return [merge.record(r["node"], r).pos for r in rows]


# Times close together (many share a microsecond, some a nanosecond) are the hard case for cursors.
times = st.lists(st.integers(NOW_NS, NOW_NS + 5_000), min_size=0, max_size=40)
nodes = st.dictionaries(st.sampled_from(["a", "b", "c"]), times, min_size=1, max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(per_node=nodes, limit=st.integers(1, 30))
def test_a_page_is_the_newest_limit_across_agents_oldest_first(per_node, limit):
    stores, every = fill(per_node)
    answer = asyncio.run(Relay(StoreFanout(stores), pair=False).flows([], limit))
    got = positions(answer["flows"])
    assert got == sorted(got), "oldest first, as the agent answers"
    assert list(reversed(got)) == every[:limit]
    assert (answer["cursor"] is None) == (len(every) <= limit) or len(got) == limit


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(per_node=nodes, limit=st.integers(1, 12), capacity=st.sampled_from([16, 10000]))
def test_cursors_page_through_every_record_once_in_order(per_node, limit, capacity):
    stores, every = fill(per_node, capacity)
    pages = run_pages(Relay(StoreFanout(stores), pair=False), limit)
    seen = [p for page in pages for p in reversed(positions(page))]
    assert seen == every
    assert all(len(page) <= limit for page in pages)


def test_limit_is_applied_after_the_merge_not_per_agent():
    # Node a holds the 5 newest flows: the page is all a's, although each agent was asked for as many.
    stores, _ = fill(
        {"a": [NOW_NS + (100 + i) * 1000 for i in range(6)], "b": [NOW_NS + i * 1000 for i in range(6)]}
    )
    fan = StoreFanout(stores)
    answer = asyncio.run(Relay(fan).flows([], 5))
    assert [f["node"] for f in answer["flows"]] == ["a"] * 5
    assert sorted(fan.asked) == [("a", 6), ("b", 6)], "one round was enough"


def test_filters_are_forwarded_to_every_agent():
    a, b = FlowStore(100), FlowStore(100)
    a.add(make_flow(sport=1, dport=80))
    a.add(make_flow(sport=2, dport=53, proto="UDP"))
    b.add(make_flow(sport=3, dport=80, verdict="DROPPED", type="DROP"))
    answer = asyncio.run(Relay(StoreFanout({"a": a, "b": b})).flows([("to_port", "80")], 10))
    assert sorted(f["source"]["port"] for f in answer["flows"]) == [1, 3]
    answer = asyncio.run(Relay(StoreFanout({"a": a, "b": b})).flows([("not_verdict", "dropped")], 10))
    assert sorted(f["source"]["port"] for f in answer["flows"]) == [1, 2]


def test_an_unreachable_agent_is_named_and_the_others_are_served():
    stores, _ = fill({"a": [NOW_NS], "b": [NOW_NS + 1], "c": [NOW_NS + 2]})
    answer = asyncio.run(Relay(StoreFanout(stores, down={"c"})).flows([], 10))
    assert sorted(f["node"] for f in answer["flows"]) == ["a", "b"]
    assert answer["unreachable"] == ["c"] and answer["errors"] == {"c": "cannot connect"}
    assert answer["nodes"] == ["a", "b", "c"]


# -- pairing ---------------------------------------------------------------------------------------------


def cross(
    direction: str, node_pod: str, verdict: str = "FORWARDED", t: int = NOW_NS, sport: int = 40000, **kw
) -> Flow:
    """One end of shop/web (10.1.0.5, node a) -> db/pg (10.2.0.7, node b), as one node's agent names it:
    its own pod only."""
    f = make_flow(
        src="10.1.0.5", dst="10.2.0.7", sport=sport, dport=5432, direction=direction,
        src_pod=("shop", "web") if node_pod == "src" else None,
        dst_pod=("db", "pg") if node_pod == "dst" else None,
        verdict=verdict, type="DROP" if verdict == "DROPPED" else "NEW", time_ns=t, **kw,
    )  # fmt: skip
    f.node = "a" if direction == "egress" else "b"
    return f


def test_the_two_ends_of_a_cross_node_flow_are_one_row_naming_both_nodes_and_pods():
    a, b = FlowStore(100), FlowStore(100)
    a.add(cross("egress", "src", packets=3, nbytes=180))
    b.add(cross("ingress", "dst", verdict="DROPPED", t=NOW_NS + 40_000, packets=3, nbytes=180))
    (row,) = asyncio.run(Relay(StoreFanout({"a": a, "b": b})).flows([], 10))["flows"]
    assert row["paired"] is True
    assert (row["source_node"], row["destination_node"]) == ("a", "b")
    assert (row["source"]["pod"], row["destination"]["pod"]) == ("web", "pg")
    assert (row["source"]["node"], row["destination"]["node"]) == ("a", "b")
    assert row["verdict"] == "DROPPED" and row["drop_reason"] == "policy_denied"
    assert row["ends"]["egress"]["verdict"] == "FORWARDED" and row["ends"]["ingress"]["node"] == "b"
    assert row["policy"]["summary"] == "no policy allows ingress"
    assert (row["packets"], row["bytes"]) == (3, 180)
    assert row["time"] == b.query().flows[0].to_dict()["time"], "as of the newer end"


def test_unrelated_records_do_not_pair():
    a, b = FlowStore(100), FlowStore(100)
    a.add(cross("egress", "src"))
    b.add(cross("egress", "src"))  # same direction
    c = FlowStore(100)
    far = cross("ingress", "dst", t=NOW_NS + merge.PAIR_WINDOW_US * 1000 + 10**9 * 2)
    c.add(far)
    rows = asyncio.run(Relay(StoreFanout({"a": a, "b": b, "c": c})).flows([], 10))["flows"]
    assert len(rows) == 3 and not any(r.get("paired") for r in rows)
    one = FlowStore(100)
    one.add(cross("egress", "src"))
    one.add(cross("ingress", "dst"))  # one node: not a cross-node flow
    assert len(asyncio.run(Relay(StoreFanout({"a": one})).flows([], 10))["flows"]) == 2


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 25), limit=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_with_pairing_pages_hold_every_record_once(n, limit, seed):
    rnd = random.Random(seed)
    ends: dict[str, list[Flow]] = {"a": [], "b": []}
    for i in range(n):
        t = NOW_NS + rnd.randrange(0, 3_000)
        ends["a"].append(cross("egress", "src", t=t, sport=i))
        if rnd.random() < 0.7:
            ends["b"].append(cross("ingress", "dst", t=t + rnd.randrange(0, 2_000), sport=i))
    a, b = FlowStore(1000), FlowStore(1000)
    for store, node in ((a, "a"), (b, "b")):
        store.add_many(sorted(ends[node], key=lambda f: f.time_ns))  # in the order events arrive
    expected = [pos(node, f) for node, fs in ends.items() for f in fs]
    pages = run_pages(Relay(StoreFanout({"a": a, "b": b})), limit)
    got = []
    for page in pages:
        assert len(page) <= limit
        for row in page:
            if row.get("paired"):
                for end, node in (("egress", "a"), ("ingress", "b")):
                    ends = {**row, "time": row["ends"][end]["time"], "direction": end}
                    got.append((merge.record(node, ends).pos[0], node, merge.record(node, ends).pos[2]))
            else:
                got.append(merge.record(row["node"], row).pos)
    assert sorted(got) == sorted(expected)


def test_stream_pairer_waits_for_the_other_end_then_lets_a_half_go():
    p = merge.StreamPairer(wait_s=0.25)
    egress = merge.record("a", cross("egress", "src").to_dict())
    ingress = merge.record("b", cross("ingress", "dst").to_dict())
    assert p.add(egress, now=10.0) == []
    (row,) = p.add(ingress, now=10.1)
    assert row["paired"] and (row["source_node"], row["destination_node"]) == ("a", "b")
    assert p.due(now=11.0) == [], "the waiting half left in the pair"
    assert p._pending == {} and p.next_deadline() is None, "nothing kept for a paired flow"
    alone = merge.record("a", cross("egress", "src", sport=1).to_dict())
    assert p.add(alone, now=20.0) == [] and p.next_deadline() == 20.25
    assert p.due(now=20.2) == []
    assert p.due(now=20.3) == [alone.flow]
    assert merge.StreamPairer(wait_s=0).add(alone, now=0) == [alone.flow]


@pytest.mark.parametrize("text", ["", "nope", "eyJ4Ijox", merge.encode_cursor((1, "a", "k"))[:-2] + "!!"])
def test_a_bad_cursor_is_refused_with_the_reason(text):
    with pytest.raises(ValueError, match="not a cursor from this relay"):
        merge.decode_cursor(text)


def test_cursor_round_trip_and_wire_round_trip():
    p = (1_800_000_000_123_456, "node-1", "TCP|10.0.0.1|1|10.0.0.2|2|egress")
    assert merge.decode_cursor(merge.encode_cursor(p)) == p
    f = cross("ingress", "dst", verdict="DROPPED")
    assert flow_from_dict(f.to_dict()).to_dict() == f.to_dict()


class SkewedFanout(StoreFanout):
    """Node b runs something else: its answer is JSON, but not the agent's flows."""

    def __init__(self, stores, answer) -> None:
        super().__init__(stores)
        self.answer = answer

    async def get(self, target, path, params=(), timeout=None) -> Result:
        if target.name == "b":
            self.mark(target, None)
            return Result(target, data=self.answer, status=200)
        return await super().get(target, path, params, timeout)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ({"flows": [{"time": "yesterday"}]}, "unreadable flow in the answer: KeyError"),
        (
            {"flows": [{**make_flow().to_dict(), "time": "yesterday"}]},
            "unreadable flow in the answer: ValueError",
        ),
        ({"items": []}, "not a flows answer"),
        ([1, 2], "not a flows answer"),
    ],
)
def test_an_agent_with_an_unreadable_answer_is_named_and_left_out(answer, error):
    stores, _ = fill({"a": [NOW_NS], "b": [NOW_NS]})
    body = asyncio.run(Relay(SkewedFanout(stores, answer)).flows([], 10))
    assert [f["node"] for f in body["flows"]] == ["a"]
    assert body["unreachable"] == ["b"] and body["errors"]["b"].startswith(error)


def test_agents_are_asked_for_their_recent_share_of_pages():
    # three agents whose flows interleave in time: each holds about a third of any page
    stores, every = fill({n: [NOW_NS + (3 * i + k) * 1000 for i in range(200)] for k, n in enumerate("abc")})
    fan = StoreFanout(stores)
    relay = Relay(fan, pair=False)
    first = asyncio.run(relay.flows([], 100))
    assert sorted(fan.asked) == [("a", 101), ("b", 101), ("c", 101)]
    fan.asked.clear()
    again = asyncio.run(relay.flows([], 100))
    assert again["flows"] == first["flows"] and positions(again["flows"]) == sorted(every[:100])
    assert len(fan.asked) == 3 and all(n < 70 for _, n in fan.asked), fan.asked
    # one agent becomes the busy one: a second round for it, and the page is still the newest 100
    for i in range(150):
        stores["b"].add(make_flow(sport=5000 + i, time_ns=NOW_NS + 10**9 + i * 1000, src="10.0.9.1"))
    fan.asked.clear()
    busy = asyncio.run(relay.flows([], 100))
    assert {f["node"] for f in busy["flows"]} == {"b"} and len(busy["flows"]) == 100
    assert [name for name, _ in fan.asked].count("b") == 2


def test_two_ping_sessions_across_nodes_pair_by_echo_identifier():
    """ICMP has no ports: each node's record of a session pairs with the other node's record of the same
    session (echo identifier), not with the other session's."""
    a, b = FlowStore(100), FlowStore(100)
    for ident, dt in ((7, 0), (9, 1000)):
        kw = {"src": "10.1.0.5", "dst": "10.2.0.7", "proto": "ICMP", "message": (8, 0, ident)}
        a.add(make_flow(**kw, src_pod=("shop", "web"), dst_pod=None, time_ns=NOW_NS + dt, packets=ident))
        b.add(make_flow(**kw, src_pod=None, dst_pod=("db", "pg"), direction="ingress", time_ns=NOW_NS + dt))
    rows = asyncio.run(Relay(StoreFanout({"a": a, "b": b})).flows([], 10))["flows"]
    assert len(rows) == 2 and all(r.get("paired") for r in rows)
    for r in rows:
        assert r["ends"]["egress"]["packets"] == r["icmp"]["id"], "each session with its own other end"


# -- crowded microseconds ----------------------------------------------------------------------------------
# An agent's idle sweep stamps every record it ends with one time: one microsecond may hold thousands.


def answer(node: str, times_us: list[int], truncated: bool, safe_from_us: int | None = None) -> merge.Answer:
    flows = [
        make_flow(sport=i, time_ns=t * 1000, src=f"10.9.{ord(node)}.1").to_dict()
        for i, t in enumerate(times_us)
    ]
    safe = None if safe_from_us is None else (safe_from_us, "", "")
    return merge.Answer(node, flows, truncated, safe_from=safe)


def times_of(page: merge.Page) -> list[tuple[str, int]]:
    return [(r["node"], merge.record(r["node"], r).pos[0]) for r in page.rows]


def test_a_truncated_answer_holds_back_its_oldest_microsecond_unless_it_holds_it_whole():
    b = answer("b", [9, 8], truncated=False)
    # a was cut inside microsecond 9: b's record at 9 could be older or newer than a's missing ones
    page = merge.merge_page([answer("a", [10, 9, 9], truncated=True), b], 10)
    assert times_of(page) == [("a", 10)] and page.short
    # the same answer, known whole from microsecond 9 on (a window read it): 9 is safe, 8 is not
    page = merge.merge_page([answer("a", [10, 9, 9], truncated=True, safe_from_us=9), b], 10)
    assert times_of(page) == [("a", 10), ("b", 9), ("a", 9), ("a", 9)] and page.short
    page = merge.merge_page([answer("a", [10, 9, 9], truncated=True, safe_from_us=9), b], 3)
    assert len(page.rows) == 3 and not page.short, "a full page above what is unknown"


def test_reach_is_where_a_page_would_end_if_every_answer_were_whole():
    answers = [answer("a", [10, 7, 4], truncated=True), answer("b", [9, 8], truncated=False)]
    assert merge.reach(answers, 3) == 8, "a, whose unknown records start at 5, cannot hold any of it"
    assert merge.reach(answers, 5) == 4
    assert merge.reach(answers, 6) is None, "not full: every truncated answer may hold some"
    assert merge.reach(answers, 0) is None


def flows_at(times_us: list[int], start: int = 0) -> list[dict[str, Any]]:
    return [make_flow(sport=start + i, time_ns=t * 1000).to_dict() for i, t in enumerate(times_us)]


def test_after_a_tie_a_walk_asks_for_that_microsecond_whole_and_for_what_is_under_it():
    w = walk.Walk("a")
    first = w.first(5)
    w.take([(first, flows_at([20, 15, 15, 15, 15]), "memory")])
    assert w.truncated and w.known_from == 16 and w.tie
    window, under = w.next(need=10)
    assert window == walk.Ask(0, iso_us(17), iso_us(13), window=15), "all of 15, whatever its size"
    assert under == walk.Ask(11, iso_us(13), None), "under the window, from the same text: no gap"
    w.take(
        [
            (window, flows_at([15] * 7 + [14], start=1), "memory"),
            (under, flows_at([13, 12], start=50), "memory"),
        ]
    )
    assert not w.truncated, "under the window there was less than asked: all of it"
    assert sorted(pos[0] for pos in w.held) == [12, 13, 14] + [15] * 7 + [20], "overlap held once"


def test_without_a_tie_a_walk_goes_on_under_its_oldest_microsecond():
    w = walk.Walk("a", until=iso_us(30))
    w.take([(w.first(5), flows_at([20, 19, 18, 17, 15]), None)])
    assert w.known_from == 16 and not w.tie
    # the records at or before 17 come back with the next piece: asked for on top of the page's need
    (under,) = w.next(need=10)
    assert under == walk.Ask(10 + 3 + 1, iso_us(17), None)
    w.take([(under, flows_at([18, 17, 15, 15] + list(range(14, 4, -1)), start=10), None)])
    assert w.truncated and w.known_from == 6


def test_a_window_that_reaches_the_clients_since_ends_the_walk():
    w = walk.Walk("a", since=iso_us(14))
    w.take([(w.first(3), flows_at([20, 15, 15]), "memory")])
    (window,) = w.next(need=10)
    assert window.since == iso_us(14), "never older than the client asked"
    w.take([(window, flows_at([15, 15, 15, 14]), "memory")])
    assert not w.truncated


def test_a_window_answered_from_the_agents_history_is_not_used():
    """An agent with history answers a window older than its memory holds from history, whose records are
    not memory's: the walk goes on from memory with a growing limit, as the relay did before windows."""
    w = walk.Walk("a")
    w.take([(w.first(4), flows_at([20, 15, 15, 15]), "memory")])
    window, under = w.next(need=10)
    w.take([(window, flows_at([15] * 9, start=10), "history"), (under, flows_at([3], start=30), "memory")])
    assert not w.windows and len(w.held) == 4 and w.known_from == 16
    (again,) = w.next(need=10)
    assert again.window is None and again.since is None and again.until == iso_us(17)
    assert again.limit >= 2 * 4


class Recorded(StoreFanout):
    """Store-backed agents; the answers say where they came from, as the agent's do."""

    def __init__(self, stores, source=lambda params: "memory", fail=lambda node, params: False) -> None:
        super().__init__(stores)
        self.source, self.fail = source, fail

    async def get(self, target, path, params=(), timeout=None) -> Result:
        if self.fail(target.name, dict(params)):
            self.mark(target, "timed out (ReadTimeout)", "timeout")
            return Result(target, error="timed out (ReadTimeout)")
        r = await super().get(target, path, params, timeout)
        if r.error is None:
            r.data["source"] = self.source(dict(params))
        return r


def asked_everything(fan: StoreFanout) -> list[tuple[str, dict[str, str], int]]:
    """Requests for every record an agent holds under some time: limit 0 without a `since`."""
    return [r for r in fan.requests if r[1]["limit"] == "0" and "since" not in r[1]]


@st.composite
def crowded(draw) -> tuple[dict[str, list[int]], int | None, int | None]:
    """1-4 agents whose records fall in a few microseconds, many in the very same nanosecond; and a
    client's `since` and `until` (µs from NOW_NS) at or next to those microseconds, or none."""
    micros = draw(st.lists(st.integers(0, 12), min_size=1, max_size=4, unique=True))
    at = st.builds(
        lambda us, ns: NOW_NS + us * 1000 + ns,
        st.sampled_from(micros),
        st.one_of(st.just(0), st.sampled_from([499, 500, 501, 999]), st.integers(0, 999)),
    )
    nodes = draw(st.lists(st.sampled_from("abcd"), min_size=1, max_size=4, unique=True))
    per_node = {n: draw(st.lists(at, max_size=70)) for n in nodes}
    near = st.none() | st.builds(lambda us, d: us + d, st.sampled_from(micros), st.integers(-1, 1))
    since, until = draw(near), draw(near)
    assume(since is None or until is None or since <= until)  # else the relay's 400, as the agent's
    return per_node, since, until


def at_us(offset: int | None) -> str | None:
    return None if offset is None else iso_us(NOW_NS // 1000 + offset)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=crowded(), limit=st.one_of(st.just(0), st.integers(1, 40)))
def test_paging_through_crowded_microseconds_shows_every_record_once_never_asking_for_everything(data, limit):
    per_node, since, until = data
    stores, _ = fill(per_node)
    forward = [] if since is None else [("since", at_us(since))]
    # what each agent holds in the client's window, as it reads `since` and `until`
    req = parse_request(
        {k: [v] for k, v in [*forward, *([("until", at_us(until))] if until is not None else [])]}
    )
    every = sorted(
        (pos(node, f) for node, s in stores.items() for f in s.query(None, req.since_ns, req.until_ns).flows),
        reverse=True,
    )
    fan = StoreFanout(stores)
    pages = run_pages(Relay(fan, pair=False), limit, forward, at_us(until))
    seen = [p for page in pages for p in reversed(positions(page))]
    assert seen == every, "every record once, newest first across pages"
    if limit:
        assert all(len(page) == limit for page in pages[:-1]), "each page is the newest `limit` rows"
        assert asked_everything(fan) == []
        for _, params, _ in fan.requests:
            if params["limit"] == "0":  # a window: one microsecond and its slack
                assert time_us(params["until"]) - time_us(params["since"]) <= 2 * walk.SLACK_US


def test_pieces_stay_inside_the_clients_time_window():
    # a tie in the client's last microsecond, records just outside either end: a window around the tie
    # must not reach them
    stores, _ = fill({"a": [NOW_NS + 6000] * 10 + [NOW_NS + 4600] * 50 + [NOW_NS + 3000] * 5})
    fan = StoreFanout(stores)
    pages = run_pages(Relay(fan, pair=False), 10, [("since", at_us(4))], at_us(5))
    assert sum(len(page) for page in pages) == 50
    assert any(params["limit"] == "0" for _, params, _ in fan.requests), "the tie was read by a window"
    for _, params, _ in fan.requests:
        assert params["since"] == at_us(4) and time_us(params["until"]) <= NOW_NS // 1000 + 5


def sweep_store(newest: int, sweep: int, older: int, src: str) -> FlowStore:
    """`older` records a microsecond apart, then one sweep's `sweep` records in one nanosecond, then
    `newest` records after it, added in that order (as they come)."""
    store = FlowStore(10000)
    store.add_many(make_flow(sport=i, time_ns=NOW_NS + i * 1000, src=src) for i in range(older))
    t = NOW_NS + 10**9
    store.add_many(make_flow(sport=10000 + i, time_ns=t, src=src) for i in range(sweep))
    store.add_many(make_flow(sport=20000 + i, time_ns=t + (i + 1) * 1000, src=src) for i in range(newest))
    return store


def test_a_sweep_of_thousands_in_one_microsecond_costs_a_page_that_microsecond_not_the_store():
    stores = {"a": sweep_store(5, 2000, 3000, "10.0.1.1"), "b": sweep_store(0, 0, 300, "10.0.2.1")}
    every = sorted((pos(n, f) for n, s in stores.items() for f in s.query().flows), reverse=True)
    fan = StoreFanout(stores)
    relay, cursor, seen = Relay(fan, pair=False), None, []
    while True:
        fan.requests.clear()
        body = asyncio.run(relay.flows([], 100, cursor))
        seen += reversed(positions(body["flows"]))
        read = sum(n for node, _, n in fan.requests if node == "a")
        assert asked_everything(fan) == []
        assert read <= 2000 + 4 * 101, f"a page read {read} of a's 5005 records"
        assert len(fan.requests) <= 6
        if body["cursor"] is None:
            break
        cursor = merge.decode_cursor(body["cursor"])
    assert seen == every


def test_an_agent_with_history_pages_exactly_without_windows():
    # its answers to windows say "history": the walk does not mix them with memory's records
    stores = {"a": sweep_store(3, 150, 40, "10.0.1.1"), "b": sweep_store(2, 30, 20, "10.0.2.1")}
    every = sorted((pos(n, f) for n, s in stores.items() for f in s.query().flows), reverse=True)
    fan = Recorded(stores, source=lambda params: "history" if "since" in params else "memory")
    pages = run_pages(Relay(fan, pair=False), 25)
    assert [p for page in pages for p in reversed(positions(page))] == every


def test_an_agent_that_fails_a_later_piece_is_named_and_left_out():
    stores = {"a": sweep_store(2, 300, 10, "10.0.1.1"), "b": sweep_store(0, 0, 50, "10.0.2.1")}
    fan = Recorded(stores, fail=lambda node, params: node == "a" and "since" in params)
    body = asyncio.run(Relay(fan, pair=False).flows([], 100))
    assert body["unreachable"] == ["a"] and body["errors"]["a"] == "timed out (ReadTimeout)"
    assert {f["node"] for f in body["flows"]} == {"b"} and len(body["flows"]) == 50
