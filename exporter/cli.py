"""`lumen`: the node agent and its clients.

    lumen agent [--host 127.0.0.1 --port 9465 --otel ...]   run the agent
    lumen observe [filters] [-f] [--last N] [-o compact|dict|table|jsonpb|json]   flows, like `hubble observe`
    lumen status                                            the agent, each pod's attach state, map fill
    lumen relay --agent URL ... | --discover nodes          one API and UI over every node's agent

Filter flags are the API's query parameters with dashes (`--from-pod ns/name` is `from_pod=ns/name`), plus
hubble observe's spellings (exporter/observe_args.py); `--not` before a filter flag (or `--not-<filter>`)
puts it on the deny-list; `--filter '<json>'` gives several groups. All go through
exporter.filters, so a bad value is reported the same way here and by the API. The clients talk to the
agent through exporter/client.py (urllib): `lumen observe` never imports the server's FastAPI.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from exporter import client, filters, observe_args, render

DEFAULT_PORT = 9465
DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}"


# -- agent -------------------------------------------------------------------------------------


def _agent_parser(sub: Any) -> None:
    p = sub.add_parser(
        "agent", help="run the node agent", description="Load the datapath and serve flows and metrics."
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback needs --token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--token", default=os.environ.get("LUMEN_TOKEN"), help="bearer token (env LUMEN_TOKEN)")
    p.add_argument("--token-file", help="read the bearer token from this file")
    p.add_argument("--state-dir", default="/run/lumen", help="the plugin's stateDir (endpoint records)")
    p.add_argument("--pin-dir", default="/sys/fs/bpf/lumen")
    p.add_argument("--node", default=None, help="node name (default: hostname, or env NODE_NAME)")
    p.add_argument("--flow-store-size", type=int, default=65536, help="recent flows kept for the API")
    p.add_argument("--flow-table-size", type=int, default=65536, help="kernel flow table entries")
    p.add_argument(
        "--pod-slots", type=int, default=256, help="local pods with exact counters (slot 0 is none)"
    )
    p.add_argument("--ringbuf-pages", type=int, default=256, help="ring buffer pages (power of two)")
    p.add_argument("--aggregation", choices=["default", "none"], default="default")
    p.add_argument(
        "--report-interval", type=float, default=5.0, help="seconds between REPORT events of a flow"
    )
    p.add_argument("--idle-timeout", type=float, default=60.0, help="seconds before an idle flow is ended")
    p.add_argument("--no-redirect", action="store_true", help="leave pod-to-pod packets on the bridge")
    p.add_argument("--otel", action="store_true", help="export a span per finished flow (OTEL_* env)")
    p.add_argument("--plugin-socket", help="serve the CNI plugin's handed-over calls on this socket")
    p.add_argument(
        "--policy-dir",
        action="append",
        default=None,
        help="directory of NetworkPolicy (and, outside a cluster, Pod/Namespace) manifests, watched; "
        "repeatable (default /etc/lumen/policies)",
    )
    p.add_argument(
        "--policy-audit",
        action="store_true",
        help="audit mode everywhere: flows policy would drop are forwarded with verdict AUDIT",
    )
    p.add_argument(
        "--routing-mode",
        choices=["direct", "vxlan"],
        default=os.environ.get("LUMEN_ROUTING_MODE", "direct"),
        help="how pods reach other nodes' pods: direct routes via the node addresses (one L2 segment) "
        "or a VXLAN overlay (env LUMEN_ROUTING_MODE)",
    )
    p.add_argument("--vxlan-device", default="lumen-vxlan", help="name of the VXLAN device (vxlan mode)")
    p.add_argument("--vxlan-vni", type=int, default=1, help="VXLAN network identifier (vxlan mode)")
    p.add_argument("--vxlan-port", type=int, default=8472, help="VXLAN UDP port (vxlan mode)")
    p.add_argument(
        "--no-masquerade",
        action="store_true",
        default=os.environ.get("LUMEN_MASQUERADE", "true").lower() in ("false", "0", "off", "no"),
        help="do not masquerade pod traffic leaving the cluster's pod CIDRs (env LUMEN_MASQUERADE=false)",
    )
    p.add_argument(
        "--non-masquerade",
        action="append",
        default=None,
        metavar="CIDR",
        help="destinations pod traffic reaches with the pod's own address (repeatable; env "
        "LUMEN_NON_MASQUERADE, comma-separated)",
    )
    p.add_argument(
        "--history",
        default=os.environ.get("LUMEN_HISTORY", "sqlite"),
        metavar="STORE",
        help="where finished flows, drops and policy verdicts are kept for time-range queries: sqlite "
        "(<state-dir>/history.sqlite, the default), sqlite:///path, clickhouse://host:port/db, or off "
        "(env LUMEN_HISTORY)",
    )
    p.add_argument(
        "--history-retention",
        type=_duration,
        default="24h",
        metavar="AGE",
        help="keep history this long: 90m, 24h, 7d (default 24h)",
    )
    p.add_argument(
        "--history-max-size",
        type=_size,
        default="1GiB",
        metavar="SIZE",
        help="SQLite history at most this big, oldest hours dropped first (default 1GiB)",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument("--print-bpf", action="store_true", help="print the C and the effective config, then exit")
    p.set_defaults(func=cmd_agent)


def _duration(value: str) -> float:
    from exporter.history import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(value: str) -> int:
    from exporter.history import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_agent(args: argparse.Namespace) -> int:
    from exporter import logs
    from exporter.agent import Agent
    from exporter.api import is_loopback
    from exporter.config import AgentConfig, ConfigError
    from exporter.lock import DatapathLock, LockHeld

    token = args.token
    if args.token_file:
        try:
            with open(args.token_file) as f:
                token = f.read().strip()
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path, undecodable text
            print(f"lumen agent: --token-file {args.token_file!r}: {exc}", file=sys.stderr)
            return 2
    if not is_loopback(args.host) and not token:
        print(f"lumen agent: binding {args.host} needs --token (or LUMEN_TOKEN)", file=sys.stderr)
        return 2
    cfg = AgentConfig(
        state_dir=args.state_dir,
        pin_dir=args.pin_dir,
        host=args.host,
        port=args.port,
        token=token or None,
        node=args.node or os.environ.get("NODE_NAME") or AgentConfig().node,
        flow_store_size=args.flow_store_size,
        flow_table_size=args.flow_table_size,
        pod_slots=args.pod_slots,
        ringbuf_pages=args.ringbuf_pages,
        aggregation=args.aggregation,
        report_interval_s=args.report_interval,
        idle_timeout_s=args.idle_timeout,
        redirect=not args.no_redirect,
        otel=args.otel,
        plugin_socket=args.plugin_socket,
        policy_dirs=args.policy_dir or AgentConfig().policy_dirs,
        policy_audit=args.policy_audit,
        routing_mode=args.routing_mode,
        vxlan_device=args.vxlan_device,
        vxlan_vni=args.vxlan_vni,
        vxlan_port=args.vxlan_port,
        masquerade=not args.no_masquerade,
        non_masquerade=args.non_masquerade
        or [c.strip() for c in os.environ.get("LUMEN_NON_MASQUERADE", "").split(",") if c.strip()],
        history=args.history,
        history_retention_s=args.history_retention,
        history_max_bytes=args.history_max_size,
    )
    try:
        cfg.validate()  # before anything is compiled, pinned or locked
    except ConfigError as exc:
        print(f"lumen agent: {exc}", file=sys.stderr)
        return 2
    problem = _network_problem(cfg)
    if problem:
        print(f"lumen agent: {problem}", file=sys.stderr)
        return 2
    if args.print_bpf:
        from bpf.loader import source_text

        print(source_text())
        shown = {k: v for k, v in vars(cfg).items() if k != "token"}
        print("/* effective config: " + json.dumps(shown) + " */")
        return 0

    import uvicorn

    from exporter import ui
    from exporter.api import create_app

    class Server(uvicorn.Server):
        """SIGINT/SIGTERM stop serving. Unlike uvicorn's own handler the signal is not raised again after
        shutdown, so the agent gets to stop its threads and save its totals, and exits 0."""

        def handle_exit(self, sig: int, frame: object) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    logs.setup(args.log_level)
    # One agent per datapath: a second one with the same pin or state dir must not touch it.
    lock = DatapathLock(cfg.pin_dir, cfg.state_dir)
    try:
        lock.acquire()
    except LockHeld as exc:
        print(f"lumen agent: {exc}", file=sys.stderr)
        return 1
    agent = Agent(cfg)
    try:
        agent.start()
    except Exception:
        lock.release()
        raise
    try:
        app = create_app(
            agent, token=cfg.token, registry=agent.registry, ui=ui.hook(cfg.token), policy=agent.policy_view
        )
        server = Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_config=None, access_log=False))
        print(f"lumen agent: API on http://{cfg.host}:{cfg.port}/api/flows", file=sys.stderr, flush=True)
        server.run()
    finally:
        agent.stop()
        lock.release()
    return 0


def _network_problem(cfg: Any) -> str:
    """A bad routing or masquerade setting, said before anything is compiled or pinned."""
    import ipaddress

    from exporter.routing import RoutingConfig

    try:
        RoutingConfig(cfg.node, cfg.routing_mode, cfg.vxlan_device, cfg.vxlan_vni, cfg.vxlan_port)
        for c in cfg.non_masquerade:
            ipaddress.ip_network(c.strip(), strict=False)
    except ValueError as e:
        return str(e)
    return ""


# -- relay -------------------------------------------------------------------------------------

RELAY_PORT = 9466


def _relay_parser(sub: Any) -> None:
    p = sub.add_parser(
        "relay",
        help="one API and UI over every node's agent",
        description="Ask every agent, merge their flows by time, pair the two ends of cross-node flows, "
        "and name the nodes that do not answer. Serves the agent's API and UI.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback needs --token)")
    p.add_argument("--port", type=int, default=RELAY_PORT)
    p.add_argument(
        "--token", default=os.environ.get("LUMEN_TOKEN"), help="clients' bearer token (env LUMEN_TOKEN)"
    )
    p.add_argument("--token-file", help="read the clients' bearer token from this file")
    p.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="an agent to ask (repeatable); outside a cluster",
    )
    p.add_argument(
        "--discover",
        choices=["nodes", "endpointslices"],
        help="in a cluster: find agents from the Node objects or the agents' Service EndpointSlices",
    )
    p.add_argument("--agent-port", type=int, default=DEFAULT_PORT, help="agents' port (with --discover)")
    p.add_argument("--agent-scheme", choices=["http", "https"], default="http")
    p.add_argument("--namespace", default="lumen-system", help="the agents' namespace (endpointslices)")
    p.add_argument("--service", default="lumen-agent", help="the agents' Service (endpointslices)")
    p.add_argument(
        "--agent-token",
        default=os.environ.get("LUMEN_AGENT_TOKEN"),
        help="agents' token (env LUMEN_AGENT_TOKEN)",
    )
    p.add_argument("--agent-token-file", help="read the agents' bearer token from this file")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an agent's answer")
    p.add_argument("--no-pair", action="store_true", help="show both ends of cross-node flows as two rows")
    p.add_argument(
        "--pair-wait",
        type=float,
        default=0.25,
        help="seconds a live flow waits for its other end from another node",
    )
    p.add_argument(
        "--mirror",
        type=int,
        default=2048,
        metavar="N",
        help="keep a copy of each agent's newest N flows, fed by its stream, and answer the newest page "
        "from it (0: ask every agent for every page; default 2048)",
    )
    p.add_argument(
        "--history",
        metavar="URL",
        help="clickhouse://host:port/db the agents write to: time ranges older than they hold come from it",
    )
    p.add_argument(
        "--history-write",
        action="store_true",
        help="with --history: the relay writes every agent's finished flows, drops and policy verdicts "
        "there itself (one writer for a cluster whose agents run with --history off)",
    )
    p.add_argument(
        "--history-retention",
        type=_duration,
        default="24h",
        metavar="AGE",
        help="with --history-write: keep history this long: 90m, 24h, 7d (default 24h)",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_relay)


def _secret(value: str | None, path: str | None) -> str | None:
    if path:
        with open(path) as f:
            return f.read().strip() or None
    return value or None


def cmd_relay(args: argparse.Namespace) -> int:
    from exporter import logs
    from exporter.api import is_loopback
    from exporter.relay import discovery

    def usage(message: str) -> int:
        print(f"lumen relay: {message}", file=sys.stderr)
        return 2

    try:
        token = _secret(args.token, args.token_file)
        agent_token = _secret(args.agent_token, args.agent_token_file)
    except OSError as exc:
        return usage(f"{exc.filename}: {exc.strerror}")
    if not is_loopback(args.host) and not token:
        return usage(f"binding {args.host} needs --token (or LUMEN_TOKEN)")
    if bool(args.agent) == bool(args.discover):
        return usage("give the agents with --agent URL (repeatable) or --discover nodes|endpointslices")
    try:
        if args.agent:
            found: Any = discovery.Static([discovery.parse_agent(a) for a in args.agent])
        else:
            found = discovery.Kube(
                args.discover, args.agent_scheme, args.agent_port, args.namespace, args.service
            )
    except ValueError as exc:
        return usage(str(exc))
    if args.mirror < 0:
        return usage("--mirror: a number of flows, 0 or more")
    history = None
    if args.history_write and not args.history:
        return usage("--history-write needs --history clickhouse://host:port/db")
    if args.history:
        from exporter.relay.history import open_history

        try:
            history = open_history(args.history)
        except ValueError as exc:
            return usage(str(exc))

    import uvicorn

    from exporter import ui
    from exporter.relay.app import create_app
    from exporter.relay.fanout import Fanout
    from exporter.relay.service import Relay

    logs.setup(args.log_level)
    fanout = Fanout(found, agent_token, args.timeout)
    writer = None
    if args.history_write:
        from exporter.history.clickhouse import ClickHouseHistory
        from exporter.history.sink import HistorySink
        from exporter.relay.writer import HistoryWriter

        # its own store: the writer's thread and the API's queries each hold their own client
        store = ClickHouseHistory(args.history, args.history_retention)
        # agents that write to this same ClickHouse themselves are not written again
        writer = HistoryWriter(
            fanout, HistorySink(store), url=f"clickhouse://{store.host}:{store.port}/{store.db}"
        )
    mirrors = None
    if args.mirror:
        from exporter.relay.mirror import Mirrors

        mirrors = Mirrors(fanout, args.mirror)
    relay = Relay(
        fanout,
        pair=not args.no_pair,
        pair_wait_s=args.pair_wait,
        history=history,
        writer=writer,
        mirrors=mirrors,
    )
    app = create_app(relay, token=token, ui=ui.hook(token, with_map=False))
    print(f"lumen relay: API on http://{args.host}:{args.port}/api/flows", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


# -- clients ---------------------------------------------------------------------------------------


def _server(value: str) -> str:
    """argparse type of --server: `host:port` (as Hubble's --server takes it), `host` or a URL."""
    try:
        return observe_args.server_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        type=_server,
        default=os.environ.get("LUMEN_SERVER", DEFAULT_SERVER),
        help="agent or relay: host:port or URL (env LUMEN_SERVER; default 127.0.0.1:9465)",
    )
    p.add_argument("--token", default=os.environ.get("LUMEN_TOKEN"), help="bearer token (env LUMEN_TOKEN)")


