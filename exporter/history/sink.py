"""The history sink: a pipeline sink (exporter.pipeline FlowSink) that keeps every finished flow, every drop
and every first policy verdict in a history store, in batches, off the pipeline's thread.

    pipeline thread --on_flows--> pending (bounded) --writer thread, every ~1 s--> store.write(batch)

`on_flows` only appends: a slow or broken store never slows the live view. What cannot be written is
counted by reason (`dropped`): `backlog_full` (the store fell behind by more than `max_pending` flows),
`disk_full`, `locked`, `corrupt`, `io_error`, `unreachable` (ClickHouse down), ... A store that says a failure
is temporary (`retryable`) keeps its batch for the next round, up to `max_pending` flows; past that the
oldest are dropped; the sink recovers by itself when the store answers again. The state shows in /readyz's
detail, /metrics and `lumen status`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.flows import Flow
from exporter.history.errors import HistoryError, classify

log = logging.getLogger("lumen.history")

RETENTION_EVERY_S = 60.0
STATS_CACHE_S = 5.0


class HistoryStore(Protocol):
    backend: str

    def write(self, flows: Sequence[Flow]) -> int: ...

    def enforce_retention(self, now_ns: int | None = None) -> list[Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def wanted(f: Flow) -> bool:
    """What history keeps: a flow's end, a drop, and a policy verdict other than FORWARDED when it is
    first decided (NEW). REPORTs of a live flow and per-packet events are not history."""
    t = f.type
    return t == "END" or t == "DROP" or (t == "NEW" and f.verdict != "FORWARDED")


class HistorySink:
    name = "history"

    def __init__(
        self,
        store: HistoryStore,
        flush_interval_s: float = 1.0,
        max_batch: int = 50_000,
        max_pending: int = 500_000,
        retention_every_s: float = RETENTION_EVERY_S,
    ) -> None:
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.retention_every_s = retention_every_s
        self._pending: deque[tuple[float, Flow]] = deque()  # (time queued, flow)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.written = 0
        self.batches = 0
        self.dropped: Counter[str] = Counter()
        self.error = ""  # the last failure, "" once a write succeeds again
        self.error_since = 0.0
        self.last_write = 0.0  # wall time of the last successful write
        self._stats: tuple[float, dict[str, Any]] = (0.0, {})
        self._in_flight = 0  # flows taken by the writer and not yet written, dropped or put back
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    # -- pipeline side ---------------------------------------------------------------------------

    def on_flows(self, flows: Sequence[Flow]) -> None:
        keep = [f for f in flows if wanted(f)]
        if not keep:
            return
        now = time.monotonic()
        with self._lock:
            pending = self._pending
            pending.extend((now, f) for f in keep)
            over = len(pending) - self.max_pending
            if over > 0:  # the oldest go first, as when a failed batch is put back
                self.dropped["backlog_full"] += over
                for _ in range(over):
                    pending.popleft()
            full = len(pending) >= self.max_batch
        if full:
            self._wake.set()

    def close(self) -> None:
        """Write what is pending (one last try), then stop."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        try:
            self.store.close()
        except Exception as exc:  # noqa: BLE001 - closing is best effort
            log.warning("closing the history store failed", extra={"error": str(exc)})

    # -- writer thread ---------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far has been tried (written or dropped); False on timeout."""
        self._wake.set()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if not self._pending and not self._in_flight:
                    return True
            time.sleep(0.01)
        return False

    def _take(self) -> list[tuple[float, Flow]]:
        with self._lock:
            n = min(self.max_batch, len(self._pending))
            self._in_flight = n
            return [self._pending.popleft() for _ in range(n)]

    def _put_back(self, batch: list[tuple[float, Flow]]) -> None:
        with self._lock:
            self._in_flight = 0
            self._pending.extendleft(reversed(batch))
            over = len(self._pending) - self.max_pending
            for _ in range(max(over, 0)):
                self._pending.popleft()  # the oldest go first
            if over > 0:
                self.dropped["backlog_full"] += over

    def _run(self) -> None:
        last_retention = 0.0
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
            while True:
                batch = self._take()
                if not batch:
                    break
                ok = self._write(batch)
                self._in_flight = 0
                if not ok and not stopping:
                    break  # failed: wait a round before trying again
                if not stopping and len(batch) < self.max_batch:
                    break
            if stopping:
                with self._lock:
                    left = len(self._pending)
                    self._pending.clear()
                if left:
                    self.dropped["shutdown"] += left
                return
            if time.monotonic() - last_retention >= self.retention_every_s:
                last_retention = time.monotonic()
                try:
                    self.store.enforce_retention()
                except Exception as exc:  # noqa: BLE001 - retried next round
                    self._fail(classify(exc) if not isinstance(exc, HistoryError) else exc)

    def _write(self, batch: list[tuple[float, Flow]]) -> bool:
        flows = [f for _, f in batch]
        for attempt in range(2):
            try:
                self.store.write(flows)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the agent
                err = exc if isinstance(exc, HistoryError) else classify(exc)
                # disk full: make room by dropping the oldest hour, then try once more
                if attempt == 0 and err.reason == "disk_full" and self._free_space():
                    continue
                self._fail(err)
                if err.retryable:
                    self._put_back(batch)
                else:
                    self.dropped[err.reason] += len(batch)
                return False
            break
        self.written += len(flows)
        self.batches += 1
        self.last_write = time.time()
        if self.error:
            log.info("history writes resumed", extra={"after": self.error})
            self.error = ""
        return True

    def _free_space(self) -> bool:
        free = getattr(self.store, "free_space", None)
        try:
            return bool(free and free())
        except Exception as exc:  # noqa: BLE001 - nothing freed: the batch is dropped and counted
            log.warning("could not make room in the history store", extra={"error": str(exc)})
            return False

    def _fail(self, err: HistoryError) -> None:
        if str(err) != self.error:
            log.error("history write failed", extra={"reason": err.reason, "error": str(err)})
            self.error_since = time.time()
        self.error = str(err)

    # -- state -----------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending)

    def lag_s(self) -> float:
        """How long the oldest flow not yet written has waited."""
        with self._lock:
            if not self._pending:
                return 0.0
            return max(0.0, time.monotonic() - self._pending[0][0])

    def store_stats(self) -> dict[str, Any]:
        at, stats = self._stats
        if time.monotonic() - at > STATS_CACHE_S:
            try:
                stats = self.store.stats()
            except Exception as exc:  # noqa: BLE001 - the store is down: say so
                stats = {"backend": self.store.backend, "error": str(exc)}
            self._stats = (time.monotonic(), stats)
        return stats

    def status(self) -> dict[str, Any]:
        """For `lumen status` and /api/status."""
        return {
            **self.store_stats(),
            "ok": not self.error,
            "error": self.error or None,
            "written": self.written,
            "dropped": dict(self.dropped),
            "pending": self.pending,
            "write_lag_s": round(self.lag_s(), 3),
            "last_write": self.last_write or None,
        }

    def health(self) -> str:
        """One line for /readyz's detail: history problems never make the agent unready."""
        return (
            "ok" if not self.error else f"degraded: {self.error} (history writes dropped, live flows served)"
        )


