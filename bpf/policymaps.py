"""The policy maps: a compiled policy set encoded into lumen_policy and lumen_cidrs (struct policy_key,
struct cidr_key of bpf/include/types.h), swapped in by generation.

The compiled set comes from exporter/policy/compiler.py; this module only knows its shape (`CompiledPolicy`),
so nothing in bpf/ imports from exporter/.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
from collections.abc import Mapping
from typing import Protocol

from bpf import abi
from bpf.pins import PinnedMaps


class AllowEntry(Protocol):
    """One admitting LPM entry (exporter.policy.compiler.PolicyEntry)."""

    @property
    def prefixlen(self) -> int: ...

    @property
    def direction(self) -> str: ...

    @property
    def subject(self) -> int: ...

    @property
    def peer(self) -> int: ...

    @property
    def proto(self) -> int: ...

    @property
    def port(self) -> int: ...


class CompiledPolicy(Protocol):
    """exporter.policy.compiler.Compiled: isolation markers, allow entries and CIDR identities."""

    @property
    def markers(self) -> Mapping[tuple[str, int], tuple[int, bool]]: ...

    @property
    def allows(self) -> Mapping[AllowEntry, int]: ...

    @property
    def cidrs(self) -> Mapping[ipaddress.IPv4Network | ipaddress.IPv6Network, int]: ...


def network_key(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[bytes, int, int]:
    """16 address bytes (IPv4 in the first 4), family, prefix length: as struct cidr_key holds them."""
    return net.network_address.packed.ljust(16, b"\0"), net.version, net.prefixlen


_DIRS = {"egress": int(abi.Direction.EGRESS), "ingress": int(abi.Direction.INGRESS)}


def _htons(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), "little")


class PolicyMaps(PinnedMaps):
    def apply_policy(self, compiled: CompiledPolicy, audit: bool = False) -> int:
        """Write `compiled` into the idle half of the policy and CIDR maps, then switch to it in one
        config write and bump the generation (flows decide again on their next packet); the old half
        is emptied after. Returns the new generation."""
        cfg = self.config()
        slot = (cfg.policy_slot ^ 1) & 1
        policy, cidrs = self._map(abi.MAP_POLICY), self._map(abi.MAP_CIDRS)
        self._clear_slot(slot)
        for net, ident in compiled.cidrs.items():
            addr, family, plen = network_key(net)
            ckey = abi.CidrKey(prefixlen=abi.CIDR_PREFIX_BASE + plen, slot=slot, family=family)
            ct.memmove(ckey.addr, addr, 16)
            cidrs[ckey] = ct.c_uint32(ident)
        for (direction, subject), (pid, audit_ns) in compiled.markers.items():
            key = abi.PolicyKey(
                prefixlen=abi.POLICY_PREFIX_SUBJECT, slot=slot, direction=_DIRS[direction], subject=subject
            )
            policy[key] = abi.PolicyValue(policy_id=pid, kind=abi.PolicyKind.ISOLATE, audit=int(audit_ns))
        for e, pid in compiled.allows.items():
            key = abi.PolicyKey(
                prefixlen=e.prefixlen,
                slot=slot,
                direction=_DIRS[e.direction],
                subject=e.subject,
                peer=e.peer,
                proto=e.proto,
                port=_htons(e.port),
            )
            policy[key] = abi.PolicyValue(policy_id=pid, kind=abi.PolicyKind.ALLOW)
        cfg.policy_slot = slot
        cfg.policy_gen = (cfg.policy_gen + 1) & 0xFFFFFFFF or 1
        cfg.audit = int(audit)
        self._map(abi.MAP_CONFIG)[ct.c_uint32(0)] = cfg
        self._clear_slot(slot ^ 1)
        return int(cfg.policy_gen)

    def bump_policy_generation(self) -> int:
        """Flows decide again on their next packet (a pod's identity changed)."""
        cfg = self.config()
        cfg.policy_gen = (cfg.policy_gen + 1) & 0xFFFFFFFF or 1
        self._map(abi.MAP_CONFIG)[ct.c_uint32(0)] = cfg
        return int(cfg.policy_gen)

    def _clear_slot(self, slot: int) -> None:
        for name in (abi.MAP_POLICY, abi.MAP_CIDRS):
            table = self._map(name)
            stale = [bytes(k) for k in table.keys() if k.slot == slot]
            for raw in stale:
                try:
                    del table[table.Key.from_buffer_copy(raw)]
                except KeyError:
                    pass

    def policy_entries(self) -> int:
        return sum(1 for _ in self._map(abi.MAP_POLICY).keys())