def _observe_parser(sub: Any) -> None:
    p = sub.add_parser(
        "observe",
        help="show flows (like hubble observe)",
        description="Recent or live flows, with hubble observe's flags. Filters: any value of one flag may "
        "match, every flag must; `--not` before a filter flag leaves out the flows matching it.",
    )
    _client_args(p)
    p.add_argument(
        "--filter",
        metavar="JSON",
        help='several groups: {"allow": [{"from_pod": ["a/b"]}, ...], "deny": [...]} (instead of flags)',
    )
    observe_args.add_arguments(p, [(name, crit.help) for name, crit in filters.CRITERIA.items()])
    p.set_defaults(func=cmd_observe, observe_parser=p)


def filter_params(args: argparse.Namespace) -> dict[str, list[str]]:
    """The filter flags as API query parameters (allow and `not_` deny, `filter` JSON)."""
    out = observe_args.filter_params(observe_args.entries(args))
    if getattr(args, "filter", None):
        out[filters.FILTER_PARAM] = [args.filter]
    return out


def note_unreachable(answer: dict[str, Any], err: TextIO, before: Sequence[str] = ()) -> list[str]:
    """A relay's answer names the nodes it could not reach: say so, so that fewer flows are not taken
    for all of them (and, live, say when they are back). Returns the nodes missing now."""
    missing = list(answer.get("unreachable") or [])
    errors = answer.get("errors") or {}
    if missing and missing != list(before):
        detail = "; ".join(f"{n}: {errors.get(n, 'no answer')}" for n in missing)
        print(f"lumen observe: flows of {len(missing)} node(s) missing, not reachable: {detail}", file=err)
    elif before and not missing:
        nodes = answer.get("nodes")  # a live stream's nodes event: a node no longer followed left
        left = [n for n in before if nodes is not None and n not in nodes]
        back = [n for n in before if n not in left]
        if back:
            print(f"lumen observe: reachable again: {', '.join(back)}", file=err)
        if left:
            print(f"lumen observe: left the cluster: {', '.join(left)}", file=err)
    err.flush()
    return missing


