"""The flow model and the bounded store of recent flows that the API, the CLI and the UI read.

One record per flow (5-tuple + direction): each event of that flow replaces the record and makes it the
newest. A full store evicts the least recently updated flow and counts it, so short history is visible.
Live readers (SSE) subscribe; a reader too slow to keep up loses flows, counted per subscriber.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

DEFAULT_CAPACITY = 65536

#: shared by every endpoint without labels (64k stored flows would otherwise hold 128k empty dicts)
NO_LABELS: Mapping[str, str] = MappingProxyType({})

TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")

#: (family, protocol number, source ip, destination ip, source port, destination port, direction)
FlowKey = tuple[int, int, str, str, int, int, str]


@dataclass(slots=True)
class Endpoint:
    """One side of a flow. namespace/pod are empty when the address is not a local pod."""

    ip: str
    port: int
    namespace: str = ""
    pod: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)
    node: str = ""  # the node the pod runs on ("" when not a pod, or unknown)

    def name(self) -> str:
        return f"{self.namespace}/{self.pod}" if self.pod else self.ip

    def to_dict(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "port": self.port,
            "namespace": self.namespace,
            "pod": self.pod,
            "labels": dict(self.labels),
            "node": self.node,
        }


@dataclass(slots=True)
class Flow:
    """A flow as of its latest event. Times are wall clock, ns since the epoch."""

    key: FlowKey
    type: str  # event that produced this record: NEW, REPORT, END, DROP, PACKET
    time_ns: int
    start_ns: int
    end_ns: int
    protocol: str  # TCP, UDP, ICMP, ICMPv6 or the protocol number
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
        return [name for bit, name in enumerate(TCP_FLAG_NAMES) if self.tcp_flags & (1 << bit)]

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
        }


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Matcher(Protocol):
    def __call__(self, flow: Flow) -> bool: ...


class Subscription:
    """A live reader on an asyncio loop. The store thread appends to a pending list under a lock and wakes
    the loop only when the list goes from empty to not empty: at 10k flows/s that is one cross-thread
    call per batch, not per flow, and the reader takes whole batches (one SSE write each)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, match: Matcher, maxsize: int = 16384) -> None:
        self.loop = loop
        self.match = match
        self.maxsize = maxsize
        self.pending: deque[Flow] = deque()
        self.ready = asyncio.Event()
        self.dropped = 0
        self._lock = threading.Lock()
        self._woken = False

    def offer(self, flow: Flow) -> None:
        if not self.match(flow):
            return
        with self._lock:
            if len(self.pending) >= self.maxsize:
                self.dropped += 1
                return
            self.pending.append(flow)
            if self._woken:
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


class FlowStore:
    """Thread-safe: the ring-buffer thread adds, API requests read."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("flow store capacity must be at least 1")
        self.capacity = capacity
        self._flows: OrderedDict[FlowKey, Flow] = OrderedDict()
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []
        self.added = 0  # events stored
        self.evicted = 0  # flows pushed out by newer ones

    def __len__(self) -> int:
        return len(self._flows)

    def add(self, flow: Flow) -> None:
        with self._lock:
            flows = self._flows
            if flow.key in flows:
                flows.move_to_end(flow.key)
            flows[flow.key] = flow
            if len(flows) > self.capacity:
                flows.popitem(last=False)
                self.evicted += 1
            self.added += 1
            subscribers = self._subscribers
        for sub in subscribers:
            sub.offer(flow)

    def add_many(self, flows: Iterable[Flow]) -> None:
        for flow in flows:
            self.add(flow)

    def query(self, match: Matcher | None = None, limit: int | None = None) -> list[Flow]:
        """The newest `limit` matching flows, oldest first (as `hubble observe --last N` prints them)."""
        with self._lock:
            snapshot = list(self._flows.values())
        out: list[Flow] = []
        for flow in reversed(snapshot):
            if match is None or match(flow):
                out.append(flow)
                if limit is not None and len(out) >= limit:
                    break
        out.reverse()
        return out

    def subscribe(self, loop: asyncio.AbstractEventLoop, match: Matcher) -> Subscription:
        sub = Subscription(loop, match)
        with self._lock:
            # Copy-on-write: add() iterates its snapshot of the list without the lock.
            self._subscribers = [*self._subscribers, sub]
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers = [s for s in self._subscribers if s is not sub]

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
