"""`lumen relay` against several real agent API apps on loopback (uvicorn, real HTTP, the agent's own app
over a FlowStore each test fills): merged flows, cursors, a missing agent named, tokens both ways, the
live stream interleaved and paired, endpoints, the service map, metrics, and `lumen observe` and
`lumen relay`'s command line."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from exporter.relay import discovery, streams
from exporter.relay.discovery import Static, Target
from exporter.sse import iter_sse
from tests.relay_harness import agents, free_port, relay, wait_until
from tests.unit.exporter_fixtures import NOW_NS, make_flow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def targets(nodes) -> list[Target]:
    return [Target(a.name, a.url) for a in nodes]


def cross(direction: str, t: int, verdict: str = "FORWARDED", sport: int = 41000):
    f = make_flow(
        src="10.1.0.5", dst="10.2.0.7", sport=sport, dport=5432, direction=direction,
        src_pod=("shop", "web") if direction == "egress" else None,
        dst_pod=("db", "pg") if direction == "ingress" else None,
        verdict=verdict, type="DROP" if verdict == "DROPPED" else "NEW", time_ns=t,
    )  # fmt: skip
    f.node = "n1" if direction == "egress" else "n2"
    return f


@pytest.fixture(scope="module")
def three():
    with agents(["n1", "n2", "n3"]) as nodes:
        for i, node in enumerate(nodes):
            for j in range(5):
                f = make_flow(sport=1000 * (i + 1) + j, time_ns=NOW_NS + (j * 3 + i) * 1000)
                f.node = node.name
                node.store.add(f)
        yield nodes


@pytest.fixture(scope="module")
def served(three):
    with relay(targets(three)) as r:
        yield r


def test_flows_from_every_agent_newest_limit_after_the_merge(served, three):
    body = httpx.get(f"{served.url}/api/flows?limit=4").json()
    # newest four across the nodes: j=4 on n3, n2, n1, then j=3 on n3 (times interleave by node)
    assert [f["source"]["port"] for f in body["flows"]] == [3003, 1004, 2004, 3004]
    assert body["nodes"] == ["n1", "n2", "n3"] and body["unreachable"] == []
    assert (body["stored"], body["capacity"]) == (15, 30000)
    everything, cursor = [], None
    while True:
        page = httpx.get(
            f"{served.url}/api/flows", params={"limit": 4, **({"cursor": cursor} if cursor else {})}
        )
        everything = page.json()["flows"] + everything
        cursor = page.json()["cursor"]
        if cursor is None:
            break
    assert len(everything) == 15 and len({(f["node"], f["source"]["port"]) for f in everything}) == 15
    times = [f["time"] for f in everything]
    assert times == sorted(times)


def test_the_relay_serves_every_route_the_agent_does(served, three):
    from exporter.api import create_app
    from tests.unit.exporter_fixtures import View

    def routes(app):  # from the schema: app.routes holds included routers unexpanded (FastAPI >= 0.16x)
        paths = app.openapi()["paths"]
        return {(m.upper(), p) for p, ops in paths.items() if p.startswith("/api") for m in ops}

    agent_routes = routes(create_app(View(), policy=lambda: None))  # policy routes included
    assert ("POST", "/api/policy/whatif") in agent_routes
    assert agent_routes <= routes(served.server.config.app)
    assert (
        httpx.get(f"{served.url}/api/vocabulary").json() == httpx.get(f"{three[0].url}/api/vocabulary").json()
    )


def test_a_filter_as_json_is_forwarded_as_it_came(served):
    from exporter.filters import FilterGroup, FlowQuery

    q = FlowQuery(allow=(FilterGroup({"from_port": ["1000"]}), FilterGroup({"from_port": ["3001"]})),
                  deny=(FilterGroup({"from_ip": ["10.9.9.9"]}),))  # fmt: skip
    body = httpx.get(f"{served.url}/api/flows", params={"filter": q.to_json(), "limit": 0}).json()
    assert sorted(f["source"]["port"] for f in body["flows"]) == [1000, 3001]
    bad = httpx.get(f"{served.url}/api/flows", params={"filter": '{"allow": 1}'})
    assert bad.status_code == 400 and "filter" in bad.json()["detail"]


def test_filters_and_bad_input_are_the_agents(served):
    body = httpx.get(f"{served.url}/api/flows?from_port=2000&from_port=3001&limit=0").json()
    assert sorted(f["source"]["port"] for f in body["flows"]) == [2000, 3001]
    for query, detail in [
        ("port=http", "port 'http'"),
        ("from_pood=a", "unknown filter 'from_pood'"),
        ("limit=-1", "limit '-1'"),
        ("cursor=garbage", "not a cursor from this relay"),
        ("until=soon", "time 'soon'"),
    ]:
        resp = httpx.get(f"{served.url}/api/flows?{query}")
        assert resp.status_code == 400 and detail in resp.json()["detail"], query


def test_one_agent_down_the_others_are_served_and_it_is_named(three):
    dead = Target("n4", f"http://127.0.0.1:{free_port()}")
    with relay([*targets(three), dead]) as r:
        body = httpx.get(f"{r.url}/api/flows?limit=100").json()
        assert len(body["flows"]) == 15
        assert body["unreachable"] == ["n4"] and "cannot connect" in body["errors"]["n4"]
        eps = httpx.get(f"{r.url}/api/endpoints")
        assert eps.headers["X-Lumen-Unreachable"] == "n4"
        assert sorted(e["node"] for e in eps.json()) == ["n1", "n2", "n3"]
        st = httpx.get(f"{r.url}/api/status").json()
        assert st["unreachable"] == ["n4"] and set(st["nodes"]) == {"n1", "n2", "n3"}
        assert httpx.get(f"{r.url}/readyz").json() == {"ready": True, "reason": "3/4 agents answer"}
        metrics = httpx.get(f"{r.url}/metrics").text
        assert 'lumen_relay_agent_up{node="n4"} 0.0' in metrics
        assert 'lumen_relay_agent_up{node="n1"} 1.0' in metrics
        assert 'lumen_relay_agent_errors_total{node="n4",reason="connect"}' in metrics
        assert 'lumen_relay_fanout_seconds_count{route="/api/flows"}' in metrics
        with httpx.stream("GET", f"{r.url}/api/flows/stream?last=3", timeout=10) as resp:
            events = iter_sse(resp.iter_lines())
            kind, data = next(events)
            assert kind == "nodes" and json.loads(data)["unreachable"] == ["n4"]
            assert [next(events)[0] for _ in range(3)] == ["flow"] * 3


def test_no_agent_answers_is_not_ready():
    with relay([Target("gone", f"http://127.0.0.1:{free_port()}")]) as r:
        resp = httpx.get(f"{r.url}/readyz")
        assert resp.status_code == 503 and resp.json()["reason"] == "no agent answers"
        assert httpx.get(f"{r.url}/api/flows").json()["flows"] == []


def test_tokens_both_ways():
    with agents(["a", "b"], token="agent-secret") as nodes:
        nodes[0].store.add(make_flow(sport=1))
        nodes[1].store.add(make_flow(sport=2))
        with relay(targets(nodes), token="relay-secret", agent_token="agent-secret") as r:
            assert httpx.get(f"{r.url}/api/flows").status_code == 401
            assert httpx.get(f"{r.url}/metrics").status_code == 401
            assert httpx.get(f"{r.url}/healthz").status_code == 200
            wrong = {"Authorization": "Bearer agent-secret"}  # the agents' token is not the relay's
            assert httpx.get(f"{r.url}/api/flows", headers=wrong).status_code == 401
            ok = httpx.get(f"{r.url}/api/flows", headers={"Authorization": "Bearer relay-secret"}).json()
            assert sorted(f["source"]["port"] for f in ok["flows"]) == [1, 2] and ok["unreachable"] == []
        with relay(targets(nodes), agent_token="not-it") as r:
            body = httpx.get(f"{r.url}/api/flows").json()
            assert body["flows"] == [] and body["unreachable"] == ["a", "b"]
            assert body["errors"]["a"] == "HTTP 401: bearer token required"


def sse(resp):
    return iter_sse(resp.iter_lines())


def calm(*names: str) -> dict[str, object]:
    """A stream's `nodes` event when these agents all feed it."""
    return {"nodes": list(names), "unreachable": [], "connecting": [], "errors": {}}