def cmd_observe(args: argparse.Namespace) -> int:
    selection = observe_args.check(args.observe_parser, args)
    try:
        # the same checks the API makes, before we reach it
        query = filters.parse(filter_params(args))
        window = {k: [v] for k, v in (("since", args.since), ("until", args.until)) if v is not None}
        filters.parse_range(window)
    except filters.FilterError as exc:
        print(f"lumen observe: {exc}", file=sys.stderr)
        return 2
    params = [*query.to_params(), *((k, v[0]) for k, v in window.items())]
    printer = render.Printer(
        args.output,
        sys.stdout,
        time_format=args.time_format,
        node_name=args.print_node_name,
        follow=selection.follow,
    )
    try:
        if not selection.follow:
            if window and args.last is None and args.first is None:
                flows = _window_flows(args, params)  # every flow of the window
            else:
                limit = [("limit", str(selection.limit))]
                answer = client.get_json(args.server, "/api/flows", [*params, *limit], args.token)
                note_unreachable(answer, sys.stderr)
                _note_incomplete(answer, sys.stderr)
                flows = answer["flows"]  # oldest first
            printer.write(flows if selection.first is None else flows[: selection.first])
            printer.close()
            return 0
        missing: list[str] = []
        for event, data in client.stream(
            args.server, "/api/flows/stream", [*params, ("last", str(selection.limit))], args.token
        ):
            if event == "flow":
                printer.write([json.loads(data)])
            elif event == "nodes":
                missing = note_unreachable(json.loads(data), sys.stderr, missing)
            elif event == "lost":
                print(
                    f"lumen observe: {json.loads(data)['dropped']} flows missed (reading too slowly)",
                    file=sys.stderr,
                )
    except client.ApiError as exc:
        print(f"lumen observe: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    return 0


WINDOW_PAGE = 1000  # flows per request when printing a whole time window


def _window_flows(args: argparse.Namespace, params: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every flow of --since/--until, oldest first, read newest first a page at a time through the
    cursor (from the agent's memory or its history, whichever holds the window)."""
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        extra = [("limit", str(WINDOW_PAGE)), *([("cursor", cursor)] if cursor else [])]
        answer = client.get_json(args.server, "/api/flows", [*params, *extra], args.token)
        if not pages:
            note_unreachable(answer, sys.stderr)
            _note_incomplete(answer, sys.stderr)
        pages.append(answer["flows"])
        cursor = answer.get("cursor")
        if not cursor:
            return [f for page in reversed(pages) for f in page]


def _note_incomplete(answer: dict[str, Any], err: TextIO) -> None:
    if answer.get("complete") is False and answer.get("source") == "history":
        print(
            "lumen observe: the window starts before the oldest flow the history keeps (retention): "
            "earlier flows are not shown",
            file=err,
        )


def _status_parser(sub: Any) -> None:
    p = sub.add_parser("status", help="the agent, its maps and each pod's attach state")
    _client_args(p)
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_status)


def format_status(st: dict[str, Any]) -> str:
    ft, fs, ev = st["flow_table"], st["flow_store"], st["events"]
    lines = [
        f"Agent:       {'ready' if st['ready'] else 'NOT READY (' + st['reason'] + ')'}  node={st['node']} "
        f"version={st['version']} uptime={st['uptime_s']}s",
        f"Flow table:  {ft['entries']}/{ft['capacity']} ({ft['fill_ratio'] * 100:.1f}% full)",
        f"Flow store:  {fs['flows']}/{fs['capacity']} flows, {fs['evicted']} evicted",
        f"Events:      {ev['consumed']} consumed, {ev['emitted']} emitted by the kernel, {ev['lost']} lost, "
        f"{ev['decode_errors']} undecodable, poll lag {ev['poll_lag_s'] * 1000:.2f} ms",
        f"Tracing:     {'on' if st['otel'] else 'off'}",
        f"History:     {_history_text(st.get('history') or {'backend': 'off'})}",
        f"Network:     {_network_text(st.get('network') or {}, st['node'])}",
        f"Endpoints:   {len(st['endpoints'])}",
    ]
    for ep in st["endpoints"]:
        state = "attached" if ep["attached"] else f"NOT attached ({ep['state']})"
        lines.append(
            f"  {ep['namespace']}/{ep['pod']:<30} {','.join(ep['ips']):<34} {ep['hostVeth']:<16} {state}"
        )
    return "\n".join(lines)


def _network_text(n: dict[str, Any], node: str) -> str:
    """One line: routing mode, the nodes routed to, masquerade, and what is not routed or failed."""
    if not n:
        return "unknown"
    others = len([name for name in n.get("nodes", []) if name != node])
    text = (
        f"{n.get('mode')} routing, {n.get('routes', 0)} routes to {others} other nodes, "
        f"masquerade {'on' if n.get('masquerade') else 'off'}"
    )
    if n.get("problems"):
        text += "; not routed: " + "; ".join(n["problems"])
    if n.get("error"):
        text += f"  FAILED: {n['error']}"
    return text


def _history_text(h: dict[str, Any]) -> str:
    """One line: backend, size, oldest record, write lag, and what went wrong."""
    if h.get("backend") == "off":
        return "off"
    where = h.get("path") or h.get("url") or ""
    size = h.get("size_bytes")
    parts = [f"{h['backend']} {where}".strip()]
    if size is not None:
        cap = f" of {h['max_bytes'] / 2**20:.0f} MiB" if h.get("max_bytes") else ""
        parts.append(f"{size / 2**20:.1f} MiB{cap}")
    if h.get("oldest_ns"):
        oldest = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h["oldest_ns"] / 1e9))
        parts.append(f"oldest {oldest}")
    if "written" in h:
        dropped = sum((h.get("dropped") or {}).values())
        parts.append(f"{h['written']} written, {dropped} dropped, lag {h.get('write_lag_s', 0):.1f}s")
    text = ", ".join(parts)
    if h.get("error"):
        text += f"  DEGRADED: {h['error']}"
        if h.get("dropped"):
            text += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(h["dropped"].items())) + ")"
    return text


