"""The HTTP API (FastAPI): flows with Hubble-like filters, a live SSE stream, endpoints, status, health,
the vocabulary and /metrics. OpenAPI at /openapi.json, docs at /docs.

`create_app(view, ...)` serves whatever `view` (an AgentView) reads from: the node agent passes itself
(memory store, optional history, its endpoints and status); a relay passes its own view over several
nodes and gets the same routes and, with `ui=exporter.ui.hook(token)`, the same web UI.

Binds 127.0.0.1 unless told otherwise; on any other address the agent refuses to start without a bearer
token (see exporter.cli), and then every route but /healthz and /readyz requires it. The web UI is mounted
by the `ui` hook of create_app, so this module does not know about templates.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bpf import vocab
from exporter import connections, docs, filters
from exporter.flows import Flow, Subscription
from exporter.jsonbody import FastJSONResponse, RowCache, rows_response
from exporter.store import CursorError, FlowSource, Page, SourceError

KEEPALIVE_S = 15.0
#: with `stats=1` a stream says the store's counts this often: a relay's copy of the store follows them
#: and takes their silence for a lost agent
STATS_S = 1.0
STREAM_BATCH = 512  # flows per SSE write at most
DEFAULT_LIMIT = 100
HISTORY_PAGE_MAX = 10_000  # flows per answer at most from the history
#: how a request is answered, not which flows match: the page, and `view` (flows, or connections)
PAGING_PARAMS = ("limit", "last", "cursor", "view", "stats")
VIEWS = ("flows", "connections")
#: parameters that are not filter criteria
REQUEST_PARAMS = (*PAGING_PARAMS, *filters.TIME_PARAMS)


class LiveFlows(FlowSource, Protocol):
    """The store the API reads recent flows from and streams live ones (exporter.flows.FlowStore)."""

    capacity: int

    def get(self, key: Any) -> Flow | None:
        """The latest record of one flow (a connection's other half)."""
        ...

    def subscribe(self, q: Any = None, loop: asyncio.AbstractEventLoop | None = None) -> Subscription: ...

    def unsubscribe(self, sub: Subscription) -> None: ...

    def stats(self) -> dict[str, int]:
        """Figures added to /api/flows answers (stored, capacity, evicted)."""
        ...

    @property
    def covers_from_ns(self) -> int:
        """From this time on the store holds every flow's latest record."""
        ...


class AgentView(Protocol):
    """What the API reads: the agent, or a relay's view of several agents."""

    @property
    def store(self) -> LiveFlows: ...

    @property
    def history(self) -> FlowSource | None:
        """Flows older than `store` holds (exporter/history/), if kept."""
        ...

    def endpoints(self) -> list[dict[str, Any]]: ...

    def status(self) -> dict[str, Any]: ...

    def ready(self) -> tuple[bool, str]: ...


@dataclass(frozen=True)
class FlowRequest:
    """A request's filter and time window, checked."""

    query: filters.FlowQuery
    since_ns: int | None = None
    until_ns: int | None = None

    def __call__(self, flow: Flow) -> bool:
        """Live flows: the filter and the window."""
        if self.since_ns is not None and flow.time_ns < self.since_ns:
            return False
        if self.until_ns is not None and flow.time_ns > self.until_ns:
            return False
        return self.query.matches(flow)


def pick_source(view: AgentView, since_ns: int | None, cursor: str | None = None) -> tuple[str, FlowSource]:
    """Memory when the window starts inside what memory holds, or has no start (the newest flows: memory
    has them, live ones included), or nothing else is kept; else history. A cursor goes back to the
    source that handed it out (memory's start with `m`)."""
    history = getattr(view, "history", None)
    if history is None:
        return "memory", view.store
    if cursor:
        return ("memory", view.store) if cursor.startswith("m") else ("history", history)
    if since_ns is None or since_ns >= view.store.covers_from_ns:
        return "memory", view.store
    return "history", history


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _params(request: Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        out.setdefault(key, []).append(value)
    return out


def parse_request(params: Mapping[str, Sequence[str]]) -> FlowRequest:
    """Filter criteria, `filter=<json>`, since and until of a request; HTTP 400 with the reason."""
    try:
        since, until = filters.parse_range(params)
        return FlowRequest(filters.parse(params, ignore=REQUEST_PARAMS), since, until)
    except filters.FilterError as exc:
        raise HTTPException(400, str(exc)) from None


def parse_query(params: Mapping[str, Sequence[str]]) -> filters.FlowQuery:
    return parse_request(params).query


def _count(params: Mapping[str, Sequence[str]], name: str, default: int, maximum: int) -> int:
    raw = params.get(name)
    if not raw:
        return default
    value = raw[-1]
    if not (value.isascii() and value.isdigit()) or not 0 <= int(value) <= maximum:
        raise HTTPException(400, f"{name} {value!r}: expected a number from 0 to {maximum}")
    return int(value)


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    raw = params.get(name)
    return raw[-1] if raw else None


def query_page(source: FlowSource, req: FlowRequest, limit: int, cursor: str | None) -> Page:
    try:
        return source.query(req.query, req.since_ns, req.until_ns, limit, cursor)
    except CursorError as exc:
        raise HTTPException(400, str(exc)) from None
    except SourceError as exc:
        raise HTTPException(503, f"history: {exc}") from None


def _filter_parameters() -> list[dict[str, Any]]:
    """Filter criteria for the OpenAPI schema (read from the raw query, not declared one by one)."""
    out = []
    for name, crit in filters.CRITERIA.items():
        for key, prefix in (
            (name, "keep flows matching: "),
            (filters.DENY_PREFIX + name, "drop flows matching: "),
        ):
            out.append(
                {
                    "name": key,
                    "in": "query",
                    "required": False,
                    "description": prefix + crit.help + " (repeat or comma-separate for any of several)",
                    "schema": {"type": "array", "items": {"type": "string"}},
                    "style": "form",
                    "explode": True,
                }
            )
    out.append(
        {
            "name": filters.FILTER_PARAM,
            "in": "query",
            "required": False,
            "description": 'several groups as JSON: {"allow": [{criterion: [values]}, ...], "deny": [...]}'
            " (instead of the criteria above)",
            "schema": {"type": "string"},
        }
    )
    for name, what in (("since", "at or after"), ("until", "at or before")):
        out.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": f"flows seen {what}: RFC 3339, unix seconds, or a duration ago (5m)",
                "schema": {"type": "string"},
            }
        )
    return out


