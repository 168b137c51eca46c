"""The decode stage of the flow pipeline: flow_event records (and flow table entries the sweep ends)
into Flows. The only exporter module that knows the event's C layout, through bpf.abi (the ctypes mirrors
checked against the compiled C); names come from bpf.vocab, pods and policies from exporter.enrich.

Ring-buffer events are unpacked with one struct.Struct whose format is derived from abi.FlowEvent's field
offsets (one C call per event instead of ~20 ctypes attribute reads); tests/unit/test_exporter_events.py
checks it against the ctypes reads on golden bytes.
"""

from __future__ import annotations

import ctypes as ct
import socket
import struct
import time
from typing import Any

from bpf import abi
from bpf.vocab import (
    DIRECTION_NAMES,
    DROP_REASON_NAMES,
    EVENT_TYPE_NAMES,
    MESSAGE_PROTOCOLS,
    PORTED_PROTOCOLS,
    PROTOCOL_NAMES,
    VERDICT_NAMES,
)
from exporter.enrich import Enricher
from exporter.flows import Endpoint, Flow, FlowKey

STATIC_CACHE_MAX = 131072
#: what every event of one flow shares: key, protocol, direction, both ends, the ICMP/IGMP message
Static = tuple[FlowKey, str, str, Endpoint, Endpoint, tuple[int, int, int] | None]
REPLY = int(abi.FlowFlag.REPLY)

_CODES = {ct.c_uint8: "B", ct.c_uint16: "H", ct.c_uint32: "I", ct.c_uint64: "Q"}


def struct_format(cls: type[ct.Structure]) -> str:
    """A native-endian struct format with the same offsets as the ctypes mirror (nested structs flattened,
    u8 arrays as bytes, padding as 'x')."""
    parts: list[str] = []
    pos = 0

    def walk(c: type[ct.Structure], base: int) -> None:
        nonlocal pos
        for name, typ in c._fields_:  # type: ignore[misc]
            if name.startswith("pad"):
                continue  # explicit C padding: covered by the next field's offset
            off = base + getattr(c, name).offset
            if off > pos:
                parts.append(f"{off - pos}x")
                pos = off
            if isinstance(typ, type) and issubclass(typ, ct.Structure):
                walk(typ, off)
                continue
            if issubclass(typ, ct.Array):
                parts.append(f"{ct.sizeof(typ)}s")
            else:
                parts.append(_CODES[typ])
            pos += ct.sizeof(typ)

    walk(cls, 0)
    if ct.sizeof(cls) > pos:
        parts.append(f"{ct.sizeof(cls) - pos}x")
    return "=" + "".join(parts)


EVENT = struct.Struct(struct_format(abi.FlowEvent))
EVENT_SIZE = ct.sizeof(abi.FlowEvent)
assert EVENT.size == EVENT_SIZE, "flow_event format does not cover the mirror"


class _AddrCache(dict[bytes, str]):
    """16 address bytes + family -> text; pods talk to few addresses, inet_ntop is not free."""

    def text(self, raw: bytes, family: int) -> str:
        key = raw + bytes((family,))
        s = self.get(key)
        if s is None:
            if len(self) > 65536:
                self.clear()
            s = (
                socket.inet_ntop(socket.AF_INET, raw[:4])
                if family == 4
                else socket.inet_ntop(socket.AF_INET6, raw)
            )
            self[key] = s
        return s


