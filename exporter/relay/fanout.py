"""The relay's HTTP side towards the agents: one request to every agent at once, live SSE streams, and
what each agent's answers say about its health (kept per agent and exported as metrics).

An agent is up after an answer and down after a connection error, a timeout or an error status; the
reason is kept so the relay can name it next to the node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from exporter import jsonbody
from exporter.relay import http
from exporter.relay.discovery import Discovery, Target

log = logging.getLogger("lumen.relay")

_T = TypeVar("_T")

DEFAULT_TIMEOUT_S = 5.0
STREAM_SILENCE_S = 45.0
FANOUT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Result:
    target: Target
    data: Any = None
    error: str | None = None  # None: the agent answered 200 with JSON
    status: int = 0
    headers: dict[str, str] | None = None
    detail: str = ""  # an error status: the agent's own reason (FastAPI's `detail`), without "HTTP nnn"


@dataclass
class AgentHealth:
    up: bool | None = None  # None: not asked yet
    error: str = ""
    last_ok: float = 0.0  # wall clock of the last answer


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge(
            "lumen_relay_agent_up",
            "1 if the agent answered the relay's last request",
            ["node"],
            registry=registry,
        )
        self.agents = Gauge("lumen_relay_agents", "agents the relay knows of", registry=registry)
        self.fanout = Histogram(
            "lumen_relay_fanout_seconds",
            "time to ask every agent and hear from all (or time out)",
            ["route"],
            buckets=FANOUT_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "lumen_relay_agent_errors", "failed requests to an agent", ["node", "reason"], registry=registry
        )
        self.streams = Gauge("lumen_relay_streams", "live streams the relay serves", registry=registry)
        self.hubs = Gauge(
            "lumen_relay_stream_hubs",
            "sets of agent streams open, one per distinct filter that viewers follow",
            registry=registry,
        )


def describe(exc: Exception) -> tuple[str, str]:
    """(metric label, text) for a failed request."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout", f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return "connect", f"cannot connect ({exc})"
    return "transport", f"{type(exc).__name__}: {exc}"


