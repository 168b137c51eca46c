"""The agent's flow pipeline, one stage per module:

    bpf/ringbuf.py EventReader   raw flow_event records, pulled in batches (one batch per poll round)
      -> exporter/decode.py Decoder   bytes -> Flow (exporter/enrich.py Enricher names pods and policies)
      -> fan-out to the registered FlowSinks: the memory store (exporter/flows.py), the tracer
         (exporter/tracing.py), the history store (exporter/history/), ...

The idle sweep (exporter/sweep.py) publishes the flows it ends into the same fan-out. Sinks are called
with one batch at a time, from one thread at a time; a sink that raises is counted and logged, and the
others still get the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from exporter.flows import Flow

log = logging.getLogger("lumen.pipeline")


class FlowSink(Protocol):
    name: str

    def on_flows(self, flows: Sequence[Flow]) -> None: ...

    def close(self) -> None: ...


class EventReader(Protocol):
    """bpf.ringbuf.EventReader, or a test's list of records."""

    def read(self, timeout_ms: int) -> list[bytes]: ...

    def close(self) -> None: ...


class Decode(Protocol):
    def flow(self, buf: bytes) -> Flow: ...


class Health(Protocol):
    """Where the pipeline keeps its figures (exporter.metrics.AgentHealth: /metrics and /readyz read them)."""

    events_consumed: int
    decode_errors: int
    poll_lag_seconds: float
    last_poll_monotonic: float
    sink_errors: dict[str, int]


class _Health:
    def __init__(self) -> None:
        self.events_consumed = 0
        self.decode_errors = 0
        self.poll_lag_seconds = 0.0
        self.last_poll_monotonic = 0.0
        self.sink_errors: dict[str, int] = {}


class Pipeline:
    """Reader -> decoder -> sinks, run on one thread by `run`; `publish` is the fan-out."""

    def __init__(self, reader: EventReader | None, decoder: Decode, health: Health | None = None) -> None:
        self.reader = reader
        self.decoder = decoder
        self.health: Health = health if health is not None else _Health()
        self.sinks: list[FlowSink] = []
        self._fanout = threading.Lock()
        self.error = ""  # the last poll failure, until a poll succeeds again

    def register(self, sink: FlowSink) -> None:
        with self._fanout:
            self.sinks = [*self.sinks, sink]

    def sink(self, name: str) -> FlowSink | None:
        return next((s for s in self.sinks if s.name == name), None)

    def publish(self, flows: Sequence[Flow]) -> None:
        if not flows:
            return
        with self._fanout:
            for sink in self.sinks:
                try:
                    sink.on_flows(flows)
                except Exception as exc:  # noqa: BLE001 - one sink's failure must not starve the others
                    errors = self.health.sink_errors
                    errors[sink.name] = errors.get(sink.name, 0) + 1
                    log.error("flow sink failed", extra={"sink": sink.name, "error": str(exc)})

    def decode(self, records: Sequence[bytes]) -> list[Flow]:
        flow = self.decoder.flow
        out = []
        for raw in records:
            try:
                out.append(flow(raw))
            except Exception:  # noqa: BLE001 - one bad record must not stop consumption
                self.health.decode_errors += 1
        self.health.events_consumed += len(out)
        return out

    def poll_once(self, timeout_ms: int) -> int:
        """One round: read what the kernel emitted (waiting up to timeout_ms), decode, fan out."""
        assert self.reader is not None, "a pipeline without a reader only publishes"
        flows = self.decode(self.reader.read(timeout_ms))
        self.publish(flows)
        self.health.last_poll_monotonic = time.monotonic()
        if flows:
            self.health.poll_lag_seconds = max(0.0, (time.time_ns() - flows[-1].time_ns) / 1e9)
        return len(flows)

    def run(
        self, stop: threading.Event, timeout_ms: int, on_error: Callable[[str], None] | None = None
    ) -> None:
        """Poll until `stop` is set; a failing poll is retried every second and shown in `error`."""
        while not stop.is_set():
            try:
                self.poll_once(timeout_ms)
                self.error = ""
            except Exception as exc:  # noqa: BLE001 - keep consuming; the error shows in /readyz
                self.error = f"ring buffer poll failed: {exc}"
                log.error("ring buffer poll failed", extra={"error": str(exc)})
                if on_error is not None:
                    on_error(self.error)
                stop.wait(1)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - closing the others matters more
                log.warning("closing a flow sink failed", extra={"sink": sink.name, "error": str(exc)})
        if self.reader is not None:
            self.reader.close()
