"""`lumen observe` end to end: the real CLI (a subprocess) against a real API server holding the sample
flows, for every `-o` format (the same golden files as test_observe_output.py), `--server host:port`
without a scheme, hubble observe's flags on the wire, and bad input as usage errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from exporter.api import create_app
from exporter.flows import FlowStore
from tests.unit.exporter_fixtures import View
from tests.unit.observe_samples import sample_dicts, sample_flows
from tests.unit.test_observe_output import CASES, GOLDEN

REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """host:port of an agent API holding the sample flows (no scheme: as a Hubble user types it)."""
    view = View(FlowStore(100))
    view.store.add_many(sample_flows())
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
        yield f"127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(10)
        sock.close()


def observe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", "observe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, "LUMEN_SERVER": "", "LUMEN_TOKEN": ""},
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_output_format_prints_its_golden_file(server: str, name: str) -> None:
    output, time_format, node = CASES[name]
    argv = ["--server", server, "-o", output, "--time-format", time_format]
    proc = observe(*argv, *(["--print-node-name"] if node else []))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (GOLDEN / name).read_text()


def test_jsonpb_lines_are_hubble_get_flows_responses(server: str) -> None:
    from tests.unit.test_hubble import SCHEMA, check_message

    lines = observe("--server", server, "-o", "jsonpb").stdout.splitlines()
    assert len(lines) == len(sample_dicts())
    for line in lines:
        check_message(json.loads(line), SCHEMA["root"], "$")


def test_hubble_flags_select_flows(server: str) -> None:
    def dsts(*flags: str) -> list[str]:
        proc = observe("--server", server, "-o", "json", *flags)
        assert proc.returncode == 0, proc.stderr
        return [f["destination"]["pod"] or f["destination"]["ip"] for f in json.loads(proc.stdout)]

    everything = ["cart", "frontend", "fd01:244::c8", "frontend", "192.168.244.200"]
    assert dsts() == dsts("--all") == everything
    assert dsts("--last", "2") == everything[-2:]
    assert dsts("--first", "2") == everything[:2]
    assert dsts("--pod", "shop/fr") == ["cart", "frontend", "frontend"]  # a prefix, on either side
    assert dsts("--not", "--pod", "shop/fr") == ["fd01:244::c8", "192.168.244.200"]
    assert dsts("-n", "ops") == ["frontend"]
    assert dsts("--from-label", "app=cart") == ["frontend", "fd01:244::c8"]
    assert dsts("--to-label", "tier=web", "--not", "--verdict", "dropped") == ["frontend"]
    assert dsts("-6") == ["fd01:244::c8"]
    assert dsts("--ip-version", "v4", "--not", "--protocol", "icmp") == [
        "cart",
        "frontend",
        "192.168.244.200",
    ]
    assert dsts("--node-name", "n3") == ["192.168.244.200"]
    assert dsts("--traffic-direction", "ingress") == ["frontend", "frontend"]
    assert dsts("--tcp-flags", "FIN") == ["frontend"]
    assert dsts("--tcp-flags", "syn", "--tcp-flags", "fin") == ["cart", "frontend"]


def test_bad_input_is_a_usage_error_not_a_traceback(server: str) -> None:
    for argv, message in [
        (["--pod", "shop/fr", "--not"], "trailing --not"),
        (["--first", "1", "--last", "1"], "--first or --last"),
        (["--port", "http"], "port 'http'"),
        (["--server", "ftp://x"], "expected host:port"),
        (["--time-format", "iso"], "expected one of StampMilli"),
        (["--ip-version", "5"], "ip_version '5'"),
    ]:
        proc = observe("--server", server, *argv) if argv[0] != "--server" else observe(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (argv, proc.stderr)
