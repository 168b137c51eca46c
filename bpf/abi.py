"""Python mirrors of bpf/include/types.h and the map names of bpf/include/maps.h.

The single place outside C that knows the binary layout. tests/unit/test_abi.py compiles the C with bcc
and fails when an offset, a size, an enum value or a map name here drifts from what was compiled.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
from enum import IntEnum
from pathlib import Path

# The vocabulary enums live in bpf/vocab.py (stdlib only, imported by the CLI); re-exported here
from bpf.vocab import Direction, DropReason, EventType, Verdict

BPF_DIR = Path(__file__).resolve().parent
SOURCE = BPF_DIR / "lumen.c"
INCLUDE_DIR = BPF_DIR / "include"

# Entry points (bpf/lumen.c) and where each attaches on the host veth.
PROG_INGRESS = "lumen_ingress"  # tc ingress: packets leaving the pod
PROG_EGRESS = "lumen_egress"  # tc egress: packets entering the pod

#: program name -> pin file name (bpffs names cannot contain dots); the plugin opens these at ADD
PROG_PINS = {PROG_INGRESS: "prog_lumen_ingress", PROG_EGRESS: "prog_lumen_egress"}

MAP_FLOWS = "lumen_flows"
MAP_SOURCES = "lumen_sources"
MAP_ENDPOINTS = "lumen_endpoints"
MAP_IPCACHE = "lumen_ipcache"
MAP_CIDRS = "lumen_cidrs"
MAP_POLICY = "lumen_policy"
MAP_STATS = "lumen_stats"
MAP_CONFIG = "lumen_config"
MAP_BATCH = "lumen_batch"
MAP_EVENTS = "lumen_events"
#: maps pinned under the pin dir (file name = map name); they survive an agent restart
PINNED_MAPS = (
    MAP_FLOWS,
    MAP_SOURCES,
    MAP_ENDPOINTS,
    MAP_IPCACHE,
    MAP_CIDRS,
    MAP_POLICY,
    MAP_STATS,
    MAP_CONFIG,
)
ALL_MAPS = (*PINNED_MAPS, MAP_BATCH, MAP_EVENTS)


class Aggregation(IntEnum):
    DEFAULT = 0
    NONE = 1


class Stat(IntEnum):
    LOST_EVENTS = 0
    EVENTS = 1
    FLOW_INSERT_FAILED = 2
    FLOWS_CREATED = 3
    REDIRECTED = 4
    UNPARSED = 5
    POLICY_DROPPED = 6
    POLICY_AUDIT = 7


STAT_MAX = 8


class FlowFlag(IntEnum):
    REPLY = 1


class Identity(IntEnum):
    ANY = 0
    HOST = 1
    WORLD = 2
    UNMANAGED = 3
    FIRST_LABEL = 256
    FIRST_CIDR = 16777216


class PolicyKind(IntEnum):
    ISOLATE = 1
    ALLOW = 2


POLICY_DENIED_ID = 0xFFFFFFFF
#: prefix lengths of struct policy_key (see bpf/include/types.h)
POLICY_PREFIX_SUBJECT = 64
POLICY_PREFIX_PEER = 96
POLICY_PREFIX_PROTO = 104
POLICY_PREFIX_PORT = 112  # + bits of the port prefix
CIDR_PREFIX_BASE = 32  # slot, family, pad

# The C enums, by their C names, for the drift test.
C_ENUMS: dict[str, int] = {
    **{f"LUMEN_DIR_{m.name}": m.value for m in Direction},
    **{f"LUMEN_EV_{m.name}": m.value for m in EventType},
    **{f"LUMEN_VERDICT_{m.name}": m.value for m in Verdict},
    **{f"LUMEN_DROP_{m.name}": m.value for m in DropReason},
    **{f"LUMEN_AGG_{m.name}": m.value for m in Aggregation},
    **{f"LUMEN_STAT_{m.name}": m.value for m in Stat},
    "LUMEN_STAT_MAX": STAT_MAX,
    **{f"LUMEN_FLOW_{m.name}": m.value for m in FlowFlag},
    **{f"LUMEN_ID_{m.name}": m.value for m in Identity},
    **{f"LUMEN_POLICY_{m.name}": m.value for m in PolicyKind},
    "LUMEN_POLICY_DENIED_ID": POLICY_DENIED_ID,
}


class FlowKey(ct.Structure):
    _fields_ = [
        ("saddr", ct.c_uint8 * 16),
        ("daddr", ct.c_uint8 * 16),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("family", ct.c_uint8),
        ("direction", ct.c_uint8),
        ("pad", ct.c_uint8),
    ]


class FlowStats(ct.Structure):
    _fields_ = [
        ("packets", ct.c_uint64),
        ("bytes", ct.c_uint64),
        ("payload_bytes", ct.c_uint64),
        ("first_seen_ns", ct.c_uint64),
        ("last_seen_ns", ct.c_uint64),
        ("last_report_ns", ct.c_uint64),
        ("src_ep", ct.c_uint32),
        ("dst_ep", ct.c_uint32),
        ("tcp_flags", ct.c_uint8),
        ("verdict", ct.c_uint8),
        ("drop_reason", ct.c_uint8),
        ("flags", ct.c_uint8),
        ("policy_gen", ct.c_uint32),
        ("egress_policy", ct.c_uint32),
        ("ingress_policy", ct.c_uint32),
        ("tick", ct.c_uint32),
        ("fwd_ifindex", ct.c_uint32),
        ("fwd_mac", ct.c_uint8 * 6),
        ("pad", ct.c_uint8 * 2),
    ]


class FlowEvent(ct.Structure):
    _fields_ = [
        ("key", FlowKey),
        ("ts_ns", ct.c_uint64),
        ("first_seen_ns", ct.c_uint64),
        ("last_seen_ns", ct.c_uint64),
        ("packets", ct.c_uint64),
        ("bytes", ct.c_uint64),
        ("payload_bytes", ct.c_uint64),
        ("src_ep", ct.c_uint32),
        ("dst_ep", ct.c_uint32),
        ("ifindex", ct.c_uint32),
        ("type", ct.c_uint8),
        ("tcp_flags", ct.c_uint8),
        ("verdict", ct.c_uint8),
        ("drop_reason", ct.c_uint8),
        ("egress_policy", ct.c_uint32),
        ("ingress_policy", ct.c_uint32),
        ("flags", ct.c_uint8),
        ("pad", ct.c_uint8 * 7),
    ]


class EndpointKey(ct.Structure):
    _fields_ = [("addr", ct.c_uint8 * 16), ("family", ct.c_uint8), ("pad", ct.c_uint8 * 3)]


class EndpointInfo(ct.Structure):
    _fields_ = [
        ("ifindex", ct.c_uint32),
        ("endpoint_id", ct.c_uint32),
        ("mac", ct.c_uint8 * 6),
        ("pad", ct.c_uint8 * 2),
        ("identity", ct.c_uint32),
    ]


class CidrKey(ct.Structure):
    _fields_ = [
        ("prefixlen", ct.c_uint32),
        ("slot", ct.c_uint8),
        ("family", ct.c_uint8),
        ("pad", ct.c_uint8 * 2),
        ("addr", ct.c_uint8 * 16),
    ]


class PolicyKey(ct.Structure):
    _fields_ = [
        ("prefixlen", ct.c_uint32),
        ("slot", ct.c_uint8),
        ("direction", ct.c_uint8),
        ("pad", ct.c_uint8 * 2),
        ("subject", ct.c_uint32),
        ("peer", ct.c_uint32),
        ("proto", ct.c_uint8),
        ("pad2", ct.c_uint8),
        ("port", ct.c_uint16),  # network byte order
    ]


class PolicyValue(ct.Structure):
    _fields_ = [
        ("policy_id", ct.c_uint32),
        ("kind", ct.c_uint8),
        ("audit", ct.c_uint8),
        ("pad", ct.c_uint8 * 2),
    ]


class SourceCounters(ct.Structure):
    _fields_ = [("packets", ct.c_uint64), ("bytes", ct.c_uint64)]


class Config(ct.Structure):
    _fields_ = [
        ("aggregation", ct.c_uint32),
        ("redirect", ct.c_uint32),
        ("report_interval_ns", ct.c_uint64),
        ("wakeup_batch", ct.c_uint32),
        ("policy_gen", ct.c_uint32),
        ("policy_slot", ct.c_uint32),
        ("audit", ct.c_uint32),
    ]


#: pinned map -> (key type, value type, per-CPU): the loader opens the pins with these, the compile step
#: recreates a pin whose sizes differ, the drift test compares them with the compiled maps
PINNED_LAYOUTS: dict[str, tuple[type, type, bool]] = {
    MAP_FLOWS: (FlowKey, FlowStats, False),
    MAP_SOURCES: (EndpointKey, SourceCounters, True),
    MAP_ENDPOINTS: (EndpointKey, EndpointInfo, False),
    MAP_IPCACHE: (EndpointKey, ct.c_uint32, False),
    MAP_CIDRS: (CidrKey, ct.c_uint32, False),
    MAP_POLICY: (PolicyKey, PolicyValue, False),
    MAP_STATS: (ct.c_uint32, ct.c_uint64, True),
    MAP_CONFIG: (ct.c_uint32, Config, False),
}

#: C struct name -> Python mirror, for the drift test
MIRRORS: dict[str, type[ct.Structure]] = {
    "flow_key": FlowKey,
    "flow_stats": FlowStats,
    "flow_event": FlowEvent,
    "endpoint_key": EndpointKey,
    "endpoint_info": EndpointInfo,
    "source_counters": SourceCounters,
    "lumen_config": Config,
    "cidr_key": CidrKey,
    "policy_key": PolicyKey,
    "policy_value": PolicyValue,
}


def addr_bytes(address: str) -> tuple[bytes, int]:
    """16 address bytes as the C side stores them (IPv4 in the first 4), and the family (4 or 6)."""
    ip = ipaddress.ip_address(address.split("/")[0])
    return ip.packed.ljust(16, b"\0"), ip.version


def addr_str(raw: bytes | ct.Array, family: int) -> str:  # type: ignore[type-arg]
    data = bytes(raw)
    return str(ipaddress.ip_address(data[:4] if family == 4 else data[:16]))


def endpoint_key(address: str) -> EndpointKey:
    packed, family = addr_bytes(address)
    key = EndpointKey()
    ct.memmove(key.addr, packed, 16)
    key.family = family
    return key
