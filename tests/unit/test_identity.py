"""Who a flow's ends are (issue 15): labels, workload, node and policy identity from the enricher; ICMP,
ICMPv6 and IGMP messages by name from the decoder; the vocabulary's names."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpf import abi, vocab
from exporter import decode, workload
from exporter.enrich import EndpointDirectory, Enricher, LabelSource
from tests.unit.exporter_fixtures import write_record


@pytest.mark.parametrize(
    ("name", "labels", "owners", "want"),
    [
        ("web-5d4f8b7c9-x2x7k", {"pod-template-hash": "5d4f8b7c9"}, [("ReplicaSet", "web-5d4f8b7c9")],
         ("Deployment", "web")),
        ("web-5d4f8b7c9-x2x7k", {"pod-template-hash": "5d4f8b7c9"}, [], ("Deployment", "web")),
        ("rs-only-abcde", {}, [("ReplicaSet", "rs-only")], ("ReplicaSet", "rs-only")),
        ("db-0", {"statefulset.kubernetes.io/pod-name": "db-0"}, [], ("StatefulSet", "db")),
        ("agent-x7k2p", {"controller-revision-hash": "6c9f"}, [], ("DaemonSet", "agent")),
        ("migrate-q2w3e", {"job-name": "migrate"}, [], ("Job", "migrate")),
        ("probe", {"app": "probe"}, [], ("", "")),
        ("db-0", {}, [("StatefulSet", "db")], ("StatefulSet", "db")),
    ],
)  # fmt: skip
def test_workload_from_owner_or_the_names_controllers_give(name, labels, owners, want):
    assert workload.workload(name, labels, owners) == want


def test_owner_references_controller_first_and_malformed_ones_skipped():
    refs = [
        {"kind": "Node", "name": "n1"},
        {"kind": "ReplicaSet", "name": "a-1", "controller": True},
        {"x": 1},
    ]
    assert workload.owners_of(refs) == (("ReplicaSet", "a-1"), ("Node", "n1"))
    assert workload.owners_of("not a list") == ()


class Labels(LabelSource):
    def labels(self, namespace: str, pod: str) -> Mapping[str, str]:
        return {"app": pod}

    def workload(self, namespace: str, pod: str) -> tuple[str, str]:
        return ("Deployment", pod) if pod == "web" else ("", "")


class Identities:
    def pod_identity(self, namespace: str, pod: str) -> int:
        return {"web": 300, "db": 301}.get(pod, 0)

    def address_identity(self, ip: str) -> int:
        return int(abi.Identity.HOST) if ip == "10.0.0.1" else int(abi.Identity.WORLD)


def test_both_ends_carry_labels_workload_node_and_identity(tmp_path):
    write_record(str(tmp_path), "c1", "shop", "web", ["10.22.0.5/24"], 7)
    write_record(str(tmp_path), "c2", "shop", "db-0", ["10.22.0.6/24"], 8)
    e = Enricher(EndpointDirectory(str(tmp_path), Labels()), node="node-a", identities=Identities())
    web, db = e.endpoint(7, "10.22.0.5", 4000), e.endpoint(8, "10.22.0.6", 5432)
    assert (web.labels, web.workload_kind, web.workload, web.node, web.identity) == (
        {"app": "web"},
        "Deployment",
        "web",
        "node-a",
        300,
    )
    # no owner from the source: derived from the name and labels (here none match)
    assert (db.workload_kind, db.workload, db.identity) == ("", "", 0)
    assert e.endpoint(0, "10.0.0.1", 0).identity == abi.Identity.HOST
    assert e.endpoint(0, "192.0.2.9", 0).identity == abi.Identity.WORLD
    assert web.to_dict()["workload"] == {"kind": "Deployment", "name": "web"}


def event(proto: int, type_: int, code: int, ident: int, family: int = 4) -> bytes:
    ev = abi.FlowEvent(type=int(abi.EventType.NEW), verdict=int(abi.Verdict.FORWARDED), packets=1, bytes=98)
    ev.key.proto, ev.key.family, ev.key.direction = proto, family, int(abi.Direction.EGRESS)
    ev.key.sport, ev.key.dport = abi.icmp_key_ports(type_, code, ident)
    src, _ = abi.addr_bytes("10.0.0.5" if family == 4 else "fd00::5")
    dst, _ = abi.addr_bytes("10.0.0.6" if family == 4 else "ff02::1:ff00:6")
    ev.key.saddr[:] = list(src)
    ev.key.daddr[:] = list(dst)
    return bytes(ev)


def test_messages_are_decoded_by_name_with_no_ports(tmp_path):
    d = decode.Decoder(Enricher(EndpointDirectory(str(tmp_path))))
    echo = d.flow(event(1, 8, 0, 4242))
    assert (echo.protocol, echo.message, echo.message_name()) == ("ICMP", (8, 0, 4242), "echo-request")
    assert echo.source.port == echo.destination.port == 0
    assert echo.to_dict()["icmp"] == {"type": 8, "code": 0, "name": "echo-request", "id": 4242}
    unreachable = d.flow(event(1, 3, 3, 0))
    assert unreachable.message_name() == "destination-unreachable/port-unreachable"
    ns = d.flow(event(58, 135, 0, 0, family=6))
    assert (ns.protocol, ns.message_name(), ns.special) == ("ICMPv6", "neighbor-solicitation", True)
    mld = d.flow(event(58, 143, 0, 0, family=6))
    assert mld.message_name() == "mld2-listener-report"
    igmp = d.flow(event(2, 0x16, 0, 0))
    assert igmp.to_dict()["igmp"] == {"type": 0x16, "code": 0, "name": "v2-membership-report"}
    assert echo.key != d.flow(event(1, 8, 0, 4243)).key, "ping sessions stay apart"


def test_vocabulary_names_every_protocol_it_lists_and_numbers_the_rest():
    assert vocab.protocol_name(132) == "SCTP" and vocab.protocol_name(2) == "IGMP"
    assert vocab.protocol_name(253) == "253"
    assert vocab.message_name("ICMPv6", 133) == "router-solicitation"
    assert vocab.message_name("ICMP", 42) == "type 42"
    assert vocab.message_name("ICMP", 3, 99) == "destination-unreachable/code 99"
    assert not vocab.has_ports("ICMP") and vocab.has_ports("SCTP")
    served = vocab.as_json()  # /api/vocabulary and the pages: the same names
    assert served["messages"]["ICMP"]["8"] == "echo-request"
    assert served["message_codes"]["ICMPv6"]["1"]["4"] == "port-unreachable"


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535))
def test_message_key_ports_round_trip(type_, code, ident):
    assert abi.icmp_from_key(*abi.icmp_key_ports(type_, code, ident)) == (type_, code, ident)
    assert vocab.message_name("ICMP", type_, code)  # every message has a name or a number
