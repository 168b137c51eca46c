"""Counter slots: each local pod's index into the per-pod counter arrays (bpf/include/maps.h: lumen_slots,
lumen_pods, lumen_pairs), and the endpoint generation that tells cached flow entries to look again.

A slot is claimed at ADD with BPF_NOEXIST in lumen_slots (atomic: two ADDs never get the same one) and
its counters zeroed before the pod's endpoint entries name it; DEL zeroes every pair it is an end of, then
releases it. So a new pod never inherits a previous pod's counts. The agent claims slots for
pods attached without one and releases claims whose pod veth is gone (an ADD killed half way).
Stdlib only, like the rest of the plugin; the agent calls the same functions with its own fds.
"""

from __future__ import annotations

import struct

from plugin import bpfsys
from plugin.pinned import MAP_ENDPOINT_GEN, MAP_PAIRS, MAP_PODS, MAP_SLOTS

# Maps are pinned under their own name.
PIN_SLOTS = MAP_SLOTS
PIN_PODS = MAP_PODS
PIN_PAIRS = MAP_PAIRS
PIN_ENDPOINT_GEN = MAP_ENDPOINT_GEN

U32 = struct.Struct("=I")
# struct pod_counters { u32 endpoint_id; u32 pad; u64 tx_packets, tx_bytes, rx_packets, rx_bytes; }
POD_COUNTERS = struct.Struct("=I4x4Q")
PAIR_COUNTERS_SIZE = 32  # struct pair_counters { u64 bytes[4]; }


def claim(slots_fd: int, pods_fd: int, endpoint_id: int) -> int:
    """A free slot for `endpoint_id`, its counters zeroed; 0 when every slot is taken."""
    n = bpfsys.map_max_entries(pods_fd)
    for i in range(n - 1):
        slot = 1 + (endpoint_id + i) % (n - 1)  # start where this id hashes: usually one try
        try:
            bpfsys.map_update(slots_fd, U32.pack(slot), U32.pack(endpoint_id), bpfsys.BPF_NOEXIST)
        except FileExistsError:
            continue
        try:
            # every CPU's copy: zeroed, naming its new owner (40 bytes: already a multiple of 8)
            per_cpu = POD_COUNTERS.pack(endpoint_id, 0, 0, 0, 0)
            bpfsys.map_update(pods_fd, U32.pack(slot), per_cpu * bpfsys.possible_cpus())
        except OSError:
            bpfsys.map_delete(slots_fd, U32.pack(slot))
            raise
        return slot
    return 0


def release(slots_fd: int, pods_fd: int, pairs_fd: int, slot: int, endpoint_id: int) -> None:
    """Free `slot` if `endpoint_id` still holds it (idempotent): first zero every pair it is an end of
    (one batched call, ~0.5 ms at 256 slots: paid at DEL rather than ADD), so the next pod to claim it
    starts from zero. Call it after bumping the endpoint generation: no flow entry counts into it then."""
    held = bpfsys.map_lookup(slots_fd, U32.pack(slot), U32.size)
    if held is None or U32.unpack(held)[0] != endpoint_id:
        return
    n = bpfsys.map_max_entries(pods_fd)
    pairs = [slot * n + other for other in range(n)] + [
        other * n + slot for other in range(n) if other != slot
    ]
    keys = struct.pack(f"={len(pairs)}I", *pairs)
    bpfsys.map_update_batch(pairs_fd, keys, bytes(PAIR_COUNTERS_SIZE * len(pairs)), len(pairs))
    bpfsys.map_delete(slots_fd, U32.pack(slot))


def bump_generation(gen_fd: int) -> None:
    """After a change to lumen_endpoints: read, then write the read value + 1. Two concurrent bumps may
    write the same value, but both read it after their own change, so a flow entry that sees the new
    value resolves its ends after both changes."""
    raw = bpfsys.map_lookup(gen_fd, U32.pack(0), U32.size)
    gen = U32.unpack(raw)[0] if raw is not None else 0
    bpfsys.map_update(gen_fd, U32.pack(0), U32.pack((gen + 1) & 0x7FFFFFFF))
