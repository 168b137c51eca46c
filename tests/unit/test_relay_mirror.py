"""The relay's copies of the agents' newest flows (exporter/relay/mirror.py): a page answered from them is
the page the agents would give, and whenever they cannot prove that, the agents are asked.

The property tests feed a copy and a real FlowStore the same events and compare the copies' page with
the relay's fan-out over those stores; the others run real agent apps on loopback (tests/relay_harness)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import filters
from exporter.api import parse_request
from exporter.flows import Flow, FlowStore
from exporter.relay import merge, mirror
from exporter.relay.discovery import Target
from exporter.relay.fanout import SseParser
from exporter.relay.mirror import Copy
from exporter.relay.service import Relay
from exporter.relay.wire import flow_from_dict
from tests.relay_harness import Served, agents, relay, wait_until
from tests.unit.exporter_fixtures import NOW_NS, make_flow
from tests.unit.test_relay_merge import StoreFanout

# -- one copy --------------------------------------------------------------------------------------------


def flow(node: str, sport: int, t: int, direction: str = "egress", **kw: Any) -> Flow:
    f = make_flow(sport=sport, time_ns=t, direction=direction, **kw)
    f.node = node
    return f


def copy_of(node: str, events: list[Flow], size: int = 100) -> Copy:
    c = Copy(Target(node, f"http://{node}"), size)
    c.complete = True  # as after a backlog shorter than asked
    for f in events:
        c.apply(f.to_dict())
    return c


def ports(answer: merge.Answer) -> list[int]:
    return [r["source"]["port"] for r in answer.flows]


def test_a_copy_keeps_one_record_per_flow_newest_first_like_the_store():
    c = copy_of("a", [flow("a", 1, NOW_NS), flow("a", 2, NOW_NS + 5_000), flow("a", 1, NOW_NS + 9_000)])
    assert ports(c.newest(None, 0)) == [1, 2], "the flow's next event replaces its record"
    assert c.newest(None, 0).flows[0]["packets"] == 1 and len(c.entries) == 2
    c.apply(flow("a", 3, NOW_NS + 7_000).to_dict())  # a little late: it goes where its time says
    assert ports(c.newest(None, 0)) == [1, 3, 2]


def test_a_copy_drops_its_oldest_past_its_size_and_then_is_not_the_whole_store():
    c = copy_of("a", [flow("a", i, NOW_NS + i * 1_000) for i in range(5)], size=3)
    assert ports(c.newest(None, 0)) == [4, 3, 2] and not c.complete
    answer = c.newest(None, 0)
    assert answer.truncated and answer.safe_from == answer.records[-1].pos, "whole down to its oldest"


def test_a_copy_answers_a_filter_and_says_where_its_answer_stops():
    c = copy_of("a", [flow("a", i, NOW_NS + i * 1_000, dport=80 if i % 2 else 53) for i in range(10)])
    q = parse_request({"to_port": ["80"]}).query
    answer = c.newest(q, 3)
    assert ports(answer) == [9, 7, 5] and answer.truncated and answer.safe_from == answer.records[-1].pos
    answer = c.newest(q, 0)
    assert ports(answer) == [9, 7, 5, 3, 1] and not answer.truncated


# -- a copy's page is the agents' page -------------------------------------------------------------------

QUERIES = [(), (("to_port", "80"),), (("direction", "egress"),), (("not_verdict", "dropped"),)]


@st.composite
def histories(draw: Any) -> tuple[dict[str, list[Flow]], dict[str, int]]:
    """Events per node in arrival order: few flows (replaced often), times with many ties, some late."""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    out: dict[str, list[Flow]] = {}
    sizes = {}
    for node in draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True)):
        t, events = NOW_NS, []
        for _ in range(draw(st.integers(0, 60))):
            t += rnd.choice([0, 0, 1, 400, 1_000, 3_000])  # the same ns, µs, or later
            late = rnd.random() < 0.1
            events.append(
                flow(
                    node,
                    rnd.randrange(12),
                    t - 2_000 if late else t,
                    # a and b see each other's flows from both ends: they pair
                    {"a": "egress", "b": "ingress"}.get(node, rnd.choice(["egress", "ingress"])),
                    dport=rnd.choice([80, 53]),
                    verdict=rnd.choice(["FORWARDED", "DROPPED"]),
                )
            )
        out[node] = events
        sizes[node] = draw(st.integers(1, 70))
    return out, sizes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), limit=st.integers(0, 25), forward=st.sampled_from(QUERIES), pair=st.booleans())
def test_a_page_from_the_copies_is_the_agents_page_or_none(history, limit, forward, pair):
    events, sizes = history
    stores, copies = {}, []
    for node, evs in events.items():
        stores[node] = FlowStore(10_000)
        for f in evs:
            stores[node].add(f)
        copies.append(copy_of(node, evs, sizes[node]))
    expected = asyncio.run(Relay(StoreFanout(stores), pair=pair).flows(list(forward), limit))
    every = asyncio.run(Relay(StoreFanout(stores), pair=pair).flows(list(forward), 0))["flows"]
    q = parse_request({k: [v] for k, v in forward}).query or None
    page = merge.merge_page([c.newest(q, limit) for c in copies], limit, None, pair, merge.PairCache())
    if all(c.complete for c in copies):
        assert not page.short, "copies of whole stores answer every newest page"
    if not page.short:
        assert_same_page(list(reversed(page.rows)), page.cursor, expected["flows"], covered(every))


def covered(rows: list[dict[str, Any]]) -> list[merge.Position]:
    """The records a page's rows hold, newest first (a paired row holds both ends)."""
    out = []
    for row in rows:
        if row.get("paired"):
            for end, half in row["ends"].items():
                out.append(merge.record(half["node"], {**row, "time": half["time"], "direction": end}).pos)
        else:
            out.append(merge.record(row["node"], row).pos)
    return sorted(out, reverse=True)


