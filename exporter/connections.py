"""Connections: a flow and its reply as one record, client -> server:port, as an SRE reads them.

The datapath keys flows by 5-tuple and direction and marks the answer of a connection seen first the
other way (`is_reply`, bpf/lumen.c). Here the two halves are folded: the request half (client -> server)
and the reply half (server -> client) of the same addresses, ports and protocol, whatever the direction
they were accounted in (a host talking to a pod is counted at the pod's veth both ways, once ingress and
once egress). An ICMP echo request and its reply pair by the echo identifier; other ICMP/ICMPv6/IGMP
messages are connections of one half. A flow the kernel did not mark a reply is a request.

Pure logic over exporter.flows.Flow; the API completes a connection whose other half is outside the
page of flows it folded (`other_half_keys`), the service map and the tracer fold what they see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bpf import vocab
from exporter.flows import Endpoint, Flow, FlowKey, _iso

#: (family, protocol number, client ip, server ip, client port or echo id, server port or message)
ConnectionKey = tuple[int, int, str, str, int, int]

_ECHO = {vocab.PROTOCOL_NUMBERS[p]: types for p, types in vocab.ECHO_TYPES.items()}
_MESSAGES = {vocab.PROTOCOL_NUMBERS[p] for p in vocab.MESSAGE_PROTOCOLS}


def connection_key(flow: Flow) -> tuple[ConnectionKey, bool]:
    """The key of the connection `flow` is a half of, and whether it is the reply half."""
    family, proto, src, dst, sport, dport, _direction = flow.key
    if proto in _MESSAGES:
        # sport is the echo identifier, dport type << 8 | code (bpf/include/types.h)
        request, reply = _ECHO.get(proto, (-1, -1))
        if dport >> 8 == reply and flow.is_reply:
            return (family, proto, dst, src, sport, request << 8), True
        return (family, proto, src, dst, sport, dport), False
    if flow.is_reply:
        return (family, proto, dst, src, dport, sport), True
    return (family, proto, src, dst, sport, dport), False


def other_half_keys(flow: Flow) -> list[FlowKey]:
    """Flow keys the other half of `flow`'s connection can have (either direction)."""
    family, proto, src, dst, sport, dport, _direction = flow.key
    if proto in _MESSAGES:
        request, reply = _ECHO.get(proto, (-1, -1))
        if dport >> 8 == request:
            other = reply << 8
        elif dport >> 8 == reply:
            other = request << 8
        else:
            return []  # not an echo: a connection of one message
        # both halves of an echo carry the request's identifier
        return [(family, proto, dst, src, sport, other, d) for d in vocab.DIRECTION_NAMES.values()]
    return [(family, proto, dst, src, dport, sport, d) for d in vocab.DIRECTION_NAMES.values()]


def _worst(verdicts: Iterable[str]) -> str:
    seen = set(verdicts)
    for v in ("DROPPED", "AUDIT"):
        if v in seen:
            return v
    return "FORWARDED"


