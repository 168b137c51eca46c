"""A FlowQuery (exporter.filters) as a SQL condition over the integer columns of exporter.history.schema.

Names become ids by running the in-memory filter itself on the dictionaries: a `from_pod=shop/` criterion
is evaluated once per endpoint in the endpoint dictionary, and the matching ids become `src IN (...)`;
`verdict=dropped` is evaluated on each interned string, and so on. So SQL and memory cannot disagree on
what a pod prefix, a CIDR or a protocol number means. Ports, flags, IP version and `is_reply` are plain
integer columns.

A criterion this module cannot translate (one added to exporter.filters later) leaves the condition a
superset: the store then also runs `FlowQuery.matches` on each row it reads (`exact` is False). A deny
group that cannot be translated whole is left to Python entirely (NOT of a superset would hide rows).

The same SQL serves SQLite and ClickHouse (integer literals only), for the raw flow table and, when
`rollup_ok`, for the service-map rollup (which has src, dst, node, protocol, verdict, direction, reply).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bpf import vocab
from bpf.vocab import protocol_name
from exporter.filters import CRITERIA, FilterGroup, FlowQuery
from exporter.flows import Endpoint, Flow
from exporter.history.schema import Dictionaries

ENDPOINT_BASES = ("pod", "namespace", "ip", "label")
#: criterion -> the Flow attribute holding an interned string, and its column
STRING_CRITERIA = {
    "node": "node",
    "verdict": "verdict",
    "type": "type",
    "direction": "direction",
}
#: columns the service-map rollup has (the others need the raw rows)
ROLLUP_CRITERIA = {
    *(f"{side}{b}" for b in ENDPOINT_BASES for side in ("", "from_", "to_")),
    "node",
    "protocol",
    "verdict",
    "direction",
    "is_reply",
}

_TEMPLATE = Flow(
    key=(4, 6, "0.0.0.0", "0.0.0.0", 0, 0, "egress"),
    type="END",
    time_ns=0,
    start_ns=0,
    end_ns=0,
    protocol="TCP",
    direction="egress",
    verdict="FORWARDED",
    drop_reason="none",
    source=Endpoint("0.0.0.0", 0),
    destination=Endpoint("0.0.0.0", 0),
    packets=0,
    bytes=0,
)


@dataclass(frozen=True)
class Condition:
    sql: str  # a boolean SQL expression ("1" for all)
    exact: bool  # False: rows must also pass FlowQuery.matches
    rollup_ok: bool  # the expression uses only the rollup's columns


def _ids(values: Iterable[int]) -> str:
    return ",".join(str(int(v)) for v in sorted(values))


def _in(column: str, ids: set[int]) -> str:
    return f"{column} IN ({_ids(ids)})" if ids else "0"


class Translator:
    """Per store: caches which dictionary entries match which criterion (dictionaries only grow)."""

    def __init__(self, dicts: Dictionaries) -> None:
        self.dicts = dicts
        # (criterion, values) -> (dictionary generation, entries seen, matching ids)
        self._ep_cache: dict[tuple[str, tuple[str, ...]], tuple[int, int, set[int]]] = {}
        self._str_cache: dict[tuple[str, tuple[str, ...]], tuple[int, int, set[int]]] = {}

    def endpoint_ids(self, base: str, values: tuple[str, ...]) -> set[int]:
        """Ids of the endpoints a `from_<base>` criterion matches."""
        eps = self.dicts.endpoints
        key = (base, values)
        gen, n, found = self._ep_cache.get(key, (-1, 0, set()))
        if gen != self.dicts.generation:
            n, found = 0, set()
        elif n == len(eps):
            return found
        pred = CRITERIA[f"from_{base}"].build(values)
        found = set(found)
        for i, ep in list(eps.items())[n:]:
            probe = dataclasses.replace(
                _TEMPLATE, key=(6 if ":" in ep.ip else 4, *_TEMPLATE.key[1:]), source=ep
            )
            if pred(probe):
                found.add(i)
        self._ep_cache[key] = (self.dicts.generation, len(eps), found)
        return found

    def string_ids(self, name: str, values: tuple[str, ...]) -> set[int]:
        strings = self.dicts.strings
        key = (name, values)
        gen, n, found = self._str_cache.get(key, (-1, -1, set()))
        if gen == self.dicts.generation and n == len(strings):
            return found
        pred = CRITERIA[name].build(values)
        attr = STRING_CRITERIA[name]
        found = set()
        for i, s in list(strings.items()):
            probe = copy.copy(_TEMPLATE)
            setattr(probe, attr, s)
            if pred(probe):
                found.add(i)
        self._str_cache[key] = (self.dicts.generation, len(strings), found)
        return found

    def criterion(self, name: str, values: tuple[str, ...]) -> str | None:
        """SQL for one criterion, or None if it cannot be translated."""
        side, _, base = name.partition("_") if name.startswith(("from_", "to_")) else ("", "", name)
        if base in ENDPOINT_BASES:
            ids = self.endpoint_ids(base, values)
            if len(ids) == len(self.dicts.endpoints) and ids:
                return "1"
            if side == "from":
                return _in("src", ids)
            if side == "to":
                return _in("dst", ids)
            return f"({_in('src', ids)} OR {_in('dst', ids)})" if ids else "0"
        if base == "port":
            ports = _ids(int(v) for v in values)
            if side == "from":
                return f"sport IN ({ports})"
            if side == "to":
                return f"dport IN ({ports})"
            return f"(sport IN ({ports}) OR dport IN ({ports}))"
        if name in STRING_CRITERIA:
            ids = self.string_ids(name, values)
            sql = _in(STRING_CRITERIA[name], ids)
            forwarded = self.dicts.string_ids.get("FORWARDED")
            if name == "verdict" and ids and forwarded is not None and forwarded not in ids:
                # the same words as the SQLite store's partial index on what is not FORWARDED
                sql = f"({sql} AND verdict != {forwarded})"
            return sql
        if name == "is_reply":
            return _in("reply", {1 if v == "true" else 0 for v in values})
        if name == "protocol":
            pred = CRITERIA[name].build(values)
            nums = {n for n in range(256) if pred(dataclasses.replace(_TEMPLATE, protocol=protocol_name(n)))}
            return _in("proto", nums)
        if name == "ip_version":
            # the family is the source address's (both sides share it)
            versions = {int(v) for v in values}
            ids = {i for i, ep in self.dicts.endpoints.items() if (6 if ":" in ep.ip else 4) in versions}
            return _in("src", ids)
        if name == "tcp_flags":
            mask = 0
            for v in values:
                mask |= 1 << vocab.TCP_FLAG_NAMES.index(v)
            return f"bitAnd(flags, {mask}) != 0"
        return None

    def group(self, g: FilterGroup) -> tuple[str, bool, bool]:
        """(SQL, exact, rollup_ok) of one AND-group."""
        parts, exact, rollup = [], True, True
        for name, values in g.criteria.items():
            sql = self.criterion(name, tuple(values))
            if sql is None:
                exact, rollup = False, False
                continue
            if name not in ROLLUP_CRITERIA:
                rollup = False
            if sql != "1":
                parts.append(sql)
        return (" AND ".join(parts) or "1"), exact, rollup

    def condition(self, q: FlowQuery | None) -> Condition:
        if not q:
            return Condition("1", True, True)
        exact = rollup = True
        terms = []
        if q.allow:
            ors = []
            for g in q.allow:
                sql, ex, ro = self.group(g)
                exact, rollup = exact and ex, rollup and ro
                ors.append(f"({sql})")
            terms.append("(" + " OR ".join(ors) + ")")
        for g in q.deny:
            sql, ex, ro = self.group(g)
            if not ex:
                exact = rollup = False  # evaluated in Python only
                continue
            rollup = rollup and ro
            terms.append(f"NOT ({sql})")
        return Condition(" AND ".join(terms) or "1", exact, rollup)


def flags_sqlite(sql: str) -> str:
    """SQLite spells bitAnd(a, b) as (a & b)."""
    return sql.replace("bitAnd(flags, ", "(flags & ")


Predicate = Callable[[Flow], bool]
