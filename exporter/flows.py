"""The flow model and the agent's in-memory store of recent flows (the first exporter.store.FlowSource).

One record per flow (5-tuple + direction): each event of that flow replaces the record. Records are kept
in one-second buckets by time, each bucket in time order, so a query walks back from `until` and stops at
`since` or `limit` instead of scanning every flow. A full store evicts the oldest record and counts it.
Live readers (SSE) subscribe; a reader too slow to keep up loses flows, counted per subscriber.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Generic, TypeVar, overload

from bpf.vocab import TCP_FLAG_NAMES, message_name
from exporter.store import CursorError, Page

DEFAULT_CAPACITY = 65536

_T = TypeVar("_T")
K = TypeVar("K")
V = TypeVar("V")

#: shared by every endpoint without labels (64k stored flows would otherwise hold 128k empty dicts)
NO_LABELS: Mapping[str, str] = MappingProxyType({})

#: (family, protocol number, source ip, destination ip, source port, destination port, direction)
FlowKey = tuple[int, int, str, str, int, int, str]


def reverse_key(key: FlowKey, direction: str | None = None) -> FlowKey:
    """The key of the other half of a connection: addresses and ports swapped. The direction is kept,
    which is right between two local pods (each half is counted egress, at its source's veth); for a
    peer off the node pass the other direction."""
    family, proto, src, dst, sport, dport, direction = key
    return (family, proto, dst, src, dport, sport, direction if direction is None else direction)


@lru_cache(maxsize=65536)
def address_kind(ip: str) -> str:
    """ "multicast", "link-local" or "unspecified" for addresses that are no one's endpoint (broadcast
    counts as multicast), "" for any other. Such traffic (neighbour discovery, MLD, DHCP) is hidden from
    the service map and the default flow list, never from the counters."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if addr.is_multicast or ip == "255.255.255.255":
        return "multicast"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_link_local:
        return "link-local"
    return ""


#: EndpointFacts are interned: at most this many distinct sets are remembered (pods churn; the table is
#: emptied when full, which only loses sharing, never correctness)
FACTS_MAX = 65536


@dataclass(frozen=True, slots=True)
class EndpointFacts:
    """What is known about the owner of an address, shared by every endpoint with the same facts: a pod's
    flows all carry one of these instead of seven fields each (64k stored flows hold 128k endpoints)."""

    namespace: str = ""
    pod: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)
    node: str = ""  # the node the pod runs on ("" when not a pod, or unknown)
    #: the pod's owner, as `kubectl get` names it (Deployment, StatefulSet, DaemonSet, Job, ...); "" unknown
    workload_kind: str = ""
    workload: str = ""
    #: the policy identity (bpf/include/types.h enum lumen_identity): a label identity for a pod, HOST for
    #: the node's addresses, WORLD for any other; 0 when not known
    identity: int = 0


_FACTS: dict[tuple[Any, ...], EndpointFacts] = {}


def endpoint_facts(
    namespace: str = "",
    pod: str = "",
    labels: Mapping[str, str] = NO_LABELS,
    node: str = "",
    workload_kind: str = "",
    workload: str = "",
    identity: int = 0,
) -> EndpointFacts:
    """The one shared EndpointFacts for these values. Labels are kept read-only (a caller's dict is
    copied), so a shared object cannot change under the endpoints that hold it."""
    items = frozenset(labels.items()) if labels else ()
    key = (namespace, pod, items, node, workload_kind, workload, identity)
    facts = _FACTS.get(key)
    if facts is None:
        if not labels:
            labels = NO_LABELS
        elif not isinstance(labels, MappingProxyType):
            labels = MappingProxyType(dict(labels))
        facts = EndpointFacts(namespace, pod, labels, node, workload_kind, workload, identity)
        if len(_FACTS) >= FACTS_MAX:
            _FACTS.clear()
        _FACTS[key] = facts
    return facts


