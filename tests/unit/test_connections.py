"""Connections: a request flow and its reply folded into one record (exporter/connections.py)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import connections, servicemap
from exporter.flows import Flow, FlowStore
from tests.unit.exporter_fixtures import NOW_NS, make_flow

WEB, API = ("shop", "web"), ("shop", "api")


def tcp_pair(sport: int = 40000, verdict: str = "FORWARDED") -> tuple[Flow, Flow]:
    request = make_flow("10.0.0.5", "10.0.0.6", sport, 80, src_pod=WEB, dst_pod=API, packets=5, nbytes=500)
    reply = make_flow(
        "10.0.0.6", "10.0.0.5", 80, sport, src_pod=API, dst_pod=WEB, packets=4, nbytes=4000,
        is_reply=True, verdict=verdict, time_ns=NOW_NS + 10**9,
    )  # fmt: skip
    return request, reply


def test_a_request_and_its_reply_are_one_connection_from_client_to_server_port():
    request, reply = tcp_pair()
    (conn,) = connections.fold([reply, request])
    assert (conn.request, conn.reply) == (request, reply)
    d = conn.to_dict()
    assert (d["client"]["pod"], d["server"]["pod"], d["server_port"]) == ("web", "api", 80)
    assert (d["packets"], d["bytes"]) == (9, 4500)
    assert (d["request"]["packets"], d["reply"]["bytes"]) == (5, 4000)
    assert d["duration_ms"] == 2000.0, "first packet of the request to the last of the reply"


def test_a_dropped_reply_makes_the_connection_dropped():
    (conn,) = connections.fold(tcp_pair(verdict="DROPPED"))
    assert conn.verdict == "DROPPED" and conn.drop_reason == "policy_denied"


def test_halves_pair_across_directions_host_to_pod():
    """Host -> pod is counted at the pod's veth both ways: the request ingress, the reply egress."""
    request = make_flow("10.0.0.1", "10.0.0.6", 5555, 53, proto="UDP", src_pod=None, direction="ingress")
    reply = make_flow(
        "10.0.0.6", "10.0.0.1", 53, 5555, proto="UDP", dst_pod=None, direction="egress", is_reply=True
    )
    (conn,) = connections.fold([request, reply])
    assert conn.reply is reply and conn.server_port == 53 and conn.client.ip == "10.0.0.1"


def test_ping_sessions_stay_apart_and_each_echo_reply_finds_its_request():
    flows = []
    for ident in (7, 9):
        flows.append(make_flow("10.0.0.5", "10.0.0.6", proto="ICMP", message=(8, 0, ident), packets=3))
        flows.append(
            make_flow("10.0.0.6", "10.0.0.5", proto="ICMP", message=(0, 0, ident), packets=3, is_reply=True)
        )
    conns = connections.fold(flows)
    assert len(conns) == 2
    for conn in conns:
        assert conn.request is not None and conn.reply is not None
        assert conn.request.message[2] == conn.reply.message[2]  # type: ignore[index]
        d = conn.to_dict()
        assert d["icmp"]["name"] == "echo-request" and d["server_port"] is None
        assert d["reply"]["message"] == "echo-reply"


def test_other_icmp_messages_are_connections_of_one_message():
    unreachable = make_flow("10.0.0.6", "10.0.0.5", proto="ICMP", message=(3, 3, 0))
    (conn,) = connections.fold([unreachable])
    assert conn.reply is None and conn.to_dict()["icmp"]["name"] == "destination-unreachable/port-unreachable"
    assert connections.other_half_keys(unreachable) == []


def test_a_missing_half_is_completed_from_the_store():
    request, reply = tcp_pair()
    store = FlowStore(10)
    store.add_many([request, reply])
    (conn,) = connections.fold([reply])
    connections.complete([conn], store.get)
    assert conn.request == request
    ping = make_flow("10.0.0.5", "10.0.0.6", proto="ICMPv6", message=(128, 0, 3))
    pong = make_flow("10.0.0.6", "10.0.0.5", proto="ICMPv6", message=(129, 0, 3), is_reply=True)
    store.add_many([ping, pong])
    (conn,) = connections.fold([ping])
    connections.complete([conn], store.get)
    assert conn.reply == pong


