"""Attach the agent's pinned TC programs to a pod's host veth and record the pod in the endpoint map.

No compiler on this path: the agent compiled and pinned everything; the plugin only opens pins.
"""

from __future__ import annotations

import os

from plugin import bpfsys, jsonio, log, slots
from plugin.netlink import Netlink
from plugin.pinned import (
    ENDPOINT_INFO,
    IDENTITY_UNMANAGED,
    MAP_ENDPOINTS,
    PROG_EGRESS,
    PROG_INGRESS,
    PROG_PINS,
    endpoint_info,
    endpoint_key,
    endpoint_key_ifindex,
)

PIN_PROG_INGRESS = PROG_PINS[PROG_INGRESS]
PIN_PROG_EGRESS = PROG_PINS[PROG_EGRESS]
PIN_ENDPOINTS = MAP_ENDPOINTS  # maps are pinned under their own name
# Written by the agent (exporter/identities.py) before pods start: {"pods": {"ns/name": id},
# "namespaces": {"ns": id}}. Read here so a pod's identity is in the map before its first packet.
IDENTITIES_FILE = "identities.json"


def pod_identity(state_dir: str, namespace: str, pod: str) -> int:
    """The pod's policy identity as the agent allocated it; UNMANAGED when the agent did not know it."""
    try:
        with open(os.path.join(state_dir, IDENTITIES_FILE), "rb") as f:
            data = jsonio.loads(f.read())
        ident = data["pods"].get(f"{namespace}/{pod}") or data["namespaces"].get(namespace)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return IDENTITY_UNMANAGED
    return ident if isinstance(ident, int) and ident > 0 else IDENTITY_UNMANAGED


def pinned(pin_dir: str) -> bool:
    return all(
        os.path.exists(os.path.join(pin_dir, n)) for n in (PIN_PROG_INGRESS, PIN_PROG_EGRESS, PIN_ENDPOINTS)
    )


def _open_counters(pin_dir: str, fds: list[int]) -> tuple[int, int, int, int] | None:
    """fds of lumen_slots, lumen_pods, lumen_pairs and lumen_endpoint_gen (appended to `fds` to be
    closed), or None when the pinned datapath predates counter slots."""
    names = (slots.PIN_SLOTS, slots.PIN_PODS, slots.PIN_PAIRS, slots.PIN_ENDPOINT_GEN)
    if not all(os.path.exists(os.path.join(pin_dir, n)) for n in names):
        return None
    opened = [bpfsys.obj_get(os.path.join(pin_dir, n)) for n in names]
    fds.extend(opened)
    return opened[0], opened[1], opened[2], opened[3]


def attach_endpoint(
    pin_dir: str, host_ifindex: int, ips: list[str], endpoint_id: int, mac: str, identity: int
) -> bool:
    """True when the pod is observed; False (touching nothing) when no agent ever pinned the datapath."""
    if not pinned(pin_dir):
        return False
    fds: list[int] = []
    slot = 0
    counters = None
    try:
        for name in (PIN_PROG_INGRESS, PIN_PROG_EGRESS, PIN_ENDPOINTS):
            fds.append(bpfsys.obj_get(os.path.join(pin_dir, name)))
        prog_in, prog_eg, endpoints = fds
        counters = _open_counters(pin_dir, fds)
        if counters is not None:
            slot = slots.claim(counters[0], counters[1], endpoint_id)
            if not slot:
                log.warn("every counter slot is taken: this pod's counters are not kept (agent --pod-slots)")
        value = endpoint_info(host_ifindex, endpoint_id, mac, identity, slot)
        for ip in ips:
            bpfsys.map_update(endpoints, endpoint_key(ip), value)
        bpfsys.map_update(endpoints, endpoint_key_ifindex(host_ifindex), value)
        if counters is not None:
            slots.bump_generation(counters[3])
        with Netlink() as nl:
            nl.tc_clsact_add(host_ifindex)
            nl.tc_bpf_attach(host_ifindex, "ingress", prog_in, PROG_INGRESS)
            nl.tc_bpf_attach(host_ifindex, "egress", prog_eg, PROG_EGRESS)
    except BaseException:
        if slot and counters is not None:
            slots.release(*counters[:3], slot, endpoint_id)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return True


def detach_endpoint(pin_dir: str, ips: list[str]) -> None:
    """Remove the pod's endpoint entries and free its counter slot (its TC filters go with its veth).
    Idempotent."""
    path = os.path.join(pin_dir, PIN_ENDPOINTS)
    if not os.path.exists(path):
        return
    fds = [bpfsys.obj_get(path)]
    try:
        info = None
        for ip in ips:
            key = endpoint_key(ip)
            raw = bpfsys.map_lookup(fds[0], key, ENDPOINT_INFO.size)
            if raw is not None and info is None:
                info = ENDPOINT_INFO.unpack(raw)
            bpfsys.map_delete(fds[0], key)
        if info is None:
            return
        ifindex, endpoint_id, _, slot, _ = info
        bpfsys.map_delete(fds[0], endpoint_key_ifindex(ifindex))
        counters = _open_counters(pin_dir, fds)
        if counters is not None:
            slots.bump_generation(counters[3])  # before the slot can be claimed again
            if slot:
                slots.release(*counters[:3], slot, endpoint_id)
    finally:
        for fd in fds:
            os.close(fd)
