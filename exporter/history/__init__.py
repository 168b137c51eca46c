"""Flow history: every finished flow, drop and policy verdict, queryable by time range.

    pipeline --on_flows--> sink.HistorySink --batches--> sqlite.SqliteHistory   (default, one node)
                                                    \\-> clickhouse.ClickHouseHistory (a cluster)
    API / relay --query(q, since, until, limit, cursor)--> the same store (exporter.store.FlowSource)

schema.py is the stored form (integer columns, interned endpoints and strings), translate.py turns a
FlowQuery into SQL over it, rollup.py and views.py make the service map from aggregates.

`--history` names the store: `off`, `sqlite` (the state directory's history.sqlite), `sqlite:///path`,
or `clickhouse://host:port/db`.
"""

from __future__ import annotations

import os
import re
from typing import Any

DEFAULT_SPEC = "sqlite"
DEFAULT_FILE = "history.sqlite"
DEFAULT_RETENTION_S = 24 * 3600.0
DEFAULT_MAX_BYTES = 1 << 30

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?$", re.I)


def parse_duration(text: str) -> float:
    """`90m`, `24h`, `7d`, `1d12h` -> seconds (the retention flag): the flow filters' durations."""
    from exporter.filters import parse_duration as seconds

    value = seconds(text)
    if value is None or value <= 0:
        raise ValueError(f"{text!r}: expected a duration like 90m, 24h, 7d or 1d12h")
    return value


def parse_size(text: str) -> int:
    """`1GiB`, `500MB`, `2g`, bytes -> bytes (powers of 1024: a size bound, not a marketing figure)."""
    m = _SIZE.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r}: expected a size like 500MiB or 1GiB")
    unit = (m.group(2) or "b").lower()[0]
    return int(float(m.group(1)) * 1024 ** "bkmgt".index(unit))


def check_spec(spec: str) -> str:
    """The `--history` value, or ValueError with what is accepted."""
    if spec in ("off", "sqlite") or spec.startswith("sqlite:///"):
        return spec
    if spec.startswith("clickhouse://"):
        from exporter.history.clickhouse import parse_url

        parse_url(spec)
        return spec
    raise ValueError(f"{spec!r}: expected off, sqlite, sqlite:///path or clickhouse://host:port/db")


def open_store(
    spec: str,
    state_dir: str,
    retention_s: float = DEFAULT_RETENTION_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Any:
    """The store `--history` names (None for off)."""
    check_spec(spec)
    if spec == "off":
        return None
    if spec.startswith("clickhouse://"):
        from exporter.history.clickhouse import ClickHouseHistory

        return ClickHouseHistory(spec, retention_s=retention_s)
    from exporter.history.sqlite import SqliteHistory

    path = os.path.join(state_dir, DEFAULT_FILE) if spec == "sqlite" else spec[len("sqlite://") :]
    return SqliteHistory(path, retention_s=retention_s, max_bytes=max_bytes)