def test_the_service_map_draws_one_edge_from_client_to_server_with_the_server_port_only():
    flows = [f for sport in (40000, 40001, 40002) for f in tcp_pair(sport)]
    m = servicemap.build(flows)
    (edge,) = m["edges"]
    assert (edge["source"], edge["destination"], edge["ports"], edge["flows"]) == (
        "shop/web",
        "shop/api",
        [80],
        6,
    ), "three connections, both halves on one edge, no ephemeral port"
    nodes = {n["id"]: n for n in m["nodes"]}
    assert nodes["shop/api"]["tx_bytes"] == 3 * 4000 and nodes["shop/web"]["tx_bytes"] == 3 * 500


# -- invariants ------------------------------------------------------------------------------------------

ADDRS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


@st.composite
def flow_sets(draw: st.DrawFn) -> list[Flow]:
    """Unique flows (one record per key, as a store holds them): random halves of random connections."""
    out: dict[tuple, Flow] = {}
    for _ in range(draw(st.integers(0, 25))):
        client, server = draw(st.sampled_from([(a, b) for a in ADDRS for b in ADDRS if a != b]))
        kind = draw(st.sampled_from(["TCP", "UDP", "ICMP"]))
        cport, sport = draw(st.integers(30000, 30004)), draw(st.sampled_from([53, 80]))
        reply = draw(st.booleans())
        packets, nbytes = draw(st.integers(1, 50)), draw(st.integers(60, 9000))
        t = NOW_NS + draw(st.integers(0, 10**9))
        verdict = draw(st.sampled_from(["FORWARDED", "DROPPED", "AUDIT"]))
        common = {"packets": packets, "nbytes": nbytes, "time_ns": t, "verdict": verdict, "is_reply": reply}
        if kind == "ICMP":
            msg = (0 if reply else 8, 0, cport)
            src, dst = (server, client) if reply else (client, server)
            f = make_flow(src, dst, proto="ICMP", message=msg, src_pod=None, dst_pod=None, **common)
        elif reply:
            f = make_flow(server, client, sport, cport, proto=kind, src_pod=None, dst_pod=None, **common)
        else:
            f = make_flow(client, server, cport, sport, proto=kind, src_pod=None, dst_pod=None, **common)
        out[f.key] = f
    return list(out.values())


@settings(max_examples=200, deadline=None)
@given(flow_sets(), st.randoms())
def test_every_flow_is_in_one_connection_whose_totals_are_the_sum_of_its_halves(flows, rnd: random.Random):
    conns = connections.fold(flows)
    halves = [f for c in conns for f in c.halves]
    assert sorted(map(id, halves)) == sorted(map(id, flows)), "each flow in exactly one connection"
    for c in conns:
        assert c.packets == sum(f.packets for f in c.halves)
        assert c.bytes == sum(f.bytes for f in c.halves)
        assert c.start_ns == min(f.start_ns for f in c.halves) and c.end_ns == max(f.end_ns for f in c.halves)
        if c.request is not None:
            assert not c.request.is_reply and c.request.source.ip == c.to_dict()["client"]["ip"]
        if c.reply is not None:
            assert c.reply.is_reply and c.reply.destination.ip == c.to_dict()["client"]["ip"]
    assert sum(c.packets for c in conns) == sum(f.packets for f in flows)
    shuffled = list(flows)
    rnd.shuffle(shuffled)
    again = connections.fold(shuffled)
    assert {c.key: (c.request, c.reply) for c in again} == {c.key: (c.request, c.reply) for c in conns}


@settings(max_examples=100, deadline=None)
@given(flow_sets())
def test_completing_from_a_store_of_the_same_flows_changes_nothing_and_finds_every_other_half(flows):
    store = FlowStore(1000)
    store.add_many(flows)
    whole = {c.key: (c.request, c.reply) for c in connections.fold(flows)}
    for f in flows:
        (conn,) = connections.fold([f])
        connections.complete([conn], store.get)
        assert (conn.request, conn.reply) == whole[conn.key]