def assert_same_page(
    rows: list[dict[str, Any]], cursor: merge.Position | None, agents_rows: list[dict[str, Any]], every: list
) -> None:
    """The agents' page and the copies' may end a pair's older half apart (how far down an answer reached
    decides whether that half joins the page's last rows): both hold the newest records, as many rows,
    and the cursor goes on right after what the page holds."""
    got = covered(rows)
    assert got == every[: len(got)], "the newest records, none skipped"
    assert covered(agents_rows) == every[: len(covered(agents_rows))]
    assert len(rows) == len(agents_rows)
    if cursor is None:
        assert got == every, "no cursor: nothing older"
    else:
        assert cursor == got[-1], "the next page starts right after this one"


@settings(max_examples=200, deadline=None)
@given(
    sport=st.integers(0, 65535),
    proto=st.sampled_from(["TCP", "UDP", "ICMP"]),
    verdict=st.sampled_from(["FORWARDED", "DROPPED", "AUDIT"]),
    direction=st.sampled_from(["egress", "ingress"]),
    src_pod=st.sampled_from([None, ("shop", "web"), ("db", "pg")]),
    labels=st.sampled_from([None, {"app": "web"}, {"app": "db", "tier": "x"}]),
    is_reply=st.booleans(),
    criterion=st.sampled_from(
        [
            ("from_pod", "shop/web"),
            ("to_pod", "shop/"),
            ("pod", "pg"),
            ("namespace", "db"),
            ("from_ip", "10.22.0.0/24"),
            ("to_port", "80"),
            ("port", "53"),
            ("label", "app=web"),
            ("node", "a"),
            ("protocol", "udp"),
            ("verdict", "dropped"),
            ("type", "new"),
            ("direction", "ingress"),
            ("tcp_flags", "SYN"),
            ("ip_version", "4"),
            ("special", "false"),
            ("is_reply", "true"),
        ]
    ),  # fmt: skip
    deny=st.booleans(),
)
def test_a_filter_means_the_same_on_the_relays_copy_of_a_flow(
    sport, proto, verdict, direction, src_pod, labels, is_reply, criterion, deny
):
    f = make_flow(
        sport=sport, proto=proto, verdict=verdict, direction=direction, src_pod=src_pod, labels=labels,
        is_reply=is_reply, message=(8, 0, sport) if proto == "ICMP" else None,
    )  # fmt: skip
    f.node = "a"
    name, value = criterion
    q = filters.parse({("not_" if deny else "") + name: [value]})
    rec = merge.record("a", f.to_dict())  # stamped as a copy stamps it
    assert q.matches(flow_from_dict(rec.flow)) == q.matches(f)


# -- through HTTP: real agent apps, the relay with copies and without -----------------------------------


