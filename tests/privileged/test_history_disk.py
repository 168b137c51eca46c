"""A full disk under the SQLite history, for real: a tiny tmpfs mounted under the test's own temp dir
(root), unmounted in `finally`. Live flows keep being served; history drops are counted with the reason;
a reserve file gives SQLite room to recover, the oldest hour is given up to make room when there is one;
writes resume when space comes back."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.flows import FlowStore
from exporter.history.sink import HistorySink
from exporter.history.sqlite import SqliteHistory
from tests.unit.exporter_fixtures import make_flow

pytestmark = pytest.mark.netns  # needs root (mount)

HOUR = 3600 * 10**9


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / f"hs{secrets.token_hex(3)}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


def _wait(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.05)
    assert cond()


def test_a_full_disk_costs_history_writes_counted_never_live_flows_and_recovers(small_disk: Path):
    now = time.time_ns()
    store = SqliteHistory(str(small_disk / "history.sqlite"))
    sink, live = HistorySink(store, flush_interval_s=0.05), FlowStore(1_000_000)
    sent = 0
    # all in the current hour: there is no older hour to give up, so batches are dropped
    while not sink.dropped["disk_full"] and sent < 1_000_000:
        batch = [
            make_flow(sport=sent + i, dport=sent // 5000, time_ns=now + sent + i, type="END")
            for i in range(5000)
        ]
        for s in (live, sink):
            s.on_flows(batch)
        sent += len(batch)
        assert sink.flush()
    assert sink.dropped["disk_full"] > 0 and "disk full" in sink.error
    assert len(live) == sent  # the live view has every flow
    assert live.query(None, None, None, 1).flows[0].source.port == sent - 1
    written = sink.written
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    batch = [make_flow(sport=i, dport=999, time_ns=now + sent + i, type="END") for i in range(100)]
    sink.on_flows(batch)
    _wait(lambda: sink.written == written + 100)
    assert sink.error == "" and sink.health() == "ok"
    assert len(store.query(None, now, None, 0).flows) == written + 100
    sink.close()


def test_a_full_disk_gives_up_the_oldest_hour_to_keep_the_newest(small_disk: Path):
    now = time.time_ns()
    store = SqliteHistory(str(small_disk / "history.sqlite"), retention_s=30 * 24 * 3600)
    sink = HistorySink(store, flush_interval_s=0.05)
    hours = 0
    while store.horizon_ns == 0 and hours < 400:
        t = now - (400 - hours) * HOUR
        sink.on_flows([make_flow(sport=i, dport=hours, time_ns=t + i, type="END") for i in range(2000)])
        assert sink.flush()
        hours += 1
    assert store.horizon_ns > 0  # an old hour was dropped to make room, and the batch written
    newest = store.query(None, None, None, 1).flows[0]
    assert newest.destination.port == hours - 1
    assert sink.written > 0
    sink.close()
