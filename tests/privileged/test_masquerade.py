"""Lumen's nftables table on a real kernel, in a namespace of the test's own: created whole, replaced whole
when the cluster changes, removed whole by the off switch, and nothing else in the ruleset touched."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.cni_harness import REPO, netns_add, netns_del

pytestmark = [pytest.mark.netns]

FOREIGN = """
table inet someone_else {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept; ip saddr 10.9.9.0/24 masquerade;
    }
}
"""

DRIVE = r"""
import json, sys
from exporter.masquerade import Masquerade, table_exists
m = Masquerade(non_masquerade=["172.16.0.0/12"])
step = sys.argv[1]
if step == "apply":
    m.apply(json.loads(sys.argv[2]), json.loads(sys.argv[3]))
else:
    m.remove()
print(json.dumps(table_exists()))
"""


@pytest.fixture
def ns() -> Iterator[str]:
    name = "cl" + secrets.token_hex(4)
    netns_add(name)
    try:
        yield name
    finally:
        netns_del(name)


def run(ns: str, *argv: str, stdin: str | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ruleset(ns: str) -> dict[str, list[str]]:
    """table -> its set elements and rules, from `nft -j list ruleset`."""
    doc = json.loads(run(ns, "nft", "-j", "list", "ruleset"))["nftables"]
    out: dict[str, list[str]] = {}
    for item in doc:
        for kind in ("table", "set", "rule"):
            if kind in item:
                obj = item[kind]
                table = obj["name"] if kind == "table" else obj["table"]
                entry = json.dumps(obj.get("elem") or obj.get("expr") or [], sort_keys=True)
                out.setdefault(table, []).append(f"{kind}:{entry}")
    return out


def test_lumen_table_is_written_and_removed_whole_and_nothing_else_is_touched(ns: str) -> None:
    run(ns, "nft", "-f", "-", stdin=FOREIGN)
    foreign = ruleset(ns)["someone_else"]
    py = [sys.executable, "-c", DRIVE]
    assert run(ns, *py, "apply", '["10.1.1.0/24"]', '["10.1.2.0/24"]').strip() == "true"
    first = ruleset(ns)
    assert first["someone_else"] == foreign and "lumen" in first
    assert any("10.1.1.0" in e for e in first["lumen"]) and any("masquerade" in e for e in first["lumen"])
    # a new node: the table is replaced in one transaction, still one table of ours
    assert run(ns, *py, "apply", '["10.1.1.0/24"]', '["10.1.2.0/24", "10.1.5.0/24"]').strip() == "true"
    second = ruleset(ns)
    assert any("10.1.5.0" in e for e in second["lumen"]) and second["someone_else"] == foreign
    assert sum(e.startswith("rule:") for e in second["lumen"]) == 1
    # the off switch
    assert run(ns, *py, "remove").strip() == "false"
    assert ruleset(ns) == {"someone_else": foreign}
    assert run(ns, *py, "remove").strip() == "false"  # removing what is gone is fine
