"""Real-traffic reachability probes between test pods, in the style of cyclonus / the netpol e2e suite.

Each pod runs one echo server (TCP and UDP on every probe port); each source pod runs one prober that
tries every (destination, protocol, port) at once and reports which answered. A probe succeeds when the
answer comes back, so it needs the request admitted and the reply let through.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tests.cni_harness import Pod

PY = "/usr/bin/python3"

SERVER = r"""
import selectors, socket, sys
ports = [int(p) for p in sys.argv[1].split(",")]
sel = selectors.DefaultSelector()
for fam, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for port in ports:
        t = socket.socket(fam, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        t.bind((any_addr, port)); t.listen(64); t.setblocking(False)
        sel.register(t, selectors.EVENT_READ, "accept")
        u = socket.socket(fam, socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        u.bind((any_addr, port)); u.setblocking(False)
        sel.register(u, selectors.EVENT_READ, "udp")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if key.data == "accept":
            try:
                c, _ = s.accept()
            except OSError:
                continue
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ, "conn")
        elif key.data == "udp":
            try:
                data, peer = s.recvfrom(2048)
                s.sendto(data, peer)
            except OSError:
                pass
        else:
            try:
                data = s.recv(2048)
            except OSError:
                data = b""
            if data:
                try:
                    s.send(data)
                except OSError:
                    pass
            else:
                sel.unregister(s); s.close()
"""

PROBER = r"""
import json, socket, sys, threading
targets = json.loads(sys.argv[1]); timeout = float(sys.argv[2])
out = {}
def probe(i, ip, proto, port):
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    ok = False
    try:
        if proto == "TCP":
            with socket.create_connection((ip, port), timeout=timeout) as s:
                s.sendall(b"p"); ok = s.recv(1) == b"p"
        else:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout / 3)
                for _ in range(3):  # UDP may lose a datagram; three tries within the timeout
                    s.sendto(b"p", (ip, port))
                    try:
                        ok = s.recv(16) == b"p"
                        break
                    except socket.timeout:
                        continue
    except OSError:
        ok = False
    out[i] = ok
threads = [threading.Thread(target=probe, args=(i, *t)) for i, t in enumerate(targets)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps([out[i] for i in range(len(targets))]), flush=True)
"""


@contextmanager
def servers(pods: Iterable[Pod], ports: Iterable[int]) -> Iterator[None]:
    procs = []
    try:
        for pod in pods:
            p = subprocess.Popen(
                ["ip", "netns", "exec", pod.ns, PY, "-c", SERVER, ",".join(map(str, ports))],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


Cell = tuple[str, str, str, int]  # (source pod, destination pod, protocol, port)


def matrix(
    pods: dict[str, Pod], cases: Iterable[tuple[str, int]], version: int = 4, timeout: float = 1.0
) -> dict[Cell, bool]:
    """Probe every ordered pair of distinct pods on every (protocol, port); all sources at once."""
    cases = list(cases)
    procs: dict[str, tuple[subprocess.Popen[str], list[Cell]]] = {}
    for src_name, src in pods.items():
        cells: list[Cell] = []
        targets = []
        for dst_name, dst in pods.items():
            if dst_name == src_name:
                continue
            for proto, port in cases:
                cells.append((src_name, dst_name, proto, port))
                targets.append((dst.ip(version), proto, port))
        proc = subprocess.Popen(
            ["ip", "netns", "exec", src.ns, PY, "-c", PROBER, json.dumps(targets), str(timeout)],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs[src_name] = (proc, cells)
    out: dict[Cell, bool] = {}
    for proc, cells in procs.values():
        stdout, _ = proc.communicate(timeout=60)
        out.update(zip(cells, json.loads(stdout), strict=True))
    return out


def render(result: dict[Cell, bool], expected: dict[Cell, bool]) -> str:
    """The cells that differ, cyclonus style, for the assertion message."""
    lines = [
        f"  {src} -> {dst} {proto}/{port}: probe {'OK' if result[c] else 'BLOCKED'}, "
        f"expected {'OK' if expected[c] else 'BLOCKED'}"
        for c in sorted(result)
        for src, dst, proto, port in [c]
        if result[c] != expected[c]
    ]
    return "\n".join(lines)
