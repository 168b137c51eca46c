"""Python mirrors of bpf/include/types.h, and the map and program names of bpf/include/maps.h and
bpf/lumen.c (defined in plugin/pinned.py, which the plugin imports without ctypes or enum).

The single place outside C that knows the binary layout (plugin/pinned.py packs the endpoint entries).
tests/unit/test_abi.py compiles the C with bcc and fails when an offset, a size, an enum value or a map
name here drifts from what was compiled.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
from enum import IntEnum
from pathlib import Path

# The vocabulary enums live in bpf/vocab.py (stdlib only, imported by the CLI); re-exported here
from bpf.vocab import Direction as Direction  # noqa: F401
from bpf.vocab import DropReason as DropReason  # noqa: F401
from bpf.vocab import EventType as EventType  # noqa: F401
from bpf.vocab import Verdict as Verdict  # noqa: F401

# Program, pin and map names live with the plugin, which opens the pins without importing this module;
# re-exported here, where the agent looks them up.
from plugin import pinned
from plugin.pinned import (  # noqa: F401
    ALL_MAPS as ALL_MAPS,
)
from plugin.pinned import (
    EP_BY_IFINDEX as EP_BY_IFINDEX,
)
from plugin.pinned import (
    MAP_BATCH as MAP_BATCH,
)
from plugin.pinned import (
    MAP_CIDRS as MAP_CIDRS,
)
from plugin.pinned import (
    MAP_CONFIG as MAP_CONFIG,
)
from plugin.pinned import (
    MAP_DROPS as MAP_DROPS,
)
from plugin.pinned import (
    MAP_ENDPOINT_GEN as MAP_ENDPOINT_GEN,
)
from plugin.pinned import (
    MAP_ENDPOINTS as MAP_ENDPOINTS,
)
from plugin.pinned import (
    MAP_EVENTS as MAP_EVENTS,
)
from plugin.pinned import (
    MAP_FLOW_COUNTS as MAP_FLOW_COUNTS,
)
from plugin.pinned import (
    MAP_FLOWS as MAP_FLOWS,
)
from plugin.pinned import (
    MAP_IPCACHE as MAP_IPCACHE,
)
from plugin.pinned import (
    MAP_PAIRS as MAP_PAIRS,
)
from plugin.pinned import (
    MAP_PODS as MAP_PODS,
)
from plugin.pinned import (
    MAP_POLICY as MAP_POLICY,
)
from plugin.pinned import (
    MAP_POLICY_COUNTS as MAP_POLICY_COUNTS,
)
from plugin.pinned import (
    MAP_SLOTS as MAP_SLOTS,
)
from plugin.pinned import (
    MAP_SOURCES as MAP_SOURCES,
)
from plugin.pinned import (
    MAP_STATS as MAP_STATS,
)
from plugin.pinned import (
    MAP_TCP_FLAGS as MAP_TCP_FLAGS,
)
from plugin.pinned import (
    PINNED_MAPS as PINNED_MAPS,
)
from plugin.pinned import (
    PROG_EGRESS as PROG_EGRESS,
)
from plugin.pinned import (
    PROG_INGRESS as PROG_INGRESS,
)
from plugin.pinned import (
    PROG_PINS as PROG_PINS,
)

BPF_DIR = Path(__file__).resolve().parent
SOURCE = BPF_DIR / "lumen.c"
INCLUDE_DIR = BPF_DIR / "include"


DROP_MAX = 2  # lumen_drops holds DROP_MAX x 256 protocols


def flow_count_index(proto: int, verdict: int, direction: int) -> int:
    """lumen_flow_counts key of (protocol number, Verdict, Direction), as bpf/lumen.c computes it."""
    return proto << 3 | (verdict & 3) << 1 | ((direction - 1) & 1)


def pair_index(src_slot: int, dst_slot: int, slots: int) -> int:
    """lumen_pairs key of (source slot, destination slot) with `slots` pod slots."""
    return src_slot * slots + dst_slot


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
    SOURCES_FULL_PACKETS = 8
    SOURCES_FULL_BYTES = 9


STAT_MAX = 10


class IcmpType(IntEnum):
    """The ICMP/ICMPv6 types the datapath tells apart (enum lumen_icmp_type); names for every type are in
    the vocabulary."""

    ECHO_REPLY = 0
    ECHO_REQUEST = 8
    ICMP6_ECHO_REQUEST = 128
    ICMP6_ECHO_REPLY = 129
    ICMP6_MLD_QUERY = 130
    ICMP6_REDIRECT = 137
    ICMP6_MLD2_REPORT = 143


def icmp_key_ports(icmp_type: int, code: int, echo_id: int = 0) -> tuple[int, int]:
    """flow_key (sport, dport) of an ICMP/ICMPv6 message: the echo identifier, then type << 8 | code."""
    return echo_id, icmp_type << 8 | code


def icmp_from_key(sport: int, dport: int) -> tuple[int, int, int]:
    """(type, code, echo identifier) of an ICMP/ICMPv6 flow key's ports."""
    return dport >> 8, dport & 0xFF, sport


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
    "LUMEN_DROP_MAX": DROP_MAX,
    "LUMEN_EP_BY_IFINDEX": EP_BY_IFINDEX,
    **{f"LUMEN_AGG_{m.name}": m.value for m in Aggregation},
    **{f"LUMEN_STAT_{m.name}": m.value for m in Stat},
    "LUMEN_STAT_MAX": STAT_MAX,
    **{f"LUMEN_FLOW_{m.name}": m.value for m in FlowFlag},
    **{f"LUMEN_{'' if m.name.startswith('ICMP6') else 'ICMP_'}{m.name}": m.value for m in IcmpType},
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
        ("src_slot", ct.c_uint16),
        ("dst_slot", ct.c_uint16),
        ("pad", ct.c_uint16),
        ("ep_gen", ct.c_uint32),
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
        ("slot", ct.c_uint16),
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


