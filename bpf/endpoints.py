"""Local pods in the datapath: attaching the programs to a pod's host veth, its lumen_endpoints entries
(packed by plugin/pinned.py, as the plugin's ADD writes them), counter slots, identities, and the
ipcache of non-pod addresses."""

from __future__ import annotations

import ctypes as ct

from bpf import abi
from bpf.pins import PinnedMaps
from plugin import endpoint, pinned, slots
from plugin.netlink import Netlink


class EndpointMaps(PinnedMaps):
    def set_endpoint_identity(self, ips: list[str], identity: int) -> None:
        """Change the identity of a local pod's endpoint entries (its labels changed or became known)."""
        table = self._map(abi.MAP_ENDPOINTS)
        for ip in ips:
            key = pinned.endpoint_key(ip)
            try:
                value = bytes(table[key])
            except KeyError:
                continue
            if pinned.endpoint_identity(value) != identity:
                table[key] = pinned.with_identity(value, identity)

    def endpoint_identities(self) -> dict[str, int]:
        return {
            abi.addr_str(k.addr, k.family): int(v.identity)
            for k, v in self._map(abi.MAP_ENDPOINTS).items()
            if k.family != abi.EP_BY_IFINDEX
        }

    def set_ipcache(self, identities: dict[str, int]) -> None:
        """Exactly these non-pod addresses -> identity (the node's own addresses, remote pods)."""
        table = self._map(abi.MAP_IPCACHE)
        want = {bytes(abi.endpoint_key(ip)): ident for ip, ident in identities.items()}
        for k in [bytes(k) for k in table.keys()]:
            if k not in want:
                try:
                    del table[abi.EndpointKey.from_buffer_copy(k)]
                except KeyError:
                    pass
        for raw, ident in want.items():
            table[abi.EndpointKey.from_buffer_copy(raw)] = ct.c_uint32(ident)

    # -- attaching -------------------------------------------------------------------------------

    def attach(self, ifindex: int) -> None:
        """clsact ingress + egress on a host veth; replaces older programs (idempotent)."""
        with Netlink() as nl:
            nl.tc_clsact_add(ifindex)
            nl.tc_bpf_attach(ifindex, "ingress", self.progs[abi.PROG_INGRESS].fd, abi.PROG_INGRESS)
            nl.tc_bpf_attach(ifindex, "egress", self.progs[abi.PROG_EGRESS].fd, abi.PROG_EGRESS)

    def add_endpoint(
        self, ips: list[str], ifindex: int, endpoint_id: int, mac: str, identity: int = abi.Identity.UNMANAGED
    ) -> int:
        """What the plugin's ADD writes, for a pod attached without it; keeps the pod's counter slot if
        its entries name one it still holds, else claims one. Returns the slot (0: every slot taken)."""
        table = self._map(abi.MAP_ENDPOINTS)
        slot = self._held_slot(ips, endpoint_id)
        if not slot:
            slot = slots.claim(self._map(abi.MAP_SLOTS).fd, self._map(abi.MAP_PODS).fd, endpoint_id)
        value = pinned.endpoint_info(ifindex, endpoint_id, mac, identity, slot)
        for ip in ips:
            table[pinned.endpoint_key(ip)] = value
        table[pinned.endpoint_key_ifindex(ifindex)] = value
        slots.bump_generation(self._map(abi.MAP_ENDPOINT_GEN).fd)
        return slot

    def _held_slot(self, ips: list[str], endpoint_id: int) -> int:
        claims = self._map(abi.MAP_SLOTS)
        for ip in ips:
            try:
                info = abi.EndpointInfo.from_buffer_copy(
                    bytes(self._map(abi.MAP_ENDPOINTS)[abi.endpoint_key(ip)])
                )
                held = claims[ct.c_uint32(info.slot)] if info.slot else 0
            except KeyError:
                continue
            if info.endpoint_id == endpoint_id and held == endpoint_id:
                return int(info.slot)
        return 0

    def release_stale_slots(self, alive: set[int]) -> list[int]:
        """Free the slots of endpoints that are not in `alive` and whose host veth is gone (an ADD killed
        between its claim and its record; DEL frees the others). Returns the slots freed."""
        freed = []
        claims, pods, pairs = (self._map(m).fd for m in (abi.MAP_SLOTS, abi.MAP_PODS, abi.MAP_PAIRS))
        with Netlink() as nl:
            for slot, ep in self.slot_claims().items():
                if ep in alive or nl.link(index=ep) is not None:
                    continue
                slots.release(claims, pods, pairs, slot, ep)
                freed.append(slot)
        return freed

    def sync_endpoints(self, state_dir: str) -> list[int]:
        """Attach to every ready pod veth of the endpoint records (pods added while no agent ran, and
        pods still running the previous agent's programs); returns the ifindexes attached."""
        attached = []
        with Netlink() as nl:
            for rec in endpoint.all_records(state_dir):
                if rec.get("state") != "ready" or not rec.get("hostIfindex"):
                    continue
                link = nl.link(index=int(rec["hostIfindex"]))
                if link is None or link.name != rec.get("hostVeth"):
                    continue  # the pod is gone; DEL or GC will remove its record
                ips = rec["ips"] + rec.get("linkLocal", [])
                self.add_endpoint(
                    ips,
                    link.index,
                    int(rec.get("endpointId", link.index)),
                    rec["mac"],
                    int(rec.get("identity") or abi.Identity.UNMANAGED),
                )
                self.attach(link.index)
                attached.append(link.index)
        return attached
