"""Attach the agent's pinned TC programs to a pod's host veth and record the pod in the endpoint map.

No compiler on this path: the agent compiled and pinned everything; the plugin only opens pins.
"""

from __future__ import annotations

import os

from plugin import bpfsys, jsonio
from plugin.netlink import Netlink
from plugin.pinned import (
    IDENTITY_UNMANAGED,
    MAP_ENDPOINTS,
    PROG_EGRESS,
    PROG_INGRESS,
    PROG_PINS,
    endpoint_info,
    endpoint_key,
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


def attach_endpoint(
    pin_dir: str, host_ifindex: int, ips: list[str], endpoint_id: int, mac: str, identity: int
) -> bool:
    """True when the pod is observed; False (touching nothing) when no agent ever pinned the datapath."""
    if not pinned(pin_dir):
        return False
    fds: list[int] = []
    try:
        for name in (PIN_PROG_INGRESS, PIN_PROG_EGRESS, PIN_ENDPOINTS):
            fds.append(bpfsys.obj_get(os.path.join(pin_dir, name)))
        prog_in, prog_eg, endpoints = fds
        value = endpoint_info(host_ifindex, endpoint_id, mac, identity)
        for ip in ips:
            bpfsys.map_update(endpoints, endpoint_key(ip), value)
        with Netlink() as nl:
            nl.tc_clsact_add(host_ifindex)
            nl.tc_bpf_attach(host_ifindex, "ingress", prog_in, PROG_INGRESS)
            nl.tc_bpf_attach(host_ifindex, "egress", prog_eg, PROG_EGRESS)
    finally:
        for fd in fds:
            os.close(fd)
    return True


def detach_endpoint(pin_dir: str, ips: list[str]) -> None:
    """Remove the pod's endpoint entries (its TC filters go with its veth). Idempotent."""
    path = os.path.join(pin_dir, PIN_ENDPOINTS)
    if not os.path.exists(path):
        return
    fd = bpfsys.obj_get(path)
    try:
        for ip in ips:
            bpfsys.map_delete(fd, endpoint_key(ip))
    finally:
        os.close(fd)
