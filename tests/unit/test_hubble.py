"""`lumen observe -o jsonpb` speaks Hubble's flow JSON: each line is checked field by field against a
schema of Hubble's messages written from flow.proto/observer.proto (golden/hubble_flow_schema.json): every
field name is one of the message's, every value has the JSON type the proto3 mapping gives that field,
every enum value is one of the enum's names, a oneof holds one field; and the values say what the Lumen
flow says."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from exporter import hubble
from tests.unit.observe_samples import sample_dicts

SCHEMA = json.loads((Path(__file__).parent / "golden" / "hubble_flow_schema.json").read_text())
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")
UINT32_MAX = 2**32 - 1


def check(value: Any, type_name: str, path: str) -> None:
    """Raise AssertionError naming the path of the first value that the schema does not allow."""
    if type_name.startswith("repeated "):
        assert isinstance(value, list), f"{path}: expected a list"
        assert value, f"{path}: an empty list is left out in proto3 JSON"
        for i, item in enumerate(value):
            check(item, type_name.removeprefix("repeated "), f"{path}[{i}]")
        return
    if type_name in SCHEMA["messages"]:
        check_message(value, type_name, path)
    elif type_name in SCHEMA["enums"]:
        assert value in SCHEMA["enums"][type_name], f"{path}: {value!r} is no {type_name} value"
        assert value != SCHEMA["enums"][type_name][0], f"{path}: the zero value is left out"
    elif type_name == "string":
        assert isinstance(value, str) and value, f"{path}: expected a non-empty string"
    elif type_name in ("uint32", "int32"):
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: expected a number"
        assert value != 0, f"{path}: 0 is left out"
        assert type_name == "int32" or 0 < value <= UINT32_MAX, f"{path}: out of uint32 range"
    elif type_name == "uint64":
        assert isinstance(value, str) and value.isdigit(), f"{path}: 64-bit integers are strings"
    elif type_name == "bool":
        assert value is True, f"{path}: a bool is present only when true"
    elif type_name == "google.protobuf.BoolValue":
        assert isinstance(value, bool), f"{path}: expected true or false"
    elif type_name == "google.protobuf.Timestamp":
        assert isinstance(value, str) and RFC3339.match(value), f"{path}: expected RFC 3339 in UTC"
    else:
        raise AssertionError(f"{path}: schema type {type_name!r} unknown to this checker")


def check_message(value: Any, name: str, path: str) -> None:
    message = SCHEMA["messages"][name]
    assert isinstance(value, dict), f"{path}: expected a {name} object"
    for key, item in value.items():
        assert key in message["fields"], f"{path}.{key}: no such field in {name}"
        check(item, message["fields"][key], f"{path}.{key}")
    for oneof, members in message.get("oneofs", {}).items():
        set_members = [m for m in members if m in value]
        assert len(set_members) <= 1, f"{path}: oneof {oneof} holds {set_members}"


@pytest.mark.parametrize("index", range(len(sample_dicts())))
def test_every_sample_flow_is_a_valid_hubble_get_flows_response(index: int) -> None:
    out = hubble.response(sample_dicts()[index])
    check_message(out, SCHEMA["root"], "$")
    # the fields Hubble's readers rely on are there
    flow = out["flow"]
    for field in (
        "time",
        "verdict",
        "IP",
        "l4",
        "source",
        "Type",
        "node_name",
        "traffic_direction",
        "is_reply",
        "Summary",
    ):
        assert field in flow, field
    assert json.loads(json.dumps(out)) == out  # plain JSON


def test_a_tcp_request_field_by_field() -> None:
    lumen = sample_dicts()[0]
    out = hubble.response(lumen)
    f = out["flow"]
    assert out["time"] == f["time"] == lumen["time"] and out["node_name"] == f["node_name"] == "n1"
    assert f["verdict"] == "FORWARDED" and f["Type"] == "L3_L4"
    assert "drop_reason_desc" not in f and "drop_reason" not in f
    assert f["IP"] == {"source": "10.244.1.10", "destination": "10.244.2.11", "ipVersion": "IPv4"}
    assert f["l4"] == {
        "TCP": {
            "source_port": 41000,
            "destination_port": 8080,
            "flags": {"SYN": True, "PSH": True, "ACK": True},
        }
    }
    assert f["source"] == {
        "namespace": "shop",
        "pod_name": "frontend",
        "labels": ["k8s:app=frontend", "k8s:tier=web"],
        "identity": 256,
        "workloads": [{"name": "frontend", "kind": "Deployment"}],
    }
    assert f["destination"]["pod_name"] == "cart" and f["destination"]["labels"] == ["k8s:app=cart"]
    # seen leaving the client pod: Hubble's trace point FROM_ENDPOINT, an egress connection
    assert f["traffic_direction"] == "EGRESS" and f["trace_observation_point"] == "FROM_ENDPOINT"
    assert f["event_type"] == {
        "type": SCHEMA["event_types"]["trace"],
        "sub_type": SCHEMA["trace_sub_types"]["FROM_ENDPOINT"],
    }
    assert f["is_reply"] is False
    assert f["Summary"] == "TCP Flags: SYN, PSH, ACK"
    assert f["interface"] == {"index": 7}
    assert f["ingress_allowed_by"] == [{"name": "allow-shop", "namespace": "shop", "kind": "NetworkPolicy"}]
    assert "egress_allowed_by" not in f


def test_a_reply_keeps_the_connection_direction() -> None:
    f = hubble.flow(sample_dicts()[1])
    # the reply entered the client pod: trace point TO_ENDPOINT, but the connection is the client's egress
    assert f["is_reply"] is True and f["trace_observation_point"] == "TO_ENDPOINT"
    assert f["traffic_direction"] == "EGRESS"
    assert f["l4"]["TCP"]["flags"] == {"FIN": True, "PSH": True, "ACK": True}


def test_udp_over_ipv6_to_an_address_outside_the_cluster() -> None:
    f = hubble.flow(sample_dicts()[2])
    assert f["IP"]["ipVersion"] == "IPv6" and f["IP"]["destination"] == "fd01:244::c8"
    assert f["l4"] == {"UDP": {"source_port": 51000, "destination_port": 443}}
    assert f["destination"] == {"identity": 2, "labels": ["reserved:world"]}  # no pod: the world
    assert f["Summary"] == "UDP"


def test_a_dropped_ping() -> None:
    f = hubble.flow(sample_dicts()[3])
    assert f["verdict"] == "DROPPED" and f["drop_reason_desc"] == "POLICY_DENIED"
    assert f["drop_reason"] == SCHEMA["drop_reason_numbers"]["POLICY_DENIED"]
    assert f["event_type"] == {"type": SCHEMA["event_types"]["drop"], "sub_type": 133}
    assert "trace_observation_point" not in f  # a drop is no trace event
    assert f["l4"] == {"ICMPv4": {"type": 8}}  # echo request; code 0 is left out, as proto3 JSON does
    assert f["traffic_direction"] == "INGRESS"
    assert f["Summary"] == "ICMPv4 echo-request"


def test_icmp_names_and_types_from_the_flow_when_it_has_them() -> None:
    lumen = sample_dicts()[3]
    lumen["icmp"] = {"type": 3, "code": 3, "name": "destination-unreachable/port-unreachable"}
    f = hubble.flow(lumen)
    assert f["l4"] == {"ICMPv4": {"type": 3, "code": 3}}
    assert f["Summary"] == "ICMPv4 destination-unreachable/port-unreachable"
    lumen["protocol"] = "ICMPv6"
    lumen["icmp"] = {"type": 135, "code": 0, "name": "neighbour-solicitation"}
    f = hubble.flow(lumen)
    assert f["l4"] == {"ICMPv6": {"type": 135}}
    check_message(hubble.response(lumen), SCHEMA["root"], "$")


def test_without_identity_workload_or_icmp_those_fields_are_left_out() -> None:
    lumen = sample_dicts()[3]
    for side in ("source", "destination"):
        lumen[side].update(identity=0, workload=None)
    del lumen["icmp"]  # a flow from before the agent named ICMP messages
    f = hubble.flow(lumen)
    assert "identity" not in f["source"] and "workloads" not in f["destination"]
    assert f["l4"] == {"ICMPv4": {}} and f["Summary"] == "ICMPv4"
    check_message(hubble.response(lumen), SCHEMA["root"], "$")


def test_a_protocol_without_a_layer4_message() -> None:
    lumen = sample_dicts()[2]
    lumen["protocol"] = "IGMP"
    f = hubble.flow(lumen)
    assert "l4" not in f and f["Summary"] == "IGMP"
    check_message(hubble.response(lumen), SCHEMA["root"], "$")


def test_the_checker_catches_what_hubble_would_not_read() -> None:
    good = hubble.response(sample_dicts()[0])
    bad_cases = [
        ("flow", "dropReasonDesc", "POLICY_DENIED"),  # JSON name instead of the proto name
        ("flow", "verdict", "ALLOWED"),  # no such enum value
        ("flow", "is_reply", "false"),  # a string for a BoolValue
    ]
    for part, key, value in bad_cases:
        doc = json.loads(json.dumps(good))
        doc[part][key] = value
        with pytest.raises(AssertionError):
            check_message(doc, SCHEMA["root"], "$")
    doc = json.loads(json.dumps(good))
    doc["flow"]["l4"]["UDP"] = {"source_port": 1}
    with pytest.raises(AssertionError, match="oneof"):
        check_message(doc, SCHEMA["root"], "$")


def test_reserved_identities_are_labelled_as_hubble_labels_them() -> None:
    lumen = sample_dicts()[4]  # TCP to an address outside the cluster
    lumen["destination"]["identity"] = 2  # WORLD: Lumen's reserved identities have Cilium's numbers
    out = hubble.response(lumen)
    check_message(out, SCHEMA["root"], "$")
    assert out["flow"]["destination"] == {"identity": 2, "labels": ["reserved:world"]}
