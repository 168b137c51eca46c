"""`lumen observe`'s command line, with `hubble observe`'s habits: its flag names (`--node-name`,
`--traffic-direction`, `-4`/`-6`, `-n` namespace, `-l` label, `-t` type), `--not` negating the filter
flag that follows it, `--all`/`--first`/`--last`, `--print-node-name`, `--time-format` and `-o`.

Filter flags become the API's query parameters: a plain flag goes into the allow group (`from_pod=...`),
a negated one (`--not --from-pod x` or Lumen's `--not-from-pod x`) into the deny group (`not_from_pod=...`).
As in Hubble, all allowed criteria must match, and a flow is left out when it matches every negated
criterion. Values are checked by exporter.filters, as the API checks them, so both report a bad value
in the same words. Pure argparse: `lumen observe --help` starts without the server's imports.
"""

from __future__ import annotations

import argparse
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from exporter import render

DENY_PREFIX = "not_"  # exporter.filters' spelling of the deny group's parameters
DEFAULT_PORT = 9465
DEFAULT_LAST = 20  # flows printed without --last/--first/--all/-f, as hubble observe does

#: criterion -> Hubble's other spellings of its flag (Lumen's own `--<criterion>` stays)
HUBBLE_FLAGS: dict[str, tuple[str, ...]] = {
    "namespace": ("-n",),
    "label": ("-l",),
    "type": ("-t",),
    "node": ("--node-name",),
    "direction": ("--traffic-direction",),
}

#: values Hubble spells its own way -> Lumen's spelling (case-insensitive)
HUBBLE_VALUES: dict[str, dict[str, str]] = {"protocol": {"icmpv4": "ICMP"}}

_ENTRIES = "filter_entries"  # (negated, criterion, value) in command-line order
_PENDING_NOT = "filter_pending_not"