class Decoder:
    """Event bytes -> Flow, with pod and policy names from the enricher and wall-clock times."""

    def __init__(self, enricher: Enricher) -> None:
        self.enricher = enricher
        self.node = enricher.node
        self._addr = _AddrCache()
        self._static: dict[tuple[Any, ...], Static] = {}
        self._generation = enricher.generation
        self.sync_clock()

    def sync_clock(self) -> None:
        # bpf_ktime_get_ns is CLOCK_MONOTONIC; re-synced by the agent's housekeeping (NTP slews wall time).
        self.mono_to_wall_ns = time.time_ns() - time.monotonic_ns()

    def flow(self, buf: Any) -> Flow:
        """Decode one flow_event (bytes, memoryview or abi.FlowEvent)."""
        (
            saddr, daddr, sport, dport, proto, family, direction,
            ts, first, last, packets, nbytes, payload, src_ep, dst_ep, ifindex,
            etype, tcp_flags, verdict, reason, egress_policy, ingress_policy, flags,
        ) = EVENT.unpack_from(buf)  # fmt: skip
        # _build, inlined: this runs once per event (a call more costs ~5% of the pipeline's rate)
        ident = (saddr, daddr, sport, dport, proto, family, direction, src_ep, dst_ep)
        static = self._static.get(ident)
        if static is None or self._generation != self.enricher.generation:
            static = self._decode_static(ident)
        key, protocol, dir_name, source, destination, message = static
        off = self.mono_to_wall_ns
        policy_name = self.enricher.policy_name
        return Flow(
            key,
            EVENT_TYPE_NAMES.get(etype) or str(etype),
            ts + off,
            first + off,
            last + off,
            protocol,
            dir_name,
            VERDICT_NAMES.get(verdict) or str(verdict),
            DROP_REASON_NAMES.get(reason) or str(reason),
            source,
            destination,
            packets,
            nbytes,
            payload,
            tcp_flags,
            ifindex,
            self.node,
            policy_name(egress_policy),
            policy_name(ingress_policy),
            bool(flags & REPLY),
            message,
        )

    def ended(self, key: abi.FlowKey, st: abi.FlowStats, now_mono_ns: int) -> Flow:
        """The final record of a flow the sweep took out of the table for being idle: an END, read straight
        from the table entry."""
        ident = (
            bytes(key.saddr), bytes(key.daddr), key.sport, key.dport, key.proto, key.family, key.direction,
            st.src_ep, st.dst_ep,
        )  # fmt: skip
        return self._build(
            ident, int(abi.EventType.END), now_mono_ns, st.first_seen_ns, st.last_seen_ns, st.packets,
            st.bytes, st.payload_bytes, st.tcp_flags, 0, st.verdict, st.drop_reason, st.egress_policy,
            st.ingress_policy, st.flags,
        )  # fmt: skip

    def _build(
        self,
        ident: tuple[Any, ...],
        etype: int,
        ts: int,
        first: int,
        last: int,
        packets: int,
        nbytes: int,
        payload: int,
        tcp_flags: int,
        ifindex: int,
        verdict: int,
        reason: int,
        egress_policy: int,
        ingress_policy: int,
        flags: int,
    ) -> Flow:
        # Everything but the counters is the same for every event of a flow: decoded once, then shared.
        static = self._static.get(ident)
        if static is None or self._generation != self.enricher.generation:
            static = self._decode_static(ident)
        key, protocol, dir_name, source, destination, message = static
        off = self.mono_to_wall_ns
        policy_name = self.enricher.policy_name
        return Flow(
            key,
            EVENT_TYPE_NAMES.get(etype) or str(etype),
            ts + off,
            first + off,
            last + off,
            protocol,
            dir_name,
            VERDICT_NAMES.get(verdict) or str(verdict),
            DROP_REASON_NAMES.get(reason) or str(reason),
            source,
            destination,
            packets,
            nbytes,
            payload,
            tcp_flags,
            ifindex,
            self.node,
            policy_name(egress_policy),
            policy_name(ingress_policy),
            bool(flags & REPLY),
            message,
        )

    def _decode_static(self, ident: tuple[Any, ...]) -> Static:
        if self._generation != self.enricher.generation or len(self._static) > STATIC_CACHE_MAX:
            self._static.clear()
            self._generation = self.enricher.generation
        saddr, daddr, sport, dport, proto, family, direction, src_ep, dst_ep = ident
        src_ip = self._addr.text(saddr, family)
        dst_ip = self._addr.text(daddr, family)
        dir_name = DIRECTION_NAMES.get(direction, str(direction))
        key: FlowKey = (family, proto, src_ip, dst_ip, sport, dport, dir_name)
        protocol = PROTOCOL_NAMES.get(proto) or str(proto)
        message = None
        if protocol in MESSAGE_PROTOCOLS:
            # no ports: the key holds the echo identifier and type << 8 | code (bpf/include/types.h)
            message = abi.icmp_from_key(sport, dport)
            sport = dport = 0
        elif protocol not in PORTED_PROTOCOLS:
            sport = dport = 0
        source = self.enricher.endpoint(src_ep, src_ip, sport)
        destination = self.enricher.endpoint(dst_ep, dst_ip, dport)
        static = (key, protocol, dir_name, source, destination, message)
        # A pod not known yet (record not written) is looked up again on its next event.
        if (not src_ep or source.pod) and (not dst_ep or destination.pod):
            self._static[ident] = static
        return static
