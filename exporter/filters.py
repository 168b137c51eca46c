"""Hubble-like flow filters, shared by the API, the CLI and the UI.

A filter is a set of criteria; each criterion becomes a FilterFunc(flow) -> bool. Inside one filter every
criterion must match (AND) and a criterion matches if any of its values does (OR). The allow-list filter
keeps matching flows, the deny-list filter drops matching flows; both use the same FilterFuncs.

Criteria come as a mapping name -> list of strings: query parameters (`?from_pod=default/web&not_verdict=
dropped`) and CLI flags (`--from-pod default/web --not-verdict dropped`) are both turned into that mapping
and parsed here, so they cannot disagree. Bad values raise FilterError with the reason (HTTP 400).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from exporter.flows import Endpoint, Flow

FilterFunc = Callable[[Flow], bool]

DENY_PREFIX = "not_"

PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "icmp": "ICMP", "icmpv6": "ICMPv6", "sctp": "SCTP"}
VERDICTS = ("FORWARDED", "DROPPED", "AUDIT")
EVENT_TYPES = ("NEW", "REPORT", "END", "DROP", "PACKET")
DIRECTIONS = ("egress", "ingress")


class FilterError(ValueError):
    """A criterion with a value that cannot be parsed; the message names both."""


# -- criteria ------------------------------------------------------------------------------------
# Each builder takes the criterion's raw values and returns one FilterFunc, or raises FilterError.
# `sides` picks which endpoints a criterion looks at: source, destination, or either.

Side = Callable[[Flow], tuple[Endpoint, ...]]


def _src(f: Flow) -> tuple[Endpoint, ...]:
    return (f.source,)


def _dst(f: Flow) -> tuple[Endpoint, ...]:
    return (f.destination,)


def _either(f: Flow) -> tuple[Endpoint, ...]:
    return (f.source, f.destination)


def _pod(values: Sequence[str], sides: Side) -> FilterFunc:
    """`[namespace/]name`: exact pod name, in that namespace if one is given."""
    wanted: list[tuple[str | None, str]] = []
    for v in values:
        ns, _, name = v.rpartition("/")
        if not name:
            raise FilterError(f"pod {v!r}: expected [namespace/]name")
        wanted.append((ns or None, name))

    def match(f: Flow) -> bool:
        return any(
            ep.pod == name and (ns is None or ep.namespace == ns) for ep in sides(f) for ns, name in wanted
        )

    return match


def _namespace(values: Sequence[str], sides: Side) -> FilterFunc:
    wanted = set(values)
    return lambda f: any(ep.namespace in wanted for ep in sides(f))


def _ip(values: Sequence[str], sides: Side) -> FilterFunc:
    """An address or a CIDR, IPv4 or IPv6."""
    nets = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise FilterError(f"ip {v!r}: not an IP address or CIDR") from None

    def match(f: Flow) -> bool:
        for ep in sides(f):
            addr = ipaddress.ip_address(ep.ip)
            if any(addr.version == n.version and addr in n for n in nets):
                return True
        return False

    return match


def _port(values: Sequence[str], sides: Side) -> FilterFunc:
    wanted = set()
    for v in values:
        if not v.isdigit() or not 0 <= int(v) <= 65535:
            raise FilterError(f"port {v!r}: expected a number from 0 to 65535")
        wanted.add(int(v))
    return lambda f: any(ep.port in wanted for ep in sides(f))


def _label(values: Sequence[str], sides: Side) -> FilterFunc:
    """`key=value`, or `key` alone for "has the label"."""
    wanted: list[tuple[str, str | None]] = []
    for v in values:
        key, eq, value = v.partition("=")
        if not key:
            raise FilterError(f"label {v!r}: expected key or key=value")
        wanted.append((key, value if eq else None))

    def match(f: Flow) -> bool:
        return any(
            key in ep.labels and (value is None or ep.labels[key] == value)
            for ep in sides(f)
            for key, value in wanted
        )

    return match


def _choice(name: str, allowed: Iterable[str], attr: Callable[[Flow], str]) -> Callable[..., FilterFunc]:
    canon = {a.lower(): a for a in allowed}

    def build(values: Sequence[str], _sides: Side | None = None) -> FilterFunc:
        wanted = set()
        for v in values:
            if v.lower() not in canon:
                raise FilterError(f"{name} {v!r}: expected one of {', '.join(sorted(canon.values()))}")
            wanted.add(canon[v.lower()])
        return lambda f: attr(f) in wanted

    return build


def _protocol(values: Sequence[str], _sides: Side | None = None) -> FilterFunc:
    wanted = set()
    for v in values:
        if v.lower() in PROTOCOLS:
            wanted.add(PROTOCOLS[v.lower()])
        elif v.isdigit() and int(v) < 256:
            wanted.add(v)  # an unnamed protocol is shown by its number
        else:
            raise FilterError(f"protocol {v!r}: expected tcp, udp, icmp, icmpv6, sctp or a number")
    return lambda f: f.protocol in wanted


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: str, now: float | None = None) -> int:
    """RFC 3339 (`2026-01-02T03:04:05Z`), unix seconds, or a duration ago (`90s`, `5m`, `2h`); ns."""
    now = time.time() if now is None else now
    m = _DURATION.match(value)
    if m:
        return int((now - float(m.group(1)) * _UNITS[m.group(2)]) * 1e9)
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"time {value!r}: expected RFC 3339, unix seconds or a duration like 5m") from None
    if dt.tzinfo is None:
        raise FilterError(f"time {value!r}: give a timezone (Z or +hh:mm)")
    return int(dt.timestamp() * 1e9)


def _since(values: Sequence[str], _sides: Side | None = None) -> FilterFunc:
    if len(values) != 1:
        raise FilterError("since: give one time")
    t = parse_time(values[0])
    return lambda f: f.time_ns >= t


def _until(values: Sequence[str], _sides: Side | None = None) -> FilterFunc:
    if len(values) != 1:
        raise FilterError("until: give one time")
    t = parse_time(values[0])
    return lambda f: f.time_ns <= t


@dataclass(frozen=True)
class Criterion:
    name: str
    build: Callable[[Sequence[str], Side], FilterFunc]
    sides: Side
    help: str


def _sided(name: str, build: Callable[[Sequence[str], Side], FilterFunc], what: str) -> list[Criterion]:
    return [
        Criterion(name, build, _either, f"{what} of the source or the destination"),
        Criterion(f"from_{name}", build, _src, f"{what} of the source"),
        Criterion(f"to_{name}", build, _dst, f"{what} of the destination"),
    ]


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in [
        *_sided("pod", _pod, "pod [namespace/]name"),
        *_sided("namespace", _namespace, "namespace"),
        *_sided("ip", _ip, "IP address or CIDR"),
        *_sided("port", _port, "port"),
        *_sided("label", _label, "pod label key or key=value"),
        Criterion("protocol", _protocol, _either, "tcp, udp, icmp, icmpv6, sctp or a number"),
        Criterion(
            "verdict", _choice("verdict", VERDICTS, lambda f: f.verdict), _either, "forwarded, dropped, audit"
        ),
        Criterion(
            "type",
            _choice("type", EVENT_TYPES, lambda f: f.type),
            _either,
            "event type: new, report, end, drop",
        ),
        Criterion(
            "direction", _choice("direction", DIRECTIONS, lambda f: f.direction), _either, "egress, ingress"
        ),
        Criterion("since", _since, _either, "flows seen at or after: RFC 3339, unix seconds, or 5m (ago)"),
        Criterion("until", _until, _either, "flows seen at or before: same forms as since"),
    ]
}


@dataclass
class FlowFilter:
    """The criteria of one filter; an empty filter matches every flow."""

    funcs: list[FilterFunc] = field(default_factory=list)
    criteria: dict[str, list[str]] = field(default_factory=dict)

    def __call__(self, flow: Flow) -> bool:
        return all(fn(flow) for fn in self.funcs)

    def __bool__(self) -> bool:
        return bool(self.funcs)


@dataclass
class FlowQuery:
    """Allow-list and deny-list: a flow passes if it matches `allow` and does not match `deny`."""

    allow: FlowFilter = field(default_factory=FlowFilter)
    deny: FlowFilter = field(default_factory=FlowFilter)

    def __call__(self, flow: Flow) -> bool:
        return self.allow(flow) and not (self.deny and self.deny(flow))


def _split(values: Iterable[str]) -> list[str]:
    # Repeated parameters and comma-separated values mean the same thing.
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def build_filter(criteria: Mapping[str, Sequence[str]]) -> FlowFilter:
    flt = FlowFilter()
    for name, raw in criteria.items():
        crit = CRITERIA.get(name)
        if crit is None:
            raise FilterError(f"unknown filter {name!r}; known: {', '.join(CRITERIA)}")
        values = _split(raw)
        if not values:
            raise FilterError(f"{name}: empty value")
        flt.funcs.append(crit.build(values, crit.sides))
        flt.criteria[name] = values
    return flt


def parse(params: Mapping[str, Sequence[str]], ignore: Iterable[str] = ()) -> FlowQuery:
    """Criteria name -> values (`not_<name>` for the deny-list) into a FlowQuery. Keys in `ignore` (such
    as `limit`) are left to the caller; any other unknown key is an error, so typos do not widen a query."""
    skip = set(ignore)
    allow: dict[str, list[str]] = {}
    deny: dict[str, list[str]] = {}
    for key, values in params.items():
        if key in skip:
            continue
        if key.startswith(DENY_PREFIX):
            deny.setdefault(key[len(DENY_PREFIX) :], []).extend(values)
        else:
            allow.setdefault(key, []).extend(values)
    return FlowQuery(build_filter(allow), build_filter(deny))


def to_params(query: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """The criteria mapping as query parameters (the CLI sends its flags to the API this way)."""
    return [(key, value) for key, values in query.items() for value in values]
