"""Flow history in SQLite (stdlib sqlite3, WAL): the agent's default, one file under its state directory.

Layout (schema.py has the columns):
    meta(key, value)              schema version, creation time, horizon (oldest time still complete)
    endpoints(id, doc)            interned endpoints (canonical JSON without the port)
    strings(id, value)            interned strings (protocol, type, direction, verdict, reason, node, ...)
    flows_<hour>(id, ...)         one table per hour since the epoch; id = ns into the hour << 20 | seq,
                                  so the table is in time order and needs no time index.
                                  Indexes: src, dst (each also ordered by id) and a partial index on the
                                  verdict of what is not FORWARDED.
    edges_<hour>(minute, ...)     service-map sums per minute (0-59) and for the whole hour (60),
                                  written in the same transaction as the flows

Retention drops whole hour tables (age: every table whose hour ended before now - retention; size: the
oldest tables while the file's used pages exceed the bound), then returns the pages to the file system
(auto_vacuum=INCREMENTAL). Queries never return a flow older than the age bound, so what a reader sees
is cut exactly at the bound even though storage is freed an hour at a time.

One writer (the history sink's thread) and any number of readers (API threads, each with its own
connection: WAL lets them read while the writer writes).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from exporter.filters import FlowQuery
from exporter.flows import Flow
from exporter.history import translate
from exporter.history.errors import HistoryError, classify
from exporter.history.rollup import EdgeRow, merge
from exporter.history.schema import (
    COLUMN_NAMES,
    COLUMNS,
    HOUR_NS,
    MINUTE_NS,
    SCHEMA_VERSION,
    SEED_STRINGS,
    SEQ_BITS,
    SEQ_MASK,
    Dictionaries,
    decoder,
    encoder,
)
from exporter.store import CursorError, Page

log = logging.getLogger("lumen.history")

DEFAULT_FILE = "history.sqlite"
TEN_MINUTES = 100  # `minute` 100 + n: the sums of minutes 10n to 10n+9 in edges_<hour>
BLOCK_HOURS = 6  # edges_span also sums blocks of this many hours
_SPAN_KEY = (
    "span",
    "start",
    "src",
    "dst",
    "verdict",
    "proto",
    "port",
    "reason",
    "node",
    "direction",
    "reply",
)
_SPAN_UPSERT = (
    f" ON CONFLICT ({', '.join(_SPAN_KEY)}) DO UPDATE SET flows = flows + excluded.flows, "
    "packets = packets + excluded.packets, bytes = bytes + excluded.bytes, "
    "first_ns = min(first_ns, excluded.first_ns), last_ns = max(last_ns, excluded.last_ns)"
)
_EDGE_KEY = ("minute", "src", "dst", "node", "proto", "verdict", "reason", "direction", "reply", "port")
_EDGE_SUMS = ("flows", "packets", "bytes", "first_off", "last_off")  # *_off: ns from the hour's start
_SELECT = "id, " + ", ".join(COLUMN_NAMES)
_QUERY_CHUNK = 2000  # rows read per step when rows are also filtered in Python
_EDGE_GROUP = "src, dst, verdict, proto, port, reason, reply"
_EDGE_SUM = "sum(flows), sum(packets), sum(bytes), min(first_ns), max(last_ns)"
_COMPOUND_MAX = 400  # SQLite allows 500 SELECTs in one UNION ALL


def _hour_start(h: int) -> int:
    return h * HOUR_NS


def _fold(
    sums: dict[tuple[int, ...], list[int]], key: Callable[[tuple[int, ...]], tuple[int, ...]]
) -> dict[tuple[int, ...], list[int]]:
    """Sums [flows, packets, bytes, first, last] regrouped under a coarser key."""
    out: dict[tuple[int, ...], list[int]] = {}
    for k, e in sums.items():
        ck = key(k)
        t = out.get(ck)
        if t is None:
            out[ck] = list(e)
        else:
            t[0] += e[0]
            t[1] += e[1]
            t[2] += e[2]
            t[3] = min(t[3], e[3])
            t[4] = max(t[4], e[4])
    return out


class SqliteHistory:
    """exporter.store.FlowSource over SQLite, and the writer the history sink drives."""

    backend = "sqlite"

    def __init__(
        self,
        path: str,
        retention_s: float = 86400.0,
        max_bytes: int = 1 << 30,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = path
        self.retention_ns = int(retention_s * 1e9)
        self.max_bytes = max_bytes
        self.clock = clock
        self._new_dictionaries()
        self._hours: set[int] = set()
        self._extent: dict[int, tuple[int, int]] = {}  # hour -> (first, last) ns into it of its flows
        self._lock = threading.Lock()  # the write connection and the dictionaries' pending entries
        self._local = threading.local()
        self._generation = 0  # bumped when the file is replaced: readers reconnect
        self._seq = 0
        self.horizon_ns = 0
        self.created_ns = 0
        self.moved_aside: list[str] = []
        self._damaged = ""  # why a reader found the file damaged, until the writer replaces it
        self.reserve_path = path + ".reserve"
        self.reserve_bytes = min(max(max_bytes // 128, 1 << 20), 16 << 20)
        self._conn: sqlite3.Connection | None = None
        self.open()

    def _new_dictionaries(self) -> None:
        self.dicts = Dictionaries()
        self.translator = translate.Translator(self.dicts)
        self._encode = encoder(self.dicts)
        self._decode = decoder(self.dicts)

    # -- connections -----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=2.0)
        conn.execute("PRAGMA busy_timeout = 2000")
        # the current hour's indexes take inserts all over: keep them in memory (64 MiB at most)
        conn.execute("PRAGMA cache_size = -65536")
        return conn

    def open(self) -> None:
        """Open (or create) the file; a file SQLite cannot read is moved aside, not lost, and a new one
        started, so history resumes."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            if classify(exc).reason != "corrupt":
                raise
            self._move_aside(str(exc))
            self._open()

    def _move_aside(self, why: str) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        aside = f"{self.path}.corrupt-{int(time.time())}"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, aside + suffix)
        self.moved_aside.append(aside)
        log.error(
            "history database unreadable, moved aside; starting a new one",
            extra={"file": aside, "error": why},
        )

    def _open(self) -> None:
        conn = self._connect()
        try:
            # auto_vacuum only takes effect before the first table: set it first, on a new file.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # a small write-ahead log: it is the part of the file a full disk can trap
            conn.execute("PRAGMA wal_autocheckpoint = 256")
            conn.execute(f"PRAGMA journal_size_limit = {4 << 20}")
            conn.execute("PRAGMA quick_check(1)").fetchone()
            self._conn = conn
            self._migrate()
        except BaseException:
            conn.close()
            self._conn = None
            raise
        self._generation += 1
        self._ensure_reserve()

    def _reader(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            if getattr(local, "conn", None) is not None:
                local.conn.close()
            local.conn = self._connect()
            local.conn.execute("PRAGMA query_only = 1")
            local.generation = self._generation
        conn: sqlite3.Connection = local.conn
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        if conn is None:
            raise HistoryError("closed", "history database is not open")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- schema ----------------------------------------------------------------------------------

    def _migrate(self) -> None:
        assert self._conn is not None
        with self._tx() as c:
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)")
            c.execute(
                "CREATE TABLE IF NOT EXISTS endpoints (id INTEGER PRIMARY KEY, doc TEXT NOT NULL UNIQUE)"
            )
            c.execute(
                "CREATE TABLE IF NOT EXISTS strings (id INTEGER PRIMARY KEY, value TEXT NOT NULL UNIQUE)"
            )
            c.execute(
                f"CREATE TABLE IF NOT EXISTS edges_span ({', '.join(f'{k} INTEGER' for k in _SPAN_KEY)}, "
                "flows INTEGER, packets INTEGER, bytes INTEGER, first_ns INTEGER, last_ns INTEGER, "
                f"PRIMARY KEY ({', '.join(_SPAN_KEY)})) WITHOUT ROWID"
            )
            meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
            now = self.clock()
            if "created_ns" not in meta:
                meta = {"version": SCHEMA_VERSION, "created_ns": now, "horizon_ns": 0}
                c.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            version = int(meta.get("version", 1))
            if version > SCHEMA_VERSION:
                raise HistoryError("version", f"history schema {version} is newer than this agent's")
            self.created_ns = int(meta["created_ns"])
            self.horizon_ns = int(meta["horizon_ns"])
            names = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            self._hours = {int(n[6:]) for n in names if n.startswith("flows_") and n[6:].isdigit()}
            for h in self._hours:  # columns a newer release added: ALTER, never rewrite
                have = {r[1] for r in c.execute(f"PRAGMA table_info(flows_{h})")}
                for col in COLUMNS:
                    if col.name not in have:
                        c.execute(f"ALTER TABLE flows_{h} ADD COLUMN {col.name} {col.sqlite}")
            if version < SCHEMA_VERSION:
                c.execute("UPDATE meta SET value = ? WHERE key = 'version'", (SCHEMA_VERSION,))
            self.dicts.load(
                c.execute("SELECT id, doc FROM endpoints"), c.execute("SELECT id, value FROM strings")
            )
            for s in SEED_STRINGS:
                self.dicts.string(s)
            self._flush_dicts(c)

    def _flush_dicts(self, c: sqlite3.Connection) -> None:
        d = self.dicts
        if d.new_endpoints:
            c.executemany("INSERT INTO endpoints VALUES (?, ?)", d.new_endpoints)
            d.new_endpoints.clear()
        if d.new_strings:
            c.executemany("INSERT INTO strings VALUES (?, ?)", d.new_strings)
            d.new_strings.clear()

    def _create_hour(self, c: sqlite3.Connection, h: int) -> None:
        cols = ", ".join(f"{col.name} {col.sqlite}" for col in COLUMNS)
        forwarded = self.dicts.string("FORWARDED")
        c.execute(f"CREATE TABLE IF NOT EXISTS flows_{h} (id INTEGER PRIMARY KEY, {cols})")
        c.execute(f"CREATE INDEX IF NOT EXISTS flows_{h}_src ON flows_{h} (src)")
        c.execute(f"CREATE INDEX IF NOT EXISTS flows_{h}_dst ON flows_{h} (dst)")
        # Only what is not FORWARDED (drops, audits: few) is indexed by verdict; queries name the same
        # condition so SQLite can use it.
        c.execute(
            f"CREATE INDEX IF NOT EXISTS flows_{h}_verdict ON flows_{h} (verdict) "
            f"WHERE verdict != {forwarded}"
        )
        key = ", ".join(f"{k} INTEGER" for k in _EDGE_KEY)
        c.execute(
            f"CREATE TABLE IF NOT EXISTS edges_{h} ({key}, flows INTEGER, packets INTEGER, bytes INTEGER, "
            f"first_off INTEGER, last_off INTEGER, PRIMARY KEY ({', '.join(_EDGE_KEY)})) WITHOUT ROWID"
        )

    # -- writing ---------------------------------------------------------------------------------

    def write(self, flows: Sequence[Flow]) -> int:
        """Store a batch in one transaction; raises HistoryError (nothing written) on failure."""
        if not flows:
            return 0
        with self._lock:
            if self._damaged:  # a reader found the file damaged: start a new one for this batch
                self._reopen_after_corruption(self._damaged)
                self._damaged = ""
            try:
                return self._write(flows)
            except HistoryError:
                self.dicts.forget_pending()
                raise
            except (sqlite3.Error, OSError) as exc:
                self.dicts.forget_pending()
                err = classify(exc)
                if err.reason == "corrupt":
                    self._reopen_after_corruption(str(exc))
                raise err from exc

    def _reopen_after_corruption(self, why: str) -> None:
        try:
            self._move_aside(why)
            self._new_dictionaries()
            self._hours.clear()
            self._extent.clear()
            self._open()
        except (sqlite3.Error, OSError) as exc:  # the next batch tries again
            log.error("cannot start a new history database", extra={"error": str(exc)})

    def _write(self, flows: Sequence[Flow]) -> int:
        encode = self._encode
        by_hour: dict[int, list[tuple[Any, ...]]] = {}
        edges: dict[tuple[int, ...], list[int]] = {}
        seq = self._seq
        for f in flows:
            t = f.time_ns
            h = t // HOUR_NS
            off = t - h * HOUR_NS
            seq += 1
            row = encode(f, (off << SEQ_BITS) | (seq & SEQ_MASK))
            rows = by_hour.get(h)
            if rows is None:
                rows = by_hour[h] = []
            rows.append(row)
            # row: id src dst sport dport proto type direction verdict reason node egress ingress reply start
            port = 0 if row[13] else row[4]
            k = (h, off // MINUTE_NS, row[1], row[2], row[10], row[5], row[8], row[9], row[7], row[13], port)
            e = edges.get(k)
            start = off - row[14]
            if e is None:
                edges[k] = [1, f.packets, f.bytes, start, off]
            else:
                e[0] += 1
                e[1] += f.packets
                e[2] += f.bytes
                if start < e[3]:
                    e[3] = start
                if off > e[4]:
                    e[4] = off
        self._seq = seq
        placeholders = ", ".join("?" * (len(COLUMNS) + 1))
        sums = ", ".join(f"{s} = {s} + excluded.{s}" for s in _EDGE_SUMS[:3])
        upsert_tail = (
            f" ON CONFLICT ({', '.join(_EDGE_KEY)}) DO UPDATE SET {sums}, "
            "first_off = min(first_off, excluded.first_off), last_off = max(last_off, excluded.last_off)"
        )
        # coarser sums from the minute sums: ten minutes (bucket 100 + n) in the hour's table; the hour
        # and its block of BLOCK_HOURS in edges_span, so a day's map reads about ten sums per edge
        tens = _fold(edges, lambda k: (k[0], TEN_MINUTES + k[1] // 10, *k[2:]))
        totals = _fold(edges, lambda k: (1, k[0], k[2], k[3], k[6], k[5], k[10], k[7], k[4], k[8], k[9]))
        for tk, te in totals.items():  # spans hold absolute times
            te[3] += _hour_start(tk[1])
            te[4] += _hour_start(tk[1])
        totals.update(_fold(totals, lambda k: (BLOCK_HOURS, k[1] - k[1] % BLOCK_HOURS, *k[2:])))
        created: list[int] = []
        self._insert(by_hour, edges, tens, totals, placeholders, upsert_tail, created)
        # readers look for an hour's table once it is committed, not while the writer creates it
        self._hours.update(created)
        for h, rows in by_hour.items():
            lo, hi = rows[0][0] >> SEQ_BITS, rows[-1][0] >> SEQ_BITS
            ext = self._extent.get(h)
            self._extent[h] = (lo, hi) if ext is None else (min(ext[0], lo), max(ext[1], hi))
        return len(flows)

    def _insert(
        self,
        by_hour: dict[int, list[tuple[Any, ...]]],
        edges: dict[tuple[int, ...], list[int]],
        tens: dict[tuple[int, ...], list[int]],
        totals: dict[tuple[int, ...], list[int]],
        placeholders: str,
        upsert_tail: str,
        created: list[int],
    ) -> None:
        with self._tx() as c:
            for h, rows in by_hour.items():
                if h not in self._hours:
                    self._create_hour(c, h)
                    created.append(h)
                rows.sort()  # appends to the table's B-tree instead of splitting pages
                c.execute("SAVEPOINT batch")
                try:
                    c.executemany(f"INSERT INTO flows_{h} VALUES ({placeholders})", rows)
                except sqlite3.IntegrityError:
                    # two flows with the same ns and a sequence number 2^20 apart: give them new ones
                    c.execute("ROLLBACK TO batch")
                    self._insert_one_by_one(c, h, rows, placeholders)
                c.execute("RELEASE batch")
            self._flush_dicts(c)
            by_table: dict[int, list[tuple[int, ...]]] = {}
            for group in (edges, tens):
                for k, e in group.items():
                    by_table.setdefault(k[0], []).append((*k[1:], *e))
            for h, vals in by_table.items():
                c.executemany(f"INSERT INTO edges_{h} VALUES ({', '.join('?' * 15)})" + upsert_tail, vals)
            c.executemany(
                f"INSERT INTO edges_span VALUES ({', '.join('?' * 16)})" + _SPAN_UPSERT,
                [(*k, e[0], e[1], e[2], e[3], e[4]) for k, e in totals.items()],
            )

    def _insert_one_by_one(self, c: sqlite3.Connection, h: int, rows: list[tuple[Any, ...]], ph: str) -> None:
        for row in rows:
            rid = row[0]
            for _ in range(64):
                try:
                    c.execute(f"INSERT INTO flows_{h} VALUES ({ph})", (rid, *row[1:]))
                    break
                except sqlite3.IntegrityError:
                    if c.execute(f"SELECT 1 FROM flows_{h} WHERE id = ?", (rid,)).fetchone() is None:
                        raise
                    rid = (rid & ~SEQ_MASK) | ((rid + 1) & SEQ_MASK)

    # -- retention -------------------------------------------------------------------------------

    def size_bytes(self) -> int:
        """Pages in use plus the write-ahead log."""
        conn = self._reader()
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        used = (
            conn.execute("PRAGMA page_count").fetchone()[0]
            - conn.execute("PRAGMA freelist_count").fetchone()[0]
        )
        try:
            wal = os.path.getsize(self.path + "-wal")
        except OSError:
            wal = 0
        return int(used * page + wal)

    def enforce_retention(self, now_ns: int | None = None) -> list[int]:
        """Drop hour tables past the age bound, then the oldest while over the size bound (never the
        newest). Returns the hours dropped."""
        now = self.clock() if now_ns is None else now_ns
        dropped: list[int] = []
        self._ensure_reserve()
        with self._lock:
            for h in sorted(self._hours):
                if _hour_start(h + 1) <= now - self.retention_ns:
                    self._drop_hour(h)
                    dropped.append(h)
            while len(self._hours) > 1 and self._used_bytes() > self.max_bytes:
                h = min(self._hours)
                self._drop_hour(h)
                dropped.append(h)
            if dropped:
                self._vacuum()
        if dropped:
            log.info(
                "history retention dropped hours", extra={"hours": dropped, "horizon_ns": self.horizon_ns}
            )
        return dropped

    def free_space(self) -> bool:
        """Disk full: give back the reserve file, so SQLite has room to move the write-ahead log into the
        database and drop the oldest hour (never the newest), then return that hour's pages to the file
        system. True if anything was freed (the batch is worth another try)."""
        freed = False
        with self._lock:
            if os.path.exists(self.reserve_path):
                os.remove(self.reserve_path)
                freed = True
            if self._conn is None:
                return freed
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if len(self._hours) > 1:
                self._drop_hour(min(self._hours))
                self._vacuum()
                freed = True
        return freed

    def _ensure_reserve(self) -> None:
        """Keep `reserve_bytes` of disk in a file of our own: the room a full disk needs to recover."""
        try:
            if os.path.exists(self.reserve_path) and os.path.getsize(self.reserve_path) >= self.reserve_bytes:
                return
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError:
            try:  # not even that much room: no reserve rather than a part of one
                os.remove(self.reserve_path)
            except OSError:
                pass

    def _used_bytes(self) -> int:
        assert self._conn is not None
        c = self._conn
        page = c.execute("PRAGMA page_size").fetchone()[0]
        return int(
            (c.execute("PRAGMA page_count").fetchone()[0] - c.execute("PRAGMA freelist_count").fetchone()[0])
            * page
        )

    def _drop_hour(self, h: int) -> None:
        with self._tx() as c:
            c.execute(f"DROP TABLE IF EXISTS flows_{h}")
            c.execute(f"DROP TABLE IF EXISTS edges_{h}")
            # the hour's sums and its block's (which now lacks an hour: queries no longer use it): a few
            # thousand rows, one per edge, the only rows retention deletes one by one
            c.execute("DELETE FROM edges_span WHERE span = 1 AND start = ?", (h,))
            c.execute(
                "DELETE FROM edges_span WHERE span = ? AND start = ?", (BLOCK_HOURS, h - h % BLOCK_HOURS)
            )
            horizon = max(self.horizon_ns, _hour_start(h + 1))
            c.execute("UPDATE meta SET value = ? WHERE key = 'horizon_ns'", (horizon,))
        self._hours.discard(h)
        self._extent.pop(h, None)
        self.horizon_ns = horizon

    def _vacuum(self) -> None:
        assert self._conn is not None
        try:
            self._conn.execute("PRAGMA incremental_vacuum")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # space comes back on the next round
            log.warning("history vacuum failed", extra={"error": str(exc)})

    # -- reading ---------------------------------------------------------------------------------

    def floor_ns(self) -> int:
        """The oldest time a query may return: the age bound, and nothing before a dropped hour's end."""
        return max(self.horizon_ns, self.clock() - self.retention_ns)

    def complete_from_ns(self) -> int:
        """From this time on the history holds every flow it was given: since it was created, and not
        before what retention dropped."""
        return max(self.created_ns, self.floor_ns())

    def oldest_ns(self) -> int | None:
        """Time of the oldest stored flow (within the age bound)."""
        floor = self.floor_ns()
        conn = self._reader()
        for h in sorted(self._hours):
            if _hour_start(h + 1) <= floor:
                continue
            lo = max(floor - _hour_start(h), 0) << SEQ_BITS
            try:
                row = conn.execute(f"SELECT min(id) FROM flows_{h} WHERE id >= ?", (lo,)).fetchone()
            except sqlite3.OperationalError:
                continue  # dropped meanwhile
            if row and row[0] is not None:
                return _hour_start(h) + (row[0] >> SEQ_BITS)
        return None

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """A read that finds the file damaged says so (HTTP 503) and has the writer start a new file
        before its next batch."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            err = classify(exc)
            if err.reason == "corrupt":
                self._damaged = str(exc)
            raise err from exc

    def query(
        self,
        q: FlowQuery | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        limit: int = 0,
        cursor: str | None = None,
    ) -> Page:
        """Matching flows newest first, `limit` at most (0: all), continuing below `cursor`."""
        with self._reading():
            return self._query(q, since_ns, until_ns, limit, cursor)

    def _query(
        self,
        q: FlowQuery | None,
        since_ns: int | None,
        until_ns: int | None,
        limit: int,
        cursor: str | None,
    ) -> Page:
        floor = self.floor_ns()
        complete = since_ns is not None and since_ns >= self.complete_from_ns()
        lo_t = max(floor, since_ns or 0)
        hi_t = until_ns if until_ns is not None else self.clock() + HOUR_NS
        start_key: tuple[int, int] | None = None
        if cursor:
            start_key = _parse_cursor(cursor)
        cond = self.translator.condition(q)
        where = translate.flags_sqlite(cond.sql)
        post = None if cond.exact or q is None else q.matches
        conn = self._reader()
        out: list[Flow] = []
        where_at: list[tuple[int, int]] = []  # (hour, row id) of each flow in `out`
        want = limit + 1 if limit > 0 else None  # one more than asked says whether there is a next page
        full = False
        decode = self._decode
        for h in sorted(
            (h for h in self._hours if _hour_start(h + 1) > lo_t and _hour_start(h) <= hi_t), reverse=True
        ):
            lo = max(lo_t - _hour_start(h), 0) << SEQ_BITS
            hi = (min(hi_t - _hour_start(h), HOUR_NS - 1) << SEQ_BITS) | SEQ_MASK
            if start_key is not None:
                if h > start_key[0]:
                    continue
                if h == start_key[0]:
                    hi = min(hi, start_key[1] - 1)
            while hi >= lo:
                n = _QUERY_CHUNK if (post or want is None) else want - len(out)
                try:
                    rows = conn.execute(
                        f"SELECT {_SELECT} FROM flows_{h} WHERE id BETWEEN ? AND ? AND ({where}) "
                        "ORDER BY id DESC LIMIT ?",
                        (lo, hi, n),
                    ).fetchall()
                except sqlite3.OperationalError as exc:
                    if "no such table" in str(exc):
                        break  # retention dropped it while we read
                    raise
                base = _hour_start(h)
                for row in rows:
                    if row[1] not in self.dicts.endpoints or row[2] not in self.dicts.endpoints:
                        self._reload_dicts()
                    f = decode(base + (row[0] >> SEQ_BITS), row[1:])
                    if post is not None and not post(f):
                        continue
                    out.append(f)
                    where_at.append((h, row[0]))
                    if want is not None and len(out) >= want:
                        full = True
                        break
                if full or len(rows) < n:
                    break
                hi = rows[-1][0] - 1
            if full:
                break
        if not full:
            return Page(out, None, complete)
        out.pop()
        h, rid = where_at[len(out) - 1]
        return Page(out, f"s{h}.{rid}", complete)

    def _reload_dicts(self) -> None:
        conn = self._reader()
        self.dicts.load(
            conn.execute("SELECT id, doc FROM endpoints"), conn.execute("SELECT id, value FROM strings")
        )

    def edge_rows(
        self, q: FlowQuery | None = None, since_ns: int | None = None, until_ns: int | None = None
    ) -> tuple[list[EdgeRow], bool]:
        with self._reading():
            return self._edge_rows(q, since_ns, until_ns)

    def _edge_rows(
        self, q: FlowQuery | None, since_ns: int | None, until_ns: int | None
    ) -> tuple[list[EdgeRow], bool]:
        """Service-map sums over [since, until] (and whether the window is complete): whole hours and
        whole minutes from the rollups when the filter allows, the ragged ends from the flows; summed
        by SQLite in one statement, so Python sees one row per edge key, not one per hour and minute."""
        floor = self.floor_ns()
        complete = since_ns is not None and since_ns >= self.complete_from_ns()
        lo_t = max(floor, since_ns or 0)
        hi_t = until_ns if until_ns is not None else self.clock() + HOUR_NS
        cond = self.translator.condition(q)
        where = translate.flags_sqlite(cond.sql)
        conn = self._reader()
        if not cond.exact and q is not None:
            return self._edges_python(conn, q, where, lo_t, hi_t), complete
        whole: list[int] = []  # hours whose every stored flow is inside the window
        parts: list[str] = []  # the rest, from ten-minute and minute sums and the flows themselves
        for h in sorted(h for h in self._hours if _hour_start(h + 1) > lo_t and _hour_start(h) <= hi_t):
            a, b = max(lo_t - _hour_start(h), 0), min(hi_t - _hour_start(h), HOUR_NS - 1)  # ns into the hour
            if not cond.rollup_ok:
                parts.append(_raw_part(h, a, b, where))
                continue
            first, last = self._hour_extent(conn, h)
            if a <= first and b >= last:
                whole.append(h)
                continue
            parts += _split_hour(h, a, b, where)
        parts += self._span_parts(whole, where)
        rows: list[EdgeRow] = []
        try:
            for i in range(0, len(parts), _COMPOUND_MAX):
                union = " UNION ALL ".join(parts[i : i + _COMPOUND_MAX])
                rows += conn.execute(
                    f"SELECT {_EDGE_GROUP}, {_EDGE_SUM} FROM ({union}) GROUP BY {_EDGE_GROUP}"
                ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            return self._edge_rows(q, since_ns, until_ns)  # retention dropped an hour meanwhile
        return (merge(rows) if len(parts) > _COMPOUND_MAX else rows), complete

    def _span_parts(self, whole: list[int], where: str) -> list[str]:
        """Whole hours as blocks where a block's every hour with flows is whole (and none was dropped),
        the other hours one by one."""
        hours, starts = set(whole), []
        horizon_hour = -(-self.horizon_ns // HOUR_NS)
        for b in sorted({h - h % BLOCK_HOURS for h in whole}):
            members = range(b, b + BLOCK_HOURS)
            if b >= horizon_hour and all(k in hours or k not in self._hours for k in members):
                starts.append(b)
                hours.difference_update(members)
        parts = []
        for span, chosen in ((BLOCK_HOURS, starts), (1, sorted(hours))):
            if chosen:
                parts.append(
                    f"SELECT {_EDGE_GROUP}, flows, packets, bytes, first_ns, last_ns FROM edges_span "
                    f"WHERE span = {span} AND start IN ({','.join(map(str, chosen))}) AND ({where})"
                )
        return parts

    def _hour_extent(self, conn: sqlite3.Connection, h: int) -> tuple[int, int]:
        ext = self._extent.get(h)
        if ext is None:
            lo, hi = conn.execute(f"SELECT min(id), max(id) FROM flows_{h}").fetchone()
            ext = (0, HOUR_NS - 1) if lo is None else (lo >> SEQ_BITS, hi >> SEQ_BITS)
            self._extent[h] = ext
        return ext

    def _edges_python(
        self, conn: sqlite3.Connection, q: FlowQuery, where: str, lo_t: int, hi_t: int
    ) -> list[EdgeRow]:
        """A filter SQL cannot say whole: aggregate the pre-filtered flows that pass it, in Python."""
        out = []
        s = self.dicts.string_ids
        for h in sorted(h for h in self._hours if _hour_start(h + 1) > lo_t and _hour_start(h) <= hi_t):
            base = _hour_start(h)
            lo = max(lo_t - base, 0) << SEQ_BITS
            hi = (min(hi_t - base, HOUR_NS - 1) << SEQ_BITS) | SEQ_MASK
            try:
                cur = conn.execute(
                    f"SELECT {_SELECT} FROM flows_{h} WHERE id BETWEEN ? AND ? AND ({where})", (lo, hi)
                )
                for row in cur:
                    f = self._decode(base + (row[0] >> SEQ_BITS), row[1:])
                    if q.matches(f):
                        port = 0 if f.is_reply else f.destination.port
                        out.append(
                            (row[1], row[2], s[f.verdict], f.key[1], port, s[f.drop_reason], int(f.is_reply),
                             1, f.packets, f.bytes, f.start_ns, f.time_ns)
                        )  # fmt: skip
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
        return merge(out)

    def stats(self) -> dict[str, Any]:
        """For `lumen status` and /metrics: backend, file, size, oldest record, partitions."""
        with self._reading():
            return self._stats()

    def _stats(self) -> dict[str, Any]:
        oldest = self.oldest_ns()
        return {
            "backend": self.backend,
            "path": self.path,
            "size_bytes": self.size_bytes(),
            "max_bytes": self.max_bytes,
            "retention_s": self.retention_ns / 1e9,
            "oldest_ns": oldest,
            "complete_from_ns": self.complete_from_ns(),
            "partitions": len(self._hours),
        }


def _split_hour(h: int, a: int, b: int, where: str) -> list[str]:
    """[a, b] ns into hour h as whole ten-minute buckets, whole minutes and ragged ends of raw flows."""
    parts: list[str] = []
    m_lo = -(-a // MINUTE_NS)  # first whole minute
    m_hi = (b + 1) // MINUTE_NS - 1  # last whole minute
    if m_lo > m_hi:
        return [_raw_part(h, a, b, where)]
    t_lo, t_hi = -(-m_lo // 10), (m_hi + 1) // 10 - 1  # whole ten-minute buckets
    if t_lo <= t_hi:
        parts.append(_rollup_part(h, TEN_MINUTES + t_lo, TEN_MINUTES + t_hi, where))
        minutes = [(m_lo, t_lo * 10 - 1), ((t_hi + 1) * 10, m_hi)]
    else:
        minutes = [(m_lo, m_hi)]
    parts += [_rollup_part(h, x, y, where) for x, y in minutes if x <= y]
    if a < m_lo * MINUTE_NS:
        parts.append(_raw_part(h, a, m_lo * MINUTE_NS - 1, where))
    if b >= (m_hi + 1) * MINUTE_NS:
        parts.append(_raw_part(h, (m_hi + 1) * MINUTE_NS, b, where))
    return parts


def _rollup_part(h: int, m_lo: int, m_hi: int, where: str) -> str:
    base = _hour_start(h)
    return (
        f"SELECT {_EDGE_GROUP}, flows, packets, bytes, first_off + {base} AS first_ns, "
        f"last_off + {base} AS last_ns FROM edges_{h} WHERE minute BETWEEN {m_lo} AND {m_hi} AND ({where})"
    )


def _raw_part(h: int, a: int, b: int, where: str) -> str:
    """Flows of [a, b] ns into hour h, grouped as the rollup is."""
    base = _hour_start(h)
    lo, hi = a << SEQ_BITS, (b << SEQ_BITS) | SEQ_MASK
    return (
        "SELECT src, dst, verdict, proto, CASE WHEN reply THEN 0 ELSE dport END AS port, reason, reply, "
        "count(*) AS flows, sum(packets) AS packets, sum(bytes) AS bytes, "
        f"min((id >> {SEQ_BITS}) - start_off) + {base} AS first_ns, "
        f"max(id >> {SEQ_BITS}) + {base} AS last_ns FROM flows_{h} "
        f"WHERE id BETWEEN {lo} AND {hi} AND ({where}) GROUP BY {_EDGE_GROUP}"
    )


def _parse_cursor(cursor: str) -> tuple[int, int]:
    h, dot, rid = cursor[1:].partition(".")
    if not cursor.startswith("s") or not dot or not h.isdigit() or not rid.isdigit():
        raise CursorError(f"cursor {cursor!r}: not one the history handed out")
    return int(h), int(rid)