def pages_from(url: str, source: str) -> float:
    """lumen_relay_flow_pages_total{source=...}: pages answered from the copies or by asking the agents."""
    series = f'lumen_relay_flow_pages_total{{source="{source}"}}'
    lines = httpx.get(url + "/metrics", timeout=5).text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(series))


def get(url: str, query: str) -> dict[str, Any]:
    resp = httpx.get(url + "/api/flows" + query, timeout=10)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def from_copies(url: str, query: str) -> dict[str, Any]:
    """The answer to `query`, once the copies gave it (they sync in the background after the first ask)."""

    def attempt() -> dict[str, Any] | None:
        before = pages_from(url, "copies")
        answer = get(url, query)
        return answer if pages_from(url, "copies") > before else None

    return dict(wait_until(attempt, timeout=10, interval=0.1))


@pytest.fixture()
def cluster():
    with agents(["n1", "n2", "n3"], capacity=500) as nodes:
        for i, node in enumerate(nodes):
            for j in range(80):  # more than the copies below hold
                t = NOW_NS + (j * 3 + i) * 1000
                node.store.add(flow(node.name, 1000 * (i + 1) + j, t, dport=80 if j % 3 else 53))
        # both ends of cross-node flows: n1 counts them leaving, n2 arriving
        for j in range(10):
            t = NOW_NS + 200_000 + j * 1000
            nodes[0].store.add(flow("n1", 9000 + j, t, "egress", dst="10.9.0.9"))
            nodes[1].store.add(flow("n2", 9000 + j, t + 300, "ingress", dst="10.9.0.9"))
        yield nodes


def test_pages_from_the_copies_equal_the_agents_answers(cluster):
    ts = [Target(n.name, n.url) for n in cluster]
    with relay(ts, mirror=64) as copies, relay(ts) as asking:
        for query in ("?limit=100", "?limit=5", "?limit=7&to_port=80", "?limit=20&not_direction=ingress"):
            mine, theirs = from_copies(copies.url, query), get(asking.url, query)
            criteria = [p for p in query[1:].split("&") if not p.startswith("limit=")]
            every = covered(get(asking.url, "?" + "&".join([*criteria, "limit=0"]))["flows"])
            cursor = merge.decode_cursor(mine.pop("cursor")) if mine["cursor"] else None
            assert_same_page(mine.pop("flows"), cursor, theirs.pop("flows"), every)
            theirs.pop("cursor")
            assert mine == theirs, "the same counts, nodes and completeness"
        # more than the copies hold: the agents are asked, and the answer is the same
        before = pages_from(copies.url, "agents")
        assert get(copies.url, "?limit=0") == get(asking.url, "?limit=0")
        assert get(copies.url, "?limit=300") == get(asking.url, "?limit=300")
        assert pages_from(copies.url, "agents") == before + 2
        # a cursor's next page comes from the agents and continues where the copies' page stopped
        first = from_copies(copies.url, "?limit=50")
        rest = get(copies.url, f"?limit=500&cursor={first['cursor']}")
        assert rest["cursor"] is None
        assert [*rest["flows"], *first["flows"]] == get(asking.url, "?limit=0")["flows"]


def test_a_new_flow_and_a_flows_next_event_reach_the_copies_page(cluster):
    n1 = cluster[0]
    with relay([Target(n.name, n.url) for n in cluster], mirror=64) as r:
        from_copies(r.url, "?limit=10")
        n1.store.add(flow("n1", 7777, NOW_NS + 10**9, packets=1))  # newer than every other
        rows = wait_until(
            lambda: [f for f in from_copies(r.url, "?limit=10")["flows"] if f["source"]["port"] == 7777]
        )
        assert rows[0]["packets"] == 1
        n1.store.add(flow("n1", 7777, NOW_NS + 2 * 10**9, packets=5))  # the same flow's next record
        wait_until(
            lambda: (
                [f["packets"] for f in get(r.url, "?limit=10")["flows"] if f["source"]["port"] == 7777] == [5]
            )
        )


