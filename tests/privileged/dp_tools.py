"""Traffic with known sizes between test pods, and reads of what the datapath recorded."""

from __future__ import annotations

import json
import subprocess
import time

from bpf import abi
from bpf.loader import Datapath
from tests.cni_harness import Pod

PY = "/usr/bin/python3"

UDP_SERVER = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
# SO_RCVBUFFORCE (33, not in the socket module; root): a server slowed by a loaded machine must not lose
# datagrams the datapath counted in its socket buffer
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(10)
n = 0
print("ready", flush=True)
try:
    while n < int(sys.argv[3]):
        s.recv(65535)
        n += 1
except socket.timeout:
    pass
print(n, flush=True)
"""

UDP_CLIENT = """
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(sys.argv[5])))
payload = b"x" * int(sys.argv[4])
for i in range(int(sys.argv[3])):
    s.sendto(payload, (sys.argv[1], int(sys.argv[2])))
    if i % 50 == 49:
        time.sleep(0.01)
"""

TCP_SERVER = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
n = 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    n += len(d)
c.close()
print(n, flush=True)
"""

TCP_CLIENT = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"y" * int(sys.argv[3]))
s.shutdown(socket.SHUT_WR)
s.recv(1)
info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
# struct tcp_info: tcpi_bytes_sent (payload incl. retransmissions) at offset 200
print(int.from_bytes(info[200:208], "little"), flush=True)
s.close()
"""


def _serve(pod: Pod, code: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", pod.ns, PY, "-c", code, *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def udp(src: Pod, dst: Pod, version: int, count: int, size: int, port: int = 5005, sport: int = 0) -> int:
    """Send `count` datagrams of `size` bytes; returns how many the server received."""
    server = _serve(dst, UDP_SERVER, dst.ip(version), str(port), str(count))
    try:
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                src.ns,
                PY,
                "-c",
                UDP_CLIENT,
                dst.ip(version),
                str(port),
                str(count),
                str(size),
                str(sport),
            ],
            check=True,
            timeout=30,
        )
        out, _ = server.communicate(timeout=30)
        return int(out.strip())
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def tcp(src: Pod, dst: Pod, version: int, nbytes: int, port: int = 5006) -> tuple[int, int]:
    """Transfer `nbytes` over one TCP connection (closed by both sides).

    Returns (bytes the server received, payload bytes the client's kernel put on the wire, which
    includes any retransmission: tcp_info.tcpi_bytes_sent)."""
    server = _serve(dst, TCP_SERVER, dst.ip(version), str(port))
    try:
        client = subprocess.run(
            ["ip", "netns", "exec", src.ns, PY, "-c", TCP_CLIENT, dst.ip(version), str(port), str(nbytes)],
            check=True,
            timeout=30,
            capture_output=True,
            text=True,
        )
        out, _ = server.communicate(timeout=30)
        return int(out.strip()), int(client.stdout.strip())
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


UDP_FLOWS_CLIENT = """
import socket, sys, time
dst, port, first, flows, per_flow, size = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
payload = b"z" * size
for sport in range(first, first + flows):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sport))
    for _ in range(per_flow):
        s.sendto(payload, (dst, port))
    s.close()
    if sport % 20 == 19:
        time.sleep(0.01)  # the server's socket buffer must not overflow
"""


def udp_flows(src: Pod, dst: Pod, flows: int, per_flow: int, size: int, port: int, first_sport: int) -> int:
    """`flows` IPv4 UDP flows (source ports first_sport...) of `per_flow` datagrams of `size` bytes each;
    returns how many datagrams the server received."""
    total = flows * per_flow
    server = _serve(dst, UDP_SERVER, dst.ip(4), str(port), str(total))
    try:
        args = [dst.ip(4), str(port), str(first_sport), str(flows), str(per_flow), str(size)]
        client = ["ip", "netns", "exec", src.ns, PY, "-c", UDP_FLOWS_CLIENT, *args]
        subprocess.run(client, check=True, timeout=60)
        out, _ = server.communicate(timeout=30)
        return int(out.strip())
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def quiet(pod: Pod) -> None:
    """No IPv6 in the pod: router solicitations and MLD reports would add packets the test did not send."""
    for conf in ("all", "default", "eth0"):
        subprocess.run(
            ["ip", "netns", "exec", pod.ns, "sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1"],
            check=True,
        )


def flows(dp: Datapath) -> dict[tuple[str, str, int, int, int, int], abi.FlowStats]:
    """(src, dst, proto, sport, dport, direction) -> stats."""
    out = {}
    for k, v in dp.flows():
        key = (
            abi.addr_str(k.saddr, k.family),
            abi.addr_str(k.daddr, k.family),
            k.proto,
            k.sport,
            k.dport,
            k.direction,
        )
        out[key] = abi.FlowStats.from_buffer_copy(v)
    return out


def find(dp: Datapath, src: str, dst: str, proto: int, dport: int | None = None) -> list[abi.FlowStats]:
    return [
        v
        for k, v in flows(dp).items()
        if k[0] == src and k[1] == dst and k[2] == proto and (dport is None or k[4] == dport)
    ]


def host_veth(pod: Pod) -> str:
    return pod.result["interfaces"][1]["name"]


def link_stat(name: str, stat: str) -> int:
    """A link counter (`tx_packets`, ...) in this thread's namespace. Not /sys/class/net: inside
    `Node.host()` the mounted sysfs is still the root namespace's."""
    direction, counter = stat.split("_", 1)
    out = subprocess.run(
        ["ip", "-j", "-s", "link", "show", "dev", name], capture_output=True, text=True, check=True
    )
    return int(json.loads(out.stdout)[0]["stats64"][direction][counter])


def wait_for(pred, timeout: float = 5.0, step: float = 0.05) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())
