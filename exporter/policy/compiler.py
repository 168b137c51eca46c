"""Compile NetworkPolicies into the datapath's lookup tables: what engine.py decides per connection,
flattened into entries keyed by identity so the kernel's cost per packet does not grow with rules.

Logic:
 1. Subjects and label peers are identities (exporter/identities.py): one per distinct namespace +
    labels + named ports, so every pod of an identity is selected, and resolves named ports, alike.
 2. A subject isolated in a direction gets a marker entry; every rule of every selecting policy adds
    allow entries (peer identity or ANY) x (protocol, port prefix). A port range becomes the few port
    prefixes that cover it exactly.
 3. ipBlock: every cidr and except of every policy gets a CIDR identity; the kernel finds the longest
    prefix holding an address. A block admits the CIDR identity of prefix P when P lies in its cidr
    and in none of its excepts: an address's longest prefix then decides exactly as `contains` does.
 4. Duplicate keys keep the first policy by namespace/name (the kernel names one admitting policy).
Named ports in egress rules resolve on the destination pod: a rule to anyone gets an entry per label
identity; an ipBlock peer with a named port admits no pod by address (its port is the pod's, and a
CIDR identity has no pod), where the engine would: a known gap, no upstream test depends on it.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bpf import abi
from bpf.vocab import PROTOCOL_NUMBERS
from exporter.policy.cluster import NAMESPACE_NAME_LABEL, ContainerPort
from exporter.policy.model import Direction, IPBlock, IPNetwork, NetworkPolicy, Peer, PolicyPort

ANY = int(abi.Identity.ANY)  # peer identity: any peer


@dataclass(frozen=True)
class LabelSet:
    """What an identity stands for. Named ports are part of it: they change what a rule admits."""

    namespace: str
    labels: tuple[tuple[str, str], ...] = ()
    named_ports: tuple[tuple[str, str, int], ...] = ()  # (name, protocol, port)

    @classmethod
    def of(cls, namespace: str, labels: Mapping[str, str], ports: Iterable[ContainerPort] = ()) -> LabelSet:
        """A pod's label set: its labels and its named container ports, in a canonical order."""
        return cls(
            namespace,
            tuple(sorted(labels.items())),
            tuple(sorted((p.name, p.protocol, p.port) for p in ports if p.name)),
        )

    def named_port(self, name: str, protocol: str) -> int | None:
        return next((p for n, proto, p in self.named_ports if n == name and proto == protocol), None)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def text(self) -> str:
        labels = ",".join(f"{k}={v}" for k, v in self.labels)
        ports = ",".join(f"{n}:{p}/{proto}" for n, proto, p in self.named_ports)
        return f"{self.namespace}[{labels}]" + (f"ports[{ports}]" if ports else "")


@dataclass(frozen=True, order=True)
class PolicyEntry:
    """One struct policy_key. port_bits: None = any protocol; 0 with a proto = any port of it."""

    direction: Direction
    subject: int
    peer: int
    proto: int = 0
    port: int = 0
    port_bits: int | None = None  # None: prefix stops at peer; else 0..16 bits of the port

    @property
    def prefixlen(self) -> int:
        if self.port_bits is None or not self.proto:
            return abi.POLICY_PREFIX_PEER
        return abi.POLICY_PREFIX_PORT + self.port_bits


@dataclass
class Compiled:
    """Entries of one generation. markers: (direction, subject) -> audit; allows: entry -> policy id."""

    markers: dict[tuple[Direction, int], tuple[int, bool]] = field(default_factory=dict)
    allows: dict[PolicyEntry, int] = field(default_factory=dict)
    cidrs: dict[IPNetwork, int] = field(default_factory=dict)
    policy_names: dict[int, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.markers) + len(self.allows)


def policy_id(key: str) -> int:
    """A stable number for namespace/name: the same across agent restarts, so flows keep their names."""
    n = zlib.crc32(key.encode()) & 0x7FFFFFFF
    return n or 1


def port_prefixes(first: int, last: int) -> list[tuple[int, int]]:
    """The fewest (value, prefix bits) of a 16-bit port that cover first..last exactly."""
    out = []
    lo = first
    while lo <= last:
        bits = 16
        while bits > 0:
            size = 1 << (16 - bits + 1)
            if lo % size or lo + size - 1 > last:
                break
            bits -= 1
        out.append((lo, bits))
        lo += 1 << (16 - bits)
    return out


def _named(ports: tuple[PolicyPort, ...]) -> bool:
    return any(isinstance(pp.port, str) for pp in ports)


def _peer_selects(peer: Peer, policy_namespace: str, target: LabelSet, ns_labels: Mapping[str, str]) -> bool:
    if peer.namespace_selector is None:
        ns_ok = target.namespace == policy_namespace
    else:
        ns_ok = peer.namespace_selector.matches(ns_labels)
    return ns_ok and (peer.pod_selector is None or peer.pod_selector.matches(target.label_map))


