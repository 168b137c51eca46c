"""Flow filters as data, shared by the API, the CLI, the UI, the relay and the history stores.

A `FilterGroup` is one AND-group: criterion name -> normalised values; a criterion matches if any of its
values does, a group if all its criteria do. A `FlowQuery` is an allow-list and a deny-list of groups: a
flow passes if the allow-list is empty or one allow group matches, and no deny group matches (Hubble's
whitelist/blacklist). Being plain data, a query travels as JSON (`FlowQuery.to_json`) to a relay and a SQL
store translates it; `matches` is the in-memory evaluator.

Query parameters (`?from_pod=shop/web&not_verdict=dropped`) and CLI flags (`--from-pod shop/web
--not-verdict dropped`) are one allow group and one deny group; `filter=<json>` carries several. Time is
not a criterion: `since`/`until` are arguments of a store's query, parsed by `parse_time`. Every bad name
or value raises FilterError with the reason (HTTP 400, CLI usage error).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bpf import vocab

if TYPE_CHECKING:  # the CLI imports this module; keep its start-up free of the flow model's imports
    from exporter.flows import Endpoint, Flow

DENY_PREFIX = "not_"
TIME_PARAMS = ("since", "until")
FILTER_PARAM = "filter"


class FilterError(ValueError):
    """A criterion name or value that cannot be parsed; the message says which and why."""


# -- criteria: how a value is normalised, and how a normalised value is matched ---------------------

Normalise = Callable[[str], str]
Match = Callable[[tuple[str, ...]], Callable[["Flow"], bool]]


@dataclass(frozen=True)
class Criterion:
    name: str
    normalise: Normalise
    build: Match
    help: str


def _sides(side: str) -> Callable[[Flow], tuple[Endpoint, ...]]:
    if side == "from":
        return lambda f: (f.source,)
    if side == "to":
        return lambda f: (f.destination,)
    return lambda f: (f.source, f.destination)


def _norm_pod(v: str) -> str:
    """`namespace/name` (name may be a prefix, or empty: every pod of the namespace) or `name` (a prefix
    in any namespace), as Hubble matches pods."""
    ns, slash, name = v.partition("/")
    if slash and (not ns or "/" in name):
        raise FilterError(f"pod {v!r}: expected namespace/name, namespace/ or a name prefix")
    if not slash and not ns:
        raise FilterError(f"pod {v!r}: expected namespace/name, namespace/ or a name prefix")
    return v


def _pod(side: str) -> Match:
    eps = _sides(side)

    def build(values: tuple[str, ...]) -> Callable[[Flow], bool]:
        wanted = [
            (ns, name) if slash else (None, ns) for ns, slash, name in (v.partition("/") for v in values)
        ]
        return lambda f: any(
            ep.pod and ep.pod.startswith(name) and (ns is None or ep.namespace == ns)
            for ep in eps(f)
            for ns, name in wanted
        )

    return build


def _norm_name(what: str) -> Normalise:
    def norm(v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise FilterError(f"{what} {v!r}: expected a name")
        return v

    return norm


def _namespace(side: str) -> Match:
    eps = _sides(side)

    def build(values: tuple[str, ...]) -> Callable[[Flow], bool]:
        wanted = set(values)
        return lambda f: any(ep.namespace in wanted for ep in eps(f))

    return build


def _norm_ip(v: str) -> str:
    try:
        return str(ipaddress.ip_network(v, strict=False))
    except ValueError:
        raise FilterError(f"ip {v!r}: not an IP address or CIDR") from None


def _ip(side: str) -> Match:
    eps = _sides(side)

    def build(values: tuple[str, ...]) -> Callable[[Flow], bool]:
        nets = [ipaddress.ip_network(v) for v in values]

        def match(f: Flow) -> bool:
            for ep in eps(f):
                try:
                    addr = ipaddress.ip_address(ep.ip)
                except ValueError:
                    continue
                if any(addr.version == n.version and addr in n for n in nets):
                    return True
            return False

        return match

    return build


def _norm_port(v: str) -> str:
    if not (v.isascii() and v.isdigit()) or int(v) > 65535:
        raise FilterError(f"port {v!r}: expected a number from 0 to 65535")
    return str(int(v))


def _port(side: str) -> Match:
    eps = _sides(side)

    def build(values: tuple[str, ...]) -> Callable[[Flow], bool]:
        wanted = {int(v) for v in values}
        return lambda f: any(ep.port in wanted for ep in eps(f))

    return build


def _norm_label(v: str) -> str:
    key, _, _ = v.partition("=")
    if not key:
        raise FilterError(f"label {v!r}: expected key or key=value")
    return v


def _label(side: str) -> Match:
    eps = _sides(side)

    def build(values: tuple[str, ...]) -> Callable[[Flow], bool]:
        wanted = [(k, val if eq else None) for k, eq, val in (v.partition("=") for v in values)]
        return lambda f: any(
            k in ep.labels and (val is None or ep.labels[k] == val) for ep in eps(f) for k, val in wanted
        )

    return build


def _norm_choice(what: str, allowed: Iterable[str]) -> Normalise:
    canon = {a.lower(): a for a in allowed}

    def norm(v: str) -> str:
        got = canon.get(v.lower())
        if got is None:
            raise FilterError(f"{what} {v!r}: expected one of {', '.join(sorted(canon.values()))}")
        return got

    return norm


def _attr_in(attr: Callable[[Flow], object]) -> Match:
    def build(values: tuple[str, ...]) -> Callable[[Flow], bool]:
        wanted = set(values)
        return lambda f: attr(f) in wanted

    return build


_PROTOCOLS = {name.lower(): name for name in vocab.PROTOCOL_NAMES.values()}


def _norm_protocol(v: str) -> str:
    if v.lower() in _PROTOCOLS:
        return _PROTOCOLS[v.lower()]
    if v.isascii() and v.isdigit() and int(v) < 256:
        return vocab.protocol_name(int(v))  # "6" is TCP: a flow shows a named protocol by its name
    raise FilterError(f"protocol {v!r}: expected {', '.join(vocab.PROTOCOL_NAMES.values())} or a number")


def _norm_tcp_flag(v: str) -> str:
    up = v.upper()
    if up not in vocab.TCP_FLAG_NAMES:
        raise FilterError(f"tcp_flags {v!r}: expected one of {', '.join(vocab.TCP_FLAG_NAMES)}")
    return up


def _tcp_flags(values: tuple[str, ...]) -> Callable[[Flow], bool]:
    mask = 0
    for v in values:
        mask |= 1 << vocab.TCP_FLAG_NAMES.index(v)
    return lambda f: bool(f.tcp_flags & mask)


_IP_VERSIONS = {"4": "4", "6": "6", "ipv4": "4", "ipv6": "6", "v4": "4", "v6": "6"}


def _norm_ip_version(v: str) -> str:
    got = _IP_VERSIONS.get(v.lower())
    if got is None:
        raise FilterError(f"ip_version {v!r}: expected 4 or 6")
    return got


_BOOLS = {"true": "true", "yes": "true", "1": "true", "false": "false", "no": "false", "0": "false"}


def _norm_bool(what: str) -> Normalise:
    def norm(v: str) -> str:
        got = _BOOLS.get(v.lower())
        if got is None:
            raise FilterError(f"{what} {v!r}: expected true or false")
        return got

    return norm


def _sided(name: str, normalise: Normalise, build: Callable[[str], Match], what: str) -> list[Criterion]:
    return [
        Criterion(name, normalise, build("either"), f"{what} of the source or the destination"),
        Criterion(f"from_{name}", normalise, build("from"), f"{what} of the source"),
        Criterion(f"to_{name}", normalise, build("to"), f"{what} of the destination"),
    ]


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in [
        *_sided("pod", _norm_pod, _pod, "pod namespace/name, namespace/ or name prefix"),
        *_sided("namespace", _norm_name("namespace"), _namespace, "namespace"),
        *_sided("ip", _norm_ip, _ip, "IP address or CIDR"),
        *_sided("port", _norm_port, _port, "port"),
        *_sided("label", _norm_label, _label, "pod label key or key=value"),
        Criterion("node", _norm_name("node"), _attr_in(lambda f: f.node), "node name"),
        Criterion(
            "protocol",
            _norm_protocol,
            _attr_in(lambda f: f.protocol),
            f"{', '.join(vocab.PROTOCOL_NAMES.values())} or a number",
        ),
        Criterion(
            "verdict",
            _norm_choice("verdict", vocab.VERDICT_NAMES.values()),
            _attr_in(lambda f: f.verdict),
            ", ".join(v.lower() for v in vocab.VERDICT_NAMES.values()),
        ),
        Criterion(
            "type",
            _norm_choice("type", vocab.EVENT_TYPE_NAMES.values()),
            _attr_in(lambda f: f.type),
            "event type: " + ", ".join(v.lower() for v in vocab.EVENT_TYPE_NAMES.values()),
        ),
        Criterion(
            "direction",
            _norm_choice("direction", vocab.DIRECTION_NAMES.values()),
            _attr_in(lambda f: f.direction),
            ", ".join(vocab.DIRECTION_NAMES.values()),
        ),
        Criterion(
            "tcp_flags", _norm_tcp_flag, _tcp_flags, "a TCP flag seen: " + ", ".join(vocab.TCP_FLAG_NAMES)
        ),
        Criterion("ip_version", _norm_ip_version, _attr_in(lambda f: str(f.key[0])), "4 or 6"),
        Criterion(
            "special",
            _norm_bool("special"),
            _attr_in(lambda f: "true" if f.special else "false"),
            "true: a link-local, multicast or unspecified address at either end (neighbour discovery, MLD,"
            " DHCP); the UI hides these unless asked",
        ),
        Criterion(
            "is_reply",
            _norm_bool("is_reply"),
            _attr_in(lambda f: "true" if f.is_reply else "false"),
            "true: the answer of a connection seen first the other way",
        ),
    ]
}


# -- the data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterGroup:
    """One AND-group: criterion name -> normalised values (any value of a criterion matches). Built from
    raw values, which are checked and normalised (`tcp` -> `TCP`, `10.0.0.1` -> `10.0.0.1/32`)."""

    criteria: Mapping[str, Sequence[str]] = field(default_factory=dict)
    _funcs: tuple[Callable[[Flow], bool], ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        out: dict[str, tuple[str, ...]] = {}
        for name, raw in self.criteria.items():
            crit = CRITERIA.get(name)
            if crit is None:
                raise FilterError(f"unknown filter {name!r}; known: {', '.join(CRITERIA)}")
            if isinstance(raw, str) or not all(isinstance(v, str) for v in raw):
                raise FilterError(f"{name}: expected a list of strings")
            values = tuple(dict.fromkeys(crit.normalise(v) for v in raw))
            if not values:
                raise FilterError(f"{name}: empty value")
            out[name] = values
        object.__setattr__(self, "criteria", out)
        object.__setattr__(self, "_funcs", tuple(CRITERIA[n].build(v) for n, v in out.items()))

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.criteria.items())))

    def matches(self, flow: Flow) -> bool:
        return all(fn(flow) for fn in self._funcs)

    def to_dict(self) -> dict[str, list[str]]:
        return {name: list(values) for name, values in self.criteria.items()}


@dataclass(frozen=True)
class FlowQuery:
    """Allow-list and deny-list of AND-groups. Empty allow-list: every flow is allowed."""

    allow: tuple[FilterGroup, ...] = ()
    deny: tuple[FilterGroup, ...] = ()

    def matches(self, flow: Flow) -> bool:
        if self.allow and not any(g.matches(flow) for g in self.allow):
            return False
        return not any(g.matches(flow) for g in self.deny)

    __call__ = matches  # a query is also a plain predicate (store subscriptions, filter())

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def to_dict(self) -> dict[str, list[dict[str, list[str]]]]:
        return {"allow": [g.to_dict() for g in self.allow], "deny": [g.to_dict() for g in self.deny]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> FlowQuery:
        if not isinstance(data, dict) or not set(data) <= {"allow", "deny"}:
            raise FilterError('filter: expected {"allow": [groups], "deny": [groups]}')
        lists = []
        for side in ("allow", "deny"):
            groups = data.get(side, [])
            if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
                raise FilterError(f"filter {side}: expected a list of objects (criterion -> values)")
            lists.append(tuple(FilterGroup(g) for g in groups))
        return cls(lists[0], lists[1])

    @classmethod
    def from_json(cls, text: str) -> FlowQuery:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise FilterError("filter: not valid JSON") from None
        return cls.from_dict(data)

    def to_params(self) -> list[tuple[str, str]]:
        """As query parameters: plain criteria when it is one allow and one deny group at most, else one
        `filter=<json>`."""
        if len(self.allow) > 1 or len(self.deny) > 1:
            return [(FILTER_PARAM, self.to_json())]
        out = []
        for prefix, groups in (("", self.allow), (DENY_PREFIX, self.deny)):
            for g in groups:
                out += [(prefix + name, v) for name, values in g.criteria.items() for v in values]
        return out


def matches(query: FlowQuery, flow: Flow) -> bool:
    return query.matches(flow)


# -- parsing request parameters ----------------------------------------------------------------------


def _split(values: Iterable[str]) -> list[str]:
    # Repeated parameters and comma-separated values mean the same thing.
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def parse(params: Mapping[str, Sequence[str]], ignore: Iterable[str] = ()) -> FlowQuery:
    """Parameters -> FlowQuery: `<name>` into one allow group, `not_<name>` into one deny group, or a
    `filter` JSON document. Keys in `ignore` (`limit`, `since`, ...) are the caller's; any other unknown
    key is an error, so a typo does not widen a query."""
    skip = set(ignore)
    allow: dict[str, list[str]] = {}
    deny: dict[str, list[str]] = {}
    documents: list[str] = []
    for key, values in params.items():
        if key in skip:
            continue
        if key == FILTER_PARAM:
            documents.extend(values)
            continue
        deny_side = key.startswith(DENY_PREFIX)
        name = key[len(DENY_PREFIX) :] if deny_side else key
        if name in TIME_PARAMS:
            raise FilterError(f"{key}: since and until are a time range, not a filter criterion")
        if name not in CRITERIA:
            raise FilterError(f"unknown filter {name!r}; known: {', '.join(CRITERIA)}")
        split = _split(values)
        if not split:
            raise FilterError(f"{name}: empty value")
        (deny if deny_side else allow).setdefault(name, []).extend(split)
    if documents:
        if len(documents) > 1 or allow or deny:
            raise FilterError("filter: give either one filter=<json> or plain criteria, not both")
        return FlowQuery.from_json(documents[0])
    return FlowQuery(
        (FilterGroup(allow),) if allow else (),
        (FilterGroup(deny),) if deny else (),
    )


# -- time ------------------------------------------------------------------------------------------

# Go's time.ParseDuration as `hubble observe --since 1h30m` takes it, and d for days
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: the latest time accepted: 9999-12-31T23:59:59Z (datetime's range; beyond it nothing is stored anyway)
MAX_TIME_S = 253402300799


def parse_duration(value: str) -> float | None:
    """`90s`, `5m`, `1h30m`, `2d`, `1.5h`, `250ms` -> seconds; None if `value` is no duration."""
    text = value.strip()
    if not _DURATION.fullmatch(text):
        return None
    return sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))


def parse_time(value: str, now: float | None = None) -> int:
    """RFC 3339 (`2026-01-02T03:04:05Z`), unix seconds, or a duration ago (`90s`, `5m`, `1h30m`) -> ns
    since the epoch. Rejects what is no point in time: inf, nan, before 1970, after year 9999."""
    now = time.time() if now is None else now
    seconds: float | None = None
    ago = parse_duration(value)
    if ago is not None:
        seconds = now - ago
    else:
        try:
            seconds = float(value)
        except ValueError:
            pass
    if seconds is None:
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise FilterError(
                f"time {value!r}: expected RFC 3339, unix seconds or a duration like 5m or 1h30m"
            ) from None
        if dt.tzinfo is None:
            raise FilterError(f"time {value!r}: give a timezone (Z or +hh:mm)")
        try:
            seconds = dt.timestamp()
        except (OverflowError, OSError, ValueError):
            raise FilterError(f"time {value!r}: out of range") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_TIME_S:
        raise FilterError(f"time {value!r}: out of range (1970 to 9999)")
    return int(seconds * 1e9)


def parse_range(
    params: Mapping[str, Sequence[str]], now: float | None = None
) -> tuple[int | None, int | None]:
    """`since` and `until` of a request (one value each) as ns, or None when absent."""
    out: list[int | None] = []
    for name in TIME_PARAMS:
        values = params.get(name) or []
        if len(values) > 1:
            raise FilterError(f"{name}: give one time")
        out.append(parse_time(values[0], now) if values else None)
    since, until = out
    if since is not None and until is not None and since > until:
        raise FilterError("since is after until")
    return since, until
