"""The relay's HTTP app: the agent's API routes and web UI, answered from every agent.

Same paths, parameters and JSON as exporter.api, so `lumen observe --server <relay>` and the browser work
unchanged; answers add `nodes`, `unreachable` and `errors` (lists answered as JSON arrays, such as
/api/endpoints, carry the unreachable nodes in the X-Lumen-Unreachable header instead). `cursor` pages
/api/flows back in time across agents. The bearer-token rules are the agent's (exporter.api.token_check).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bpf import vocab
from exporter import connections, docs, filters
from exporter.api import DEFAULT_LIMIT, PAGING_PARAMS, connection_event, parse_request, token_check, view_of
from exporter.flows import Flow
from exporter.jsonbody import FastJSONResponse
from exporter.policy_api import MAX_BODY
from exporter.relay import merge
from exporter.relay.policy import Refused
from exporter.relay.service import HISTORY_CURSOR, Relay
from exporter.relay.wire import flow_from_dict, iso_us, time_us
from exporter.store import CursorError

log = logging.getLogger("lumen.relay")

MAX_LIMIT = 1_000_000
UNREACHABLE_HEADER = "X-Lumen-Unreachable"
RELAY_PARAMS = ("cursor",)


def _params(request: Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        out.setdefault(key, []).append(value)
    return out


def _count(params: Mapping[str, Sequence[str]], name: str, default: int) -> int:
    raw = params.get(name)
    if not raw:
        return default
    value = raw[-1]
    if not value.isdigit() or int(value) > MAX_LIMIT:
        raise HTTPException(400, f"{name} {value!r}: expected a number from 0 to {MAX_LIMIT}")
    return int(value)


def _filter(params: Mapping[str, Sequence[str]]) -> tuple[list[tuple[str, str]], str | None]:
    """The client's filter, checked here (a bad one is the client's 400, not every agent's), as the
    parameters to forward. `since` and `until` are made absolute (`5m` means the same instant on every
    node), and `until` is returned apart, so the relay can tighten it with a cursor."""
    criteria = {k: list(v) for k, v in params.items() if k not in PAGING_PARAMS and k not in RELAY_PARAMS}
    parse_request(criteria)
    times: dict[str, str] = {}
    for name in ("since", "until"):
        if name in criteria:
            times[name] = _absolute(criteria.pop(name)[-1])
    forward = [(k, v) for k, values in criteria.items() for v in values]
    if "since" in times:
        forward.append(("since", times["since"]))
    return forward, times.get("until")


def _absolute(value: str) -> str:
    """A time as RFC 3339 in microseconds: a timestamp as given (exactly: parse_time goes through a
    float, which at today's epoch is off by up to 256 ns), a duration or unix seconds resolved now."""
    if "T" in value:
        try:
            return iso_us(time_us(value))
        except ValueError:
            pass  # parse_time says what is wrong with it
    try:
        return iso_us(filters.parse_time(value) // 1000)
    except filters.FilterError as exc:
        raise HTTPException(400, str(exc)) from None


FLOW_EVENT = "event: flow\ndata: "
SEEN_MAX = 16384  # halves one viewer's connection stream remembers, to complete the next event's other half


async def as_connections(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """The relay's flow events as connection events (`view=connections`): each flow becomes the connection
    it is a half of, completed with the other half if this stream has seen it."""
    seen: OrderedDict[Any, Flow] = OrderedDict()
    async for chunk in events:
        out = []
        for block in chunk.split("\n\n"):
            if not block:
                continue
            if not block.startswith(FLOW_EVENT):
                out.append(block + "\n\n")
                continue
            flow = flow_from_dict(json.loads(block[len(FLOW_EVENT) :]))
            seen[flow.key] = flow
            seen.move_to_end(flow.key)
            if len(seen) > SEEN_MAX:
                seen.popitem(last=False)
            out.append(connection_event(flow, seen.get))
        yield "".join(out)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit`: not read whole first."""
    out = bytearray()
    async for chunk in request.stream():
        out += chunk
        if len(out) > limit:
            raise HTTPException(413, f"manifests larger than {limit} bytes")
    return bytes(out)


def _unreachable_headers(missing: dict[str, Any]) -> dict[str, str]:
    return {UNREACHABLE_HEADER: ",".join(missing["unreachable"])} if missing["unreachable"] else {}


def create_app(
    relay: Relay,
    token: str | None = None,
    ui: Callable[[FastAPI], None] | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if relay.writer is not None:
            relay.writer.start()
        if relay.mirrors is not None:  # copies ready before the first page is asked
            try:
                relay.mirrors.start(await relay.fanout.targets())
            except Exception:  # noqa: BLE001 - discovery down: the first page starts them
                log.warning("no agents found yet for the mirrors", exc_info=True)
        yield
        if relay.mirrors is not None:
            await relay.mirrors.aclose()
        if relay.writer is not None:
            await relay.writer.aclose()
        await relay.fanout.aclose()

    app = FastAPI(
        title="Lumen relay",
        description="Flows, endpoints and status of every Lumen node, through one API.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # exporter.docs serves /docs with local assets; ReDoc needs a CDN: off
        redoc_url=None,
    )
    docs.mount(app)
    app.state.relay = relay
    check_token = token_check(token)

    async def require_token(request: Request) -> None:
        # the agent's check, awaited in the loop: a sync dependency would cost a thread hop per request
        check_token(request)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "no agent answers"}})
    async def readyz() -> JSONResponse:
        """At least one agent answers."""
        ok, reason = await relay.ready()
        return JSONResponse({"ready": ok, "reason": reason}, status_code=200 if ok else 503)

    api = APIRouter(prefix="/api", dependencies=[Depends(require_token)])

    @api.get("/flows", tags=["flows"], responses={400: {"description": "a bad filter, limit or cursor"}})
    async def flows(request: Request) -> FastJSONResponse:
        """Recent flows of every node, oldest first: the newest `limit` across nodes, the two ends of a
        cross-node flow in one row. `cursor` (from an answer) continues with older flows."""
        params = _params(request)
        forward, until = _filter(params)
        limit = _count(params, "limit", DEFAULT_LIMIT)
        cursor = (params.get("cursor") or [""])[-1]
        try:
            after: merge.Position | str | None = None
            if cursor.startswith(HISTORY_CURSOR):
                after = cursor[len(HISTORY_CURSOR) :]
            elif cursor:
                after = merge.decode_cursor(cursor)
            answer = await relay.flows(forward, limit, after, until, parse_request(params))
        except (merge.CursorError, CursorError) as exc:
            raise HTTPException(400, str(exc)) from None
        if view_of(params) == "connections":
            # folded here, from every node's flows: a connection's halves may come from two nodes
            conns = connections.fold(flow_from_dict(f) for f in answer.pop("flows"))
            answer["connections"] = [c.to_dict() for c in reversed(conns)]
        # plain JSON already: FastAPI's encoder would walk every flow again
        return FastJSONResponse(answer)

    @api.get("/flows/stream", tags=["flows"], response_class=StreamingResponse)
    async def stream(request: Request) -> StreamingResponse:
        """Every node's live flows interleaved (`event: flow`); `event: nodes` says which nodes feed
        the stream and which cannot be reached; `event: lost` counts flows dropped for a slow reader."""
        params = _params(request)
        forward, until = _filter(params)
        if until is not None:
            forward.append(("until", until))
        last = _count(params, "last", 0)
        events = relay.stream(forward, last, request.is_disconnected, parse_request(params))
        if view_of(params) == "connections":
            events = as_connections(events)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @api.get("/endpoints", tags=["endpoints"])
    async def endpoints() -> JSONResponse:
        """Every node's pods, each with its `node`; unreachable nodes in the X-Lumen-Unreachable header."""
        eps, missing = await relay.endpoints()
        return JSONResponse(eps, headers=_unreachable_headers(missing.to_dict()))

    @api.get("/vocabulary", tags=["flows"])
    def vocabulary() -> dict[str, Any]:
        """The words flows are described with, as the agents' datapath defines them (the same code)."""
        return vocab.as_json()

    @api.get("/status", tags=["status"])
    async def status() -> dict[str, Any]:
        """The relay, each agent (up, or the error) and each reachable agent's own status."""
        return await relay.status()

    @api.get("/map", tags=["flows"])
    async def service_map(request: Request) -> JSONResponse:
        """The service map over every node's flows (same filters as /api/flows)."""
        params = _params(request)
        forward, until = _filter(params)
        if until is not None:
            forward.append(("until", until))
        return JSONResponse(await relay.service_map(forward, parse_request(params)))

    @app.exception_handler(Refused)
    async def refused(_request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    # The agent's policy routes (exporter.policy_api), every node asked: what each gave, who differs.
    @api.get("/policy", tags=["policy"], responses={503: {"description": "no node answered"}})
    async def policy_status() -> dict[str, Any]:
        """The policy set most nodes run (the agent's fields, from the `reference` node), whether every
        node runs it (`consistent`) and each node's generation, summary, refused change and difference."""
        return await relay.policy_status()

    @api.get(
        "/policy/explain",
        tags=["policy"],
        responses={
            400: {"description": "src or dst unknown to every node"},
            503: {"description": "no answer"},
        },
    )
    async def policy_explain(
        src: str, dst: str, protocol: str = "TCP", port: int | None = None
    ) -> dict[str, Any]:
        """Every node's verdict on src -> dst: the answer with the `nodes` that gave it, `agree` false
        (and each answer in `text` and `verdicts`) when nodes decide differently."""
        params = [("src", src), ("dst", dst), ("protocol", protocol)]
        if port is not None:
            params.append(("port", str(port)))
        return await relay.policy_explain(params)

    @api.post(
        "/policy/whatif",
        tags=["policy"],
        responses={400: {"description": "manifests refused"}, 413: {"description": "body over 4 MiB"}},
    )
    async def policy_whatif(request: Request) -> dict[str, Any]:
        """The NetworkPolicies in the body (YAML) replayed against every node's stored flows; applies
        nothing. `flows_checked` summed, each change with the `nodes` it was seen on."""
        body = await _body(request, MAX_BODY)
        return await relay.policy_whatif(body)

    app.include_router(api)

    @app.get("/metrics", tags=["metrics"], dependencies=[Depends(require_token)], response_class=Response)
    def metrics() -> Response:
        """The relay's own health: agents up, fan-out latency, agent errors."""
        return Response(generate_latest(relay.fanout.registry), media_type=CONTENT_TYPE_LATEST)

    if ui is not None:
        ui(app)
    return app
