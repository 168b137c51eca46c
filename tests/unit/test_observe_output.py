"""What `lumen observe` prints, per output format: golden files (golden/observe/) for a fixed set of flows,
and the pieces the formats share: time formats, endpoints with bracketed IPv6 and no port for ICMP, the
reply marker, human durations. `UPDATE_GOLDEN=1` rewrites the golden files (review the diff)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from exporter import render
from tests.unit.observe_samples import sample_dicts

GOLDEN = Path(__file__).parent / "golden" / "observe"

#: golden file -> (output, time format, print node name)
CASES = {
    "compact.txt": ("compact", "StampMilli", False),
    "compact-node-rfc3339milli.txt": ("compact", "RFC3339Milli", True),
    "dict.txt": ("dict", "StampMilli", False),
    "table.txt": ("table", "StampMilli", False),
    "table-node.txt": ("table", "RFC3339", True),
    "json.txt": ("json", "StampMilli", False),
    "jsonl.txt": ("jsonl", "StampMilli", False),
    "jsonpb.txt": ("jsonpb", "StampMilli", False),
}


def printed(output: str, time_format: str = "StampMilli", node: bool = False, follow: bool = False) -> str:
    out = io.StringIO()
    p = render.Printer(output, out, time_format=time_format, node_name=node, follow=follow)
    for flow in sample_dicts():  # one at a time, as a live stream delivers them
        p.write([flow])
    p.close()
    return out.getvalue()


def golden(name: str, text: str) -> str:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    return path.read_text()


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_matches_its_golden_file(name: str) -> None:
    output, time_format, node = CASES[name]
    text = printed(output, time_format, node)
    assert text == golden(name, text)


def test_every_output_format_has_a_golden_file() -> None:
    assert {c[0] for c in CASES.values()} == set(render.OUTPUTS)


def test_compact_reads_like_hubble() -> None:
    lines = printed("compact").splitlines()
    assert len(lines) == len(sample_dicts())
    assert lines[0].startswith(
        "Jan 14 08:00:00.123: shop/frontend:41000 -> shop/cart:8080 from-endpoint FORWARDED"
    )
    # the reply: the client stays on the left, the arrow turns
    assert "shop/frontend:41000 <- shop/cart:8080 to-endpoint FORWARDED" in lines[1]
    assert "-> [fd01:244::c8]:443 " in lines[2]  # IPv6 bracketed before its port
    assert "ops/monitor -> shop/frontend policy-denied DROPPED" in lines[3]  # ICMP: no ports


def test_table_has_a_header_and_aligned_columns() -> None:
    lines = printed("table").splitlines()
    assert lines[0].split() == [
        "TIMESTAMP",
        "SOURCE",
        "DESTINATION",
        "TYPE",
        "VERDICT",
        "EVENT",
        "PACKETS",
        "BYTES",
        "SUMMARY",
        "POLICY",
    ]
    col = lines[0].index("DESTINATION")
    assert all(line[col - 4 : col - 2] in ("->", "<-") for line in lines[1:])
    assert len(lines) == 1 + len(sample_dicts())


def test_a_live_table_prints_its_header_once_then_rows_as_they_come() -> None:
    lines = printed("table", follow=True).splitlines()
    assert lines[0].startswith("TIMESTAMP") and sum(line.startswith("TIMESTAMP") for line in lines) == 1
    assert len(lines) == 1 + len(sample_dicts())


def test_json_is_the_api_flow_json_and_jsonl_the_same_a_line() -> None:
    assert json.loads(printed("json")) == sample_dicts()
    assert [json.loads(line) for line in printed("jsonl").splitlines()] == sample_dicts()
    # a live stream has no closing bracket: -f -o json prints one flow a line
    assert [json.loads(line) for line in printed("json", follow=True).splitlines()] == sample_dicts()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("StampMilli", "Jan  2 03:04:05.006"),
        ("YearMonthDay", "2027-01-02"),
        ("YearMonthDayHour", "2027-01-02T03Z"),
        ("YearMonthDayHourMinute", "2027-01-02T03:04Z"),
        ("RFC3339", "2027-01-02T03:04:05Z"),
        ("RFC3339Milli", "2027-01-02T03:04:05.006Z"),
        ("RFC3339Micro", "2027-01-02T03:04:05.00607Z"),
        ("RFC3339Nano", "2027-01-02T03:04:05.00607Z"),
        ("RFC1123Z", "Sat, 02 Jan 2027 03:04:05 +0000"),
    ],
)
def test_time_formats(name: str, expected: str) -> None:
    assert render.format_time("2027-01-02T03:04:05.006070Z", name) == expected


def test_time_formats_drop_trailing_zeros_and_convert_to_utc() -> None:
    assert render.format_time("2027-01-02T03:04:05.000000Z", "RFC3339Milli") == "2027-01-02T03:04:05Z"
    assert render.format_time("2027-01-02T05:04:05+02:00", "RFC3339") == "2027-01-02T03:04:05Z"
    assert render.time_format_name("rfc3339milli") == "RFC3339Milli"
    with pytest.raises(ValueError, match="expected one of StampMilli"):
        render.time_format_name("iso")


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (400_000, "<1ms"),
        (850_000_000, "850ms"),
        (3_200_000_000, "3.2s"),
        (3_000_000_000, "3s"),
        (45_000_000_000, "45s"),
        (127_044_825_000, "2m 7s"),
        (3_900 * 10**9, "1h 5m"),
        (2 * 86400 * 10**9 + 3 * 3600 * 10**9, "2d 3h"),
    ],
)
def test_human_durations(ns: int, text: str) -> None:
    assert render.human_duration(ns) == text


def test_endpoints() -> None:
    pod = {"ip": "fd00::5", "port": 80, "namespace": "shop", "pod": "web"}
    assert render.host_port(pod, "TCP") == "shop/web:80"
    assert render.host_port({"ip": "fd00::1", "port": 80}, "TCP") == "[fd00::1]:80"
    assert render.host_port({"ip": "10.0.0.1", "port": 53}, "UDP") == "10.0.0.1:53"
    assert render.host_port({"ip": "fd00::1", "port": 135}, "ICMPv6") == "fd00::1"
    assert render.host_port({"ip": "224.0.0.1", "port": 0}, "IGMP") == "224.0.0.1"


def test_a_cross_node_flow_paired_by_the_relay_names_both_nodes() -> None:
    flow = sample_dicts()[0]
    flow.update(paired=True, source_node="n1", destination_node="n2")
    out = io.StringIO()
    render.Printer("compact", out, node_name=True).write([flow])
    assert out.getvalue().startswith("Jan 14 08:00:00.123 [n1->n2]: shop/frontend:41000 -> shop/cart:8080 ")