class _Fact(Generic[_T]):
    """An attribute of Endpoint kept in its shared EndpointFacts: reading reads the facts, writing swaps in
    the interned facts with that one value changed."""

    __slots__ = ("name",)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, ep: None, owner: type) -> _Fact[_T]: ...
    @overload
    def __get__(self, ep: Endpoint, owner: type) -> _T: ...
    def __get__(self, ep: Endpoint | None, owner: type) -> _T | _Fact[_T]:
        if ep is None:
            return self
        value: _T = getattr(ep.facts, self.name)
        return value

    def __set__(self, ep: Endpoint, value: _T) -> None:
        f = ep.facts
        values = {n: getattr(f, n) for n in FACT_FIELDS}
        values[self.name] = value
        ep.facts = endpoint_facts(**values)


class Endpoint:
    """One side of a flow: its address and port, and the facts about its owner (EndpointFacts, shared).
    namespace/pod are empty when the address is not a pod Lumen knows. Reads and writes of the facts'
    fields work as attributes of the endpoint."""

    __slots__ = ("ip", "port", "facts")

    ip: str
    port: int  # 0 for protocols without ports (ICMP, ICMPv6, IGMP, ...)
    facts: EndpointFacts

    def __init__(
        self,
        ip: str,
        port: int,
        namespace: str = "",
        pod: str = "",
        labels: Mapping[str, str] = NO_LABELS,
        node: str = "",
        workload_kind: str = "",
        workload: str = "",
        identity: int = 0,
    ) -> None:
        self.ip = ip
        self.port = port
        self.facts = endpoint_facts(namespace, pod, labels, node, workload_kind, workload, identity)

    namespace: _Fact[str] = _Fact()
    pod: _Fact[str] = _Fact()
    labels: _Fact[Mapping[str, str]] = _Fact()
    node: _Fact[str] = _Fact()
    workload_kind: _Fact[str] = _Fact()
    workload: _Fact[str] = _Fact()
    identity: _Fact[int] = _Fact()

    def with_port(self, port: int) -> Endpoint:
        """The same endpoint at another port (shares the facts)."""
        ep = Endpoint.__new__(Endpoint)
        ep.ip, ep.port, ep.facts = self.ip, port, self.facts
        return ep

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Endpoint:
            return NotImplemented
        assert isinstance(other, Endpoint)
        return self.ip == other.ip and self.port == other.port and self.facts == other.facts

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaced

    def __repr__(self) -> str:
        f = self.facts
        fields = ", ".join(f"{n}={getattr(f, n)!r}" for n in FACT_FIELDS)
        return f"Endpoint(ip={self.ip!r}, port={self.port!r}, {fields})"

    def name(self) -> str:
        f = self.facts
        return f"{f.namespace}/{f.pod}" if f.pod else self.ip

    def to_dict(self) -> dict[str, Any]:
        f = self.facts
        return {
            "ip": self.ip,
            "port": self.port,
            "namespace": f.namespace,
            "pod": f.pod,
            "labels": dict(f.labels),
            "node": f.node,
            "workload": {"kind": f.workload_kind, "name": f.workload} if f.workload else None,
            "identity": f.identity,
        }


#: the facts' field names, in Endpoint's argument order after ip and port
FACT_FIELDS = ("namespace", "pod", "labels", "node", "workload_kind", "workload", "identity")
#: every field an Endpoint reads and writes, in its argument order
ENDPOINT_FIELDS = ("ip", "port", *FACT_FIELDS)