def _get_json(
    args: argparse.Namespace,
    command: str,
    path: str,
    params: Sequence[tuple[str, str]] = (),
    timeout: float = 30,
    data: bytes | None = None,
) -> Any:
    """One JSON answer of the agent, or None after saying on stderr why there is none."""
    try:
        return client.get_json(args.server, path, params, args.token, timeout, data=data)
    except client.ApiError as exc:
        print(f"lumen {command}: {exc}", file=sys.stderr)
        return None


def format_relay_status(st: dict[str, Any]) -> str:
    """`lumen status --server <relay>`: the relay, then each node's agent in brief."""
    answering = len(st["agents"]) - len(st["unreachable"])
    lines = [f"Relay:       {answering}/{len(st['agents'])} agents answer, uptime={st['uptime_s']}s"]
    for agent in st["agents"]:
        node = st["nodes"].get(agent["node"])
        if node is None:
            lines.append(f"  {agent['node']:<24} UNREACHABLE ({agent['error']})  {agent['url']}")
            continue
        fs = node.get("flow_store") or {}
        state = "ready" if node.get("ready") else f"NOT READY ({node.get('reason', '')})"
        lines.append(
            f"  {agent['node']:<24} {state}  {fs.get('flows', '?')}/{fs.get('capacity', '?')} flows, "
            f"{len(node.get('endpoints') or [])} endpoints  {agent['url']}"
        )
    if st.get("history"):  # after the agents: older relays' answers have none
        lines.append(f"History:     {_history_text(st['history'])}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    st = _get_json(args, "status", "/api/status")
    if st is None:
        return 1
    if args.output == "json":
        print(json.dumps(st, indent=2))
    else:
        print(format_relay_status(st) if st.get("relay") else format_status(st))
    return 0


def _policy_parser(sub: Any) -> None:
    p = sub.add_parser("policy", help="NetworkPolicy in force: status, explain a connection, what-if")
    psub = p.add_subparsers(dest="policy_command", required=True)
    st = psub.add_parser("status", help="policies in force, generation, a refused change")
    _client_args(st)
    st.add_argument("-o", "--output", choices=["table", "json"], default="table")
    st.set_defaults(func=cmd_policy_status)
    ex = psub.add_parser(
        "explain",
        help="which policy admits a connection, or why it is dropped",
        description="SRC and DST are namespace/pod or an IP. Example: lumen policy explain shop/web "
        "shop/db --port 5432",
    )
    _client_args(ex)
    ex.add_argument("src")
    ex.add_argument("dst")
    ex.add_argument("--protocol", default="TCP", help="TCP, UDP, SCTP, ICMP or ICMPv6 (default TCP)")
    ex.add_argument("--port", type=int, help="destination port (TCP, UDP, SCTP)")
    ex.add_argument("-o", "--output", choices=["text", "json"], default="text")
    ex.set_defaults(func=cmd_policy_explain)
    wi = psub.add_parser(
        "whatif",
        help="replay the agent's stored flows against proposed manifests; applies nothing",
    )
    _client_args(wi)
    wi.add_argument("manifests", nargs="+", help="YAML files or directories")
    wi.add_argument("-o", "--output", choices=["text", "json"], default="text")
    wi.set_defaults(func=cmd_policy_whatif)


def format_policy_status(st: dict[str, Any]) -> str:
    """`lumen policy status`: the policies in force; through a relay (`nodes` in the answer) then how
    many nodes run them, and a line for each node that runs another set, refused a change or did not
    answer."""
    lines = [
        f"Generation: {st['generation']}  audit={'on' if st['audit'] else 'off'}  {st['summary']}",
        f"Sources:    {', '.join(st['dirs'])} ({len(st['files'])} files)",
        *(f"  {name}" for name in st["policies"]),
    ]
    if st["error"]:
        lines.append(f"Refused:    {st['error']}")
    nodes: dict[str, Any] | None = st.get("nodes")
    if nodes is None:
        return "\n".join(lines)
    unreachable, errors = st.get("unreachable") or [], st.get("errors") or {}
    same = sum(not n["differs"] for n in nodes.values())
    head = f"Nodes:      {same}/{len(nodes) + len(unreachable)} run these policies"
    said = []
    for name, n in sorted(nodes.items()):
        notes = []
        if n["differs"]:
            how = [f"without {', '.join(n['missing'])}"] if n["missing"] else []
            how += [f"with {', '.join(n['extra'])}"] if n["extra"] else []
            how += [f"audit={'on' if n['audit'] else 'off'}"] if n["audit"] != st["audit"] else []
            notes.append(f"DIFFERS ({'; '.join(how)})")
        if n["error"]:
            notes.append(f"REFUSED a change: {n['error']}")
        if notes:
            said.append(f"  {name:<24} generation {n['generation']}  {'  '.join(notes)}")
    said += [f"  {name:<24} UNREACHABLE ({errors.get(name, 'no answer')})" for name in unreachable]
    if said:  # the fields above are one node's: say which
        head += f" (shown: {st['reference']})"
    return "\n".join([*lines, head, *said])


def _note_missing(command: str, answer: dict[str, Any]) -> None:
    """A relay's answer names the nodes that gave none: say so on stderr, so that part of the cluster's
    answer is not taken for all of it."""
    missing, errors = answer.get("unreachable") or [], answer.get("errors") or {}
    if missing:
        detail = "; ".join(f"{n}: {errors.get(n, 'no answer')}" for n in missing)
        print(f"lumen {command}: {len(missing)} node(s) did not answer: {detail}", file=sys.stderr)


def cmd_policy_status(args: argparse.Namespace) -> int:
    st = _get_json(args, "policy status", "/api/policy")
    if st is None:
        return 1
    print(json.dumps(st, indent=2) if args.output == "json" else format_policy_status(st))
    return 0


def cmd_policy_explain(args: argparse.Namespace) -> int:
    params = [("src", args.src), ("dst", args.dst), ("protocol", args.protocol)]
    if args.port is not None:
        params.append(("port", str(args.port)))
    answer = _get_json(args, "policy explain", "/api/policy/explain", params)
    if answer is None:
        return 1
    _note_missing("policy explain", answer)
    # through a relay whose nodes disagree, `text` gives each answer with its nodes
    print(json.dumps(answer, indent=2) if args.output == "json" else answer["text"])
    return 0


def cmd_policy_whatif(args: argparse.Namespace) -> int:
    from pathlib import Path

    from exporter.policy.manifests import SUFFIXES

    texts = []
    for raw in args.manifests:
        path = Path(raw)
        files = sorted(f for f in path.iterdir() if f.suffix in SUFFIXES) if path.is_dir() else [path]
        for f in files:
            try:
                texts.append(f.read_text())
            except OSError as e:
                print(f"lumen policy whatif: {f}: {e.strerror}", file=sys.stderr)
                return 2
    body = "\n---\n".join(texts).encode()
    answer = _get_json(args, "policy whatif", "/api/policy/whatif", timeout=60, data=body)
    if answer is None:
        return 1
    _note_missing("policy whatif", answer)
    if args.output == "json":
        print(json.dumps(answer, indent=2))
        return 0
    changes = answer["changes"]
    on = f" on {len(answer['nodes'])} nodes" if "nodes" in answer else ""  # through a relay
    print(f"{answer['flows_checked']} stored flows replayed{on}; {len(changes)} would change")
    for c in changes:
        where = f"  [{', '.join(c['nodes'])}]" if "nodes" in c else ""
        print(f"  {c['before']:>9} -> {c['after']:<9} {c['connection']}  ({c['reason']}){where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lumen", description="Lumen node agent and flow tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    _agent_parser(sub)
    _observe_parser(sub)
    _status_parser(sub)
    _policy_parser(sub)
    _relay_parser(sub)
    return parser


def _dash_dash_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """argparse turns `--port=--` into an empty list, past the option's type: refuse it as the usage
    error it is."""
    for arg in argv:
        if arg.startswith("-") and arg.endswith("=--"):
            parser.error(f"{arg}: '--' is not a value")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    _dash_dash_values(parser, argv)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