class _Not(argparse.Action):
    """`--not`: the next filter flag goes to the deny-list."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, *_: Any) -> None:
        if getattr(ns, _PENDING_NOT, False):
            parser.error("--not --not: give a filter flag after --not")
        setattr(ns, _PENDING_NOT, True)


class _Filter(argparse.Action):
    """A filter flag: records (negated, criterion, value); negated if `--not` came just before it or the
    flag is spelt `--not-<filter>`."""

    def __init__(
        self, *args: Any, criterion: str, negate: bool = False, fixed: str | None = None, **kw: Any
    ) -> None:
        self.criterion, self.negate, self.fixed = criterion, negate, fixed
        super().__init__(*args, **kw)

    def __call__(
        self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        value = self.fixed if self.fixed is not None else str(values)
        value = HUBBLE_VALUES.get(self.criterion, {}).get(value.lower(), value)
        negated = self.negate or bool(getattr(ns, _PENDING_NOT, False))
        setattr(ns, _PENDING_NOT, False)
        entries = list(getattr(ns, _ENTRIES, None) or [])
        entries.append((negated, self.criterion, value))
        setattr(ns, _ENTRIES, entries)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(p: argparse.ArgumentParser, criteria: Iterable[tuple[str, str]]) -> None:
    """The observe flags onto `p`. `criteria`: (name, help) of every filter criterion exporter.filters
    knows, so a criterion added there is a flag here without more code."""
    sel = p.add_argument_group("which flows")
    sel.add_argument("-f", "--follow", action="store_true", help="keep printing new flows")
    sel.add_argument("--last", type=_count, metavar="N", help=f"the newest N flows (default {DEFAULT_LAST})")
    sel.add_argument("--first", type=_count, metavar="N", help="the oldest N stored flows")
    sel.add_argument("--all", action="store_true", help="every stored flow (use with filters)")
    sel.add_argument("--since", metavar="TIME", help="flows seen at or after: RFC 3339, unix s, or 1h30m ago")
    sel.add_argument("--until", metavar="TIME", help="flows seen at or before (same forms as --since)")

    fmt = p.add_argument_group("how they are printed")
    fmt.add_argument(
        "-o",
        "--output",
        choices=render.OUTPUTS,
        default=render.DEFAULT_OUTPUT,
        help="compact: one line a flow (default); dict: KEY: value blocks; table: aligned columns with a "
        "header; jsonpb: Hubble's flow JSON (GetFlowsResponse), one a line; json/jsonl: Lumen's flow JSON "
        "(an array / one a line)",
    )
    fmt.add_argument(
        "--time-format",
        type=_time_format,
        default=render.DEFAULT_TIME_FORMAT,
        metavar="NAME",
        help=f"one of {', '.join(render.TIME_FORMATS)} (UTC; default {render.DEFAULT_TIME_FORMAT})",
    )
    fmt.add_argument("--print-node-name", action="store_true", help="print the node that saw each flow")

    flt = p.add_argument_group(
        "filters (a flag's values: any may match; different flags: all must match; --not FLAG V or "
        "--not-FLAG V: leave out flows matching every negated flag)"
    )
    flt.add_argument("--not", action=_Not, nargs=0, help="negate the filter flag that follows")
    names = set()
    for name, text in criteria:
        names.add(name)
        flags = [_flag(name), *HUBBLE_FLAGS.get(name, ())]
        flt.add_argument(*flags, action=_Filter, criterion=name, dest=_ENTRIES, metavar="V", help=text)
        flt.add_argument(
            f"--not-{_flag(name)[2:]}",
            action=_Filter,
            criterion=name,
            negate=True,
            dest=_ENTRIES,
            metavar="V",
            help=argparse.SUPPRESS,
        )
    if "ip_version" in names:
        for version in ("4", "6"):
            flt.add_argument(
                f"-{version}",
                f"--ipv{version}",
                action=_Filter,
                criterion="ip_version",
                fixed=version,
                nargs=0,
                dest=_ENTRIES,
                help=f"IPv{version} flows only",
            )
    p.set_defaults(**{_ENTRIES: [], _PENDING_NOT: False})


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of flows (0 or more)")
    return int(text)


def _time_format(text: str) -> str:
    try:
        return render.time_format_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class Selection:
    """Which stored flows to ask for: the newest `limit` (0: all), of which the oldest `first` are kept
    when --first is given (the API pages newest first)."""

    limit: int
    first: int | None
    follow: bool


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Selection:
    """The combinations `hubble observe` refuses, refused the same way (a usage error, exit 2)."""
    if getattr(args, _PENDING_NOT, False):
        parser.error("trailing --not: give the filter flag it negates after it")
    first, last = args.first, args.last
    if first is not None and last is not None:
        parser.error("give --first or --last, not both")
    if first is not None and args.all:
        parser.error("give --first or --all, not both")
    if first is not None and args.follow:
        parser.error("--first reads stored flows; it cannot be combined with --follow")
    if last is not None and args.all:
        parser.error("give --last or --all, not both")
    if args.all or first is not None:
        return Selection(limit=0, first=first, follow=args.follow)
    if last is None:
        last = 0 if args.follow else DEFAULT_LAST
    return Selection(limit=last, first=None, follow=args.follow)


def entries(args: argparse.Namespace) -> list[tuple[bool, str, str]]:
    return list(getattr(args, _ENTRIES, None) or [])


def filter_params(entries: Sequence[tuple[bool, str, str]]) -> dict[str, list[str]]:
    """(negated, criterion, value) entries as the API's parameters: `name` allows, `not_name` denies."""
    out: dict[str, list[str]] = {}
    for negated, name, value in entries:
        out.setdefault(DENY_PREFIX + name if negated else name, []).append(value)
    return out


def server_url(server: str) -> str:
    """`--server` as a URL: `host:port` and `host` (port 9465) as Hubble's `--server` takes them, or a
    full http(s) URL. ValueError with the reason for anything else."""
    text = server.strip()
    if "://" not in text:
        text = "http://" + text
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"--server {server!r}: expected host:port or an http(s):// URL")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"--server {server!r}: the port is not a number from 0 to 65535") from None
    if not parsed.hostname:
        raise ValueError(f"--server {server!r}: no host")
    if port is None and "://" not in server:
        text = f"{text.rstrip('/')}:{DEFAULT_PORT}"
    return text.rstrip("/")
