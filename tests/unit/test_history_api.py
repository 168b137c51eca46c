"""The history behind the API, the CLI and the map: a window older than memory holds is answered from the
history (paged with a cursor, the same filters), `/api/map` over hours comes from its sums, a window past
the retention says so, /readyz and `lumen status` show the history's state, and a restarted agent serves
the flows it wrote before."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from exporter import servicemap, ui
from exporter.api import create_app
from exporter.flows import FlowStore
from exporter.history.sink import HistorySink
from exporter.history.sqlite import SqliteHistory
from tests.unit.exporter_fixtures import View, make_flow

HOUR = 3600 * 10**9


class HistoryView(View):
    """api.AgentView with a history, as the agent wires it."""

    def __init__(self, store: FlowStore, history: SqliteHistory, sink: HistorySink) -> None:
        super().__init__(store)
        self.history = history
        self.sink = sink

    def ready_detail(self) -> dict[str, str]:
        return {"history": self.sink.health()}

    def status(self) -> dict[str, Any]:
        return {"ready": True, "history": self.sink.status()}


def _old_flows(now: int) -> list:
    """Three hours ago to one hour ago, one a minute, alternating pods; every 10th dropped."""
    return [
        make_flow(
            sport=10_000 + i,
            dport=80 if i % 2 else 5432,
            time_ns=now - 3 * HOUR + i * 60 * 10**9,
            type="DROP" if i % 10 == 0 else "END",
            verdict="DROPPED" if i % 10 == 0 else "FORWARDED",
            src_pod=("shop", "web") if i % 2 else ("shop", "api"),
        )
        for i in range(120)
    ]


@pytest.fixture
def view(tmp_path) -> Iterator[HistoryView]:
    now = time.time_ns()
    history = SqliteHistory(str(tmp_path / "history.sqlite"), retention_s=4 * 3600)
    history.created_ns = now - 5 * HOUR  # as if the agent had run for five hours
    sink = HistorySink(history, flush_interval_s=0.05)
    old = _old_flows(now)
    sink.on_flows(old)
    assert sink.flush()
    store = FlowStore(100)
    store.on_flows([make_flow(sport=1, time_ns=time.time_ns(), type="NEW")])  # memory: only the recent
    v = HistoryView(store, history, sink)
    v.old = old  # type: ignore[attr-defined]
    try:
        yield v
    finally:
        sink.close()


@pytest.fixture
def client(view) -> TestClient:
    return TestClient(create_app(view, ui=ui.hook()))


def test_a_window_older_than_memory_is_answered_from_the_history(client, view):
    r = client.get("/api/flows", params={"since": "3h", "until": "2h", "limit": "0"})
    body = r.json()
    assert r.status_code == 200 and body["source"] == "history" and body["complete"] is True
    want = [f for f in view.old if time.time_ns() - 3 * HOUR <= f.time_ns <= time.time_ns() - 2 * HOUR]
    assert [f["source"]["port"] for f in body["flows"]] == [f.source.port for f in want][
        -len(body["flows"]) :
    ]
    assert 55 <= len(body["flows"]) <= 61  # a minute apart over an hour (the window moves as we run)
    # no window: memory's newest flows, live ones included
    assert client.get("/api/flows").json()["source"] == "memory"


def test_history_pages_with_a_cursor_and_takes_the_same_filters(client, view):
    params = {"since": "4h", "from_pod": "shop/web", "not_verdict": "dropped", "limit": "7"}
    seen, cursor = [], None
    while True:
        body = client.get("/api/flows", params={**params, **({"cursor": cursor} if cursor else {})}).json()
        assert body["source"] == "history"
        seen += body["flows"]
        cursor = body["cursor"]
        if not cursor:
            break
    want = [f for f in view.old if f.source.pod == "web" and f.verdict != "DROPPED"]
    assert sorted(f["source"]["port"] for f in seen) == sorted(f.source.port for f in want)
    assert client.get("/api/flows", params={"since": "4h", "cursor": "s1.x"}).status_code == 400


def test_a_window_past_the_retention_says_so(client):
    body = client.get("/api/flows", params={"since": "6h", "until": "2h", "limit": "5"}).json()
    assert body["source"] == "history" and body["complete"] is False
    body = client.get("/api/map", params={"since": "6h"}).json()
    assert body["complete"] is False


def test_the_map_of_a_past_window_comes_from_the_history(client, view):
    body = client.get("/api/map", params={"since": "230m", "until": "1h"}).json()
    assert body["source"] == "history" and body["complete"] is True
    want = servicemap.build(view.old)
    body.pop("source"), body.pop("complete"), body.pop("stored")
    assert body == want
    body = client.get("/api/map", params={"since": "230m", "verdict": "dropped"}).json()
    assert {e["verdict"] for e in body["edges"]} == {"DROPPED"}
    assert sum(e["flows"] for e in body["edges"]) == 12


def test_readyz_names_the_history_state_without_failing(client, view):
    assert client.get("/readyz").json()["detail"] == {"history": "ok"}
    view.sink.error = "disk full: database or disk is full"
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["detail"]["history"].startswith("degraded: disk full")


def test_a_restarted_agent_serves_the_flows_it_wrote_before(tmp_path):
    now = time.time_ns()
    flows = [
        make_flow(sport=i, time_ns=now - HOUR + i * 10**9, type="END", labels={"app": "x"}) for i in range(30)
    ]
    first = SqliteHistory(str(tmp_path / "h.sqlite"))
    sink = HistorySink(first, flush_interval_s=0.05)
    sink.on_flows(flows)
    sink.close()  # the agent stops: the sink writes what it has, then closes the store
    again = SqliteHistory(str(tmp_path / "h.sqlite"))
    again.created_ns = now - 2 * HOUR
    v = HistoryView(FlowStore(10), again, HistorySink(again))
    body = TestClient(create_app(v)).get("/api/flows", params={"since": "2h", "limit": "0"}).json()
    assert body["flows"] == [f.to_dict() for f in flows]
    v.sink.close()


# -- the CLI against a real server ------------------------------------------------------------------


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


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_observe_since_until_prints_the_whole_window_oldest_first(server, view):
    proc = run_cli(
        "observe", "--server", server, "--since", "3h", "--until", "1h", "-o", "jsonl", "--to-port", "80"
    )
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    times = [g["time"] for g in got]
    assert times == sorted(times) and 55 <= len(got) <= 61  # every other flow of two hours
    assert {g["destination"]["port"] for g in got} == {80}
    proc = run_cli("observe", "--server", server, "--since", "6h", "--until", "5h")
    assert proc.returncode == 0 and "retention" in proc.stderr


def test_status_shows_the_history(server):
    proc = run_cli("status", "--server", server, "-o", "json")
    h = json.loads(proc.stdout)["history"]
    assert h["backend"] == "sqlite" and h["written"] == 120 and h["oldest_ns"] and h["size_bytes"] > 0


def test_a_history_that_cannot_answer_is_a_503_with_the_reason(client, view, monkeypatch):
    from exporter.history.errors import HistoryError

    def broken(*args, **kw):
        raise HistoryError("corrupt", "database corrupt: database disk image is malformed")

    monkeypatch.setattr(view.history, "query", broken)
    monkeypatch.setattr(view.history, "edge_rows", broken)
    for path in ("/api/flows", "/api/map"):
        r = client.get(path, params={"since": "3h"})
        assert r.status_code == 503 and "malformed" in r.json()["detail"], path
    assert client.get("/api/flows").status_code == 200  # memory still answers
