"""The disk store under real processes: flock serialisation, atomic records, crash debris."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plugin import errors, ipam
from plugin import ip as ipaddress  # the plugin's own address type (plugin/ip.py)
from plugin.errors import CNIError
from plugin.ipam.disk import DiskStore

REPO = Path(__file__).resolve().parents[2]


def conf(tmp_path, subnet="10.20.0.0/23"):
    return ipam.parse_ipam_config(
        "net", {"type": "lumen", "ranges": [[{"subnet": subnet}]], "dataDir": str(tmp_path)}
    )


def test_one_file_per_ip_with_owner(tmp_path):
    c = conf(tmp_path)
    out = ipam.allocate(c, "cid1", "eth0", [])
    path = tmp_path / "net" / str(out[0].address.ip)
    assert path.read_text() == "cid1\neth0\n"
    assert (tmp_path / "net" / "lock").exists()
    assert (tmp_path / "net" / "last_reserved_ip.0").read_text().strip() == str(out[0].address.ip)
    ipam.release(c, "cid1", "eth0")
    assert not path.exists()


def test_reserve_never_overwrites(tmp_path):
    store = DiskStore(str(tmp_path), "net")
    ip = ipam.parse_ipam_config("n", {"subnet": "10.0.0.0/24"}).ranges[0][0].start
    with store.lock():
        assert store.reserve(ip, "a", "eth0")
        assert not store.reserve(ip, "b", "eth0")
    assert store.allocations() == [(ip, "a", "eth0")]
    assert sorted(os.listdir(tmp_path / "net")) == ["10.0.0.1", "lock"], "no temp files left behind"


CHILD = """
import sys
sys.path.insert(0, {repo!r})
from plugin import ipam
raw = {{"type": "lumen", "ranges": [[{{"subnet": "10.20.0.0/23"}}]], "dataDir": {d!r}}}
c = ipam.parse_ipam_config("net", raw)
print(ipam.allocate(c, sys.argv[1], "eth0", [])[0].address.ip)
"""


def test_200_concurrent_processes_get_distinct_ips_and_release_all(tmp_path):
    code = CHILD.format(repo=str(REPO), d=str(tmp_path))
    procs = [
        subprocess.Popen([sys.executable, "-c", code, f"cid{i}"], stdout=subprocess.PIPE, text=True)
        for i in range(200)
    ]
    ips = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        ips.append(out.strip())
    assert len(set(ips)) == 200
    c = conf(tmp_path)
    assert len(DiskStore(str(tmp_path), "net").allocations()) == 200
    for i in range(200):
        ipam.release(c, f"cid{i}", "eth0")
    assert DiskStore(str(tmp_path), "net").allocations() == []


def test_a_killed_lock_holder_does_not_wedge_the_next_allocation(tmp_path):
    c = conf(tmp_path)
    holder = f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
from plugin.ipam.disk import DiskStore
from plugin import ipam
store = DiskStore({str(tmp_path)!r}, "net")
ip = ipam.parse_ipam_config("n", {{"subnet": "10.20.0.0/23"}}).ranges[0][0].end
with store.lock():
    store.reserve(ip, "dead", "eth0")
    print("locked", flush=True)
    time.sleep(60)
"""
    p = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    start = time.monotonic()
    out = ipam.allocate(c, "alive", "eth0", [])
    assert time.monotonic() - start < 5
    assert out
    stale = ipam.gc(c, {("alive", "eth0")})
    assert [cid for _, cid, _ in stale] == ["dead"]


def test_gc_sweeps_temp_files_of_dead_writers(tmp_path):
    c = conf(tmp_path)
    ipam.allocate(c, "a", "eth0", [])
    debris = tmp_path / "net" / "10.20.0.9.tmp.999999999"
    debris.write_text("half")
    ipam.gc(c, {("a", "eth0")})
    assert not debris.exists()
    assert len(DiskStore(str(tmp_path), "net").allocations()) == 1


def test_round_robin_position_survives_between_processes(tmp_path):
    c = conf(tmp_path)
    first = ipam.allocate(c, "a", "eth0", [])[0].address.ip
    ipam.release(c, "a", "eth0")
    # A fresh store object per call, as each plugin process has: the cursor lives on disk.
    assert ipam.allocate(c, "b", "eth0", [])[0].address.ip == first + 1


def test_records_are_read_back_by_a_fresh_store(tmp_path):
    c = conf(tmp_path, subnet="fd00:20::/64")
    out = ipam.allocate(c, "cid1", "eth0", [ipaddress.ip_address("fd00:20::42")])
    assert (tmp_path / "net" / "fd00:20::42").read_text() == "cid1\neth0\n"
    assert [str(x.address) for x in ipam.get(c, "cid1", "eth0")] == [str(out[0].address)]
    assert ipam.free_count(c) == 2**64 - 3  # network, gateway and the pod


def test_an_unusable_data_dir_is_an_io_error_not_a_traceback(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    c = ipam.parse_ipam_config("net", {"ranges": [[{"subnet": "10.20.0.0/24"}]], "dataDir": str(blocker)})
    with pytest.raises(CNIError) as e:
        ipam.allocate(c, "a", "eth0", [])
    assert e.value.code == errors.IO_FAILURE
    assert str(blocker) in e.value.details


CHURN = """
import sys
sys.path.insert(0, {repo!r})
from plugin import ipam
c = ipam.parse_ipam_config("net", {{"ranges": [[{{"subnet": "10.20.0.0/23"}}]], "dataDir": {d!r}}})
print("go", flush=True)
i = 0
while True:
    ipam.allocate(c, f"churn{{i}}", "eth0", [])
    if i % 2:
        ipam.release(c, f"churn{{i}}", "eth0")
    i += 1
"""


@pytest.mark.parametrize("delay", [0.05, 0.13, 0.21])
def test_a_writer_killed_mid_churn_leaves_only_whole_records_and_gc_reclaims_them(tmp_path, delay):
    code = CHURN.format(repo=str(REPO), d=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "go"
        time.sleep(delay)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    store_dir = tmp_path / "net"
    records = [n for n in os.listdir(store_dir) if n.count(".") == 3 and ".tmp." not in n]
    assert records, "the child got some allocations done"
    for name in records:
        cid, ifname, tail = (store_dir / name).read_text().split("\n")
        assert cid.startswith("churn") and ifname == "eth0" and tail == "", f"torn record {name}"
    c = conf(tmp_path)
    assert ipam.allocate(c, "after", "eth0", [])
    stale = ipam.gc(c, {("after", "eth0")})
    assert len(stale) == len(records)
    left = sorted(n for n in os.listdir(store_dir) if not n.startswith("last_reserved_ip.0"))
    assert len(left) == 2 and "lock" in left, f"only the lock and 'after' remain: {left}"
