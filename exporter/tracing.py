"""OpenTelemetry: one span per connection (a flow and its reply, exporter/connections.py), timed by the
kernel's first/last-seen timestamps of both halves.

Off by default (`lumen agent --otel`). Everything else is configured by the standard variables:
OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL picks `http/protobuf` (default) or `grpc`;
OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, _TIMEOUT, OTEL_BSP_* (batching) and
OTEL_RESOURCE_ATTRIBUTES are read by the SDK itself.

A half is finished when the datapath sees FIN/RST (END event) or the agent sweeps it out for being idle; a
connection is spanned once every half seen has finished, once even if both happen or a FIN is
retransmitted. Client and server are `client.*` and `server.*` (also `source.*` and `destination.*`); a
DROPPED connection has an error status with the drop reason.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from bpf import vocab
from exporter.connections import Connection, ConnectionKey, connection_key
from exporter.flows import Endpoint, Flow

PROTOCOLS = ("http/protobuf", "grpc")
_SPANNED_MAX = 65536
_OPEN_MAX = 65536  # connections followed at once
GRACE_NS = 30 * 10**9  # how long a finished half waits for the other
EXPIRE_EVERY_NS = 10**9


def otlp_protocol(env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    proto = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if proto not in PROTOCOLS:
        raise ValueError(f"OTLP protocol {proto!r} is not supported; use one of {', '.join(PROTOCOLS)}")
    return proto


def otlp_exporter(protocol: str | None = None) -> SpanExporter:
    protocol = protocol or otlp_protocol()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def _side(attrs: dict[str, Any], side: str, ep: Endpoint, port: int | None) -> None:
    attrs[f"{side}.address"] = ep.ip
    if port is not None:
        attrs[f"{side}.port"] = port
    if ep.pod:
        attrs[f"lumen.{side}.namespace"] = ep.namespace
        attrs[f"lumen.{side}.pod"] = ep.pod
        if ep.workload:
            attrs[f"lumen.{side}.workload"] = f"{ep.workload_kind}/{ep.workload}"
        if ep.node:
            attrs[f"lumen.{side}.node"] = ep.node
    if ep.identity:
        attrs[f"lumen.{side}.identity"] = ep.identity


def span_attributes(conn: Connection) -> dict[str, Any]:
    """OTel semantic conventions for the two sides (client.*, server.*; source.* and destination.* name
    the same client and server), Lumen's own under lumen.*."""
    client, server = conn.client, conn.server
    ports = vocab.has_ports(conn.protocol)
    # k8s.* name the pod the connection belongs to: the client pod, or the server for clients from outside
    local = client if client.pod else server
    attrs: dict[str, Any] = {
        "network.transport": conn.protocol.lower(),
        "network.type": "ipv6" if ":" in client.ip else "ipv4",
        "lumen.verdict": conn.verdict,
        "lumen.drop_reason": conn.drop_reason,
        "lumen.packets": conn.packets,
        "lumen.bytes": conn.bytes,
        "lumen.payload_bytes": conn.payload_bytes,
        "lumen.tcp_flags": ",".join(conn.tcp_flag_names()),
    }
    _side(attrs, "client", client, client.port if ports else None)
    _side(attrs, "server", server, server.port if ports else None)
    for side, ep in (("source", client), ("destination", server)):
        attrs[f"{side}.address"] = ep.ip
        if ports:
            attrs[f"{side}.port"] = ep.port
    for name, half in (("request", conn.request), ("reply", conn.reply)):
        if half is not None:
            attrs[f"lumen.{name}.packets"] = half.packets
            attrs[f"lumen.{name}.bytes"] = half.bytes
            attrs[f"lumen.{name}.verdict"] = half.verdict
    first = conn.request or conn.first
    attrs["lumen.policy"] = first.policy_summary()
    attrs["lumen.policy.allowed_by"] = ",".join(first.policies)
    if first.message is not None:
        attrs["lumen.icmp.type"] = first.message[0]
        attrs["lumen.icmp.code"] = first.message[1]
        attrs["lumen.icmp.name"] = first.message_name()
    if local.pod:
        attrs["k8s.namespace.name"] = local.namespace
        attrs["k8s.pod.name"] = local.pod
    return attrs


class FlowTracer:
    """One span per connection, when every half seen has finished (FIN/RST or swept idle): a request and
    its reply are one span from the first packet of either to the last of either. A half still open
    GRACE_NS after the other finished (evicted without an end) is left out of the span. The
    BatchSpanProcessor exports off the pipeline thread."""

    def __init__(self, node: str, exporter: SpanExporter | None = None) -> None:
        resource = Resource.create({"service.name": "lumen-agent", "k8s.node.name": node})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter or otlp_exporter()))
        self.tracer = self.provider.get_tracer("lumen.flows")
        #: connections with a half seen and not yet spanned, oldest first
        self._open: OrderedDict[ConnectionKey, tuple[Connection, int]] = OrderedDict()
        #: halves already in a span, by (flow key, first seen): a retransmitted FIN makes no second span
        self._spanned: OrderedDict[tuple[Any, int], None] = OrderedDict()
        self.spans = 0
        self._expired_at = 0

    name = "tracer"

    def on_flows(self, flows: Sequence[Flow]) -> None:
        """The pipeline's sink: connections are followed from their first event, spanned when done."""
        for flow in flows:
            self.on_flow(flow)
        self._expire(time.monotonic_ns())

    def close(self) -> None:
        self.shutdown()

    def on_flow(self, flow: Flow) -> None:
        if (flow.key, flow.start_ns) in self._spanned:
            return
        key, is_reply = connection_key(flow)
        conn, finished_at = self._open.get(key, (None, 0))
        if conn is None:
            conn = Connection(key)
        conn.add(flow, is_reply)
        if flow.finished and not finished_at:
            finished_at = time.monotonic_ns()
        self._open[key] = (conn, finished_at)
        self._open.move_to_end(key)
        if conn.finished:
            self._span(key)
        while len(self._open) > _OPEN_MAX:
            self._open.popitem(last=False)  # never finished: no span

    def _expire(self, now_ns: int) -> None:
        # a scan of every open connection: once a second, not once per batch
        if now_ns - self._expired_at < EXPIRE_EVERY_NS:
            return
        self._expired_at = now_ns
        stale = [k for k, (c, at) in self._open.items() if at and now_ns - at >= GRACE_NS]
        for key in stale:
            conn, _ = self._open[key]
            for name in ("request", "reply"):
                half = getattr(conn, name)
                if half is not None and not half.finished:
                    setattr(conn, name, None)
            self._span(key)

    def _span(self, key: ConnectionKey) -> None:
        conn, _ = self._open.pop(key)
        for half in conn.halves:
            self._spanned[(half.key, half.start_ns)] = None
        while len(self._spanned) > _SPANNED_MAX:
            self._spanned.popitem(last=False)
        span = self.tracer.start_span(
            f"connection {conn.protocol}",
            kind=SpanKind.INTERNAL,
            start_time=conn.start_ns,
            attributes=span_attributes(conn),
        )
        if conn.verdict == "DROPPED":
            span.set_status(Status(StatusCode.ERROR, conn.drop_reason))
        span.end(end_time=max(conn.end_ns, conn.start_ns))
        self.spans += 1

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.provider.shutdown()
