"""What the agent pins and the plugin opens: the names of the programs and maps under the pin dir, and the
bytes of an endpoint map entry. The one place for both (bpf/abi.py takes its names from here).

Stdlib only: the plugin's installed copy carries it. bpf/abi.py mirrors the same layouts in ctypes, and
tests/unit/test_abi.py checks the bytes packed here against those mirrors and the compiled C.
"""

from __future__ import annotations

import struct

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
MAP_SLOTS = "lumen_slots"
MAP_ENDPOINT_GEN = "lumen_endpoint_gen"
MAP_PODS = "lumen_pods"
MAP_PAIRS = "lumen_pairs"
MAP_FLOW_COUNTS = "lumen_flow_counts"
MAP_DROPS = "lumen_drops"
MAP_POLICY_COUNTS = "lumen_policy_counts"
MAP_TCP_FLAGS = "lumen_tcp_flags"
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
    MAP_SLOTS,
    MAP_ENDPOINT_GEN,
    MAP_PODS,
    MAP_PAIRS,
    MAP_FLOW_COUNTS,
    MAP_DROPS,
    MAP_POLICY_COUNTS,
    MAP_TCP_FLAGS,
)
ALL_MAPS = (*PINNED_MAPS, MAP_BATCH, MAP_EVENTS)

# struct endpoint_key { u8 addr[16]; u8 family; u8 pad[3]; }
ENDPOINT_KEY = struct.Struct("=16sB3x")
# struct endpoint_info { u32 ifindex; u32 endpoint_id; u8 mac[6]; u16 slot; u32 identity; }
ENDPOINT_INFO = struct.Struct("=II6sHI")
EP_BY_IFINDEX = 0  # endpoint_key.family of the entry keyed by the host veth's ifindex
IDENTITY_UNMANAGED = 3  # enum lumen_identity: labels unknown at ADD


def endpoint_key(address: str) -> bytes:
    """The lumen_endpoints key of an address (IPv4 in the first 4 bytes), with or without a prefix."""
    from plugin.ip import ip_address

    ip = ip_address(address.split("/")[0])
    return ENDPOINT_KEY.pack(ip.packed.ljust(16, b"\0"), ip.version)


def endpoint_key_ifindex(ifindex: int) -> bytes:
    """The endpoint entry tc ingress finds its sender by: the host veth, whatever source address."""
    return ENDPOINT_KEY.pack(struct.pack("=I", ifindex), EP_BY_IFINDEX)


def endpoint_info(
    ifindex: int, endpoint_id: int, mac: str, identity: int = IDENTITY_UNMANAGED, slot: int = 0
) -> bytes:
    """The lumen_endpoints value: where the pod is (host veth ifindex), who it is (endpoint id, policy
    identity), its MAC (the redirect target's, `aa:bb:..`; empty when unknown) and its counter slot
    (plugin/slots.py; 0: none)."""
    raw = bytes(int(b, 16) for b in mac.split(":")) if mac else b""
    return ENDPOINT_INFO.pack(ifindex, endpoint_id, raw, slot, identity)


def endpoint_identity(value: bytes) -> int:
    return int(ENDPOINT_INFO.unpack(value)[-1])


def with_identity(value: bytes, identity: int) -> bytes:
    """A packed value with another policy identity (the pod's labels changed or became known)."""
    fields = list(ENDPOINT_INFO.unpack(value))
    fields[-1] = identity  # the last field of struct endpoint_info
    return ENDPOINT_INFO.pack(*fields)
