"""How `lumen observe` prints flows: the output formats of `hubble observe` (compact, dict, table, jsonpb)
plus Lumen's own JSON, its time formats, and the small pieces they share (endpoints with bracketed IPv6,
the reply marker, human durations and sizes).

Input flows are the API's JSON (exporter.flows `Flow.to_dict`). Pure: no I/O beyond the stream the
`Printer` is given, so the CLI's outputs are checked against golden files (tests/unit/golden/observe/).

Reading a line: `SOURCE -> DESTINATION` is a request, `SOURCE <- DESTINATION` a reply; in both the
connection's client is on the left, as `hubble observe` prints it, so a connection's two halves line up.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from exporter import hubble

#: -o values; `json` and `jsonl` are Lumen's flow JSON (array / one per line), `jsonpb` Hubble's
OUTPUTS = ("compact", "dict", "table", "json", "jsonl", "jsonpb")
DEFAULT_OUTPUT = "compact"

PORTED_PROTOCOLS = ("TCP", "UDP", "SCTP")  # protocols whose endpoints have ports worth printing


# -- time --------------------------------------------------------------------------------------------


def _frac(dt: datetime, digits: int) -> str:
    """Go's `.999...` layouts: up to `digits` fraction digits, trailing zeros (and a bare dot) left out."""
    text = f"{dt.microsecond:06d}000"[:digits].rstrip("0")
    return f".{text}" if text else ""


#: `--time-format` names (Hubble's) -> formatter of a UTC datetime
TIME_FORMATS: dict[str, Callable[[datetime], str]] = {
    "StampMilli": lambda d: f"{d:%b} {d.day:>2} {d:%H:%M:%S}.{d.microsecond // 1000:03d}",
    "YearMonthDay": lambda d: f"{d:%Y-%m-%d}",
    "YearMonthDayHour": lambda d: f"{d:%Y-%m-%dT%H}Z",
    "YearMonthDayHourMinute": lambda d: f"{d:%Y-%m-%dT%H:%M}Z",
    "RFC3339": lambda d: f"{d:%Y-%m-%dT%H:%M:%S}Z",
    "RFC3339Milli": lambda d: f"{d:%Y-%m-%dT%H:%M:%S}{_frac(d, 3)}Z",
    "RFC3339Micro": lambda d: f"{d:%Y-%m-%dT%H:%M:%S}{_frac(d, 6)}Z",
    "RFC3339Nano": lambda d: f"{d:%Y-%m-%dT%H:%M:%S}{_frac(d, 9)}Z",
    "RFC1123Z": lambda d: f"{d:%a, %d %b %Y %H:%M:%S} +0000",
}
DEFAULT_TIME_FORMAT = "StampMilli"


def time_format_name(name: str) -> str:
    """The canonical spelling of a `--time-format` name (case-insensitive); ValueError if unknown."""
    for known in TIME_FORMATS:
        if known.lower() == name.lower():
            return known
    raise ValueError(f"time format {name!r}: expected one of {', '.join(TIME_FORMATS)}")


def format_time(iso: str, name: str = DEFAULT_TIME_FORMAT) -> str:
    """A flow's RFC 3339 time in one of TIME_FORMATS, in UTC (as Hubble prints it)."""
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC)
    return TIME_FORMATS[name](dt)


# -- quantities --------------------------------------------------------------------------------------


def human_duration(ns: float) -> str:
    """`2m 7s`, `1h 5m`, `3.2s`, `850ms`, `<1ms`: what a person reads at a glance (the UI's
    `Lumen.duration` spells durations the same way)."""
    if ns <= 0:
        return "0s"
    ms = ns / 1e6
    if ms < 1:
        return "<1ms"
    if ms < 1000:
        return f"{int(ms)}ms"
    s = ms / 1000
    if s < 10:
        return f"{s:.1f}".rstrip("0").rstrip(".") + "s"
    total = int(s)
    if total < 60:
        return f"{total}s"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s"


