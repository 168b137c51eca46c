"""Agents and relays on loopback for the relay tests: the agent's real API app over a real FlowStore that
the test fills (the flow source is faked; HTTP, filters, merge and UI are real), served by uvicorn in a
thread on a free 127.0.0.1 port. An agent given a manifest directory also serves the policy routes from
the agent's real Enforcer over it (the datapath faked)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from exporter import status, ui
from exporter.api import create_app
from exporter.enforcer import Enforcer
from exporter.enrich import EndpointDirectory
from exporter.flows import FlowStore
from exporter.relay.app import create_app as create_relay_app
from exporter.relay.discovery import Static, Target
from exporter.relay.fanout import Fanout
from exporter.relay.mirror import Mirrors
from exporter.relay.service import Relay
from tests.unit.exporter_fixtures import View
from tests.unit.test_enforcer import FakeDatapath


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {cond}")
        time.sleep(interval)


class Served:
    """An ASGI app under uvicorn in a daemon thread."""

    def __init__(self, app: FastAPI, port: int | None = None) -> None:
        self.port = port or free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Served:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=10)
        return self

    def stop(self) -> None:
        # Open SSE streams would hold a graceful shutdown; nothing is left to flush.
        self.server.should_exit = True
        self.server.force_exit = True
        self.thread.join(timeout=10)


class FlowQueries:
    """ASGI middleware keeping the parameters of each /api/flows request (plain ASGI: streams untouched)."""

    def __init__(self, app: ASGIApp, seen: list[dict[str, str]]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/api/flows":
            self.seen.append(dict(parse_qsl(scope["query_string"].decode())))
        await self.app(scope, receive, send)


class Policy:
    """exporter.policy_api.PolicyView as the agent has it: the Enforcer over a manifest directory (the
    node's --policy-dir), applying to a fake datapath. `sync()` after changing the files, as the agent's
    housekeeping does."""

    def __init__(self, manifests: Path, state: Path, audit: bool = False) -> None:
        self.dirs = [str(manifests)]
        self.dp = FakeDatapath()
        self.enforcer = Enforcer(
            str(state),
            self.dirs,
            self.dp,
            EndpointDirectory(str(state)),
            audit=audit,
            host_addresses=list,  # the node has no addresses of its own here
        )
        self.sync()

    def sync(self) -> None:
        self.enforcer.sync()

    @property
    def engine(self) -> Any:
        return self.enforcer.engine

    def status_dict(self) -> dict[str, Any]:
        config = SimpleNamespace(policy_gen=self.enforcer.status.generation, audit=self.enforcer.audit)
        return status.policy_status(self.enforcer, config, len(self.dp.applied), self.dirs)


class Agent(View):
    """A node: the agent's API over a FlowStore, named like the agent's --node. Its policy routes answer
    from `policy`, or without one 503 (as an agent whose datapath is not loaded)."""

    def __init__(
        self, name: str, capacity: int = 10000, token: str | None = None, policy: Policy | None = None
    ) -> None:
        super().__init__()
        self.store = FlowStore(capacity)  # (an empty store is falsy: View's default would replace it)
        self.name = name
        self.policy = policy
        self.flow_queries: list[dict[str, str]] = []  # the parameters of each /api/flows it was asked
        app = create_app(self, token=token, ui=ui.hook(token), policy=lambda: self.policy)
        app.add_middleware(FlowQueries, seen=self.flow_queries)
        self.served = Served(app)

    @property
    def url(self) -> str:
        return self.served.url

    def status(self) -> dict[str, Any]:
        store = {"flows": len(self.store), "capacity": self.store.capacity, "evicted": self.store.evicted}
        return {**super().status(), "node": self.name, "flow_store": store, "endpoints": self.endpoints()}

    def endpoints(self) -> list[dict[str, Any]]:
        return [
            {"namespace": "default", "pod": f"pod-{self.name}", "ips": [], "attached": True, "state": "ready"}
        ]


@contextmanager
def agents(
    names: Sequence[str],
    token: str | None = None,
    capacity: int = 10000,
    policies: dict[str, Policy] | None = None,
) -> Iterator[list[Agent]]:
    """Agents served on loopback; `policies`: a node's policy view by name (the others answer 503 there)."""
    with ExitStack() as stack:
        out = []
        for name in names:
            a = Agent(name, capacity, token, (policies or {}).get(name))
            a.served.start()
            stack.callback(a.served.stop)
            out.append(a)
        yield out


def relay_app(
    targets: Sequence[Target] | Static,
    token: str | None = None,
    agent_token: str | None = None,
    mirror: int = 0,
    **kw: Any,
) -> FastAPI:
    """The relay over these agents; given a Static, the test can change its agents while it runs.
    `mirror`: copies of each agent's newest N flows (`lumen relay --mirror N`; 0: every page asks)."""
    found = targets if isinstance(targets, Static) else Static(targets)
    fanout = Fanout(found, agent_token, timeout_s=2.0)
    relay = Relay(fanout, mirrors=Mirrors(fanout, mirror) if mirror else None, **kw)
    return create_relay_app(relay, token=token, ui=ui.hook(token, with_map=False))


@contextmanager
def relay(targets: Sequence[Target] | Static, **kw: Any) -> Iterator[Served]:
    served = Served(relay_app(targets, **kw)).start()
    try:
        yield served
    finally:
        served.stop()