class Compiler:
    def __init__(
        self,
        identities: Mapping[int, LabelSet],
        namespace_labels: Mapping[str, Mapping[str, str]],
        audit_namespaces: Iterable[str] = (),
    ) -> None:
        self.identities = identities
        self.audit = set(audit_namespaces)
        self._ns_labels = namespace_labels
        self._block_cache: dict[IPBlock, list[int]] = {}
        self._cidr_nets: list[IPNetwork] = []  # out.cidrs' prefixes, sorted by address
        self._cidr_keys: list[tuple[int, int]] = []  # their (version, network address)

    def ns_labels(self, name: str) -> Mapping[str, str]:
        return {**self._ns_labels.get(name, {}), NAMESPACE_NAME_LABEL: name}

    def compile(self, policies: Iterable[NetworkPolicy]) -> Compiled:
        ordered = sorted(policies, key=lambda p: p.key)
        out = Compiled()
        out.cidrs = self._cidr_identities(ordered)
        self._cidr_nets = list(out.cidrs)
        self._cidr_keys = [(n.version, int(n.network_address)) for n in self._cidr_nets]
        self._block_cache = {}
        for p in ordered:
            out.policy_names[policy_id(p.key)] = p.key
        for ident, subject in sorted(self.identities.items()):
            for direction in ("ingress", "egress"):
                selecting = [
                    p
                    for p in ordered
                    if p.namespace == subject.namespace
                    and direction in p.policy_types
                    and p.pod_selector.matches(subject.label_map)
                ]
                if not selecting:
                    continue
                out.markers[(direction, ident)] = (
                    policy_id(selecting[0].key),
                    subject.namespace in self.audit,
                )
                for p in selecting:
                    pid = policy_id(p.key)
                    for rule in p.rules(direction):
                        peers = self._peers(rule.peers, p.namespace, out.cidrs)
                        if direction == "egress" and not rule.peers and _named(rule.ports):
                            # "to anyone" on a named port: the port is each destination pod's own
                            peers += sorted(self.identities.items())
                        for peer_id, peer_set in peers:
                            for entry in self._ports(
                                rule.ports, direction, ident, subject, peer_id, peer_set
                            ):
                                out.allows.setdefault(entry, pid)
        return out

    def _cidr_identities(self, policies: list[NetworkPolicy]) -> dict[IPNetwork, int]:
        nets: set[IPNetwork] = set()
        for p in policies:
            for rule in (*p.ingress, *p.egress):
                for peer in rule.peers:
                    if peer.ip_block is not None:
                        nets.add(peer.ip_block.cidr)
                        nets.update(peer.ip_block.except_)
        # sorted by address: _block_identities binary-searches this order
        ordered = sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
        return {n: abi.Identity.FIRST_CIDR + i for i, n in enumerate(ordered)}

    def _block_identities(self, block: IPBlock, cidrs: dict[IPNetwork, int]) -> list[int]:
        """CIDR identities a block admits: prefixes inside its cidr and inside none of its excepts.
        Binary search over the prefixes sorted by address: 10,000 ipBlocks compile in well under a second."""
        cached = self._block_cache.get(block)
        if cached is not None:
            return cached
        c = block.cidr
        lo = bisect.bisect_left(self._cidr_keys, (c.version, int(c.network_address)))
        hi = bisect.bisect_right(self._cidr_keys, (c.version, int(c.broadcast_address)))
        out = [
            cidrs[net]
            for net in self._cidr_nets[lo:hi]
            if net.prefixlen >= c.prefixlen and not any(net.subnet_of(e) for e in block.except_)  # type: ignore[arg-type]
        ]
        self._block_cache[block] = out
        return out

    def _peers(
        self, peers: tuple[Peer, ...], policy_namespace: str, cidrs: dict[IPNetwork, int]
    ) -> list[tuple[int, LabelSet | None]]:
        if not peers:
            return [(ANY, None)]
        out: dict[int, LabelSet | None] = {}
        for peer in peers:
            if peer.ip_block is not None:
                for ident in self._block_identities(peer.ip_block, cidrs):
                    out.setdefault(ident, None)
                continue
            for ident, target in self.identities.items():
                if _peer_selects(peer, policy_namespace, target, self.ns_labels(target.namespace)):
                    out.setdefault(ident, target)
        return sorted(out.items())

    @staticmethod
    def _ports(
        ports: tuple[PolicyPort, ...],
        direction: Direction,
        subject_id: int,
        subject: LabelSet,
        peer_id: int,
        peer: LabelSet | None,
    ) -> list[PolicyEntry]:
        if not ports:
            return [PolicyEntry(direction, subject_id, peer_id)]
        out = []
        for pp in ports:
            proto = PROTOCOL_NUMBERS[pp.protocol]
            if pp.port is None:
                out.append(PolicyEntry(direction, subject_id, peer_id, proto, 0, 0))
                continue
            if isinstance(pp.port, str):
                # a named port is the destination's: the subject for ingress, the peer for egress
                dest = subject if direction == "ingress" else peer
                number = dest.named_port(pp.port, pp.protocol) if dest is not None else None
                if number is not None:
                    out.append(PolicyEntry(direction, subject_id, peer_id, proto, number, 16))
                continue
            last = pp.end_port if pp.end_port is not None else pp.port
            for value, bits in port_prefixes(pp.port, last):
                out.append(PolicyEntry(direction, subject_id, peer_id, proto, value, bits))
        return out


def summary(compiled: Compiled) -> str:
    return (
        f"{len(compiled.policy_names)} policies, {len(compiled.markers)} isolated (identity, direction), "
        f"{len(compiled.allows)} allow entries, {len(compiled.cidrs)} CIDR identities"
    )