def test_stream_interleaves_agents_and_pairs_the_ends_of_a_cross_node_flow():
    with agents(["n1", "n2"]) as (n1, n2), relay(targets([n1, n2]), pair_wait_s=2.0) as r:
        with httpx.stream("GET", f"{r.url}/api/flows/stream", timeout=10) as resp:
            events = sse(resp)
            kind, data = next(events)
            assert kind == "nodes"
            assert json.loads(data) == calm("n1", "n2")
            now = time.time_ns()
            n1.store.add(make_flow(sport=11, time_ns=now))
            n2.store.add(make_flow(sport=22, time_ns=now))
            n1.store.add(cross("egress", now))
            n2.store.add(cross("ingress", now + 300_000, verdict="DROPPED"))
            got = [json.loads(next(events)[1]) for _ in range(3)]
        by_port = {f["source"]["port"]: f for f in got}
        assert {f["node"] for f in got if f["source"]["port"] in (11, 22)} == {"n1", "n2"}
        pair = by_port[41000]
        assert pair["paired"] and (pair["source_node"], pair["destination_node"]) == ("n1", "n2")
        assert (pair["source"]["pod"], pair["destination"]["pod"]) == ("web", "pg")
        assert pair["verdict"] == "DROPPED"


def test_stream_names_an_agent_that_goes_away():
    with agents(["n1", "n2"]) as (n1, n2), relay(targets([n1, n2])) as r:
        with httpx.stream("GET", f"{r.url}/api/flows/stream", timeout=20) as resp:
            events = sse(resp)
            assert json.loads(next(events)[1]) == calm("n1", "n2")
            n2.served.stop()
            kind, data = next(e for e in events if e[0] == "nodes")
            body = json.loads(data)
            assert body["unreachable"] == ["n2"] and body["errors"]["n2"]
            n1.store.add(make_flow(sport=5, time_ns=time.time_ns()))
            kind, data = next(e for e in events if e[0] == "flow")
            assert json.loads(data)["node"] == "n1"


