"""Decode the datapath's binary records into Flows, and name its counters: the only exporter module that
knows the C layout, and it knows it through bpf.abi (the ctypes mirrors checked against the compiled C).

Ring-buffer events are unpacked with one struct.Struct whose format is derived from abi.FlowEvent's field
offsets (one C call per event instead of ~20 ctypes attribute reads); tests/unit/test_exporter_events.py
checks it against the ctypes reads on golden bytes.
"""

from __future__ import annotations

import ctypes as ct
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from bpf import abi
from exporter.enrich import EndpointDirectory
from exporter.flows import NO_LABELS, Endpoint, Flow, FlowKey
from exporter.metrics import PodCounts

PROTOCOL_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
DIRECTIONS = {int(d): d.name.lower() for d in abi.Direction}
EVENT_TYPES = {int(e): e.name for e in abi.EventType}
VERDICTS = {int(v): v.name for v in abi.Verdict}
DROP_REASONS = {int(r): r.name.lower() for r in abi.DropReason}  # Hubble-style: policy_denied
STAT_KEYS = {s.name.lower(): s for s in abi.Stat}

STATIC_CACHE_MAX = 131072

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
    """Event bytes -> Flow, with pod names from the endpoint directory and wall-clock times."""

    def __init__(
        self, directory: EndpointDirectory, node: str = "", policy_names: Mapping[int, str] | None = None
    ) -> None:
        self.directory = directory
        self.node = node
        #: policy id -> namespace/name (the enforcer's; grows, never shrinks)
        self.policy_names: Mapping[int, str] = policy_names if policy_names is not None else {}
        self._addr = _AddrCache()
        self._static: dict[tuple[Any, ...], tuple[FlowKey, str, str, Endpoint, Endpoint]] = {}
        self._generation = directory.generation
        self.sync_clock()

    def sync_clock(self) -> None:
        # bpf_ktime_get_ns is CLOCK_MONOTONIC; re-synced by the agent's housekeeping (NTP slews wall time).
        self.mono_to_wall_ns = time.time_ns() - time.monotonic_ns()

    def _endpoint(self, ep_id: int, ip: str, port: int) -> Endpoint:
        pod = self.directory.lookup(ep_id, ip)
        if pod is None:
            far = self.directory.remote.get(ip)  # a pod on another node
            if far is None:
                return Endpoint(ip, port)
            return Endpoint(ip, port, far.namespace, far.name, far.labels or NO_LABELS, far.node)
        return Endpoint(ip, port, pod.namespace, pod.pod, self.directory.labels(pod), self.node)

    def flow(self, buf: Any) -> Flow:
        """Decode one flow_event (bytes, memoryview or abi.FlowEvent)."""
        (
            saddr, daddr, sport, dport, proto, family, direction,
            ts, first, last, packets, nbytes, payload, src_ep, dst_ep, ifindex,
            etype, tcp_flags, verdict, reason, egress_policy, ingress_policy, flags,
        ) = EVENT.unpack_from(buf)  # fmt: skip
        # Everything but the counters is the same for every event of a flow: decoded once, then shared.
        ident = (saddr, daddr, sport, dport, proto, family, direction, src_ep, dst_ep)
        static = self._static.get(ident)
        if static is None or self._generation != self.directory.generation:
            static = self._decode_static(ident)
        key, protocol, dir_name, source, destination = static
        off = self.mono_to_wall_ns
        return Flow(
            key,
            EVENT_TYPES.get(etype) or str(etype),
            ts + off,
            first + off,
            last + off,
            protocol,
            dir_name,
            VERDICTS.get(verdict) or str(verdict),
            DROP_REASONS.get(reason) or str(reason),
            source,
            destination,
            packets,
            nbytes,
            payload,
            tcp_flags,
            ifindex,
            self.node,
            self.policy_name(egress_policy),
            self.policy_name(ingress_policy),
            bool(flags & abi.FlowFlag.REPLY),
        )

    def policy_name(self, policy_id: int) -> str | None:
        """None: no policy isolates that side; "" no rule admitted it; else namespace/name."""
        if not policy_id:
            return None
        if policy_id == abi.POLICY_DENIED_ID:
            return ""
        return self.policy_names.get(policy_id) or f"#{policy_id}"

    def _decode_static(self, ident: tuple[Any, ...]) -> tuple[FlowKey, str, str, Endpoint, Endpoint]:
        if self._generation != self.directory.generation or len(self._static) > STATIC_CACHE_MAX:
            self._static.clear()
            self._generation = self.directory.generation
        saddr, daddr, sport, dport, proto, family, direction, src_ep, dst_ep = ident
        src_ip = self._addr.text(saddr, family)
        dst_ip = self._addr.text(daddr, family)
        dir_name = DIRECTIONS.get(direction, str(direction))
        key: FlowKey = (family, proto, src_ip, dst_ip, sport, dport, dir_name)
        source = self._endpoint(src_ep, src_ip, sport)
        destination = self._endpoint(dst_ep, dst_ip, dport)
        static = (key, PROTOCOL_NAMES.get(proto) or str(proto), dir_name, source, destination)
        # A pod not known yet (record not written) is looked up again on its next event.
        if (not src_ep or source.pod) and (not dst_ep or destination.pod):
            self._static[ident] = static
        return static

    def ended(self, key: abi.FlowKey, st: abi.FlowStats, now_mono_ns: int) -> Flow:
        """A flow the agent swept out of the table for being idle: its final record, as an END."""
        # the key may be any ctypes object of the layout (a map reader's or a test's): copy its bytes
        ev = abi.FlowEvent(
            key=abi.FlowKey.from_buffer_copy(bytes(key)),
            ts_ns=now_mono_ns,
            first_seen_ns=st.first_seen_ns,
            last_seen_ns=st.last_seen_ns,
            packets=st.packets,
            bytes=st.bytes,
            payload_bytes=st.payload_bytes,
            src_ep=st.src_ep,
            dst_ep=st.dst_ep,
            type=int(abi.EventType.END),
            tcp_flags=st.tcp_flags,
            verdict=st.verdict,
            drop_reason=st.drop_reason,
            egress_policy=st.egress_policy,
            ingress_policy=st.ingress_policy,
            flags=st.flags,
        )
        return self.flow(ev)


