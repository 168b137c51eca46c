"""`make demo` stops and cleans up on SIGINT, also when started in the background of a non-interactive
shell (which starts it with SIGINT ignored), for the cluster demo and the one-node demo."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cni_harness import REPO

pytestmark = [pytest.mark.netns]


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("nodes", [1, 2])
def test_demo_started_in_the_background_stops_and_cleans_up_on_sigint(tmp_path: Path, nodes: int) -> None:
    tag = "cl" + secrets.token_hex(2)
    workdir = tmp_path / "demo"
    log = tmp_path / "demo.log"
    argv = [
        str(REPO / ".venv" / "bin" / "python"), str(REPO / "scripts" / "demo.py"),
        "--nodes", str(nodes), "--no-agent", "--prefix", tag, "--workdir", str(workdir),
        "--bridge", f"{tag}br", "--state-dir", str(tmp_path / "state"), "--pin-dir", str(tmp_path / "pins"),
    ]  # fmt: skip
    # `cmd &` in a non-interactive shell: the job starts with SIGINT ignored; its PID is printed
    script = f"{' '.join(argv)} > {log} 2>&1 & echo $!; wait"
    shell = subprocess.Popen(
        ["bash", "-c", script], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert shell.stdout is not None
    pid = int(shell.stdout.readline())
    try:
        deadline = time.monotonic() + 120
        while not log.exists() or "Ctrl-C stops and cleans up" not in log.read_text():
            assert shell.poll() is None and time.monotonic() < deadline, log.exists() and log.read_text()
            time.sleep(0.2)
        assert tag in _netns() or tag in _links()  # it built something to clean up
        os.kill(pid, signal.SIGINT)
        shell.wait(timeout=60)
    finally:
        if shell.poll() is None:
            os.kill(pid, signal.SIGKILL)
            shell.wait()
    assert "cleaned up" in log.read_text(), log.read_text()
    assert tag not in _netns() and tag not in _links()
    # the one-node demo keeps its logs in the work dir; its state and pinned maps go
    assert not (tmp_path / "state").exists() and not (tmp_path / "pins").exists()
    assert nodes == 1 or not workdir.exists()


@pytest.mark.parametrize("nodes", [1, 2])
def test_two_demos_with_the_same_flags_run_side_by_side(tmp_path: Path, nodes: int) -> None:
    """`make demo` twice on one machine: each takes its own names (prefix plus hex), its own subnets
    (the claimed octet) and its own port; both run, and stopping each cleans up only its own."""
    import re

    tag = "ux" + secrets.token_hex(2)
    argv = [str(REPO / ".venv" / "bin" / "python"), str(REPO / "scripts" / "demo.py"), "--nodes", str(nodes),
            "--no-agent", "--prefix", tag]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    demos = [
        subprocess.Popen(
            argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        for log in logs
    ]
    try:
        deadline = time.monotonic() + 180
        for demo, log in zip(demos, logs, strict=True):
            while "Ctrl-C stops and cleans up" not in log.read_text():
                assert demo.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        octets = [set(re.findall(r"\b10\.(\d+)\.\d+\.\d+\b", log.read_text())) for log in logs]
        assert all(len(o) == 1 for o in octets) and octets[0] != octets[1], octets
        assert tag in _netns() or tag in _links()
    finally:
        for demo in demos:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGINT)
        for demo in demos:
            try:
                demo.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
    for log in logs:
        assert "cleaned up" in log.read_text(), log.read_text()
    assert tag not in _netns() and tag not in _links()
    assert not list(Path("/run").glob(f"lumen-demo-{tag}*"))  # state dirs
    kept = list(Path("/tmp").glob(f"lumen-demo-{tag}*"))
    assert len(kept) == (2 if nodes == 1 else 0)  # the one-node demo keeps its logs for reading, apart
    for path in kept:
        shutil.rmtree(path)