class PodCounters(ct.Structure):
    _fields_ = [
        ("endpoint_id", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("tx_packets", ct.c_uint64),
        ("tx_bytes", ct.c_uint64),
        ("rx_packets", ct.c_uint64),
        ("rx_bytes", ct.c_uint64),
    ]


class PairCounters(ct.Structure):
    _fields_ = [("bytes", ct.c_uint64 * 4)]  # by Verdict (index 0 unused)


class PolicyCountKey(ct.Structure):
    _fields_ = [
        ("policy_id", ct.c_uint32),
        ("verdict", ct.c_uint8),
        ("direction", ct.c_uint8),
        ("denied", ct.c_uint8),
        ("pad", ct.c_uint8),
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
    MAP_SLOTS: (ct.c_uint32, ct.c_uint32, False),
    MAP_ENDPOINT_GEN: (ct.c_uint32, ct.c_uint32, False),
    MAP_PODS: (ct.c_uint32, PodCounters, True),
    MAP_PAIRS: (ct.c_uint32, PairCounters, False),
    MAP_FLOW_COUNTS: (ct.c_uint32, ct.c_uint64, True),
    MAP_DROPS: (ct.c_uint32, ct.c_uint64, True),
    MAP_POLICY_COUNTS: (PolicyCountKey, ct.c_uint64, True),
    MAP_TCP_FLAGS: (ct.c_uint32, ct.c_uint64, True),
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
    "pod_counters": PodCounters,
    "pair_counters": PairCounters,
    "policy_count_key": PolicyCountKey,
}


def addr_bytes(address: str) -> tuple[bytes, int]:
    """16 address bytes as the C side stores them (IPv4 in the first 4), and the family (4 or 6)."""
    ip = ipaddress.ip_address(address.split("/")[0])
    return ip.packed.ljust(16, b"\0"), ip.version


def addr_str(raw: bytes | ct.Array, family: int) -> str:  # type: ignore[type-arg]
    data = bytes(raw)
    return str(ipaddress.ip_address(data[:4] if family == 4 else data[:16]))


def endpoint_key(address: str) -> EndpointKey:
    """The lumen_endpoints (and lumen_ipcache) key of an address, packed by plugin/pinned.py."""
    return EndpointKey.from_buffer_copy(pinned.endpoint_key(address))


def endpoint_key_ifindex(ifindex: int) -> EndpointKey:
    """The endpoint entry keyed by the pod's host veth (what tc ingress knows of the sender)."""
    return EndpointKey.from_buffer_copy(pinned.endpoint_key_ifindex(ifindex))
