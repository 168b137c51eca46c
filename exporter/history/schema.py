"""The stored form of a flow, shared by the SQLite and ClickHouse stores: integer columns only.

A stored flow is a row of integers. Each side's endpoint (everything but the port: IP, namespace, pod,
labels, and whatever fields issue-15-style changes add to `Endpoint`) is interned once in an endpoint
dictionary as a canonical JSON document; low-cardinality strings (event type, direction,
verdict, drop reason, node, policy names) are interned in a string dictionary. So a row costs tens of
bytes, and a filter on a pod or a verdict becomes `src IN (ids)` or `verdict IN (ids)` (exporter.history.
translate resolves names to ids by evaluating the in-memory filter on the dictionary entries).

Flow fields this module does not know (a newer Flow model) are kept in the `extra` column as JSON, so
nothing is lost before a release adds a column for them; adding a column is an entry in COLUMNS, which
the stores turn into `ALTER TABLE ... ADD COLUMN` when they open an older database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from bpf.vocab import protocol_name
from exporter.flows import ENDPOINT_FIELDS, NO_LABELS, Endpoint, Flow

HOUR_NS = 3600 * 10**9
MINUTE_NS = 60 * 10**9
DAY_NS = 24 * HOUR_NS

#: a SQLite row id is (ns into the hour << SEQ_BITS) | sequence: the table is its own time index
SEQ_BITS = 20
SEQ_MASK = (1 << SEQ_BITS) - 1

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Column:
    name: str
    sqlite: str  # column type in SQLite
    clickhouse: str  # column type in ClickHouse
    added_in: int = 1  # schema version that added it (older databases get ALTER TABLE ADD COLUMN)


#: flow columns after the time key; order is the row tuple's order
COLUMNS: tuple[Column, ...] = (
    Column("src", "INTEGER", "Int64"),  # endpoint id
    Column("dst", "INTEGER", "Int64"),
    Column("sport", "INTEGER", "UInt16"),
    Column("dport", "INTEGER", "UInt16"),
    Column("proto", "INTEGER", "UInt8"),  # IP protocol number (the name follows from it: vocab)
    Column("type", "INTEGER", "Int64"),  # string ids from here to `ingress`
    Column("direction", "INTEGER", "Int64"),
    Column("verdict", "INTEGER", "Int64"),
    Column("reason", "INTEGER", "Int64"),
    Column("node", "INTEGER", "Int64"),
    Column("egress", "INTEGER", "Int64"),  # string id of the egress policy; NULL/-1: none isolates
    Column("ingress", "INTEGER", "Int64"),
    Column("reply", "INTEGER", "UInt8"),
    Column("start_off", "INTEGER", "Int64"),  # time_ns - start_ns
    Column("end_off", "INTEGER", "Int64"),  # time_ns - end_ns
    Column("packets", "INTEGER", "UInt64"),
    Column("bytes", "INTEGER", "UInt64"),
    Column("payload", "INTEGER", "UInt64"),
    Column("flags", "INTEGER", "UInt8"),
    Column("ifindex", "INTEGER", "UInt32"),
    Column("extra", "TEXT", "String"),  # JSON of Flow fields without a column ('' / NULL: none)
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)

#: The address family and the protocol's name are not stored: both follow from the flow key (the family
#: from the address, the name from the number), as exporter.events derives them.
#: the fields COLUMNS (with the endpoint dictionary and the time key) represent
_ENCODED = {
    "key", "type", "time_ns", "start_ns", "end_ns", "protocol", "direction", "verdict", "drop_reason",
    "source", "destination", "packets", "bytes", "payload_bytes", "tcp_flags", "ifindex", "node",
    "egress_policy", "ingress_policy", "is_reply",
}  # fmt: skip
_FLOW_FIELDS = {f.name: f for f in dataclasses.fields(Flow)}
EXTRA_FIELDS = tuple(name for name in _FLOW_FIELDS if name not in _ENCODED)

_EP_FIELDS = tuple(name for name in ENDPOINT_FIELDS if name != "port")
_EP_EXTRA = tuple(name for name in _EP_FIELDS if name not in ("ip", "namespace", "pod", "labels"))
_EP_KEY = operator.attrgetter("ip", "namespace", "pod", *_EP_EXTRA)  # one C call per endpoint

#: strings interned first get the smallest ids (one byte in SQLite)
SEED_STRINGS = (
    "FORWARDED", "DROPPED", "AUDIT", "END", "DROP", "NEW", "REPORT", "PACKET", "egress", "ingress",
    "TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "none", "policy_denied", "",
)  # fmt: skip


def _default(name: str) -> Any:
    f = _FLOW_FIELDS[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def endpoint_doc(ep: Endpoint) -> str:
    """The canonical JSON of an endpoint without its port: the endpoint dictionary's key."""
    return json.dumps({name: _jsonable(getattr(ep, name)) for name in _EP_FIELDS}, sort_keys=True)