@dataclass(slots=True)
class Flow:
    """A flow as of its latest event. Times are wall clock, ns since the epoch."""

    key: FlowKey
    type: str  # event that produced this record: NEW, REPORT, END, DROP, PACKET
    time_ns: int
    start_ns: int
    end_ns: int
    protocol: str  # TCP, UDP, ICMP, ICMPv6, IGMP, ... (bpf/vocab.py) or the protocol number
    direction: str  # egress (leaving the source pod) or ingress (entering the destination pod)
    verdict: str  # FORWARDED, DROPPED, AUDIT
    drop_reason: str  # "none" unless dropped (policy_denied)
    source: Endpoint
    destination: Endpoint
    packets: int
    bytes: int
    payload_bytes: int = 0
    tcp_flags: int = 0
    ifindex: int = 0
    node: str = ""
    #: per side: None = no policy isolates it, "" = isolated and no rule admitted it, else the
    #: namespace/name of the policy that admitted it
    egress_policy: str | None = None
    ingress_policy: str | None = None
    is_reply: bool = False  # the answer of a connection seen first the other way
    #: ICMP, ICMPv6, IGMP: (type, code, echo identifier) of the message; None for other protocols
    message: tuple[int, int, int] | None = None

    @property
    def special(self) -> bool:
        """Either end is a link-local, multicast or unspecified address (see address_kind)."""
        return bool(address_kind(self.source.ip) or address_kind(self.destination.ip))

    def message_name(self) -> str:
        """`echo-request`, `destination-unreachable/port-unreachable`, ...; "" when not a message."""
        if self.message is None:
            return ""
        return message_name(self.protocol, self.message[0], self.message[1])

    def message_dict(self) -> dict[str, Any]:
        assert self.message is not None
        type_, code, ident = self.message
        out: dict[str, Any] = {"type": type_, "code": code, "name": self.message_name()}
        if self.protocol != "IGMP":
            out["id"] = ident
        return out

    @property
    def policies(self) -> list[str]:
        """Names of the policies that admitted this flow, each once."""
        return list(dict.fromkeys(p for p in (self.egress_policy, self.ingress_policy) if p))

    def policy_summary(self) -> str:
        """In words, for the CLI and the UI: which policy decided, or that none did."""
        denied = [
            side for side, p in (("egress", self.egress_policy), ("ingress", self.ingress_policy)) if p == ""
        ]
        if denied:
            return "no policy allows " + " and ".join(denied)
        if self.policies:
            return "allowed by " + ", ".join(self.policies)
        if self.is_reply and self.verdict != "DROPPED":
            return "reply of an allowed connection"
        return "no policy applies"

    @property
    def finished(self) -> bool:
        return self.type == "END"

    def tcp_flag_names(self) -> list[str]:
        return list(_flag_names(self.tcp_flags))

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": _iso(self.time_ns),
            "type": self.type,
            "start": _iso(self.start_ns),
            "end": _iso(self.end_ns),
            "duration_ms": round((self.end_ns - self.start_ns) / 1e6, 3),
            "protocol": self.protocol,
            "direction": self.direction,
            "verdict": self.verdict,
            "drop_reason": self.drop_reason,
            "source": self.source.to_dict(),
            "destination": self.destination.to_dict(),
            "packets": self.packets,
            "bytes": self.bytes,
            "payload_bytes": self.payload_bytes,
            "tcp_flags": self.tcp_flag_names(),
            "ifindex": self.ifindex,
            "node": self.node,
            "is_reply": self.is_reply,
            "policy": {
                "egress": self.egress_policy,
                "ingress": self.ingress_policy,
                "allowed_by": self.policies,
                "summary": self.policy_summary(),
            },
            # ICMP and ICMPv6 as "icmp", IGMP as "igmp": type, code, name (and the echo identifier)
            **({self._message_key(): self.message_dict()} if self.message is not None else {}),
            "special": self.special,
        }

    def _message_key(self) -> str:
        return "igmp" if self.protocol == "IGMP" else "icmp"


@lru_cache(maxsize=512)
def _flag_names(flags: int) -> tuple[str, ...]:
    # to_dict runs for every row of every /api/flows answer; a flow's flags are one of few combinations
    return tuple(name for bit, name in enumerate(TCP_FLAG_NAMES) if flags & (1 << bit))


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


Matcher = Callable[[Flow], bool]

BUCKET_NS = 10**9  # width of a time bucket


