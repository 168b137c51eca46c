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

#: IP protocol number -> name (IANA); a protocol not named here is shown by its number
PROTOCOL_NAMES: dict[int, str] = {1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
PROTOCOL_NUMBERS: dict[str, int] = {name: num for num, name in PROTOCOL_NAMES.items()}
#: protocols with ports (NetworkPolicy ports, port filters)
PORTED_PROTOCOLS = ("TCP", "UDP", "SCTP")
#: what a connection (policy explain, what-if) can be
CONNECTION_PROTOCOLS = ("TCP", "UDP", "SCTP", "ICMP", "ICMPv6")

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
        "tcp_flags": list(TCP_FLAG_NAMES),
    }
