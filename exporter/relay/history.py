"""The relay's history: flows older than the agents hold, from a store every agent writes to
(`--history clickhouse://host:port/db`, exporter/history/). Any exporter.store.FlowSource serves."""

from __future__ import annotations

import urllib.parse

from exporter.store import FlowSource


def open_history(url: str) -> FlowSource:
    """The FlowSource a `--history` URL names; ValueError with the reason."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme != "clickhouse":
        raise ValueError(f"--history {url!r}: expected clickhouse://host:port/database")
    try:
        from exporter.history.clickhouse import ClickHouseHistory  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise ValueError("--history: this build has no ClickHouse history (exporter/history/)") from None
    source: FlowSource = ClickHouseHistory(url)
    return source