class Subscription:
    """A live reader on an asyncio loop. The store thread appends to a pending list under a lock and wakes
    the loop only when the list goes from empty to not empty: at 10k flows/s that is one cross-thread
    call per batch, not per flow, and the reader takes whole batches (one SSE write each)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, match: Matcher | None, maxsize: int = 16384) -> None:
        self.loop = loop
        self.match = match
        self.maxsize = maxsize
        self.pending: deque[Flow] = deque()
        self.ready = asyncio.Event()
        self.dropped = 0
        self._lock = threading.Lock()
        self._woken = False

    def offer(self, flow: Flow) -> None:
        self.offer_many((flow,))

    def offer_many(self, flows: Sequence[Flow]) -> None:
        match = self.match
        wanted = flows if match is None else [f for f in flows if match(f)]
        if not wanted:
            return
        with self._lock:
            room = self.maxsize - len(self.pending)
            if len(wanted) > room:
                self.dropped += len(wanted) - max(room, 0)
                wanted = wanted[: max(room, 0)]
            self.pending.extend(wanted)
            if self._woken or not self.pending:
                return
            self._woken = True
        self.loop.call_soon_threadsafe(self.ready.set)

    def take(self, limit: int) -> list[Flow]:
        """Up to `limit` pending flows, oldest first (call on the loop)."""
        with self._lock:
            n = min(limit, len(self.pending))
            out = [self.pending.popleft() for _ in range(n)]
            if not self.pending:
                self._woken = False
                self.ready.clear()
        return out


def insert_in_order(entries: OrderedDict[K, V], key: K, value: V, newer: Callable[[V], bool]) -> None:
    """Put `value` in an ordered dict kept oldest first, before the entries at its end that `newer`
    says come after it (they move behind it). They are few: events arrive nearly in order."""
    later = []
    for k in reversed(entries):
        if not newer(entries[k]):
            break
        later.append(k)
    entries[key] = value
    for k in reversed(later):
        entries.move_to_end(k)


def _cursor(time_ns: int, same: int) -> str:
    return f"m{time_ns}.{same}"


def _parse_cursor(cursor: str) -> tuple[int, int]:
    t, dot, same = cursor[1:].partition(".")
    if not cursor.startswith("m") or not dot or not t.isdigit() or not same.isdigit():
        raise CursorError(f"cursor {cursor!r}: not one this store handed out")
    return int(t), int(same)


class FlowStore:
    """exporter.store.FlowSource over memory, and the pipeline's "memory" sink. Thread-safe: the pipeline
    thread adds, API requests read (each bucket is copied under the lock, then filtered without it)."""

    name = "memory"

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("flow store capacity must be at least 1")
        self.capacity = capacity
        self._buckets: dict[int, OrderedDict[FlowKey, Flow]] = {}  # second -> flows in time order
        self._ids: list[int] = []  # bucket seconds, ascending
        #: flow -> the bucket holding it (the object itself: no int per flow, one lookup fewer)
        self._where: dict[FlowKey, OrderedDict[FlowKey, Flow]] = {}
        self._latest = 0  # newest time_ns stored: a newer flow appends to its bucket
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []
        self.added = 0  # events stored
        self.evicted = 0  # flows pushed out by newer ones
        self.started_ns = time.time_ns()
        self._evicted_upto = -1  # newest time_ns of an evicted record

    def __len__(self) -> int:
        return len(self._where)

    def stats(self) -> dict[str, int]:
        return {"stored": len(self._where), "capacity": self.capacity, "evicted": self.evicted}

    @property
    def covers_from_ns(self) -> int:
        """From this time on the store holds the latest record of every flow it was given."""
        return self.started_ns if self._evicted_upto < 0 else self._evicted_upto + 1

    # -- writing (the pipeline's sink) --------------------------------------------------------------

    def on_flows(self, flows: Sequence[Flow]) -> None:
        with self._lock:
            buckets, where, put = self._buckets, self._where, self._put
            latest = self._latest
            for flow in flows:
                # The common case inline: the next event of a stored flow, newer than anything stored,
                # in the same second as its previous event.
                key = flow.key
                t = flow.time_ns
                if t >= latest:
                    b = where.get(key)
                    if b is not None and b is buckets.get(t // BUCKET_NS):
                        b.move_to_end(key)
                        b[key] = flow
                        latest = t
                        continue
                self._latest = latest
                put(flow)
                latest = self._latest
            self._latest = latest
            self.added += len(flows)
            subscribers = self._subscribers
        for sub in subscribers:
            sub.offer_many(flows)

    def add(self, flow: Flow) -> None:
        self.on_flows((flow,))

    def add_many(self, flows: Iterable[Flow]) -> None:
        self.on_flows(list(flows))

    def close(self) -> None:
        pass

    def _put(self, flow: Flow) -> None:
        key = flow.key
        t = flow.time_ns
        bid = t // BUCKET_NS
        buckets = self._buckets
        ob = self._where.get(key)
        if ob is not None:
            old = ob.pop(key).time_ns // BUCKET_NS
            if not ob and old != bid:
                self._drop_bucket(old)
        b = buckets.get(bid)
        if b is None:
            b = buckets[bid] = OrderedDict()
            if not self._ids or bid > self._ids[-1]:
                self._ids.append(bid)
            else:
                insort(self._ids, bid)
        if t >= self._latest:
            self._latest = t
            b[key] = flow
        else:
            # another CPU's event, a little late: it goes where its time says
            t = flow.time_ns
            insert_in_order(b, key, flow, lambda f: f.time_ns > t)
        self._where[key] = b
        if ob is None and len(self._where) > self.capacity:
            self._evict()

    def _evict(self) -> None:
        bid = self._ids[0]
        b = self._buckets[bid]
        key, flow = b.popitem(last=False)
        del self._where[key]
        self.evicted += 1
        self._evicted_upto = max(self._evicted_upto, flow.time_ns)
        if not b:
            self._drop_bucket(bid)

    def _drop_bucket(self, bid: int) -> None:
        del self._buckets[bid]
        del self._ids[bisect_left(self._ids, bid)]

    # -- reading (exporter.store.FlowSource) -----------------------------------------------------------

    def get(self, key: FlowKey) -> Flow | None:
        """The latest record of one flow, if stored (a connection's other half)."""
        with self._lock:
            b = self._where.get(key)
            return None if b is None else b.get(key)

    def query(
        self,
        q: Matcher | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        limit: int = 0,
        cursor: str | None = None,
    ) -> Page:
        """Newest first. `q` is a FlowQuery (or any predicate); limit <= 0: no limit."""
        hi = until_ns
        after_t, skip = _parse_cursor(cursor) if cursor else (None, 0)
        if after_t is not None:
            hi = after_t if hi is None else min(hi, after_t)
        with self._lock:
            ids = list(self._ids)
        top = len(ids) if hi is None else bisect_right(ids, hi // BUCKET_NS)
        low = None if since_ns is None else since_ns // BUCKET_NS
        want = limit + 1 if limit > 0 else 0  # one more than asked says whether there is a next page
        out: list[Flow] = []
        for i in range(top - 1, -1, -1):
            if low is not None and ids[i] < low:
                break
            with self._lock:
                b = self._buckets.get(ids[i])
                flows = list(b.values()) if b else []
            for f in reversed(flows):  # each bucket is in time order: newest last
                t = f.time_ns
                if hi is not None and t > hi:
                    continue
                if since_ns is not None and t < since_ns:
                    break
                if q is not None and not q(f):
                    continue
                if skip and t == after_t:
                    skip -= 1  # returned on an earlier page
                    continue
                out.append(f)
                if want and len(out) >= want:
                    break
            if want and len(out) >= want:
                break
        next_cursor = None
        if want and len(out) >= want:
            out.pop()
            last = out[-1].time_ns
            same = sum(1 for f in out if f.time_ns == last)
            if last == after_t:
                same += _parse_cursor(cursor)[1] if cursor else 0
            next_cursor = _cursor(last, same)
        complete = since_ns is not None and since_ns >= self.covers_from_ns
        return Page(out, next_cursor, complete)

    def subscribe(
        self, q: Matcher | None = None, loop: asyncio.AbstractEventLoop | None = None
    ) -> Subscription:
        """A live reader of the flows matching `q` from now on (call on the reader's event loop)."""
        sub = Subscription(loop or asyncio.get_running_loop(), q)
        with self._lock:
            # Copy-on-write: on_flows iterates its snapshot of the list without the lock.
            self._subscribers = [*self._subscribers, sub]
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers = [s for s in self._subscribers if s is not sub]

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