class HistoryCollector(Collector):
    """lumen_history_* metrics, read from the sink at scrape time."""

    def __init__(self, sink: HistorySink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Any]:
        s = self.sink
        backend = s.store.backend
        c = CounterMetricFamily(
            "lumen_history_written", "Flows written to the history store.", labels=["backend"]
        )
        c.add_metric([backend], s.written)
        yield c
        d = CounterMetricFamily(
            "lumen_history_dropped",
            "Flows the history did not store, by reason (disk_full, locked, corrupt, unreachable, "
            "backlog_full, ...).",
            labels=["backend", "reason"],
        )
        for reason, n in sorted(s.dropped.items()):
            d.add_metric([backend, reason], n)
        yield d
        yield _gauge(
            "lumen_history_up", "1 if the last history write succeeded.", backend, 0 if s.error else 1
        )
        yield _gauge("lumen_history_pending", "Flows waiting to be written.", backend, s.pending)
        yield _gauge(
            "lumen_history_write_lag_seconds", "Age of the oldest flow not yet written.", backend, s.lag_s()
        )
        stats = s.store_stats()
        if stats.get("size_bytes") is not None:
            yield _gauge(
                "lumen_history_size_bytes", "Bytes the history store uses.", backend, stats["size_bytes"]
            )
        if stats.get("oldest_ns"):
            yield _gauge(
                "lumen_history_oldest_timestamp_seconds",
                "Time of the oldest stored flow.",
                backend,
                stats["oldest_ns"] / 1e9,
            )


def _gauge(name: str, doc: str, backend: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["backend"])
    g.add_metric([backend], value)
    return g


def as_batches(flows: Iterable[Flow], size: int) -> Iterator[list[Flow]]:
    batch: list[Flow] = []
    for f in flows:
        batch.append(f)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
