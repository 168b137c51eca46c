"""The words a flow is described with, defined once: directions, event types, verdicts, drop reasons
(the C enums of bpf/include/types.h, checked by tests/unit/test_abi.py), IP protocol names and TCP flags.

Decoding, filters, policy, the API and the web UI (served as /api/vocabulary and rendered into the pages)
all read them from here. Stdlib only and cheap to import: the CLI's filter flags use it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class Direction(IntEnum):
    EGRESS = 1  # leaving the source pod (tc ingress of its host veth)
    INGRESS = 2  # entering the destination pod (tc egress of its host veth)


class EventType(IntEnum):
    NEW = 1
    END = 2
    DROP = 3
    REPORT = 4
    PACKET = 5


class Verdict(IntEnum):
    FORWARDED = 1
    DROPPED = 2
    AUDIT = 3


class DropReason(IntEnum):
    NONE = 0
    POLICY_DENIED = 1


#: how each value is spelt in flows, filters, the API and the UI
DIRECTION_NAMES: dict[int, str] = {int(d): d.name.lower() for d in Direction}
EVENT_TYPE_NAMES: dict[int, str] = {int(e): e.name for e in EventType}
VERDICT_NAMES: dict[int, str] = {int(v): v.name for v in Verdict}
DROP_REASON_NAMES: dict[int, str] = {int(r): r.name.lower() for r in DropReason}  # Hubble-style

#: IP protocol number -> name (IANA keywords); a protocol not named here is shown by its number
PROTOCOL_NAMES: dict[int, str] = {
    0: "HOPOPT",
    1: "ICMP",
    2: "IGMP",
    4: "IPIP",
    6: "TCP",
    17: "UDP",
    41: "IPv6",
    43: "IPv6-Route",
    44: "IPv6-Frag",
    47: "GRE",
    50: "ESP",
    51: "AH",
    58: "ICMPv6",
    59: "IPv6-NoNxt",
    60: "IPv6-Opts",
    89: "OSPF",
    103: "PIM",
    112: "VRRP",
    132: "SCTP",
    136: "UDPLite",
}
PROTOCOL_NUMBERS: dict[str, int] = {name: num for num, name in PROTOCOL_NAMES.items()}
#: protocols with ports (NetworkPolicy ports, port filters)
PORTED_PROTOCOLS = ("TCP", "UDP", "SCTP")
#: what a connection (policy explain, what-if) can be
CONNECTION_PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMP", "ICMPv6")

#: protocols whose messages the datapath keys by type (flow_key.dport = type << 8 | code)
MESSAGE_PROTOCOLS = ("ICMP", "ICMPv6", "IGMP")

#: ICMP (RFC 792 and successors) type -> name, and code names of the types that have several
ICMP_TYPES: dict[int, str] = {
    0: "echo-reply",
    3: "destination-unreachable",
    4: "source-quench",
    5: "redirect",
    8: "echo-request",
    9: "router-advertisement",
    10: "router-solicitation",
    11: "time-exceeded",
    12: "parameter-problem",
    13: "timestamp-request",
    14: "timestamp-reply",
    15: "info-request",
    16: "info-reply",
    17: "address-mask-request",
    18: "address-mask-reply",
}
ICMP_CODES: dict[int, dict[int, str]] = {
    3: {
        0: "net-unreachable",
        1: "host-unreachable",
        2: "protocol-unreachable",
        3: "port-unreachable",
        4: "fragmentation-needed",
        5: "source-route-failed",
        6: "net-unknown",
        7: "host-unknown",
        9: "net-prohibited",
        10: "host-prohibited",
        11: "net-tos-unreachable",
        12: "host-tos-unreachable",
        13: "admin-prohibited",
        14: "host-precedence-violation",
        15: "precedence-cutoff",
    },
    5: {0: "net-redirect", 1: "host-redirect", 2: "tos-net-redirect", 3: "tos-host-redirect"},
    11: {0: "ttl-exceeded", 1: "reassembly-time-exceeded"},
    12: {0: "pointer-indicates-error", 1: "missing-option", 2: "bad-length"},
}
#: ICMPv6 (RFC 4443, 4861, 2710, 3810) type -> name; MLD is ICMPv6 130-132 and 143
ICMPV6_TYPES: dict[int, str] = {
    1: "destination-unreachable",
    2: "packet-too-big",
    3: "time-exceeded",
    4: "parameter-problem",
    128: "echo-request",
    129: "echo-reply",
    130: "mld-listener-query",
    131: "mld-listener-report",
    132: "mld-listener-done",
    133: "router-solicitation",
    134: "router-advertisement",
    135: "neighbor-solicitation",
    136: "neighbor-advertisement",
    137: "redirect",
    143: "mld2-listener-report",
}
ICMPV6_CODES: dict[int, dict[int, str]] = {
    1: {
        0: "no-route",
        1: "admin-prohibited",
        2: "beyond-scope",
        3: "address-unreachable",
        4: "port-unreachable",
        5: "failed-policy",
        6: "reject-route",
    },
    3: {0: "hop-limit-exceeded", 1: "reassembly-time-exceeded"},
    4: {0: "erroneous-header-field", 1: "unrecognized-next-header", 2: "unrecognized-option"},
}
#: IGMP (RFC 1112, 2236, 3376) type -> name
IGMP_TYPES: dict[int, str] = {
    0x11: "membership-query",
    0x12: "v1-membership-report",
    0x16: "v2-membership-report",
    0x17: "leave-group",
    0x22: "v3-membership-report",
}
_MESSAGE_TABLES: dict[str, tuple[dict[int, str], dict[int, dict[int, str]]]] = {
    "ICMP": (ICMP_TYPES, ICMP_CODES),
    "ICMPv6": (ICMPV6_TYPES, ICMPV6_CODES),
    "IGMP": (IGMP_TYPES, {}),
}
#: echo request type -> its reply type, per protocol: the messages that form a connection
ECHO_TYPES: dict[str, tuple[int, int]] = {"ICMP": (8, 0), "ICMPv6": (128, 129)}


def message_name(protocol: str, type_: int, code: int = 0) -> str:
    """`echo-request`, `destination-unreachable/port-unreachable`; `type 42` for one not named here."""
    types, codes = _MESSAGE_TABLES.get(protocol, ({}, {}))
    name = types.get(type_) or f"type {type_}"
    if type_ in codes:
        return f"{name}/{codes[type_].get(code) or f'code {code}'}"
    return name if not code or type_ in types else f"{name} code {code}"


def has_ports(protocol: str) -> bool:
    """Whether flows of this protocol have ports to show (TCP, UDP, SCTP)."""
    return protocol in PORTED_PROTOCOLS


#: TCP header flag bits, lowest first (flow_stats.tcp_flags ORs the flags seen)
TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")


def protocol_name(number: int) -> str:
    return PROTOCOL_NAMES.get(number) or str(number)


def as_json() -> dict[str, Any]:
    """The vocabulary for the web UI (and any other client): ordered lists of the spelt values."""
    return {
        "directions": list(DIRECTION_NAMES.values()),
        "event_types": list(EVENT_TYPE_NAMES.values()),
        "verdicts": list(VERDICT_NAMES.values()),
        "drop_reasons": list(DROP_REASON_NAMES.values()),
        "protocols": list(PROTOCOL_NAMES.values()),
        "ported_protocols": list(PORTED_PROTOCOLS),
        # ICMP/ICMPv6/IGMP type -> name (codes of the types that have several under "message_codes")
        "messages": {
            proto: {str(t): n for t, n in types.items()} for proto, (types, _) in _MESSAGE_TABLES.items()
        },
        "message_codes": {
            proto: {str(t): {str(c): n for c, n in cs.items()} for t, cs in codes.items()}
            for proto, (_, codes) in _MESSAGE_TABLES.items()
            if codes
        },
        "tcp_flags": list(TCP_FLAG_NAMES),
    }