def endpoint_from_doc(doc: str) -> Endpoint:
    """An Endpoint (port 0) from its document; fields the model no longer has are ignored."""
    data = json.loads(doc)
    kwargs = {k: v for k, v in data.items() if k in _EP_FIELDS}
    labels = kwargs.get("labels")
    kwargs["labels"] = MappingProxyType(labels) if labels else NO_LABELS
    return Endpoint(ip=kwargs.pop("ip", ""), port=0, **kwargs)


def stable_id(text: str) -> int:
    """A 63-bit id that every writer computes alike (ClickHouse dictionaries are shared by all agents)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


class Dictionaries:
    """Endpoint and string dictionaries: value -> id for writers, id -> value for readers.

    `assign` says how new ids are made: sequential (SQLite: small ids, small rows) or a stable hash
    (ClickHouse: agents on many nodes write the same dictionary without talking to each other). New
    entries wait in `new_endpoints`/`new_strings` until the store writes them with the batch."""

    def __init__(self, hashed: bool = False) -> None:
        self.hashed = hashed
        self.endpoint_ids: dict[str, int] = {}
        self.endpoints: dict[int, Endpoint] = {}
        self.string_ids: dict[str, int] = {}
        self.strings: dict[int, str] = {}
        self.new_endpoints: list[tuple[int, str]] = []
        self.new_strings: list[tuple[int, str]] = []
        self.generation = 0  # bumped when entries are forgotten: caches over the dictionaries start over
        self._ep_cache: dict[tuple[Any, ...], tuple[Mapping[str, str], int]] = {}

    def load(self, endpoints: Iterable[tuple[int, str]], strings: Iterable[tuple[int, str]]) -> None:
        for i, doc in endpoints:
            if i not in self.endpoints:
                self.endpoint_ids[doc] = i
                self.endpoints[i] = endpoint_from_doc(doc)
        for i, s in strings:
            self.string_ids[s] = i
            self.strings[i] = s

    def forget_pending(self) -> None:
        """The batch that carried the new entries was not written: forget them (ids are re-made)."""
        for i, doc in self.new_endpoints:
            self.endpoint_ids.pop(doc, None)
            self.endpoints.pop(i, None)
        for i, s in self.new_strings:
            self.string_ids.pop(s, None)
            self.strings.pop(i, None)
        self.new_endpoints.clear()
        self.new_strings.clear()
        self._ep_cache.clear()
        self.generation += 1

    def _next(self, existing: Mapping[int, Any], text: str) -> int:
        if self.hashed:
            return stable_id(text)
        i = len(existing) + 1
        while i in existing:
            i += 1
        return i

    def string(self, value: str) -> int:
        i = self.string_ids.get(value)
        if i is None:
            i = self._next(self.strings, value)
            self.string_ids[value] = i
            self.strings[i] = value
            self.new_strings.append((i, value))
        return i

    def endpoint(self, ep: Endpoint) -> int:
        labels = ep.labels
        # Pods share one labels mapping across their flows: its identity is a cheap key. The cache holds
        # the mapping itself, so that identity cannot be reused by another object while cached.
        try:
            ck: tuple[Any, ...] = (_EP_KEY(ep), id(labels))
            hit = self._ep_cache.get(ck)
        except TypeError:  # a field without a hash (a newer model's): its text instead
            ck = (tuple(repr(getattr(ep, n)) for n in _EP_FIELDS if n != "labels"), id(labels))
            hit = self._ep_cache.get(ck)
        if hit is not None and hit[0] is labels:
            return hit[1]
        doc = endpoint_doc(ep)
        i = self.endpoint_ids.get(doc)
        if i is None:
            i = self._next(self.endpoints, doc)
            self.endpoint_ids[doc] = i
            self.endpoints[i] = endpoint_from_doc(doc)
            self.new_endpoints.append((i, doc))
        if len(self._ep_cache) > 100_000:
            self._ep_cache.clear()
        self._ep_cache[ck] = (labels, i)
        return i


def encoder(d: Dictionaries) -> Callable[[Flow, int], tuple[Any, ...]]:
    """(flow, key) -> (key, *the COLUMNS): the key is the store's time key (SQLite's row id, ClickHouse's
    time). One closure: attribute and method lookups bound once, since this runs for every stored flow."""
    string, endpoint = d.string, d.endpoint
    sids = d.string_ids
    extra_defaults = [(name, _default(name)) for name in EXTRA_FIELDS]

    def policy(p: str | None) -> int | None:
        return None if p is None else string(p)

    def encode(f: Flow, first: int) -> tuple[Any, ...]:
        t = f.time_ns
        key = f.key
        extra = None
        if extra_defaults:
            found = {n: _jsonable(getattr(f, n)) for n, dflt in extra_defaults if getattr(f, n) != dflt}
            extra = json.dumps(found, sort_keys=True) if found else None
        return (
            first,
            endpoint(f.source),
            endpoint(f.destination),
            f.source.port,
            f.destination.port,
            key[1],
            sids.get(f.type) or string(f.type),
            sids.get(f.direction) or string(f.direction),
            sids.get(f.verdict) or string(f.verdict),
            sids.get(f.drop_reason) or string(f.drop_reason),
            sids.get(f.node) or string(f.node),
            None if f.egress_policy is None else policy(f.egress_policy),
            None if f.ingress_policy is None else policy(f.ingress_policy),
            1 if f.is_reply else 0,
            t - f.start_ns,
            t - f.end_ns,
            f.packets,
            f.bytes,
            f.payload_bytes,
            f.tcp_flags,
            f.ifindex,
            extra,
        )

    return encode


def decoder(d: Dictionaries) -> Callable[[int, tuple[Any, ...]], Flow]:
    """(time_ns, COLUMNS tuple) -> Flow, the inverse of `encoder`."""
    strings, endpoints = d.strings, d.endpoints

    def ep(i: int, port: int) -> Endpoint:
        return endpoints[i].with_port(port)

    def decode(t: int, row: tuple[Any, ...]) -> Flow:
        (
            src, dst, sport, dport, proto, typ, direction, verdict, reason, node,
            egress, ingress, reply, start, end, packets, nbytes, payload, flags, ifindex, extra,
        ) = row[:21]  # fmt: skip
        source, destination = ep(src, sport), ep(dst, dport)
        dir_name = strings[direction]
        kwargs = json.loads(extra) if extra else {}
        return Flow(
            key=(6 if ":" in source.ip else 4, proto, source.ip, destination.ip, sport, dport, dir_name),
            type=strings[typ],
            time_ns=t,
            start_ns=t - start,
            end_ns=t - end,
            protocol=protocol_name(proto),
            direction=dir_name,
            verdict=strings[verdict],
            drop_reason=strings[reason],
            source=source,
            destination=destination,
            packets=packets,
            bytes=nbytes,
            payload_bytes=payload,
            tcp_flags=flags,
            ifindex=ifindex,
            node=strings[node],
            egress_policy=None if egress is None or egress < 0 else strings[egress],
            ingress_policy=None if ingress is None or ingress < 0 else strings[ingress],
            is_reply=bool(reply),
            # JSON has no tuples: a tuple field (the ICMP message) comes back as a list
            **{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items() if k in EXTRA_FIELDS},
        )

    return decode