def nodes_until(events, done) -> list[dict]:
    """The `nodes` events up to the first that `done` accepts (no flow comes in between)."""
    said = []
    while not said or not done(said[-1]):
        kind, data = next(events)
        assert kind == "nodes", (kind, data)
        said.append(json.loads(data))
    return said


def test_a_live_stream_follows_agents_that_join_and_leave(monkeypatch):
    monkeypatch.setattr(streams, "FOLLOW_S", 0.05)  # hubs look the agents up every 50 ms
    with agents(["n1", "n2"]) as (n1, n2):
        found = Static([Target("n1", n1.url)])
        with relay(found) as r, httpx.stream("GET", f"{r.url}/api/flows/stream", timeout=10) as resp:
            events = sse(resp)
            assert json.loads(next(events)[1]) == calm("n1")
            assert n2.store.subscribers == 0

            found._targets = [Target("n1", n1.url), Target("n2", n2.url)]  # n2 joins; nobody reconnects
            said = nodes_until(events, lambda body: body == calm("n1", "n2"))
            assert all(b["nodes"] == ["n1", "n2"] and b["connecting"] in ([], ["n2"]) for b in said), said
            assert n2.store.subscribers == 1
            n2.store.add(make_flow(sport=22, time_ns=time.time_ns()))
            kind, data = next(events)
            assert kind == "flow" and json.loads(data)["source"]["port"] == 22

            found._targets = [Target("n2", n2.url)]  # n1 leaves
            said = nodes_until(events, lambda body: body == calm("n2"))
            assert not any("n1" in b["unreachable"] or "n1" in b["errors"] for b in said), said
            wait_until(lambda: n1.store.subscribers == 0, timeout=10)  # its stream closed, agent side
            time.sleep(0.6)  # past a reconnect delay (RETRY_S) and many lookups: it stays closed
            assert (n1.store.subscribers, n2.store.subscribers) == (0, 1)
            n1.store.add(make_flow(sport=11, time_ns=time.time_ns()))
            n2.store.add(make_flow(sport=23, time_ns=time.time_ns()))
            kind, data = next(events)
            assert kind == "flow" and json.loads(data)["source"]["port"] == 23
            status = httpx.get(f"{r.url}/api/status").json()
            assert status["unreachable"] == [] and set(status["nodes"]) == {"n2"}
        wait_until(lambda: n2.store.subscribers == 0, timeout=20)