def human_bytes(n: int) -> str:
    units = ("B", "kB", "MB", "GB", "TB")
    value, unit = float(n), 0
    while value >= 1000 and unit < len(units) - 1:
        value, unit = value / 1000, unit + 1
    return f"{int(value)} B" if unit == 0 else f"{value:.1f} {units[unit]}"


def packets(n: int) -> str:
    return f"{n} pkt" if n == 1 else f"{n} pkts"


# -- endpoints ---------------------------------------------------------------------------------------


def host_port(ep: Mapping[str, Any], protocol: str) -> str:
    """`namespace/pod:port`, `10.0.0.1:80`, `[fd00::1]:80`; no port for portless protocols (ICMP)."""
    host = f"{ep['namespace']}/{ep['pod']}" if ep.get("pod") else str(ep["ip"])
    if protocol not in PORTED_PROTOCOLS:
        return host
    if ":" in host:  # an IPv6 address: brackets keep its colons apart from the port's
        host = f"[{host}]"
    return f"{host}:{ep.get('port', 0)}"


def oriented(flow: Mapping[str, Any]) -> tuple[str, str, str]:
    """(left, arrow, right): the connection's client on the left; `<-` marks a reply."""
    src = host_port(flow["source"], flow["protocol"])
    dst = host_port(flow["destination"], flow["protocol"])
    if flow.get("is_reply"):
        return dst, "<-", src
    return src, "->", dst


def observation(flow: Mapping[str, Any]) -> str:
    """Hubble's TYPE column: where the packets were seen, or why they were dropped."""
    if flow.get("verdict") == "DROPPED":
        return str(flow.get("drop_reason") or "dropped").replace("_", "-")
    return "from-endpoint" if flow.get("direction") == "egress" else "to-endpoint"


def node_text(flow: Mapping[str, Any]) -> str:
    """The node that saw the flow; through a relay, a cross-node flow seen at both ends names both."""
    if flow.get("paired") and flow.get("source_node") != flow.get("destination_node"):
        return f"{flow.get('source_node', '')}->{flow.get('destination_node', '')}"
    return str(flow.get("node", ""))


def policy_text(flow: Mapping[str, Any]) -> str:
    pol = flow.get("policy") or {}
    if pol.get("egress") is None and pol.get("ingress") is None and not flow.get("is_reply"):
        return ""  # no policy isolates either side
    return str(pol.get("summary") or "")


def _duration_ns(flow: Mapping[str, Any]) -> float:
    return float(flow.get("duration_ms") or 0) * 1e6


# -- printers ----------------------------------------------------------------------------------------

_DICT_SEPARATOR = "------------"
_TABLE_GAP = "  "