def sse_event(flow: Flow) -> str:
    return f"event: flow\ndata: {json.dumps(flow.to_dict(), separators=(',', ':'))}\n\n"


def view_of(params: Mapping[str, Sequence[str]]) -> str:
    """`view=flows` (each half of a connection, the default) or `view=connections`; HTTP 400 otherwise."""
    view = _one(params, "view") or "flows"
    if view not in VIEWS:
        raise HTTPException(400, f"view {view!r}: expected {' or '.join(VIEWS)}")
    return view


def connection_page(
    page: Page, req: FlowRequest, lookup: Callable[[Any], Flow | None] | None, later_pages: bool
) -> list[connections.Connection]:
    """A page of flows as connections (newest first), each completed with its other half from `lookup`
    (the memory store). On a page after the first, a connection already shown with its newer half, which
    matched and so was on an earlier page, is left out."""
    conns = connections.fold(page.flows)
    if lookup is not None:
        connections.complete(conns, lookup)
    if later_pages and page.flows:
        newest = page.flows[0].time_ns
        conns = [c for c in conns if not any(f.time_ns > newest and req(f) for f in c.halves)]
    return conns


def connection_event(flow: Flow, lookup: Callable[[Any], Flow | None]) -> str:
    """The connection `flow` is a half of, as it stands now (`id` names it: a client replaces its row)."""
    (conn,) = connections.fold([flow])
    connections.complete([conn], lookup)
    return f"event: connection\ndata: {json.dumps(conn.to_dict(), separators=(',', ':'))}\n\n"