def test_a_live_stream_follows_an_agent_to_its_new_url(monkeypatch):
    monkeypatch.setattr(streams, "FOLLOW_S", 0.05)
    with agents(["n1", "n1"]) as (old, new):
        found = Static([Target("n1", old.url)])
        with relay(found) as r, httpx.stream("GET", f"{r.url}/api/flows/stream", timeout=10) as resp:
            events = sse(resp)
            assert json.loads(next(events)[1]) == calm("n1")
            found._targets = [Target("n1", new.url)]  # the node's agent restarted at another address
            wait_until(lambda: (old.store.subscribers, new.store.subscribers) == (0, 1), timeout=10)
            new.store.add(make_flow(sport=33, time_ns=time.time_ns()))
            kind, data = next(e for e in events if e[0] == "flow")
            assert json.loads(data)["source"]["port"] == 33


def test_service_map_counts_a_paired_flow_once():
    with agents(["n1", "n2"]) as (n1, n2), relay(targets([n1, n2])) as r:
        n1.store.add(cross("egress", NOW_NS))
        n2.store.add(cross("ingress", NOW_NS + 1000))
        body = httpx.get(f"{r.url}/api/map").json()
        (edge,) = body["edges"]
        assert (edge["source"], edge["destination"], edge["flows"]) == ("shop/web", "db/pg", 1)
        assert body["unreachable"] == []


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, **(env or {})},
    )


def test_lumen_observe_through_the_relay_says_which_nodes_are_missing(three):
    dead = Target("n9", f"http://127.0.0.1:{free_port()}")
    with relay([*targets(three), dead]) as r:
        out = run_cli("observe", "--server", r.url, "--last", "3", "-o", "jsonl")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 3
    assert "flows of 1 node(s) missing, not reachable: n9: cannot connect" in out.stderr


