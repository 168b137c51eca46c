"""One agent per datapath (issue 11): a second `lumen agent` on the same pin or state directory names the
first and exits without touching the datapath; flags are checked before anything is compiled or pinned;
/readyz turns 503 when the kernel's events stop reaching the agent."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bpf.loader import Datapath, DatapathConfig
from tests.cni_harness import REPO
from tests.e2e.test_agent import agent_with_pods
from tests.privileged import dp_tools as t

pytestmark = [pytest.mark.e2e, pytest.mark.bpf, pytest.mark.netns]


def lumen_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )


def pins(pin_dir: str) -> dict[str, int]:
    """Pin name -> inode: re-pinning anything gives it a new inode."""
    return {e.name: e.stat().st_ino for e in os.scandir(pin_dir)}


def readyz(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_second_agent_names_the_first_and_changes_nothing(tmp_path: Path) -> None:
    with agent_with_pods(tmp_path, [("lk-a", "lock"), ("lk-b", "lock")]) as (node, agent, (a, b)):
        assert agent.proc is not None
        before = pins(agent.pin_dir)
        for state_dir in (agent.state_dir, str(tmp_path / "other-state")):
            second = lumen_agent("--state-dir", state_dir, "--pin-dir", agent.pin_dir, "--port", "0")
            assert second.returncode == 1, second.stderr
            assert f"process {agent.proc.pid}" in second.stderr and "in use" in second.stderr
            assert "Traceback" not in second.stderr
        # the same state dir with another pin dir is refused as well, and creates no pin dir
        other_pin = f"/sys/fs/bpf/lt_rs{secrets.token_hex(4)}"
        second = lumen_agent("--state-dir", agent.state_dir, "--pin-dir", other_pin, "--port", "0")
        assert second.returncode == 1 and f"process {agent.proc.pid}" in second.stderr
        assert not os.path.exists(other_pin)
        assert pins(agent.pin_dir) == before, "the datapath was touched"
        # the first agent still consumes what the kernel emits
        consumed = agent.get("/api/status")["events"]["consumed"]
        t.udp_flows(a, b, flows=5, per_flow=2, size=64, port=5301, first_sport=41000)
        assert t.wait_for(lambda: agent.get("/api/status")["events"]["consumed"] > consumed, timeout=10)
        assert readyz(agent.url)[0] == 200


@pytest.mark.parametrize(
    ("flag", "value"), [("--ringbuf-pages", "0"), ("--ringbuf-pages", "3"), ("--flow-table-size", "0"),
                        ("--report-interval", "inf"), ("--idle-timeout", "nan"), ("--pod-slots", "1")],
)  # fmt: skip
def test_bad_flags_are_refused_before_anything_is_made(tmp_path: Path, flag: str, value: str) -> None:
    pin_dir = f"/sys/fs/bpf/lt_rs{secrets.token_hex(4)}"
    state_dir = tmp_path / "state"
    started = time.monotonic()
    proc = lumen_agent("--state-dir", str(state_dir), "--pin-dir", pin_dir, flag, value)
    assert proc.returncode == 2 and flag in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert time.monotonic() - started < 20, "refused before compiling"
    assert not os.path.exists(pin_dir) and not state_dir.exists()


def test_readyz_fails_when_the_kernel_events_stop_reaching_the_agent(tmp_path: Path) -> None:
    """What a second agent without the lock did: compile and pin a new ring buffer and programs into the
    same pin dir and re-attach every pod. The first agent then receives nothing of what the kernel emits."""
    with agent_with_pods(tmp_path, [("st-a", "stall"), ("st-b", "stall")]) as (node, agent, (a, b)):
        assert readyz(agent.url)[0] == 200
        takeover = Datapath.load(DatapathConfig(pin_dir=agent.pin_dir))
        try:
            takeover.sync_endpoints(agent.state_dir)
            sport = 42000
            deadline = time.monotonic() + 30
            status, body = readyz(agent.url)
            while status == 200 and time.monotonic() < deadline:
                t.udp_flows(a, b, flows=5, per_flow=1, size=64, port=5302, first_sport=sport)
                sport += 5
                time.sleep(0.5)
                status, body = readyz(agent.url)
            assert status == 503 and "received none" in body, body
        finally:
            takeover.close()
