"""Flow history in ClickHouse, for a cluster: every agent (or the relay) writes, the relay and the UI read.

`--history clickhouse://host:port/db` (native protocol, clickhouse-driver: it works with Debian's 18.16
server and current ones; clickhouse-connect's HTTP client does not talk to 18.16). Tables, created and
migrated here (a column added to schema.COLUMNS becomes `ALTER TABLE ... ADD COLUMN`):

    lumen_flows       MergeTree, PARTITION BY day, ORDER BY (src, dst, time): the schema's integer columns
                      plus `time` (ns) and `day`; a pod's flows are a range of the primary key, and rows of
                      one edge sit together, so they compress to a few tens of bytes
    lumen_endpoints   ReplacingMergeTree (id, doc): endpoint dictionary, ids are stable hashes of the
    lumen_strings     document, so agents on every node write the same ids without coordination

Retention: `ALTER TABLE lumen_flows DROP PARTITION <day>` for days past the bound, and a table TTL on
servers that have one (19.6 and later); queries never return flows older than the bound.
Failures: connection errors are `unreachable` and retryable (the sink keeps the batch, bounded).
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from exporter.filters import FlowQuery
from exporter.flows import Flow
from exporter.history import translate
from exporter.history.errors import HistoryError
from exporter.history.rollup import EdgeRow
from exporter.history.schema import COLUMN_NAMES, COLUMNS, DAY_NS, Dictionaries, decoder, encoder
from exporter.store import CursorError, Page

log = logging.getLogger("lumen.history")

_SELECT = "time, " + ", ".join(COLUMN_NAMES)
_ORDER = "time DESC, src, dst, sport, dport, type"
_QUERY_CHUNK = 5000
#: NULL policy (no policy isolates that side) in a column without NULLs
NO_POLICY = -1
_EGRESS, _INGRESS = COLUMN_NAMES.index("egress"), COLUMN_NAMES.index("ingress")


def parse_url(url: str) -> tuple[str, int, str]:
    """clickhouse://host[:port][/db] -> (host, port, database)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "clickhouse" or not u.hostname:
        raise ValueError(f"history {url!r}: expected clickhouse://host:port/database")
    db = u.path.strip("/") or "lumen"
    if not db.replace("_", "").isalnum():
        raise ValueError(f"history {url!r}: database name must be letters, digits and _")
    return u.hostname, u.port or 9000, db


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".")[:2] if p.isdigit())