def test_lumen_status_through_the_relay_lists_every_node(three):
    dead = Target("n9", f"http://127.0.0.1:{free_port()}")
    with relay([*targets(three), dead]) as r:
        out = run_cli("status", "--server", r.url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Relay:       3/4 agents answer")
    assert "n1" in lines[1] and "ready  5/10000 flows, 1 endpoints" in lines[1]
    assert lines[4].split()[:2] == ["n9", "UNREACHABLE"]
    assert lines[5] == "History:     off"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agent", "http://127.0.0.1:1", "--host", "0.0.0.0"], "binding 0.0.0.0 needs --token"),
        ([], "give the agents with --agent URL"),
        (["--agent", "ftp://x"], "expected http(s)://host:port"),
        (["--agent", "a=http://h:1", "--agent", "a=http://h:2"], "agent names given twice: a"),
        (["--agent", "http://h:1", "--token-file", "/nonexistent/lumen-token"], "/nonexistent/lumen-token"),
        (["--agent", "http://h:1", "--history-write"], "--history-write needs --history"),
        (["--agent", "http://h:1", "--mirror", "-1"], "--mirror: a number of flows, 0 or more"),
        (["--agent", "http://h:1", "--mirror", "many"], "argument --mirror: invalid int value"),
    ],
)
def test_relay_command_line_errors_are_usage_errors(args, message):
    out = run_cli("relay", *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_lumen_relay_runs_and_serves_the_ui():
    with agents(["n1"]) as (n1,):
        n1.store.add(make_flow(sport=7))
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "relay", "--port", str(port), "--agent", f"n1={n1.url}"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def up() -> bool:
                try:
                    return httpx.get(f"{url}/healthz").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(up, timeout=20)
            assert [f["node"] for f in httpx.get(f"{url}/api/flows").json()["flows"]] == ["n1"]
            assert "Flows · Lumen" in httpx.get(f"{url}/flows").text
            # a viewer's live stream stays open: SIGTERM still stops the relay within its grace
            with httpx.stream("GET", f"{url}/api/flows/stream", timeout=30) as resp:
                assert next(sse(resp))[0] == "nodes"
                proc.terminate()
                started = time.monotonic()
                proc.wait(timeout=20)
                assert time.monotonic() - started < 10
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def test_parse_agent_forms():
    assert discovery.parse_agent("http://10.0.0.1:9465/") == Target("10.0.0.1:9465", "http://10.0.0.1:9465")
    assert discovery.parse_agent("node-a=https://[fd00::1]:9465") == Target(
        "node-a", "https://[fd00::1]:9465"
    )


def test_discovery_from_nodes_and_endpointslices():
    def node(name, *addresses):
        return SimpleNamespace(
            metadata=SimpleNamespace(name=name),
            status=SimpleNamespace(addresses=[SimpleNamespace(type=t, address=a) for t, a in addresses]),
        )

    nodes = [
        node("b", ("Hostname", "b"), ("InternalIP", "fd00::2")),
        node("a", ("ExternalIP", "203.0.113.1"), ("InternalIP", "10.0.0.1")),
        node("no-ip", ("Hostname", "x")),
    ]
    assert discovery.targets_from_nodes(nodes, "http", 9465) == [
        Target("a", "http://10.0.0.1:9465"),
        Target("b", "http://[fd00::2]:9465"),
    ]
    slices = [
        SimpleNamespace(
            ports=[SimpleNamespace(name="metrics", port=9999)],
            endpoints=[
                SimpleNamespace(addresses=["10.0.0.2"], node_name="n2"),
                SimpleNamespace(addresses=[], node_name="n3"),
            ],
        )
    ]
    assert discovery.targets_from_slices(slices, "https", "metrics", 9465) == [
        Target("n2", "https://10.0.0.2:9999")
    ]


def test_kube_discovery_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="expected one of nodes, endpointslices"):
        discovery.Kube("pods")


def test_kube_discovery_lists_nodes_and_endpointslices_through_the_client(monkeypatch):
    """The in-cluster path with a stand-in `kubernetes` module (the real client is only in the image)."""
    import asyncio
    import types

    calls = []
    node = SimpleNamespace(
        metadata=SimpleNamespace(name="worker-1"),
        status=SimpleNamespace(addresses=[SimpleNamespace(type="InternalIP", address="10.0.0.7")]),
    )
    piece = SimpleNamespace(
        ports=[SimpleNamespace(name="metrics", port=9465)],
        endpoints=[SimpleNamespace(addresses=["10.0.0.8"], node_name="worker-2")],
    )

    class CoreV1Api:
        def list_node(self, **kw):
            calls.append(("list_node", kw))
            return SimpleNamespace(items=[node])

    class DiscoveryV1Api:
        def list_namespaced_endpoint_slice(self, namespace, **kw):
            calls.append(("slices", namespace, kw["label_selector"]))
            return SimpleNamespace(items=[piece])

    kube = types.ModuleType("kubernetes")
    kube.config = SimpleNamespace(load_incluster_config=lambda: calls.append(("config",)))
    kube.client = SimpleNamespace(CoreV1Api=CoreV1Api, DiscoveryV1Api=DiscoveryV1Api)
    monkeypatch.setitem(sys.modules, "kubernetes", kube)

    by_nodes = discovery.Kube("nodes", port=9465)
    asyncio.run(by_nodes.refresh())
    asyncio.run(by_nodes.refresh())  # within REFRESH_S: not listed again
    assert by_nodes.targets() == [Target("worker-1", "http://10.0.0.7:9465")]
    by_slices = discovery.Kube("endpointslices", scheme="https", namespace="lumen-system")
    asyncio.run(by_slices.refresh())
    assert by_slices.targets() == [Target("worker-2", "https://10.0.0.8:9465")]
    assert [c[0] for c in calls] == ["config", "list_node", "config", "slices"]
    assert calls[-1][1:] == ("lumen-system", "kubernetes.io/service-name=lumen-agent")

    class Broken(CoreV1Api):
        def list_node(self, **kw):
            raise RuntimeError("API server away")

    kube.client.CoreV1Api = Broken

    async def stale_refresh() -> None:
        by_nodes._listed -= discovery.REFRESH_S  # stale: re-listed in the background
        await by_nodes.refresh()
        assert by_nodes._background is not None
        await by_nodes._background

    asyncio.run(stale_refresh())
    assert by_nodes.targets() == [Target("worker-1", "http://10.0.0.7:9465")], "the last list is kept"