class Fanout:
    def __init__(
        self,
        discovery: Discovery,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        registry: CollectorRegistry | None = None,
        verify: bool | str = True,
    ) -> None:
        self.discovery = discovery
        self.timeout_s = timeout_s
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.health: dict[str, AgentHealth] = {}
        self.capacity: dict[str, int] = {}  # each agent's flow store size, from its answers
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._verify = verify
        self._client: httpx.AsyncClient | None = None
        self.http = http.Client(self._headers, verify)  # one-shot GETs: the fan-out

    @property
    def client(self) -> httpx.AsyncClient:
        """For the live streams."""
        if self._client is None:
            # No pool cap: a stream per agent per viewer must not queue behind another.
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            self._client = httpx.AsyncClient(
                headers=self._headers, timeout=self.timeout_s, limits=limits, verify=self._verify
            )
        return self._client

    async def aclose(self) -> None:
        await self.http.aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def targets(self) -> list[Target]:
        await self.discovery.refresh()
        found = self.discovery.targets()
        self.metrics.agents.set(len(found))
        names = {t.name for t in found}
        for gone in set(self.health) - names:  # a node that left is not "down"
            del self.health[gone]
            self.metrics.up.remove(gone)
        return found

    def mark(self, target: Target, error: str | None, reason: str = "") -> None:
        h = self.health.setdefault(target.name, AgentHealth())
        was = h.up
        if error is None:
            h.up, h.error, h.last_ok = True, "", time.time()
            if was is False:
                log.info("agent answers again", extra={"node": target.name, "url": target.url})
        else:
            h.up, h.error = False, error
            self.metrics.errors.labels(target.name, reason or "error").inc()
            if was is not False:  # once per outage, not per request
                log.warning(
                    "agent does not answer", extra={"node": target.name, "url": target.url, "error": error}
                )
        self.metrics.up.labels(target.name).set(1 if h.up else 0)

    async def get(
        self,
        target: Target,
        path: str,
        params: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
        refused: Collection[int] = (),
    ) -> Result:
        """`refused`: statuses by which the agent turns down this question (bad input, a feature off)
        rather than fails: with the agent's reason in the body it still counts as up."""
        pending = self.http.get(target.url + path, params, timeout or self.timeout_s)
        return await self._result(target, pending, refused)

    async def post(
        self,
        target: Target,
        path: str,
        body: bytes,
        content_type: str,
        timeout: float | None = None,
        refused: Collection[int] = (),
    ) -> Result:
        """A POST of a question that changes nothing on the agent (what-if); as `get` otherwise."""
        pending = self.http.post(target.url + path, body, content_type, timeout=timeout or self.timeout_s)
        return await self._result(target, pending, refused)

    async def _result(
        self, target: Target, pending: Awaitable[http.Response], refused: Collection[int]
    ) -> Result:
        try:
            resp = await pending
        except http.HTTPError as exc:
            self.mark(target, str(exc), exc.label)
            return Result(target, error=str(exc))
        if resp.status != 200:
            detail: Any = None
            try:
                detail = json.loads(resp.body).get("detail")
            except (ValueError, AttributeError):
                pass
            reason = resp.reason if detail is None else str(detail)
            text = f"HTTP {resp.status}: {reason}"
            if resp.status in refused and detail is not None:
                self.mark(target, None)
            else:
                # 4xx: the agent answered, but not this question (token, version skew): still not shown.
                self.mark(target, text, str(resp.status))
            return Result(target, error=text, status=resp.status, detail=reason)
        try:
            data = jsonbody.loads(resp.body)
        except ValueError:
            self.mark(target, "answer is not JSON", "format")
            return Result(target, error="answer is not JSON", status=200)
        self.mark(target, None)
        return Result(target, data=data, status=200, headers=resp.headers)

    async def gather(
        self,
        path: str,
        params: Sequence[tuple[str, str]] = (),
        targets: Sequence[Target] | None = None,
        route: str | None = None,
        refused: Collection[int] = (),
    ) -> list[Result]:
        """The same GET to every agent at once; one Result each, in the targets' order."""
        if targets is None:
            targets = await self.targets()
        return await self.timed(route or path, (self.get(t, path, params, refused=refused) for t in targets))

    async def timed(self, route: str, calls: Iterable[Awaitable[_T]]) -> list[_T]:
        """Requests to several agents at once, the time to hear from all of them observed for `route`."""
        started = time.perf_counter()
        results = await asyncio.gather(*calls)
        self.metrics.fanout.labels(route).observe(time.perf_counter() - started)
        return list(results)

    async def stream(
        self, target: Target, path: str, params: Sequence[tuple[str, str]]
    ) -> AsyncGenerator[tuple[str, str], None]:
        """("open", "") once connected, then the (event, data) pairs of one agent's SSE stream until it
        ends; raises httpx.HTTPError or
        StreamError (with the reason) when it cannot be read."""
        # A quiet agent still sends a keepalive every 15 s: three missed mean the connection is dead.
        timeout = httpx.Timeout(self.timeout_s, read=STREAM_SILENCE_S)
        async with self.client.stream("GET", target.url + path, params=list(params), timeout=timeout) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                try:
                    detail = json.loads(body).get("detail", resp.reason_phrase)
                except (ValueError, AttributeError):
                    detail = resp.reason_phrase
                raise StreamError(f"HTTP {resp.status_code}: {detail}", str(resp.status_code))
            self.mark(target, None)
            yield "open", ""
            parser = SseParser()
            async for line in resp.aiter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield event


class StreamError(Exception):
    def __init__(self, text: str, label: str) -> None:
        super().__init__(text)
        self.label = label


class SseParser:
    """Server-sent events one line at a time (the same reading as exporter.api.iter_sse)."""

    def __init__(self) -> None:
        self.event, self.data = "message", list[str]()

    def feed(self, line: str) -> tuple[str, str] | None:
        if not line:
            out = (self.event, "\n".join(self.data)) if self.data else None
            self.event, self.data = "message", []
            return out
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:"):
            self.data.append(line[5:].lstrip())
        return None