class ClickHouseHistory:
    """exporter.store.FlowSource over ClickHouse, and a writer for the history sink. The relay uses the
    same class with `writer=False` (it only reads)."""

    backend = "clickhouse"

    def __init__(
        self,
        url: str,
        retention_s: float | None = None,
        clock: Callable[[], int] = time.time_ns,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.host, self.port, self.db = parse_url(url)
        # None: a reader (the relay) that leaves retention to the writers and reads what is there
        self.retention_ns = None if retention_s is None else int(retention_s * 1e9)
        self._oldest: tuple[float, int | None] = (0.0, None)  # (when looked, oldest time stored)
        self.clock = clock
        self.connect_timeout_s = connect_timeout_s
        self.dicts = Dictionaries(hashed=True)
        self.translator = translate.Translator(self.dicts)
        self._encode = encoder(self.dicts)
        self._decode = decoder(self.dicts)
        self._lock = threading.Lock()  # clickhouse-driver clients are not thread-safe: one per use
        self._local = threading.local()
        self._ready = False
        self.server_version = ""
        self.created_ns = 0
        try:
            self._ensure_schema()
        except HistoryError as exc:  # the sink retries; a reader answers with the error
            log.warning("clickhouse not ready yet", extra={"error": str(exc)})

    # -- connection --------------------------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            from clickhouse_driver import Client  # type: ignore[import-untyped]

            client = Client(
                self.host,
                port=self.port,
                connect_timeout=self.connect_timeout_s,
                send_receive_timeout=30,
                settings={"max_block_size": 65536},
            )
            self._local.client = client
        return client

    def _run(self, sql: str, params: Any = None, **kw: Any) -> Any:
        try:
            return self._client().execute(sql, params, **kw)
        except Exception as exc:  # noqa: BLE001 - every driver failure becomes a counted reason
            raise _classify(exc) from exc

    def _ensure_schema(self) -> None:
        if self._ready:
            return
        self.server_version = self._run("SELECT version()")[0][0]
        ttl = self.retention_ns is not None and _version_tuple(self.server_version) >= (19, 6)
        days = max(1, -(-(self.retention_ns or 0) // DAY_NS))
        self._run(f"CREATE DATABASE IF NOT EXISTS {self.db}")
        cols = ", ".join(f"{c.name} {c.clickhouse}" for c in COLUMNS)
        self._run(
            f"CREATE TABLE IF NOT EXISTS {self.db}.lumen_flows (time Int64, {cols}, "
            "day Date DEFAULT toDate(toDateTime(intDiv(time, 1000000000)))) "
            "ENGINE = MergeTree PARTITION BY day ORDER BY (src, dst, time)"
            + (f" TTL day + INTERVAL {days} DAY" if ttl else "")
        )
        for table in ("lumen_endpoints", "lumen_strings"):
            value = "doc" if table == "lumen_endpoints" else "value"
            self._run(
                f"CREATE TABLE IF NOT EXISTS {self.db}.{table} (id Int64, {value} String) "
                "ENGINE = ReplacingMergeTree ORDER BY id"
            )
        have = {r[0] for r in self._run(f"DESCRIBE TABLE {self.db}.lumen_flows")}
        for c in COLUMNS:  # columns a newer release added
            if c.name not in have:
                self._run(f"ALTER TABLE {self.db}.lumen_flows ADD COLUMN {c.name} {c.clickhouse}")
        self._refresh_dicts(force=True)
        self._ready = True

    def _refresh_dicts(self, force: bool = False) -> None:
        """Entries other writers added since we last looked."""
        d = self.dicts
        n_ep, n_s = self._run(
            f"SELECT (SELECT uniqExact(id) FROM {self.db}.lumen_endpoints), "
            f"(SELECT uniqExact(id) FROM {self.db}.lumen_strings)"
        )[0]
        if force or n_ep > len(d.endpoints) or n_s > len(d.strings):
            with self._lock:
                d.load(
                    self._run(f"SELECT id, any(doc) FROM {self.db}.lumen_endpoints GROUP BY id"),
                    self._run(f"SELECT id, any(value) FROM {self.db}.lumen_strings GROUP BY id"),
                )

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.disconnect()
            self._local.client = None

    # -- writing -----------------------------------------------------------------------------------

    def write(self, flows: Sequence[Flow]) -> int:
        if not flows:
            return 0
        with self._lock:
            try:
                self._ensure_schema()
                encode = self._encode
                rows = [encode(f, f.time_ns) for f in flows]
                d = self.dicts
                if d.new_endpoints:
                    self._run(f"INSERT INTO {self.db}.lumen_endpoints (id, doc) VALUES", d.new_endpoints)
                if d.new_strings:
                    self._run(f"INSERT INTO {self.db}.lumen_strings (id, value) VALUES", d.new_strings)
                d.new_endpoints.clear()
                d.new_strings.clear()
            except HistoryError:
                self.dicts.forget_pending()
                raise
            columns = [list(c) for c in zip(*rows, strict=True)]
            # no NULLs in ClickHouse columns: "no policy isolates this side" is -1, no extra fields ''
            for i in (_EGRESS + 1, _INGRESS + 1):  # +1: time comes first
                columns[i] = [NO_POLICY if v is None else v for v in columns[i]]
            columns[-1] = ["" if v is None else v for v in columns[-1]]
            self._run(f"INSERT INTO {self.db}.lumen_flows ({_SELECT}) VALUES", columns, columnar=True)
        return len(flows)

    def enforce_retention(self, now_ns: int | None = None) -> list[str]:
        """Drop whole days older than the bound."""
        self._ensure_schema()
        if self.retention_ns is None:
            return []
        now = self.clock() if now_ns is None else now_ns
        cutoff_day = (now - self.retention_ns) // DAY_NS  # days since the epoch; older days go
        rows = self._run(
            "SELECT DISTINCT partition, toUInt32(min_date) FROM system.parts "
            f"WHERE database = '{self.db}' AND table = 'lumen_flows' AND active"
        )
        dropped = []
        for partition, day in rows:
            if int(day) < cutoff_day:
                self._run(f"ALTER TABLE {self.db}.lumen_flows DROP PARTITION '{partition}'")
                dropped.append(partition)
        if dropped:
            log.info("history retention dropped days", extra={"partitions": dropped})
        return dropped

    # -- reading -----------------------------------------------------------------------------------

    def floor_ns(self) -> int:
        """The oldest time a query returns: the age bound (writers), or none (a reader)."""
        return 0 if self.retention_ns is None else self.clock() - self.retention_ns

    def complete_from_ns(self) -> int:
        """A window starting before this reaches past what is held: the age bound, or for a reader the
        oldest flow stored (looked up at most once a minute)."""
        if self.retention_ns is not None:
            return self.floor_ns()
        at, oldest = self._oldest
        if time.monotonic() - at > 60:
            found = self._run(f"SELECT min(time), count() FROM {self.db}.lumen_flows")[0]
            oldest = int(found[0]) if found[1] else None
            self._oldest = (time.monotonic(), oldest)
        return self.clock() if oldest is None else oldest

    def _window(self, since_ns: int | None, until_ns: int | None) -> tuple[int, int]:
        lo = max(self.floor_ns(), since_ns or 0)
        hi = until_ns if until_ns is not None else self.clock() + DAY_NS
        return lo, hi

    def _time_sql(self, lo: int, hi: int) -> str:
        return (
            f"day BETWEEN toDate(toDateTime({lo // 10**9})) AND toDate(toDateTime({hi // 10**9})) "
            f"AND time BETWEEN {lo} AND {hi}"
        )

    def query(
        self,
        q: FlowQuery | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        limit: int = 0,
        cursor: str | None = None,
    ) -> Page:
        self._ensure_schema()
        self._refresh_dicts()
        lo, hi = self._window(since_ns, until_ns)
        complete = since_ns is not None and since_ns >= self.complete_from_ns()
        skip = 0
        if cursor:
            hi, skip = _parse_cursor(cursor)
        cond = self.translator.condition(q)
        post = None if cond.exact or q is None else q.matches
        want = limit + 1 if limit > 0 else None  # one more than asked says whether there is a next page
        out: list[Flow] = []
        times: list[tuple[int, int]] = []  # (time, rows examined at that time so far) per flow in `out`
        offset = skip
        last_time, same = None, 0
        while True:
            n = _QUERY_CHUNK if (post or want is None) else want - len(out)
            rows = self._run(
                f"SELECT {_SELECT} FROM {self.db}.lumen_flows WHERE {self._time_sql(lo, hi)} "
                f"AND ({cond.sql}) ORDER BY {_ORDER} LIMIT {offset}, {n}"
            )
            for row in rows:
                if row[1] not in self.dicts.endpoints or row[2] not in self.dicts.endpoints:
                    self._refresh_dicts(force=True)
                f = self._decode(row[0], _nullable(row[1:]))
                same = same + 1 if row[0] == last_time else 1
                last_time = row[0]
                if post is not None and not post(f):
                    continue
                out.append(f)
                times.append((row[0], same))
                if want is not None and len(out) >= want:
                    break
            if (want is not None and len(out) >= want) or len(rows) < n:
                break
            offset += len(rows)
        if want is None or len(out) < want:
            return Page(out, None, complete)
        out.pop()
        last_time, same = times[len(out) - 1]
        # rows at `last_time` passed over: this page's, plus the earlier pages' when it is the same time
        if last_time == hi:
            same += skip
        return Page(out, f"c{last_time}.{same}", complete)

    def edge_rows(
        self, q: FlowQuery | None = None, since_ns: int | None = None, until_ns: int | None = None
    ) -> tuple[list[EdgeRow], bool]:
        """Service-map sums, aggregated by ClickHouse."""
        self._ensure_schema()
        self._refresh_dicts()
        lo, hi = self._window(since_ns, until_ns)
        complete = since_ns is not None and since_ns >= self.complete_from_ns()
        cond = self.translator.condition(q)
        if not cond.exact and q is not None:
            rows: list[EdgeRow] = []
            page = self.query(q, since_ns, until_ns)
            s = self.dicts.string_ids
            for f in page.flows:
                port = 0 if f.is_reply else f.destination.port
                rows.append(
                    (
                        self.dicts.endpoint(f.source), self.dicts.endpoint(f.destination), s[f.verdict],
                        f.key[1], port, s[f.drop_reason], int(f.is_reply), 1, f.packets, f.bytes, f.start_ns,
                        f.time_ns,
                    )
                )  # fmt: skip
            from exporter.history.rollup import merge

            return merge(rows), complete
        result = self._run(
            "SELECT src, dst, verdict, proto, if(reply, 0, dport) AS port, reason, toUInt8(reply), count(), "
            f"sum(packets), sum(bytes), min(time - start_off), max(time) FROM {self.db}.lumen_flows "
            f"WHERE {self._time_sql(lo, hi)} AND ({cond.sql}) "
            "GROUP BY src, dst, verdict, proto, port, reason, reply"
        )
        return [tuple(r) for r in result], complete

    def stats(self) -> dict[str, Any]:
        self._ensure_schema()
        parts = self._run(
            "SELECT sum(rows), sum(bytes_on_disk) FROM system.parts "
            f"WHERE database = '{self.db}' AND active AND table = 'lumen_flows'"
        )[0]
        oldest = self._run(f"SELECT min(time) FROM {self.db}.lumen_flows WHERE time >= {self.floor_ns()}")[0][
            0
        ]
        return {
            "backend": self.backend,
            "url": f"clickhouse://{self.host}:{self.port}/{self.db}",
            "server_version": self.server_version,
            "rows": int(parts[0] or 0),
            "size_bytes": int(parts[1] or 0),
            "retention_s": None if self.retention_ns is None else self.retention_ns / 1e9,
            "oldest_ns": int(oldest) if oldest else None,
        }


def _nullable(row: Sequence[Any]) -> tuple[Any, ...]:
    """ClickHouse's -1 / '' back to the schema's NULLs."""
    r = list(row)
    for i in (_EGRESS, _INGRESS):
        r[i] = None if r[i] == NO_POLICY else r[i]
    r[-1] = r[-1] or None
    return tuple(r)


def _classify(exc: Exception) -> HistoryError:
    from clickhouse_driver import errors  # type: ignore[import-untyped]

    if isinstance(exc, errors.NetworkError | errors.SocketTimeoutError | OSError | EOFError):
        return HistoryError("unreachable", f"clickhouse unreachable: {exc}", retryable=True)
    if isinstance(exc, errors.ServerException):
        # 252 too many parts, 241 memory limit, 159 timeout: the server will take it later
        retry = getattr(exc, "code", 0) in (159, 209, 241, 252)
        return HistoryError("server_error", f"clickhouse: {str(exc).splitlines()[0]}", retryable=retry)
    return HistoryError("error", f"clickhouse: {type(exc).__name__}: {exc}")


def _parse_cursor(cursor: str) -> tuple[int, int]:
    t, dot, same = cursor[1:].partition(".")
    if not cursor.startswith("c") or not dot or not t.isdigit() or not same.isdigit():
        raise CursorError(f"cursor {cursor!r}: not one the history handed out")
    return int(t), int(same)
