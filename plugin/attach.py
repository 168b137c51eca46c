"""Attach the agent's pinned TC programs to a pod's host veth and record the pod in the endpoint map.

No compiler on this path: the agent compiled and pinned everything; the plugin only opens pins.
"""

from __future__ import annotations

import os

from plugin import bpfsys, jsonio
from plugin.netlink import Netlink

# Pin names (bpf/abi.py is the source of truth; tests/unit/test_abi.py checks these match).
PIN_PROG_INGRESS = "prog_lumen_ingress"
PIN_PROG_EGRESS = "prog_lumen_egress"
PIN_ENDPOINTS = "lumen_endpoints"
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
        return bpfsys.IDENTITY_UNMANAGED
    return ident if isinstance(ident, int) and ident > 0 else bpfsys.IDENTITY_UNMANAGED


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
        value = bpfsys.endpoint_info(host_ifindex, endpoint_id, mac, identity)
        for ip in ips:
            bpfsys.map_update(endpoints, bpfsys.endpoint_key(ip), value)
        with Netlink() as nl:
            nl.tc_clsact_add(host_ifindex)
            nl.tc_bpf_attach(host_ifindex, "ingress", prog_in, "lumen_ingress")
            nl.tc_bpf_attach(host_ifindex, "egress", prog_eg, "lumen_egress")
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
            bpfsys.map_delete(fd, bpfsys.endpoint_key(ip))
    finally:
        os.close(fd)
