"""The pipeline: records pulled from a reader are decoded and handed, one batch per round, to every
registered sink; a bad record or a failing sink is counted and the rest goes on; the sweep's END records
go through the same fan-out."""

from __future__ import annotations

import ctypes as ct
from collections.abc import Sequence

import pytest

from bpf import abi
from exporter.decode import Decoder
from exporter.enrich import EndpointDirectory, Enricher
from exporter.flows import Flow, FlowStore
from exporter.metrics import AgentHealth
from exporter.pipeline import Pipeline
from exporter.sweep import Sweeper
from tests.unit.exporter_fixtures import write_record
from tests.unit.test_exporter_events import golden


class Reader:
    """A reader over prepared rounds of records (what bpf.ringbuf.EventReader returns)."""

    def __init__(self, rounds: list[list[bytes]]) -> None:
        self.rounds = rounds
        self.closed = False

    def read(self, timeout_ms: int) -> list[bytes]:
        return self.rounds.pop(0) if self.rounds else []

    def close(self) -> None:
        self.closed = True


class Recorder:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.batches: list[list[Flow]] = []
        self.fail = fail
        self.closed = False

    def on_flows(self, flows: Sequence[Flow]) -> None:
        if self.fail:
            raise RuntimeError("disk full")
        self.batches.append(list(flows))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def decoder(tmp_path) -> Decoder:
    write_record(str(tmp_path), "c1", "shop", "client", ["10.22.0.5/24"], 7)
    write_record(str(tmp_path), "c2", "shop", "server", ["10.22.0.6/24"], 8)
    return Decoder(Enricher(EndpointDirectory(str(tmp_path)), node="node-a"))


def test_each_round_is_one_batch_to_every_sink_and_bad_records_are_counted(decoder):
    tcp = golden("flow_event_tcp4_end.hex")
    health = AgentHealth()
    reader = Reader([[tcp, b"short", tcp], [], [tcp]])
    pipe = Pipeline(reader, decoder, health)
    store, tracer, broken = FlowStore(10), Recorder("tracer"), Recorder("history", fail=True)
    for sink in (store, broken, tracer):
        pipe.register(sink)
    assert [pipe.poll_once(10) for _ in range(3)] == [2, 0, 1]
    assert [len(b) for b in tracer.batches] == [2, 1]  # an empty round calls no sink
    assert health.events_consumed == 3 and health.decode_errors == 1
    assert health.sink_errors == {"history": 2}  # the failing sink did not starve the others
    assert len(store) == 1 and store.added == 3
    assert tracer.batches[0][0].source.pod == "client" and health.last_poll_monotonic > 0
    pipe.close()
    assert reader.closed and tracer.closed and broken.closed


def test_the_sweep_publishes_end_records_read_from_table_entries(decoder):
    key = abi.FlowKey(sport=40000, dport=80, proto=6, family=4, direction=int(abi.Direction.EGRESS))
    ct.memmove(key.saddr, bytes([10, 22, 0, 5]), 4)
    ct.memmove(key.daddr, bytes([10, 22, 0, 6]), 4)
    st = abi.FlowStats(packets=5, bytes=500, first_seen_ns=10, last_seen_ns=20, src_ep=7, dst_ep=8, verdict=1)

    class Table:
        released: set[int] = set()

        def sweep_idle(self, idle_ns: int, now_ns: int) -> list[tuple[abi.FlowKey, abi.FlowStats]]:
            return [(key, st)]

        def release_stale_slots(self, alive: set[int]) -> int:
            self.released = alive
            return 0

    pipe = Pipeline(None, decoder)
    sink = Recorder("memory")
    pipe.register(sink)
    health = AgentHealth()
    table = Table()
    assert Sweeper(table, decoder, pipe.publish, health, lambda: {7, 8}).sweep(60) == 1
    (flow,) = sink.batches[0]
    assert (flow.type, flow.packets, flow.source.pod, flow.destination.pod) == ("END", 5, "client", "server")
    assert health.swept_flows == 1 and table.released == {7, 8}
