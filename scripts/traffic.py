"""Demo traffic, run inside a pod's netns: `server` answers TCP and UDP, `client` talks to peers forever.

Stdlib only, so it runs under the system python3 in any pod namespace.
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import threading
import time


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(4096)
        self.request.sendall(data.upper())


class _UDPEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data.upper(), self.client_address)


class _TCP6(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True


class _UDP6(socketserver.ThreadingUDPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True


def serve(tcp_ports: list[int], udp_ports: list[int]) -> None:
    servers: list[socketserver.BaseServer] = []
    for port in tcp_ports:
        servers.append(_TCP6(("::", port), _Echo))
    for port in udp_ports:
        servers.append(_UDP6(("::", port), _UDPEcho))
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    while True:
        time.sleep(3600)


def talk(target: str) -> None:
    host, port_s, proto = target.rsplit(":", 2)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        s.settimeout(2)
        s.connect((host, int(port_s)))
        s.sendall(b"hello from lumen demo")
        s.recv(4096)


def client(targets: list[str], interval: float) -> None:
    while True:
        for target in targets:
            try:
                talk(target)
            except OSError:
                pass  # a denied or down peer is part of the demo
        time.sleep(interval)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--tcp", type=int, action="append", default=[])
    s.add_argument("--udp", type=int, action="append", default=[])
    c = sub.add_parser("client")
    c.add_argument("targets", nargs="+", help="host:port:tcp|udp")
    c.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    if args.mode == "server":
        serve(args.tcp, args.udp)
    else:
        client(args.targets, args.interval)


if __name__ == "__main__":
    main()