def test_lumen_observe_follow_through_the_relay_notes_the_missing_node(three):
    dead = Target("n9", f"http://127.0.0.1:{free_port()}")
    with relay([*targets(three), dead]) as r:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "observe", "-f", "--server", r.url, "--last", "2"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        watchdog = threading.Timer(30, proc.kill)  # a hung stream fails the test instead of the run
        watchdog.start()
        try:
            note = proc.stderr.readline()
            flows = [proc.stdout.readline(), proc.stdout.readline()]
        finally:
            watchdog.cancel()
            proc.terminate()
            proc.wait(timeout=10)
    assert note.startswith("lumen observe: flows of 1 node(s) missing, not reachable: n9: cannot connect")
    assert all(":" in line and "->" in line for line in flows)


def test_lumen_observe_says_a_missing_node_left_rather_than_came_back():
    from exporter.cli import note_unreachable

    err = io.StringIO()
    missing = note_unreachable({"nodes": ["n1", "n4"], "unreachable": ["n4"], "errors": {}}, err)
    assert note_unreachable({"nodes": ["n1"], "unreachable": [], "errors": {}}, err, missing) == []
    assert err.getvalue().splitlines()[-1] == "lumen observe: left the cluster: n4"


def test_a_relative_time_range_means_one_instant_on_every_node(served, three):
    # the stored flows are from 2027: after an hour ago, none before
    assert httpx.get(f"{served.url}/api/flows", params={"until": "1h", "limit": 0}).json()["flows"] == []
    assert len(httpx.get(f"{served.url}/api/flows", params={"since": "1h", "limit": 0}).json()["flows"]) == 15
    window = {"since": "2027-01-15T07:00:00Z", "until": "2027-01-15T09:00:00+00:00", "limit": 0}
    assert len(httpx.get(f"{served.url}/api/flows", params=window).json()["flows"]) == 15


def test_a_time_range_older_than_the_agents_hold_comes_from_the_history_store():
    """Any exporter.store.FlowSource is a history to the relay; a FlowStore stands in for ClickHouse."""
    from exporter.flows import FlowStore

    old = NOW_NS - 400 * 86400 * 10**9  # a year before what the agents hold
    history = FlowStore(1000)
    for i in range(5):
        f = make_flow(sport=500 + i, time_ns=old + i * 10**9)
        f.node = "n1"
        history.add(f)
    history.add(cross("egress", old + 10 * 10**9, sport=600))
    history.add(cross("ingress", old + 10 * 10**9 + 1000, verdict="DROPPED", sport=600))
    with agents(["n1", "n2"]) as nodes, relay(targets(nodes), history=history) as r:
        nodes[0].store.add(make_flow(sport=1))
        since = {"since": "2025-01-01T00:00:00Z"}
        page = httpx.get(f"{r.url}/api/flows", params={**since, "limit": 3}).json()
        assert page["source"] == "history" and page["cursor"].startswith("h:")
        (pair,) = [f for f in page["flows"] if f.get("paired")]
        assert (pair["source_node"], pair["destination_node"], pair["verdict"]) == ("n1", "n2", "DROPPED")
        # three records, two rows: a history page pairs what it holds and is not refilled
        assert [f["source"]["port"] for f in page["flows"]] == [504, 600]
        rest = httpx.get(f"{r.url}/api/flows", params={**since, "limit": 10, "cursor": page["cursor"]}).json()
        assert [f["source"]["port"] for f in rest["flows"]] == [500, 501, 502, 503] and rest["cursor"] is None
        recent = httpx.get(f"{r.url}/api/flows").json()
        assert recent["source"] == "agents" and [f["source"]["port"] for f in recent["flows"]] == [1]
    with agents(["n1"]) as nodes, relay(targets(nodes)) as r:
        resp = httpx.get(f"{r.url}/api/flows", params={"cursor": page["cursor"]})
        assert resp.status_code == 400 and "keeps no history" in resp.json()["detail"]


