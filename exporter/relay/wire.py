"""Flows as the agents send them (the JSON of `Flow.to_dict`) and back into `Flow`, for what the relay
computes with the agent's own code (the service map, a paired flow's policy summary).

Agents send times as ISO strings with microseconds: that is the relay's resolution, and times are kept as
integer microseconds so that ordering and cursors are exact.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bpf import abi, vocab
from exporter.flows import TCP_FLAG_NAMES, Endpoint, Flow

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
PROTOCOL_NUMBERS = vocab.PROTOCOL_NUMBERS


def time_us(iso: str) -> int:
    """`2026-12-01T16:30:24.123456Z` -> integer microseconds since the epoch (exact, no float)."""
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // US


def iso_us(us: int) -> str:
    return (EPOCH + us * US).isoformat(timespec="microseconds").replace("+00:00", "Z")


def five_tuple(flow: dict[str, Any]) -> str:
    """What pairs two nodes' records of one flow; an ICMP message has no ports: its type, code and echo
    identifier tell ping sessions apart."""
    src, dst = flow["source"], flow["destination"]
    out = f"{flow['protocol']}|{src['ip']}|{src['port']}|{dst['ip']}|{dst['port']}"
    msg = flow.get("icmp") or flow.get("igmp")
    if isinstance(msg, dict):
        out += f"|{msg.get('type')}|{msg.get('code')}|{msg.get('id', 0)}"
    return out


def _endpoint(d: dict[str, Any]) -> Endpoint:
    owner = d.get("workload") or {}
    return Endpoint(
        str(d["ip"]),
        int(d["port"]),
        str(d.get("namespace", "")),
        str(d.get("pod", "")),
        d.get("labels") or {},
        str(d.get("node", "")),
        str(owner.get("kind", "")),
        str(owner.get("name", "")),
        int(d.get("identity") or 0),
    )


def flow_from_dict(d: dict[str, Any]) -> Flow:
    src, dst = _endpoint(d["source"]), _endpoint(d["destination"])
    proto = str(d["protocol"])
    number = PROTOCOL_NUMBERS.get(proto, int(proto) if proto.isdigit() else 0)
    policy = d.get("policy") or {}
    flags = set(d.get("tcp_flags") or ())
    sport, dport = src.port, dst.port
    message = None
    raw = d.get("icmp") or d.get("igmp")
    if isinstance(raw, dict):
        message = (int(raw.get("type", 0)), int(raw.get("code", 0)), int(raw.get("id", 0)))
        sport, dport = abi.icmp_key_ports(*message)  # the agent's key: ping sessions stay apart
    return Flow(
        key=(6 if ":" in src.ip else 4, number, src.ip, dst.ip, sport, dport, str(d["direction"])),
        type=str(d["type"]),
        time_ns=time_us(d["time"]) * 1000,
        start_ns=time_us(d["start"]) * 1000,
        end_ns=time_us(d["end"]) * 1000,
        protocol=proto,
        direction=str(d["direction"]),
        verdict=str(d["verdict"]),
        drop_reason=str(d.get("drop_reason", "none")),
        source=src,
        destination=dst,
        packets=int(d["packets"]),
        bytes=int(d["bytes"]),
        payload_bytes=int(d.get("payload_bytes", 0)),
        tcp_flags=sum(1 << bit for bit, name in enumerate(TCP_FLAG_NAMES) if name in flags),
        ifindex=int(d.get("ifindex", 0)),
        node=str(d.get("node", "")),
        egress_policy=policy.get("egress"),
        ingress_policy=policy.get("ingress"),
        is_reply=bool(d.get("is_reply", False)),
        message=message,
    )
