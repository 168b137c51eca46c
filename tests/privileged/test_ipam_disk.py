"""The disk store on a filesystem that fails: a full or read-only dataDir gives CNI code 5, keeps nothing
half-done, and the next allocation works once space is back.

Each test mounts a tiny tmpfs inside a private mount namespace (`unshare -m`), so nothing outside the
test's own process tree ever sees it, and the kernel removes it when that process exits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns  # needs root and a private (mount) namespace

REPO = Path(__file__).resolve().parents[2]

PRELUDE = """
import errno, json, os, sys
sys.path.insert(0, {repo!r})
from plugin import ipam
from plugin.errors import CNIError
mnt = {mnt!r}
store_dir = os.path.join(mnt, "net")
ranges = [[{{"subnet": "10.30.0.0/24"}}], [{{"subnet": "fd00:30::/64"}}]]
c = ipam.parse_ipam_config("net", {{"ranges": ranges, "dataDir": mnt}})

def attempt(cid):
    try:
        return {{"ips": [str(x.address) for x in ipam.allocate(c, cid, "eth0", [])]}}
    except CNIError as e:
        return {{"code": e.code, "msg": e.msg, "details": e.details}}

def names():
    return sorted(os.listdir(store_dir))
"""

FULL = """
first = attempt("first")
fillers = []
try:
    while True:
        fillers.append(os.path.join(mnt, f"fill{{len(fillers)}}"))
        open(fillers[-1], "w").close()
except OSError as e:
    assert e.errno == errno.ENOSPC, e
    fillers.pop()
before = names()
# Hand back one inode at a time: each failure happens a step later (IPv4 record, then IPv6 record).
tries = []
while fillers:
    os.unlink(fillers.pop())
    out = attempt("second")
    tries.append(dict(out, left=names()))
    if "ips" in out:
        break
print(json.dumps(dict(first=first, before=before, tries=tries)))
"""


READ_ONLY = """
first = attempt("first")
import subprocess
subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
ro = attempt("second")
try:
    ipam.gc(c, set())
    gc = None
except CNIError as e:
    gc = e.code
print(json.dumps({{"first": first, "ro": ro, "gc": gc, "left": names()}}))
"""


def run_on_tmpfs(tmp_path: Path, body: str, options: str) -> dict:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = PRELUDE.format(repo=str(REPO), mnt=str(mnt)) + body.format()
    script = tmp_path / "script.py"
    script.write_text(code)
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs -o {options} lumen-ipam-test "$1" && exec "$2" "$3"', "sh",
         str(mnt), sys.executable, str(script)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not any(mnt.iterdir()), "the tmpfs never showed outside the private namespace"
    return json.loads(proc.stdout)


def test_a_full_data_dir_is_code_5_and_a_failed_add_keeps_nothing(tmp_path: Path):
    out = run_on_tmpfs(tmp_path, FULL, "size=1m,nr_inodes=64,mode=0755")
    assert out["first"]["ips"] == ["10.30.0.2/24", "fd00:30::2/64"]
    *failed, last = out["tries"]
    assert failed, "the filesystem was full at first"
    for t in failed:
        assert t["code"] == 5 and "No space left" in t["details"], t
        assert t["left"] == out["before"], f"a failed ADD left something behind: {t}"
    assert any("fd00:30::" in t["details"] for t in failed), (
        "one attempt failed on IPv6 after its IPv4 record was written, so the rollback ran"
    )
    assert [ip.split("/")[1] for ip in last["ips"]] == ["24", "64"], "space back, allocation works"


def test_a_read_only_data_dir_is_code_5_for_add_and_gc(tmp_path: Path):
    out = run_on_tmpfs(tmp_path, READ_ONLY, "size=1m,mode=0755")
    assert out["first"]["ips"] == ["10.30.0.2/24", "fd00:30::2/64"]
    assert out["ro"]["code"] == 5 and "Read-only" in out["ro"]["details"], out["ro"]
    assert out["gc"] == 5
    assert out["left"] == ["10.30.0.2", "fd00:30::2", "last_reserved_ip.0", "last_reserved_ip.1", "lock"]