def test_an_agent_that_stops_is_named_within_the_copies_freshness(cluster):
    with relay([Target(n.name, n.url) for n in cluster], mirror=64) as r:
        from_copies(r.url, "?limit=10")
        assert copy_gauges(r.url) == {("lumen_relay_mirror_flows", n): 64.0 for n in ("n1", "n2", "n3")} | {
            ("lumen_relay_mirror_in_sync", n): 1.0 for n in ("n1", "n2", "n3")
        }
        cluster[2].served.stop()
        started = time.monotonic()
        answer = wait_until(lambda: (a := get(r.url, "?limit=200"))["unreachable"] and a, timeout=10)
        assert answer["unreachable"] == ["n3"] and "n3" in answer["errors"]
        assert time.monotonic() - started <= mirror.FRESH_S + 2
        assert {f["node"] for f in answer["flows"]} == {"n1", "n2"}
        gauges = copy_gauges(r.url)
        assert (
            gauges[("lumen_relay_mirror_in_sync", "n3")] == 0
            and gauges[("lumen_relay_mirror_flows", "n3")] == 0
        )
        assert gauges[("lumen_relay_mirror_in_sync", "n1")] == 1


def copy_gauges(url: str) -> dict[tuple[str, str], float]:
    """lumen_relay_mirror_* by (name, node), from the relay's /metrics."""
    out = {}
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("lumen_relay_mirror_"):
            name, _, rest = line.partition("{")
            node = rest.split('"')[1]
            out[(name, node)] = float(line.split()[-1])
    return out


def test_an_agents_stream_says_its_counts_after_the_backlog_and_every_second():
    with agents(["s1"]) as (a,):
        for j in range(3):
            a.store.add(flow("s1", j, NOW_NS + j))
        events: list[tuple[str, str]] = []
        with httpx.stream("GET", a.url + "/api/flows/stream?last=2&stats=1", timeout=10) as resp:
            parser = SseParser()
            started = time.monotonic()
            for line in resp.iter_lines():
                ev = parser.feed(line)
                if ev is not None:
                    events.append(ev)
                if sum(e == "stats" for e, _ in events) == 3:
                    break
        kinds = [e for e, _ in events]
        assert kinds[:3] == ["flow", "flow", "stats"], "the backlog, then the counts"
        assert json.loads(events[2][1]) == {"stored": 3, "capacity": 10000, "evicted": 0}
        assert 1.5 <= time.monotonic() - started <= 5, "then each second"


def test_a_streams_backlog_comes_from_the_copies(cluster):
    with relay([Target(n.name, n.url) for n in cluster], mirror=64) as r:
        page = from_copies(r.url, "?limit=5&to_port=80")
        before = pages_from(r.url, "copies")
        rows: list[dict[str, Any]] = []
        parser = SseParser()
        with httpx.stream("GET", r.url + "/api/flows/stream?last=5&to_port=80", timeout=10) as resp:
            for line in resp.iter_lines():
                ev = parser.feed(line)
                if ev is not None and ev[0] == "flow":
                    rows.append(json.loads(ev[1]))
                    if len(rows) == 5:
                        break
        assert rows == page["flows"]
        assert pages_from(r.url, "copies") == before + 1


def test_after_an_agent_restarts_the_copy_holds_what_the_new_agent_holds(cluster):
    """A restarted agent starts with an empty store: its copy must not keep showing the old flows."""
    n1 = cluster[0]
    with relay([Target(n.name, n.url) for n in cluster], mirror=64) as r:
        assert "n1" in [f["node"] for f in from_copies(r.url, "?limit=5")["flows"]]
        port, app = n1.served.port, n1.served.server.config.app
        n1.served.stop()
        n1.store = FlowStore(500)
        n1.store.add(flow("n1", 4242, NOW_NS + 10**9))
        n1.served = Served(app, port=port).start()

        def newest() -> list[dict[str, Any]] | None:
            answer = from_copies(r.url, "?limit=5")
            return answer["flows"] if answer["flows"][-1]["source"]["port"] == 4242 else None

        rows = wait_until(newest, timeout=15)
        # the new agent's one flow, and no flow of the agent before its restart
        assert [f["node"] for f in rows] == ["n2", "n3", "n2", "n3", "n1"]
        assert from_copies(r.url, "?limit=5")["stored"] == 1 + 90 + 80


def test_the_service_map_comes_from_copies_that_hold_whole_stores(cluster):
    ts = [Target(n.name, n.url) for n in cluster]
    with relay(ts, mirror=512) as copies, relay(ts) as asking:
        from_copies(copies.url, "?limit=1")  # in sync
        before = pages_from(copies.url, "copies")
        mine = httpx.get(copies.url + "/api/map?to_port=80", timeout=10).json()
        assert pages_from(copies.url, "copies") == before + 1
        assert mine == httpx.get(asking.url + "/api/map?to_port=80", timeout=10).json()
