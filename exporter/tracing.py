"""OpenTelemetry: one span per finished flow, timed by the kernel's first/last-seen timestamps.

Off by default (`lumen agent --otel`). Everything else is configured by the standard variables:
OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL picks `http/protobuf` (default) or `grpc`;
OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, _TIMEOUT, OTEL_BSP_* (batching) and
OTEL_RESOURCE_ATTRIBUTES are read by the SDK itself.

A flow is finished when the datapath sees FIN/RST (END event) or the agent sweeps it out for being idle;
each (flow, first-seen) gets one span even if both happen or a FIN is retransmitted.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind

from exporter.flows import Flow

PROTOCOLS = ("http/protobuf", "grpc")
_SPANNED_MAX = 65536


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


def span_attributes(flow: Flow) -> dict[str, Any]:
    # k8s.* name the pod the flow belongs to: the source pod, or the destination for traffic from outside.
    local = flow.source if flow.source.pod else flow.destination
    attrs: dict[str, Any] = {
        "network.transport": flow.protocol.lower(),
        "network.type": "ipv6" if ":" in flow.source.ip else "ipv4",
        "source.address": flow.source.ip,
        "source.port": flow.source.port,
        "destination.address": flow.destination.ip,
        "destination.port": flow.destination.port,
        "lumen.verdict": flow.verdict,
        "lumen.drop_reason": flow.drop_reason,
        "lumen.direction": flow.direction,
        "lumen.packets": flow.packets,
        "lumen.bytes": flow.bytes,
        "lumen.payload_bytes": flow.payload_bytes,
        "lumen.tcp_flags": ",".join(flow.tcp_flag_names()),
        "lumen.policy": flow.policy_summary(),
        "lumen.policy.allowed_by": ",".join(flow.policies),
        "lumen.is_reply": flow.is_reply,
    }
    if local.pod:
        attrs["k8s.namespace.name"] = local.namespace
        attrs["k8s.pod.name"] = local.pod
    for side, ep in (("source", flow.source), ("destination", flow.destination)):
        if ep.pod:
            attrs[f"lumen.{side}.namespace"] = ep.namespace
            attrs[f"lumen.{side}.pod"] = ep.pod
    return attrs


class FlowTracer:
    """Turns finished flows into spans; the BatchSpanProcessor exports them off the ring-buffer thread."""

    def __init__(self, node: str, exporter: SpanExporter | None = None) -> None:
        resource = Resource.create({"service.name": "lumen-agent", "k8s.node.name": node})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter or otlp_exporter()))
        self.tracer = self.provider.get_tracer("lumen.flows")
        self._spanned: OrderedDict[tuple[Any, int], None] = OrderedDict()
        self.spans = 0

    name = "tracer"

    def on_flows(self, flows: Sequence[Flow]) -> None:
        """The pipeline's sink: a span per finished flow of the batch."""
        for flow in flows:
            if flow.finished:
                self.on_flow(flow)

    def close(self) -> None:
        self.shutdown()

    def on_flow(self, flow: Flow) -> None:
        if not flow.finished:
            return
        ident = (flow.key, flow.start_ns)
        if ident in self._spanned:
            return
        self._spanned[ident] = None
        if len(self._spanned) > _SPANNED_MAX:
            self._spanned.popitem(last=False)
        span = self.tracer.start_span(
            f"flow {flow.protocol}",
            kind=SpanKind.INTERNAL,
            start_time=flow.start_ns,
            attributes=span_attributes(flow),
        )
        span.end(end_time=max(flow.end_ns, flow.start_ns))
        self.spans += 1

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.provider.shutdown()