def test_a_failing_history_leaves_the_agents_answer_with_the_reason():
    class Down:
        def query(self, *args, **kw):
            raise ConnectionError("clickhouse: connection refused")

    with agents(["n1"]) as nodes, relay(targets(nodes), history=Down()) as r:
        nodes[0].store.add(make_flow(sport=1))
        body = httpx.get(f"{r.url}/api/flows", params={"since": "2025-01-01T00:00:00Z"}).json()
        assert body["source"] == "agents" and [f["source"]["port"] for f in body["flows"]] == [1]
        assert body["history_error"] == "ConnectionError: clickhouse: connection refused"


def test_relay_history_urls_are_checked():
    out = run_cli("relay", "--agent", "http://h:1", "--history", "postgres://db")
    assert out.returncode == 2 and "expected clickhouse://host:port/database" in out.stderr


def test_lumen_observe_a_time_window_through_the_relay_pages_with_its_cursor(three, monkeypatch):
    import exporter.cli

    with relay(targets(three)) as r:
        monkeypatch.setattr(exporter.cli, "WINDOW_PAGE", 4)  # four pages of the 15 flows
        out = io.StringIO()
        monkeypatch.setattr(sys, "stdout", out)
        code = exporter.cli.main(
            ["observe", "--server", r.url, "--since", "2027-01-15T07:00:00Z", "-o", "jsonl"]
        )
    assert code == 0
    flows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(flows) == 15 and len({(f["node"], f["source"]["port"]) for f in flows}) == 15
    assert [f["time"] for f in flows] == sorted(f["time"] for f in flows)


def test_viewers_with_the_same_filter_share_one_stream_per_agent():
    def hubs(r) -> float:
        line = next(
            x
            for x in httpx.get(f"{r.url}/metrics").text.splitlines()
            if x.startswith("lumen_relay_stream_hubs ")
        )
        return float(line.split()[1])

    with agents(["n1", "n2"]) as (n1, n2), relay(targets([n1, n2])) as r:
        url = f"{r.url}/api/flows/stream"
        with httpx.stream("GET", url, timeout=10) as a, httpx.stream("GET", url, timeout=10) as b:
            ea, eb = sse(a), sse(b)
            assert next(ea)[0] == next(eb)[0] == "nodes"
            assert (n1.store.subscribers, n2.store.subscribers, hubs(r)) == (1, 1, 1.0)
            with httpx.stream("GET", url, params={"verdict": "dropped"}, timeout=10) as c:
                ec = sse(c)  # (one reader per response: a dropped reader closes it)
                assert next(ec)[0] == "nodes"
                assert (n1.store.subscribers, hubs(r)) == (2, 2.0), "another filter, its own streams"
            f = make_flow(sport=77, time_ns=time.time_ns())
            n1.store.add(f)
            assert (
                json.loads(next(ea)[1])["source"]["port"] == json.loads(next(eb)[1])["source"]["port"] == 77
            )
        wait_until(lambda: hubs(r) == 0, timeout=10)
        wait_until(lambda: (n1.store.subscribers, n2.store.subscribers) == (0, 0), timeout=20)


