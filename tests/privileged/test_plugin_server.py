"""The warm plugin server: the launcher hands calls over a root-only socket and falls back without it."""

from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.cni_harness import PREFIX, Node, ipam_records, netns_add, netns_del, ping

pytestmark = pytest.mark.netns


@pytest.fixture
def server(node: Node, tmp_path: Path):
    """The server on the node, as the agent runs it: its workers make the host side of each pod."""
    sock = tmp_path / "srv" / "plugin.sock"
    support = str(node.binary.parent / "lumen.d")
    code = (
        f"import sys; sys.path.insert(0, {support!r}); from plugin.server import serve; serve({str(sock)!r})"  # noqa: E501
    )
    with node.host():
        proc = subprocess.Popen(["/usr/bin/python3", "-I", "-c", code], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    try:
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_socket_is_root_only(server: Path):
    assert stat.S_IMODE(server.stat().st_mode) == 0o600
    assert stat.S_IMODE(server.parent.stat().st_mode) == 0o700


def test_calls_through_the_server_wire_pods_the_same(node: Node, server: Path):
    env = {"LUMEN_PLUGIN_SOCKET": str(server)}
    a = node.add_pod("wa", extra_env=env)
    b = node.add_pod("wb")  # cold, for comparison
    assert [i["name"] for i in a.result["interfaces"]][0] == node.bridge
    assert a.result.keys() == b.result.keys()
    assert ping(a.ns, b.ip(4)) and ping(b.ns, a.ip(6))
    conf = dict(node.conf(), prevResult=a.result)
    assert node.invoke("CHECK", "wa", conf=conf, extra_env=env).ok
    res = node.invoke("ADD", "wa", extra_env=env)
    assert not res.ok and res.out["code"] == 102, "errors come back as the spec's JSON"
    assert "already" in res.stderr, "the worker's stderr reaches the runtime"
    assert node.invoke("DEL", "wa", extra_env=env).ok
    node.pods.pop("wa")
    netns_del(a.ns)
    assert sorted(ipam_records(node)) == sorted(b.ips)


def test_launcher_falls_back_when_no_server_answers(node: Node, tmp_path: Path):
    pod = node.add_pod("fb", extra_env={"LUMEN_PLUGIN_SOCKET": str(tmp_path / "nobody-home.sock")})
    assert ping(pod.ns, node.gateway4)


def test_a_worker_killed_mid_add_is_retried_in_process(node: Node, server: Path):
    """A dying worker (e.g. the agent restarting) makes the launcher run the call itself."""
    ns = f"lt{node.tag}wk"
    netns = netns_add(ns)
    try:
        res = node.call(
            "ADD",
            node.conf(),
            "c0ffee" * 10,
            netns,
            extra_env={"LUMEN_PLUGIN_SOCKET": str(server), "LUMEN_FAULT": "after-veth:kill"},
        )
        # The local retry hits the same injected fault: the call dies exactly as a cold plugin would.
        assert res.rc == -9
        ok = node.call(
            "ADD",
            node.conf(),
            "c0ffee" * 10,
            netns,
            extra_env={"LUMEN_PLUGIN_SOCKET": str(server)},
        )
        assert ok.ok, ok.out
        assert len(ipam_records(node)) == 2, "the killed attempts' addresses were reclaimed"
        assert node.call("DEL", node.conf(), "c0ffee" * 10, netns).ok
    finally:
        netns_del(ns)
    assert os.path.exists(server), "the server survives its workers"


@pytest.mark.parametrize("stdin", [b"{not json", b"[" * 100_000, b'{"cniVersion": "1.0.0", "mtu": NaN}'])
def test_undecodable_stdin_through_the_server_is_code_6(cni_bin: Path, server: Path, stdin: bytes):
    """The server's worker never imports json either: the same decoding errors, the same code. (A netns
    that exists, or the launcher would run the call itself.)"""
    ns = f"{PREFIX}{secrets.token_hex(4)}"
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "plcid",
        "CNI_NETNS": netns_add(ns),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(cni_bin.parent),
        "LUMEN_PLUGIN_SOCKET": str(server),
    }
    try:
        proc = subprocess.run([str(cni_bin)], input=stdin, env=env, capture_output=True, timeout=60)
    finally:
        netns_del(ns)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["code"] == 6, proc.stdout
