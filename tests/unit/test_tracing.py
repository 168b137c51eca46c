"""OTel spans per finished flow, exported over OTLP/HTTP to a real receiver started here that decodes the
ExportTraceServiceRequest protobuf."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from exporter.tracing import FlowTracer, otlp_protocol
from tests.unit.exporter_fixtures import NOW_NS, make_flow


class Receiver:
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self.got = threading.Event()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            rec.requests.append(req)
            rec.paths.append(f"{self.path} {self.headers['Content-Type']}")
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()
            rec.got.set()

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield rec, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def attrs(kvs) -> dict:
    out = {}
    for kv in kvs:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value"))
    return out


def test_finished_flows_become_spans_over_otlp_http(receiver, monkeypatch):
    rec, url = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    tracer = FlowTracer(node="node-a")
    try:
        tracer.on_flow(make_flow(type="NEW"))  # not finished: no span
        end = make_flow(src_pod=("shop", "web"), type="END", packets=12, nbytes=3456, time_ns=NOW_NS)
        tracer.on_flow(end)
        tracer.on_flow(end)  # a retransmitted FIN: still one span
        tracer.on_flow(
            make_flow(
                src="192.168.1.9", src_pod=None, dst_pod=("shop", "db"), type="END", proto="UDP", dport=53
            )
        )
        assert tracer.flush()
    finally:
        tracer.shutdown()
    assert rec.got.wait(10)
    assert rec.paths[0] == "/v1/traces application/x-protobuf"
    spans = []
    for req in rec.requests:
        for rs in req.resource_spans:
            resource = attrs(rs.resource.attributes)
            assert resource["k8s.node.name"] == "node-a"
            assert resource["service.name"] == "lumen-agent"
            assert resource["deployment.environment"] == "test"
            for ss in rs.scope_spans:
                spans.extend(ss.spans)
    assert len(spans) == 2
    first = next(s for s in spans if attrs(s.attributes)["network.transport"] == "tcp")
    a = attrs(first.attributes)
    assert first.start_time_unix_nano == NOW_NS - 10**9 and first.end_time_unix_nano == NOW_NS
    assert a["source.address"] == "10.22.0.5" and a["source.port"] == 40000
    assert a["destination.address"] == "10.22.0.6" and a["destination.port"] == 80
    assert (a["k8s.namespace.name"], a["k8s.pod.name"]) == ("shop", "web")
    assert (a["lumen.verdict"], a["lumen.drop_reason"]) == ("FORWARDED", "none")
    assert a["lumen.policy"] == "no policy applies" and a["lumen.policy.allowed_by"] == ""
    assert (a["lumen.packets"], a["lumen.bytes"]) == (12, 3456)
    second = attrs(next(s for s in spans if s is not first).attributes)
    # traffic from outside belongs to the destination pod
    assert (second["k8s.namespace.name"], second["k8s.pod.name"]) == ("shop", "db")
    assert second["network.transport"] == "udp" and "lumen.source.pod" not in second


def test_protocol_comes_from_the_standard_variables():
    assert otlp_protocol({}) == "http/protobuf"
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    assert otlp_protocol(env) == "http/protobuf"
    with pytest.raises(ValueError, match="http/json"):
        otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_grpc_is_chosen_by_otel_exporter_otlp_protocol(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[ExportTraceServiceRequest] = []
    got = threading.Event()

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802 - the generated service's name
            received.append(request)
            got.set()
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        tracer = FlowTracer(node="node-b")
        tracer.on_flow(make_flow(type="END"))
        assert tracer.flush()
        tracer.shutdown()
        assert got.wait(10)
    finally:
        server.stop(0)
    span = received[0].resource_spans[0].scope_spans[0].spans[0]
    assert attrs(span.attributes)["k8s.pod.name"] == "client"


def spans_of(rec: Receiver) -> list:
    return [s for req in rec.requests for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_a_connection_is_one_span_from_the_first_packet_to_the_last_with_client_and_server(
    receiver, monkeypatch
):
    rec, url = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    web, dns = ("shop", "web"), ("kube-system", "coredns")
    tracer = FlowTracer(node="node-a")
    try:
        # a UDP question and its answer, each one packet: together they last from question to answer
        q = make_flow("10.0.0.5", "10.0.0.9", 5353, 53, "UDP", web, dns, time_ns=NOW_NS, type="NEW")
        a = make_flow(
            "10.0.0.9", "10.0.0.5", 53, 5353, "UDP", dns, web, time_ns=NOW_NS + 3 * 10**6, type="NEW",
            is_reply=True,
        )  # fmt: skip
        for f in (q, a):
            f.start_ns = f.end_ns = f.time_ns
        tracer.on_flows([q, a])
        assert tracer.spans == 0, "nothing finished yet"
        q_end, a_end = make_flow(**{**_udp(q), "type": "END"}), make_flow(**{**_udp(a), "type": "END"})
        for new, old in ((q_end, q), (a_end, a)):
            new.start_ns, new.end_ns = old.start_ns, old.end_ns
        tracer.on_flows([q_end])
        assert tracer.spans == 0, "the answer has not finished"
        tracer.on_flows([a_end, a_end])  # a repeated end makes no second span
        # a dropped connection: one half, an error
        tracer.on_flows([make_flow("10.0.0.5", "10.0.0.7", 41000, 80, verdict="DROPPED", type="END")])
        assert tracer.spans == 2
        assert tracer.flush()
    finally:
        tracer.shutdown()
    assert rec.got.wait(10)
    spans = spans_of(rec)
    udp = next(s for s in spans if attrs(s.attributes)["network.transport"] == "udp")
    u = attrs(udp.attributes)
    assert udp.name == "connection UDP"
    assert (udp.start_time_unix_nano, udp.end_time_unix_nano) == (NOW_NS, NOW_NS + 3 * 10**6), "not 0 ms"
    assert (u["client.address"], u["client.port"], u["server.address"], u["server.port"]) == (
        "10.0.0.5",
        5353,
        "10.0.0.9",
        53,
    )
    assert (u["lumen.client.pod"], u["lumen.server.pod"], u["lumen.packets"]) == ("web", "coredns", 2)
    assert (u["lumen.request.packets"], u["lumen.reply.packets"]) == (1, 1)
    assert udp.status.code == 0, "unset: not an error"
    dropped = next(s for s in spans if attrs(s.attributes)["lumen.verdict"] == "DROPPED")
    assert dropped.status.code == 2 and dropped.status.message == "policy_denied"  # STATUS_CODE_ERROR


def _udp(f) -> dict:
    """make_flow's arguments that rebuild `f`."""
    return {
        "src": f.source.ip, "dst": f.destination.ip, "sport": f.source.port, "dport": f.destination.port,
        "proto": "UDP", "src_pod": (f.source.namespace, f.source.pod),
        "dst_pod": (f.destination.namespace, f.destination.pod), "time_ns": f.time_ns, "is_reply": f.is_reply,
    }  # fmt: skip


def test_a_half_that_never_ends_is_left_out_after_the_grace(receiver, monkeypatch):
    from exporter import tracing

    rec, url = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    tracer = FlowTracer(node="node-a")
    try:
        request = make_flow("10.0.0.5", "10.0.0.6", 43000, 80, type="END", packets=4)
        reply = make_flow("10.0.0.6", "10.0.0.5", 80, 43000, type="REPORT", is_reply=True, packets=9)
        tracer.on_flows([reply, request])
        assert tracer.spans == 0, "the reply is still open"
        monkeypatch.setattr(tracing, "GRACE_NS", 0)
        tracer._expired_at = 0  # the next batch scans
        tracer.on_flows([])
        assert tracer.spans == 1
        assert tracer.flush()
    finally:
        tracer.shutdown()
    assert rec.got.wait(10)
    (span,) = spans_of(rec)
    a = attrs(span.attributes)
    assert a["lumen.request.packets"] == 4 and "lumen.reply.packets" not in a