def token_check(token: str | None) -> Callable[[Request], None]:
    """The bearer-token dependency every protected route uses (the API's and the UI's alike)."""

    def require_token(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "bearer token required", headers={"WWW-Authenticate": "Bearer"})

    return require_token


def create_app(
    view: AgentView,
    token: str | None = None,
    registry: CollectorRegistry | None = None,
    ui: Callable[[FastAPI], None] | None = None,
    policy: Callable[[], Any] | None = None,
) -> FastAPI:
    app = FastAPI(
        title="Lumen agent",
        description="Flows, endpoints and metrics of one Lumen node.",
        version="0.1.0",
        docs_url=None,  # exporter.docs serves /docs with local assets; ReDoc needs a CDN: off
        redoc_url=None,
    )
    docs.mount(app)
    app.state.view = view

    check_token = token_check(token)
    rows = RowCache()

    async def require_token(request: Request) -> None:
        # awaited in the loop: a sync dependency costs a worker-thread hop on every request
        check_token(request)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready, with the reason"}})
    def readyz() -> JSONResponse:
        """The datapath is loaded and the ring buffer is being consumed. `detail` names parts that are
        degraded without making the agent unready (the flow history)."""
        ok, reason = view.ready()
        body: dict[str, Any] = {"ready": ok, "reason": reason}
        detail = getattr(view, "ready_detail", None)
        if detail is not None:
            body["detail"] = detail()
        return JSONResponse(body, status_code=200 if ok else 503)

    api = APIRouter(prefix="/api", dependencies=[Depends(require_token)])
    common_params = {"parameters": _filter_parameters()}

    @api.get(
        "/flows",
        tags=["flows"],
        openapi_extra={
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "description": f"newest N matching flows (default {DEFAULT_LIMIT}, 0: all)",
                    "schema": {"type": "integer", "minimum": 0},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "description": "the `cursor` of the previous answer: the next older page",
                    "schema": {"type": "string"},
                },
                *common_params["parameters"],
            ]
        },
        responses={400: {"description": "a filter value that cannot be parsed"}},
    )
    def flows(request: Request) -> Response:
        """The newest matching flows of the window, oldest first, filtered (allow-list, and `not_*`
        deny-list). `cursor` in the answer fetches the next older page."""
        # to_dict gives plain JSON already: FastAPI's own encoding would walk every flow again; each
        # flow's bytes are kept for the next answer that holds it (the newest page is asked often)
        params = _params(request)
        req = parse_request(params)
        # a page of history may be longer than memory holds
        most = max(view.store.capacity, HISTORY_PAGE_MAX if getattr(view, "history", None) else 0)
        limit = _count(params, "limit", DEFAULT_LIMIT, most)
        cursor = _one(params, "cursor")
        name, source = pick_source(view, req.since_ns, cursor)
        if name == "history" and not limit:
            limit = HISTORY_PAGE_MAX  # "all" of a history is pages: follow `cursor`
        page = query_page(source, req, limit, cursor)
        if view_of(params) == "connections":
            conns = connection_page(page, req, getattr(source, "get", None), bool(cursor))
            return FastJSONResponse(
                {
                    "connections": [c.to_dict() for c in reversed(conns)],
                    **view.store.stats(),
                    "cursor": page.cursor,
                    "complete": page.complete,
                    "source": name,
                }
            )
        return rows_response(
            "flows",
            rows.encode(reversed(page.flows)),
            {**view.store.stats(), "cursor": page.cursor, "complete": page.complete, "source": name},
        )

    @api.get(
        "/flows/stream",
        tags=["flows"],
        openapi_extra={
            "parameters": [
                {
                    "name": "last",
                    "in": "query",
                    "description": "first send the newest N stored matching flows",
                    "schema": {"type": "integer", "minimum": 0},
                },
                {
                    "name": "stats",
                    "in": "query",
                    "description": "1: `stats` events (the store's counts): after the backlog, each second",
                    "schema": {"type": "integer", "enum": [0, 1]},
                },
                *common_params["parameters"],
            ]
        },
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "`flow` events; `lost` events; `stats` events",
            }
        },
    )
    async def stream(request: Request) -> StreamingResponse:
        """Live flows as server-sent events (`event: flow`); `event: lost` says how many this stream missed
        because it was read too slowly."""
        params = _params(request)
        req = parse_request(params)
        if "cursor" in params:
            raise HTTPException(400, "cursor: a stream has no pages; use last=N for a backlog")
        last = _count(params, "last", 0, view.store.capacity)
        store = view.store
        render: Callable[[Flow], str] = sse_event
        if view_of(params) == "connections":
            render = functools.partial(connection_event, lookup=store.get)
        stats = _one(params, "stats") == "1"
        sub = store.subscribe(req, asyncio.get_running_loop())
        backlog = list(reversed(query_page(store, req, last, None).flows)) if last else []

        def counts() -> str:
            return f"event: stats\ndata: {json.dumps(store.stats(), separators=(',', ':'))}\n\n"

        async def events() -> Any:
            reported_lost = 0
            try:
                yield ": lumen flows\n\n"
                for flow in backlog:
                    yield render(flow)
                if stats:  # after the backlog: a reader knows it has all of it
                    yield counts()
                said = time.monotonic()
                while True:
                    wait = (
                        min(KEEPALIVE_S, max(0.0, said + STATS_S - time.monotonic()))
                        if stats
                        else KEEPALIVE_S
                    )
                    try:
                        await asyncio.wait_for(sub.ready.wait(), wait)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        if stats:
                            said = time.monotonic()
                            yield counts()
                        else:
                            yield ": keepalive\n\n"
                        continue
                    batch = sub.take(STREAM_BATCH)
                    chunk = "".join(map(render, batch))
                    if stats and time.monotonic() - said >= STATS_S:
                        said = time.monotonic()
                        chunk += counts()  # after the batch: the counts include its flows
                    if sub.dropped != reported_lost:
                        reported_lost = sub.dropped
                        chunk = f"event: lost\ndata: {json.dumps({'dropped': reported_lost})}\n\n" + chunk
                    if chunk:
                        yield chunk  # one write per batch: per-write cost, not per-flow, bounds the rate
            finally:
                store.unsubscribe(sub)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @api.get("/endpoints", tags=["endpoints"])
    def endpoints() -> list[dict[str, Any]]:
        """Pods on this node (from the plugin's endpoint records) and whether Lumen observes them."""
        return view.endpoints()

    @api.get("/vocabulary", tags=["flows"])
    def vocabulary() -> dict[str, Any]:
        """The words flows are described with (directions, event types, verdicts, drop reasons, protocols,
        TCP flags), as the datapath defines them; the UI builds its choices from these."""
        return vocab.as_json()

    @api.get("/status", tags=["status"])
    def status() -> dict[str, Any]:
        """The agent, its maps' fill, lost events and each pod's attach state (`lumen status`)."""
        return view.status()

    if policy is not None:
        from exporter import policy_api

        api.include_router(policy_api.router(policy, view.store))
    app.include_router(api)

    if registry is not None:

        @app.get("/metrics", tags=["metrics"], dependencies=[Depends(require_token)], response_class=Response)
        def metrics() -> Response:
            """Prometheus exposition; read from the BPF maps at scrape time."""
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    if ui is not None:
        ui(app)
    else:

        @app.get("/", include_in_schema=False)
        def index() -> dict[str, Any]:
            return {
                "api": ["/api/flows", "/api/flows/stream", "/api/endpoints", "/api/status"],
                "docs": "/docs",
            }

    return app
