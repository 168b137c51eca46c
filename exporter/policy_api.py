"""The agent's policy routes: what is in force, explain one connection, what-if on proposed manifests.

GET  /api/policy                      generation, policies, compile summary, the last refused change
GET  /api/policy/explain?src=&dst=&protocol=&port=
POST /api/policy/whatif               body: YAML manifests (NetworkPolicies); nothing is applied
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter, HTTPException, Request

from bpf.vocab import CONNECTION_PROTOCOLS, PORTED_PROTOCOLS
from exporter.flows import Flow
from exporter.policy.engine import Engine, Verdict
from exporter.policy.errors import PolicyError
from exporter.policy.explain import FlowRecord, explain, whatif
from exporter.policy.manifests import Manifests, load_text
from exporter.store import FlowSource

MAX_BODY = 4 * 1024 * 1024


class PolicyView(Protocol):
    engine: Engine

    def status_dict(self) -> dict[str, Any]: ...


def verdict_name(v: Verdict) -> str:
    """The flow verdict the datapath gives this decision (outside audit mode)."""
    return "FORWARDED" if v.allowed else "DROPPED"


def verdict_dict(v: Verdict) -> dict[str, Any]:
    return {
        "connection": str(v.connection),
        "allowed": v.allowed,
        "verdict": verdict_name(v),
        "policies": list(v.policies),
        "denied_in": list(v.denied_in),
        "reason": v.reason,
    }


def flow_record(flow: Flow) -> FlowRecord:
    port = flow.destination.port if flow.protocol in PORTED_PROTOCOLS else None
    return FlowRecord(
        flow.protocol,
        port,
        flow.source.namespace or None,
        flow.source.pod or None,
        flow.source.ip,
        flow.destination.namespace or None,
        flow.destination.pod or None,
        flow.destination.ip,
    )


def router(view: Callable[[], PolicyView | None], store: FlowSource) -> APIRouter:
    api = APIRouter(tags=["policy"])

    def _view() -> PolicyView:
        v = view()
        if v is None:
            raise HTTPException(503, "policy enforcement is not running (datapath not loaded)")
        return v

    @api.get("/policy")
    def policy_status() -> dict[str, Any]:
        """Policies in force, the generation the datapath runs, and any refused manifest change."""
        return _view().status_dict()

    @api.get("/policy/explain")
    def policy_explain(src: str, dst: str, protocol: str = "TCP", port: int | None = None) -> dict[str, Any]:
        """Which policy and rule admit src -> dst (namespace/pod or IP) on protocol/port, or why not."""
        engine = _view().engine
        try:
            conn = engine.connection(src, dst, protocol.upper(), port)
        except (LookupError, ValueError) as e:
            raise HTTPException(400, str(e).strip("'\"")) from None
        return {**verdict_dict(engine.decide(conn)), "text": explain(engine, conn)}

    @api.post("/policy/whatif")
    async def policy_whatif(request: Request) -> dict[str, Any]:
        """Replay the stored flows against the NetworkPolicies in the body (YAML); applies nothing."""
        body = await request.body()
        if len(body) > MAX_BODY:
            raise HTTPException(413, f"manifests larger than {MAX_BODY} bytes")
        # parsing and replaying a full store take seconds of CPU: off the loop, or live streams stall
        return await asyncio.to_thread(replay, body, _view().engine)

    def replay(body: bytes, engine: Engine) -> dict[str, Any]:
        proposed = Manifests()
        try:
            load_text(body.decode("utf-8", "replace"), "request body", proposed)
        except PolicyError as e:
            raise HTTPException(400, str(e)) from None
        stored = store.query().flows
        records = [flow_record(f) for f in stored if not f.is_reply and f.protocol in CONNECTION_PROTOCOLS]
        unique = list(dict.fromkeys(records))
        try:
            changes = whatif(unique, engine.policies, proposed.policies, engine.cluster)
        except LookupError as e:
            raise HTTPException(400, str(e)) from None
        return {
            "flows_checked": len(unique),
            "proposed": [p.key for p in proposed.policies],
            "changes": [
                {
                    "connection": str(c.after.connection),
                    "before": verdict_name(c.before),
                    "after": verdict_name(c.after),
                    "reason": c.after.reason,
                }
                for c in changes
            ],
        }

    return api