def _proto(n: int) -> str:
    return PROTOCOL_NAMES.get(n) or str(n)


class Datapath(Protocol):
    """The parts of bpf.loader.Datapath the agent's map source reads."""

    cfg: Any

    def flow_table_entries(self) -> int: ...

    def flow_counts(self) -> dict[tuple[int, int, int], int]: ...

    def drops(self) -> dict[tuple[int, int], int]: ...

    def policy_counts(self) -> dict[tuple[int, int, int], int]: ...

    def pod_counters(self) -> dict[int, tuple[int, int, int, int]]: ...

    def pair_bytes(self) -> dict[tuple[int, int, int], int]: ...

    def source_counters(self) -> dict[str, tuple[int, int]]: ...

    def stat(self, which: abi.Stat) -> int: ...


class DatapathSource:
    """metrics.MapSource over the loaded datapath's pinned maps: numbers named as in flows."""

    def __init__(self, dp: Datapath) -> None:
        self.dp = dp
        self.flow_capacity = int(dp.cfg.flow_table_size)

    def flow_table_entries(self) -> int:
        return self.dp.flow_table_entries()

    def flow_counts(self) -> dict[tuple[str, str, str], int]:
        out: dict[tuple[str, str, str], int] = {}
        for (proto, verdict, direction), n in self.dp.flow_counts().items():
            key = (
                VERDICTS.get(verdict) or str(verdict),
                _proto(proto),
                DIRECTIONS.get(direction) or str(direction),
            )
            out[key] = out.get(key, 0) + n
        return out

    def drops(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for (reason, proto), n in self.dp.drops().items():
            key = (DROP_REASONS.get(reason) or str(reason), _proto(proto))
            out[key] = out.get(key, 0) + n
        return out

    def policy_counts(self) -> dict[tuple[int, str, str], int]:
        return {
            (pid, VERDICTS.get(v) or str(v), DIRECTIONS.get(d) or str(d)): n
            for (pid, v, d), n in self.dp.policy_counts().items()
        }

    def pod_counters(self) -> dict[int, PodCounts]:
        return {ep: PodCounts(*c) for ep, c in self.dp.pod_counters().items()}

    def pair_bytes(self) -> dict[tuple[int, int, str], int]:
        return {(s, d, VERDICTS.get(v) or str(v)): n for (s, d, v), n in self.dp.pair_bytes().items()}

    def source_counters(self) -> Iterator[tuple[str, int, int]]:
        for ip, (packets, nbytes) in self.dp.source_counters().items():
            yield ip, packets, nbytes

    def datapath_stats(self) -> Mapping[str, int]:
        return {name: self.dp.stat(which) for name, which in STAT_KEYS.items()}