class Printer:
    """Writes flows in one output format. `write` may be called per batch (a live stream calls it per
    flow); `close` ends the output (a table computed from every row is written then)."""

    def __init__(
        self,
        output: str,
        out: TextIO,
        time_format: str = DEFAULT_TIME_FORMAT,
        node_name: bool = False,
        follow: bool = False,
    ) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output {output!r}: expected one of {', '.join(OUTPUTS)}")
        self.output = output
        self.out = out
        self.time_format = time_format
        self.node_name = node_name
        self.follow = follow
        self.count = 0
        self._rows: list[list[str]] = []
        self._json: list[Mapping[str, Any]] = []

    def write(self, flows: Sequence[Mapping[str, Any]]) -> None:
        for flow in flows:
            self._one(flow)
            self.count += 1
        self.out.flush()

    def _one(self, flow: Mapping[str, Any]) -> None:
        if self.output == "compact":
            self.out.write(self.compact(flow) + "\n")
        elif self.output == "dict":
            if self.count:
                self.out.write(_DICT_SEPARATOR + "\n")
            self.out.write(self.dict(flow) + "\n")
        elif self.output == "table":
            row = self.table_row(flow)
            if self.follow:  # a stream cannot wait for every row: fixed widths, header first
                if not self.count:
                    self.out.write(self._aligned([self.table_header()], self._live_widths()) + "\n")
                self.out.write(self._aligned([row], self._live_widths()) + "\n")
            else:
                self._rows.append(row)
        elif self.output == "jsonpb":
            self.out.write(json.dumps(hubble.response(flow), separators=(",", ":")) + "\n")
        elif self.output == "jsonl" or (self.output == "json" and self.follow):
            self.out.write(json.dumps(flow) + "\n")
        else:
            self._json.append(flow)

    def close(self) -> None:
        if self.output == "table" and not self.follow:
            rows = [self.table_header(), *self._rows]
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            self.out.write(self._aligned(rows, widths) + "\n")
        elif self.output == "json" and not self.follow:
            json.dump(self._json, self.out, indent=2)
            self.out.write("\n")
        self.out.flush()

    # -- one flow, per format -----------------------------------------------------------------------

    def _time(self, flow: Mapping[str, Any]) -> str:
        return format_time(flow["time"], self.time_format)

    def compact(self, flow: Mapping[str, Any]) -> str:
        left, arrow, right = oriented(flow)
        node = f" [{node_text(flow)}]" if self.node_name else ""
        policy = policy_text(flow)
        return (
            f"{self._time(flow)}{node}: {left} {arrow} {right} {observation(flow)} {flow['verdict']} "
            f"({hubble.summary(flow)}) {flow['type']} {packets(flow['packets'])} {human_bytes(flow['bytes'])}"
            + (f"; {policy}" if policy else "")
        )

    def dict(self, flow: Mapping[str, Any]) -> str:
        src = host_port(flow["source"], flow["protocol"])
        dst = host_port(flow["destination"], flow["protocol"])
        pairs = [("TIMESTAMP", self._time(flow))]
        if self.node_name:
            pairs.append(("NODE", node_text(flow)))
        pairs += [
            ("SOURCE", src),
            ("DESTINATION", dst),
            ("TYPE", observation(flow)),
            ("VERDICT", str(flow["verdict"])),
            ("SUMMARY", hubble.summary(flow)),
            ("IS REPLY", "yes" if flow.get("is_reply") else "no"),
            ("EVENT", str(flow["type"])),
            ("PACKETS", str(flow["packets"])),
            ("BYTES", human_bytes(flow["bytes"])),
            ("DURATION", human_duration(_duration_ns(flow))),
            ("POLICY", policy_text(flow) or "none applies"),
        ]
        return "\n".join(f"{key:>11}: {value}" for key, value in pairs)

    def table_header(self) -> list[str]:
        node = ["NODE"] if self.node_name else []
        return [
            "TIMESTAMP", *node, "SOURCE", "", "DESTINATION", "TYPE", "VERDICT", "EVENT", "PACKETS",
            "BYTES", "SUMMARY", "POLICY",
        ]  # fmt: skip

    def table_row(self, flow: Mapping[str, Any]) -> list[str]:
        left, arrow, right = oriented(flow)
        node = [node_text(flow)] if self.node_name else []
        return [
            self._time(flow), *node, left, arrow, right, observation(flow), str(flow["verdict"]),
            str(flow["type"]), str(flow["packets"]), human_bytes(flow["bytes"]), hubble.summary(flow),
            policy_text(flow) or "-",
        ]  # fmt: skip

    def _aligned(self, rows: list[list[str]], widths: Sequence[int]) -> str:
        lines = []
        for row in rows:
            cells = [cell.ljust(widths[i] if i < len(widths) else 0) for i, cell in enumerate(row)]
            lines.append(_TABLE_GAP.join(cells).rstrip())
        return "\n".join(lines)

    def _live_widths(self) -> list[int]:
        # a live table (`-f -o table`) cannot measure rows to come: room for a pod name and a port
        node = [16] if self.node_name else []
        return [len(format_time("2000-12-31T23:59:59.999999Z", self.time_format)), *node, 32, 2, 32, 14,
                9, 6, 7, 9, 24, 0]  # fmt: skip