def test_an_unreadable_live_flow_is_counted_lost_and_the_stream_goes_on():
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    from tests.relay_harness import Served

    good = make_flow(sport=99, time_ns=time.time_ns()).to_dict()
    odd = FastAPI()  # an agent of another version, or a proxy in the way

    @odd.get("/api/flows/stream")
    async def stream():
        async def events():
            yield 'event: flow\ndata: [1, 2]\n\nevent: flow\ndata: {"time": "soon"}\n\n'
            yield f"event: flow\ndata: {json.dumps(good)}\n\n"
            await asyncio.sleep(30)

        return StreamingResponse(events(), media_type="text/event-stream")

    served = Served(odd).start()
    try:
        with (
            relay([Target("odd", served.url)]) as r,
            httpx.stream("GET", f"{r.url}/api/flows/stream", timeout=10) as resp,
        ):
            events = sse(resp)
            got = [e for e in (next(events) for _ in range(3))]
        assert [kind for kind, _ in got] == ["nodes", "lost", "flow"]
        assert json.loads(got[1][1]) == {"dropped": 2} and json.loads(got[2][1])["source"]["port"] == 99
    finally:
        served.stop()


def test_paging_past_a_sweep_of_500_in_one_microsecond_shows_each_once_and_never_asks_for_everything():
    """An agent's idle sweep stamps every flow it ends with one time: n1 holds 500 records in one
    nanosecond among 2000 others, n2 and n3 records spread over the same time. A page through the relay
    asks n1 for that microsecond (a window) and for what is under it, never for everything it holds."""
    from exporter.api import parse_request
    from exporter.relay.walk import SLACK_US
    from exporter.relay.wire import time_us

    sweep = NOW_NS + 30 * 10**6
    with agents(["n1", "n2", "n3"]) as nodes:
        n1, n2, n3 = nodes
        n1.store.add_many(
            make_flow(sport=1 + i, time_ns=NOW_NS + i * 10_000, src="10.1.0.1") for i in range(2000)
        )
        n1.store.add_many(make_flow(sport=10000 + i, time_ns=sweep, src="10.1.0.1") for i in range(500))
        n1.store.add_many(
            make_flow(sport=30000 + i, time_ns=sweep + (i + 1) * 10**6, src="10.1.0.1") for i in range(20)
        )
        for k, node in enumerate((n2, n3), start=2):
            spread = (
                make_flow(sport=1 + i, time_ns=NOW_NS + i * 293_000 + k, src=f"10.{k}.0.1")
                for i in range(200)
            )
            node.store.add_many(spread)
        stored = sum(len(n.store) for n in nodes)
        with relay(targets(nodes)) as r:
            seen, cursor, per_page = [], None, []
            while True:
                for n in nodes:
                    n.flow_queries.clear()
                params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
                body = httpx.get(f"{r.url}/api/flows", params=params).json()
                assert len(body["flows"]) == 100 or body["cursor"] is None, "a page is `limit` rows"
                seen += [(f["node"], f["source"]["port"]) for f in reversed(body["flows"])]
                for q in n1.flow_queries + n2.flow_queries + n3.flow_queries:
                    # limit 0 only for a window: one microsecond and its slack, never all an agent holds
                    assert q["limit"] != "0" or time_us(q["until"]) - time_us(q["since"]) <= 2 * SLACK_US, q
                # what n1 sent: the same queries on the same store
                sent = 0
                for q in n1.flow_queries:
                    req = parse_request({k: [v] for k, v in q.items()})
                    sent += len(n1.store.query(None, req.since_ns, req.until_ns, int(q["limit"])).flows)
                per_page.append((sum(len(n.flow_queries) for n in nodes), sent))
                cursor = body["cursor"]
                if cursor is None:
                    break
    assert len(seen) == stored == 2920 and len(set(seen)) == stored, "every record exactly once"
    assert max(asked for asked, _ in per_page) <= 7, per_page
    # at most that microsecond and three asks of a page's size, of the 2520 records n1 holds
    assert max(sent for _, sent in per_page) <= 500 + 3 * 101, per_page
