"""The flow API: filters and errors, auth, health, metrics, OpenAPI (TestClient), and the SSE stream and
`lumen observe` against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter

from exporter.api import create_app, is_loopback
from exporter.flows import FlowStore
from exporter.sse import iter_sse
from tests.unit.exporter_fixtures import View, make_flow


@pytest.fixture
def view() -> View:
    v = View(FlowStore(100))
    v.store.add(make_flow(sport=1, dport=80, src_pod=("shop", "web")))
    v.store.add(make_flow(sport=2, dport=53, proto="UDP", src_pod=("kube-system", "coredns"), dst_pod=None))
    v.store.add(make_flow(sport=3, dport=80, verdict="DROPPED", type="DROP"))
    return v


@pytest.fixture
def client(view) -> TestClient:
    registry = CollectorRegistry()
    Counter("lumen_test_total", "a sample", registry=registry).inc(3)
    return TestClient(create_app(view, registry=registry))


def ports(resp) -> list[int]:
    return [f["source"]["port"] for f in resp.json()["flows"]]


def test_flows_with_filters(client):
    assert ports(client.get("/api/flows")) == [1, 2, 3]
    assert ports(client.get("/api/flows?namespace=shop")) == [1]
    assert ports(client.get("/api/flows?to_port=80&not_verdict=dropped")) == [1]
    assert ports(client.get("/api/flows?port=53&port=80&limit=2")) == [2, 3]
    body = client.get("/api/flows?limit=1").json()
    assert (body["stored"], body["capacity"], body["evicted"]) == (3, 100, 0)
    f = body["flows"][0]
    assert f["destination"]["pod"] == "server" and f["verdict"] == "DROPPED" and f["type"] == "DROP"


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("port=http", "port 'http'"),
        ("verdict=maybe", "verdict 'maybe'"),
        ("from_pood=a", "unknown filter 'from_pood'"),
        ("limit=-1", "limit '-1'"),
        ("limit=1000", "limit '1000': expected a number from 0 to 100"),
    ],
)
def test_bad_queries_get_400_with_the_reason(client, query, detail):
    resp = client.get(f"/api/flows?{query}")
    assert resp.status_code == 400
    assert detail in resp.json()["detail"]
    stream_query = query.replace("limit", "last")  # the stream's count parameter
    assert client.get(f"/api/flows/stream?{stream_query}").status_code == 400


def test_health_ready_endpoints_metrics(client, view):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    view.is_ready = (False, "datapath not loaded")
    resp = client.get("/readyz")
    assert resp.status_code == 503 and resp.json()["reason"] == "datapath not loaded"
    assert client.get("/api/endpoints").json()[0]["pod"] == "client"
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "lumen_test_total 3.0" in metrics.text


def test_openapi_lists_the_filters(client):
    schema = client.get("/openapi.json").json()
    names = {p["name"] for p in schema["paths"]["/api/flows"]["get"]["parameters"]}
    assert {"limit", "from_pod", "not_from_pod", "to_ip", "verdict", "since"} <= names
    assert "/api/flows/stream" in schema["paths"]


def test_token_is_required_everywhere_but_health(view):
    c = TestClient(create_app(view, token="s3cret", registry=CollectorRegistry()))
    for path in ("/api/flows", "/api/endpoints", "/api/status", "/metrics", "/api/flows/stream"):
        assert c.get(path).status_code == 401, path
        assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    assert c.get("/api/flows", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("::")


def test_agent_refuses_a_public_bind_without_token():
    proc = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "agent", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2 and "needs --token" in proc.stderr


# -- a real server: SSE and the CLI ------------------------------------------------------------


@pytest.fixture
def server(view) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(view), log_config=None, access_log=False))
    t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(10)
        sock.close()


def test_sse_sends_backlog_then_live_flows(server, view):
    got: list[dict] = []
    with httpx.stream("GET", f"{server}/api/flows/stream?last=1&to_port=80", timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        for event, data in iter_sse(resp.iter_lines()):
            assert event == "flow"
            got.append(json.loads(data))
            if len(got) == 1:
                view.store.add(make_flow(sport=4, dport=443))  # filtered out
                view.store.add(make_flow(sport=5, dport=80, type="END"))
            if len(got) == 2:
                break
    assert [f["source"]["port"] for f in got] == [3, 5]
    assert got[1]["type"] == "END"
    deadline = time.monotonic() + 5
    while view.store.subscribers and time.monotonic() < deadline:
        view.store.add(make_flow(sport=6))  # the server notices the closed stream when it writes
        time.sleep(0.05)
    assert view.store.subscribers == 0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_observe_table_json_and_filters(server):
    proc = run_cli("observe", "--server", server, "--to-port", "80")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2  # compact, as hubble observe prints by default: one line a flow
    assert "shop/web:1 -> default/server:80" in lines[0] and "FORWARDED" in lines[0]
    assert "policy-denied DROPPED" in lines[1]
    proc = run_cli("observe", "--server", server, "--last", "1", "-o", "json", "--not-protocol", "tcp")
    assert [f["destination"]["port"] for f in json.loads(proc.stdout)] == [53]


def test_observe_follow_prints_new_flows(server, view):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter.cli",
            "observe",
            "--server",
            server,
            "-f",
            "-o",
            "jsonl",
            "--port",
            "8443",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while view.store.subscribers == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        view.store.add(make_flow(sport=7, dport=8443))
        line = proc.stdout.readline()
        assert json.loads(line)["destination"]["port"] == 8443
    finally:
        proc.terminate()
        proc.wait(10)


def test_observe_reports_bad_filters_and_an_absent_agent():
    proc = run_cli("observe", "--server", "http://127.0.0.1:9", "--port", "http")
    assert proc.returncode == 2 and "port 'http'" in proc.stderr
    proc = run_cli("observe", "--server", "http://127.0.0.1:9")
    assert proc.returncode == 1 and "cannot reach the agent" in proc.stderr


def test_connections_view_folds_each_reply_into_its_request_and_pages_without_repeats():
    v = View(FlowStore(100))
    t0 = 1_800_000_000 * 10**9
    for i in range(4):
        v.store.add(make_flow("10.0.0.5", "10.0.0.6", 40000 + i, 80, time_ns=t0 + 2 * i * 10**9))
        v.store.add(
            make_flow("10.0.0.6", "10.0.0.5", 80, 40000 + i, is_reply=True, time_ns=t0 + (2 * i + 1) * 10**9)
        )
    v.store.add(make_flow("10.0.0.5", "10.0.0.6", proto="ICMP", message=(8, 0, 77), time_ns=t0 + 10**10))
    c = TestClient(create_app(v))
    body = c.get("/api/flows?view=connections").json()
    conns = body["connections"]
    assert [x["client"]["port"] for x in conns] == [40000, 40001, 40002, 40003, 0]  # oldest first
    assert all(x["reply"] and x["server_port"] == 80 for x in conns[:4])
    assert conns[4]["icmp"]["name"] == "echo-request" and conns[4]["server_port"] is None
    # a filter picks connections by a half; the other half comes along
    (only,) = c.get("/api/flows?view=connections&is_reply=true&from_port=80&to_port=40002").json()[
        "connections"
    ]
    assert only["request"]["packets"] == 1 and only["client"]["port"] == 40002
    # pages of three flows: every connection once across the pages
    seen, cursor = [], None
    while True:
        q = "/api/flows?view=connections&limit=3&protocol=tcp" + (f"&cursor={cursor}" if cursor else "")
        page = c.get(q).json()
        seen += [x["id"] for x in page["connections"]]
        cursor = page["cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 4
    assert c.get("/api/flows?view=pairs").status_code == 400


def test_the_stream_sends_connections_with_their_other_half(view):
    view.store.add(make_flow("10.22.0.6", "10.22.0.5", 80, 1, is_reply=True, src_pod=("default", "server")))
    c = TestClient(create_app(view))
    with c.stream("GET", "/api/flows/stream?view=connections&last=10&is_reply=true") as resp:
        lines = []
        for line in resp.iter_lines():
            lines.append(line)
            if line.startswith("data:"):
                break
    assert "event: connection" in lines
    conn = json.loads(lines[-1][5:])
    assert conn["request"]["packets"] == 1 and conn["reply"] and conn["client"]["pod"] == "web"