@dataclass
class Connection:
    """Both halves of one connection; either may be missing (not seen, evicted, dropped, one-way)."""

    key: ConnectionKey
    request: Flow | None = None  # client -> server
    reply: Flow | None = None  # server -> client

    def add(self, flow: Flow, is_reply: bool) -> None:
        """Put a half in; of two records of one half (several nodes' views) the newer stays."""
        current = self.reply if is_reply else self.request
        if current is None or flow.time_ns >= current.time_ns:
            if is_reply:
                self.reply = flow
            else:
                self.request = flow

    @property
    def halves(self) -> list[Flow]:
        return [f for f in (self.request, self.reply) if f is not None]

    @property
    def first(self) -> Flow:
        return self.request if self.request is not None else self.reply  # type: ignore[return-value]

    @property
    def client(self) -> Endpoint:
        return self.request.source if self.request is not None else self.reply.destination  # type: ignore[union-attr]

    @property
    def server(self) -> Endpoint:
        return self.request.destination if self.request is not None else self.reply.source  # type: ignore[union-attr]

    @property
    def protocol(self) -> str:
        return self.first.protocol

    @property
    def time_ns(self) -> int:
        return max(f.time_ns for f in self.halves)

    @property
    def start_ns(self) -> int:
        return min(f.start_ns for f in self.halves)

    @property
    def end_ns(self) -> int:
        return max(f.end_ns for f in self.halves)

    @property
    def packets(self) -> int:
        return sum(f.packets for f in self.halves)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.halves)

    @property
    def payload_bytes(self) -> int:
        return sum(f.payload_bytes for f in self.halves)

    @property
    def tcp_flags(self) -> int:
        out = 0
        for f in self.halves:
            out |= f.tcp_flags
        return out

    def tcp_flag_names(self) -> list[str]:
        return [name for bit, name in enumerate(vocab.TCP_FLAG_NAMES) if self.tcp_flags & (1 << bit)]

    @property
    def verdict(self) -> str:
        """The worst of both halves: a connection whose reply is dropped is dropped."""
        return _worst(f.verdict for f in self.halves)

    @property
    def drop_reason(self) -> str:
        return next((f.drop_reason for f in self.halves if f.drop_reason != "none"), "none")

    @property
    def finished(self) -> bool:
        """Every half seen has ended (FIN/RST or idle)."""
        return all(f.finished for f in self.halves)

    @property
    def server_port(self) -> int | None:
        return self.server.port if vocab.has_ports(self.protocol) else None

    def ident(self) -> str:
        """A stable text id (the UI updates a connection's row in place by it)."""
        family, proto, client, server, cport, sport = self.key
        return f"{proto}|{client}|{cport}|{server}|{sport}"

    def to_dict(self) -> dict[str, Any]:
        first = self.first
        halves = {name: _half(f) for name, f in (("request", self.request), ("reply", self.reply))}
        out: dict[str, Any] = {
            "id": self.ident(),
            "time": _iso(self.time_ns),
            "start": _iso(self.start_ns),
            "end": _iso(self.end_ns),
            "duration_ms": round((self.end_ns - self.start_ns) / 1e6, 3),
            "protocol": self.protocol,
            "client": self.client.to_dict(),
            "server": self.server.to_dict(),
            "server_port": self.server_port,
            "verdict": self.verdict,
            "drop_reason": self.drop_reason,
            "packets": self.packets,
            "bytes": self.bytes,
            "payload_bytes": self.payload_bytes,
            "tcp_flags": self.tcp_flag_names(),
            "finished": self.finished,
            "node": first.node,
            "special": any(f.special for f in self.halves),
            "policy": (self.request or first).to_dict()["policy"],
            **halves,
        }
        if first.message is not None:
            out["icmp" if self.protocol != "IGMP" else "igmp"] = first.message_dict()
        return out


def _half(f: Flow | None) -> dict[str, Any] | None:
    if f is None:
        return None
    return {
        "time": _iso(f.time_ns),
        "type": f.type,
        "direction": f.direction,
        "verdict": f.verdict,
        "drop_reason": f.drop_reason,
        "packets": f.packets,
        "bytes": f.bytes,
        "payload_bytes": f.payload_bytes,
        "tcp_flags": f.tcp_flag_names(),
        "message": f.message_name() or None,
    }


def fold(flows: Iterable[Flow]) -> list[Connection]:
    """Flows -> connections, newest first (by the newer half); every flow is in exactly one."""
    out: dict[ConnectionKey, Connection] = {}
    for f in flows:
        key, is_reply = connection_key(f)
        conn = out.get(key)
        if conn is None:
            conn = out[key] = Connection(key)
        conn.add(f, is_reply)
    return sorted(out.values(), key=lambda c: c.time_ns, reverse=True)


def complete(conns: Iterable[Connection], lookup: Callable[[FlowKey], Flow | None]) -> None:
    """Fill a connection's missing half from `lookup` (a store's record by flow key), if it holds one."""
    for conn in conns:
        if conn.request is not None and conn.reply is not None:
            continue
        have = conn.first
        for key in other_half_keys(have):
            other = lookup(key)
            if other is not None and connection_key(other)[0] == conn.key:
                conn.add(other, connection_key(other)[1])
                break
