"""Lumen under real runtimes: containerd (ctr) and podman 4 (CNI backend), portmap chained after it.

The runtimes' clients run in a network namespace made per test (tests/e2e/runtimes.py): the bridge,
its routes and portmap's NAT rules live there, never in the root namespace."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster_harness import ns_socket
from tests.e2e.runtimes import (
    Containerd,
    LumenNetwork,
    Podman,
    kill_group,
    make_rootfs,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LumenNetwork]:
    n = LumenNetwork(tmp_path / "net")
    try:
        n.create_ns()
        yield n
    finally:
        n.cleanup()  # the runtimes' fixtures, torn down first, have removed the containers


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs")


@pytest.fixture
def containerd(tmp_path: Path, net: LumenNetwork) -> Iterator[Containerd]:
    c = Containerd(tmp_path / "containerd", net)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_containerd_containers_reach_each_other(containerd: Containerd, net: LumenNetwork, rootfs: Path):
    srv_id, cli_id = f"srv{net.tag}", f"cli{net.tag}"
    server = subprocess.Popen(
        containerd.run_argv(rootfs, srv_id, "/bin/nc", "-l", "-p", "8080"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        record = net.wait_endpoint(srv_id)
        server_ip = record["ips"][0].split("/")[0]
        assert record["netns"].startswith("/proc/"), "ctr passes the task's /proc/<pid>/ns/net"
        assert net.bridge in link_names(net.ns) and net.bridge not in link_names(None), "bridge in root ns"
        time.sleep(0.5)  # nc is listening once the task runs; ADD completes before the task starts
        client = subprocess.run(
            containerd.run_argv(
                rootfs, cli_id, "/bin/sh", "-c", f"echo hello-from-{cli_id} | nc -w 5 {server_ip} 8080"
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert client.returncode == 0, f"{client.stderr}\n{net.log()}"
        out, err = server.communicate(timeout=60)
        assert f"hello-from-{cli_id}" in out, f"server saw {out!r} {err}\n{net.log()}"
    finally:
        kill_group(server)
    # ctr run --rm sends DEL (with an empty CNI_NETNS): nothing stays behind.
    deadline = time.monotonic() + 30
    while net.endpoints() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert net.endpoints() == [], net.log()
    held = [p for p in (net.data_dir / net.name).iterdir() if p.name[0].isdigit()]
    assert held == [], "IP leaked after ctr's DEL"
    log = net.log()
    assert "cmd=ADD" in log and "cmd=DEL" in log


@pytest.fixture
def podman(tmp_path: Path, net: LumenNetwork) -> Iterator[Podman]:
    p = Podman(tmp_path / "podman", net)
    p.setup()
    names: list[str] = []
    p.names = names  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        p.cleanup(names)


def test_podman_containers_reach_each_other_and_portmap_publishes(
    podman: Podman, net: LumenNetwork, rootfs: Path
):
    srv, cli = f"ltsrv{net.tag}", f"ltcli{net.tag}"
    podman.names += [srv, cli]  # type: ignore[attr-defined]
    host_port = 20000 + secrets.randbelow(20000)
    static_ip = net.subnet.replace(".0/24", ".50")
    mac = "0a:58:0a:00:00:32"
    run = podman.podman(
        "run",
        "-d",
        "--name",
        srv,
        "--network",
        net.name,
        "-p",
        f"{host_port}:8080",
        "--ip",
        static_ip,
        "--mac-address",
        mac,
        "--rootfs",
        str(rootfs),
        "/bin/sh",
        "-c",
        "while true; do echo pong | nc -l -p 8080; done",
        check=False,
    )
    assert run.returncode == 0, f"{run.stderr}\n{net.log()}"
    record = net.wait_endpoint(podman.podman("inspect", "-f", "{{.Id}}", srv).stdout.strip())
    server_ip = record["ips"][0].split("/")[0]
    assert server_ip == static_ip, "podman's --ip reaches the plugin (CNI_ARGS IP=)"
    assert record["mac"] == mac, "podman's --mac-address reaches the plugin (CNI_ARGS MAC=)"

    # Container to container over the Lumen bridge.
    client = podman.podman(
        "run",
        "--rm",
        "--name",
        cli,
        "--network",
        net.name,
        "--rootfs",
        str(rootfs),
        "/bin/sh",
        "-c",
        f"echo ping | nc -w 5 {server_ip} 8080",
        check=False,
    )
    assert client.returncode == 0 and "pong" in client.stdout, f"{client.stdout} {client.stderr}\n{net.log()}"

    # The bridge and portmap's rules went to the node namespace, not to the root's.
    assert net.bridge in link_names(net.ns) and net.bridge not in link_names(None), "bridge in root ns"
    assert f"dport {host_port}" in nat_rules(net.ns), "portmap published nothing in the node namespace"
    assert f"dport {host_port}" not in nat_rules(None), "portmap wrote to the root namespace"

    # portmap, chained after lumen, publishes the port on the node: reach it at our bridge's gateway,
    # from inside the node namespace.
    got = b""
    deadline = time.monotonic() + 20
    while b"pong" not in got and time.monotonic() < deadline:
        try:
            with ns_socket(net.ns) as s:
                s.settimeout(3)
                s.connect((net.gateway, host_port))
                s.sendall(b"ping\n")
                got = s.recv(64)
        except OSError:
            time.sleep(0.3)
    assert b"pong" in got, f"portmap did not forward {net.gateway}:{host_port}\n{net.log()}"

    # Restart: podman sends DEL then ADD with IP= and MAC= again: same address and MAC.
    assert podman.podman("restart", "-t", "0", srv, check=False).returncode == 0, net.log()
    again = net.wait_endpoint(podman.podman("inspect", "-f", "{{.Id}}", srv).stdout.strip())
    assert again["ips"] == record["ips"] and again["mac"] == record["mac"], net.log()

    # rm: DEL in reverse order; nothing remains.
    assert podman.podman("rm", "-f", "-t", "0", srv, check=False).returncode == 0
    assert net.endpoints() == [], net.log()
    held = [p for p in (net.data_dir / net.name).iterdir() if p.name[0].isdigit()]
    assert held == [], "IP leaked after podman rm"
    assert f"dport {host_port}" not in nat_rules(net.ns), "portmap rule left behind"


def nat_rules(ns: str | None) -> str:
    """`iptables-save -t nat` in namespace `ns` (None: the root namespace, read only)."""
    argv = ["iptables-save", "-t", "nat"]
    out = subprocess.run(["ip", "netns", "exec", ns, *argv] if ns else argv, capture_output=True, text=True)
    return out.stdout.replace("--dport", "dport")


def link_names(ns: str | None) -> set[str]:
    """Link names in namespace `ns` (None: the root namespace)."""
    argv = ["ip", "-o", "link", "show"]
    out = subprocess.run(["ip", "netns", "exec", ns, *argv] if ns else argv, capture_output=True, text=True)
    return {line.split(": ")[1].split("@")[0] for line in out.stdout.splitlines()}
