"""What the relay answers, independent of HTTP routing: each API route's body, built by asking every
agent (exporter.relay.fanout) and merging (exporter.relay.merge).

Every answer names the agents that did not answer (`unreachable`, with the reason in `errors`), so a
partial view is never mistaken for the whole cluster.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import Counter

from exporter import servicemap
from exporter.api import FlowRequest
from exporter.history.sink import HistoryCollector
from exporter.policy.errors import PolicyError
from exporter.policy.manifests import Manifests, load_text
from exporter.relay import merge, streams, walk
from exporter.relay import policy as policy_merge
from exporter.relay.discovery import Target
from exporter.relay.fanout import Fanout, Result
from exporter.relay.mirror import Mirrors
from exporter.relay.wire import flow_from_dict, time_us
from exporter.relay.writer import HistoryWriter
from exporter.store import FlowSource

MAX_ROUNDS = 12  # fetch rounds for one page: each moves every agent that may hold more past a microsecond
MAP_TTL_S = 2.0
ASK_SLACK = 1.5  # first asks: an agent's share of recent pages times this (3 agents evenly: 52 of 100)
SHARE_WEIGHT = 0.5  # how fast the shares follow where recent flows come from
# An agent answers a policy question it will not take with 400 (bad src/dst, manifests it refuses) or 503
# (policy enforcement not running): it is up, and says why.
POLICY_REFUSALS = (400, 503)
WHATIF_TIMEOUT_S = 50.0  # the agent replays every stored flow; `lumen policy whatif` waits 60 s


@dataclass
class Missing:
    """Agents that gave no answer, and why."""

    errors: dict[str, str]

    @classmethod
    def of(cls, results: Sequence[Result]) -> Missing:
        return cls({r.target.name: r.error for r in results if r.error is not None})

    def to_dict(self) -> dict[str, Any]:
        return {"unreachable": sorted(self.errors), "errors": dict(sorted(self.errors.items()))}


#: a relay cursor into the history store: this prefix and the store's own cursor
HISTORY_CURSOR = "h:"


class Relay:
    def __init__(
        self,
        fanout: Fanout,
        pair: bool = True,
        pair_wait_s: float = 0.25,
        history: FlowSource | None = None,
        writer: HistoryWriter | None = None,
        mirrors: Mirrors | None = None,
    ) -> None:
        self.fanout = fanout
        self.mirrors = mirrors  # copies of the agents' newest flows: the newest page without asking
        self.pair = pair
        self.pair_wait_s = pair_wait_s
        self.history = history
        self.writer = writer  # the relay writes the agents' flows to history (--history-write)
        if writer is not None:
            fanout.registry.register(HistoryCollector(writer.sink))
        self.started_at = time.time()
        self.hubs = streams.Hubs(fanout, lambda: self.pair_wait_s if self.pair else 0.0)
        self._share: dict[str, float] = {}  # each agent's part of recent pages, 0..1
        self._maps: dict[tuple[tuple[str, str], ...], tuple[float, dict[str, Any]]] = {}
        self.pages = Counter(
            "lumen_relay_flow_pages",
            "/api/flows pages answered, by where from (copies: the relay's mirrors of the agents)",
            ["source"],
            registry=fanout.registry,
        )

    # -- /api/flows --------------------------------------------------------------------------------

    async def flows(
        self,
        forward: Sequence[tuple[str, str]],
        limit: int,
        after: merge.Position | str | None = None,
        until: str | None = None,
        request: FlowRequest | None = None,
    ) -> dict[str, Any]:
        """The newest `limit` rows older than the cursor `after`, oldest first, as /api/flows answers.
        `forward` is the client's filter as query parameters, passed to every agent unchanged; `until`
        the client's upper time bound (absolute), tightened here by the cursor. With a history store,
        a time range that reaches back past what the agents hold is answered from it (`request` is
        the same filter and range as data); `after` is then the store's cursor."""
        if isinstance(after, str):
            if self.history is None or request is None:
                raise merge.CursorError("a history cursor, but this relay keeps no history")
            return await self._from_history(request, limit, after)
        answer = None
        if self.mirrors is not None and after is None and until is None and request is not None:
            answer = await self._from_copies(self.mirrors, request, limit)
        self.pages.labels("agents" if answer is None else "copies").inc()
        if answer is None:
            answer = await self._from_agents(forward, limit, after, until)
        if self.history is not None and request is not None and request.since_ns is not None:
            if not answer["complete"] or answer["unreachable"]:
                try:
                    return await self._from_history(request, limit, None)
                except Exception as exc:  # noqa: BLE001 - the agents' answer stands, with the reason
                    answer["history_error"] = f"{type(exc).__name__}: {exc}"
        return answer

    async def _from_history(self, request: FlowRequest, limit: int, cursor: str | None) -> dict[str, Any]:
        """One page from the history store (blocking client: in a thread), its records paired."""
        assert self.history is not None
        started = time.perf_counter()
        page = await asyncio.to_thread(
            self.history.query, request.query, request.since_ns, request.until_ns, limit, cursor
        )
        self.fanout.metrics.fanout.labels("history").observe(time.perf_counter() - started)
        by_node: dict[str, list[dict[str, Any]]] = {}
        for f in page.flows:
            d = f.to_dict()
            by_node.setdefault(d.get("node") or "history", []).append(d)
        answers = [merge.Answer(node, flows, truncated=False) for node, flows in by_node.items()]
        rows = merge.merge_page(answers, 0, None, self.pair).rows
        return {
            "flows": list(reversed(rows)),
            "cursor": HISTORY_CURSOR + page.cursor if page.cursor else None,
            "complete": page.complete,
            "source": "history",
            "nodes": sorted(by_node),
            "unreachable": [],
            "errors": {},
        }

    async def _from_copies(self, mirrors: Mirrors, request: FlowRequest, limit: int) -> dict[str, Any] | None:
        """The newest page from the relay's copies of the agents' stores, or None when they cannot give
        it exactly (a copy out of sync, a time window, fewer matching flows in the copies than the page
        needs): then the agents are asked."""
        if request.since_ns is not None or request.until_ns is not None:
            return None
        targets = await self.fanout.targets()
        copies = mirrors.ready(targets)
        if copies is None:
            return None
        q = request.query or None
        page = merge.merge_page([c.newest(q, limit) for c in copies], limit, None, self.pair, mirrors.pairs)
        if page.short:
            return None
        # complete: False, as the agents say for a window without a start
        return _page_answer(page, [c.stats for c in copies], False, [t.name for t in targets], Missing({}))

    async def _from_agents(
        self,
        forward: Sequence[tuple[str, str]],
        limit: int,
        after: merge.Position | None,
        until: str | None,
    ) -> dict[str, Any]:
        # Each ask sets its own time window inside the client's: `since` and `until` (the live stream's
        # backlog and the map pass it among the filter) are taken out of what is forwarded.
        since = next((v for k, v in forward if k == "since"), None)
        bounds = [v for k, v in forward if k == "until"] + ([until] if until else [])
        if after is not None:
            bounds.append(merge.until_for(after))
        until = min(bounds, key=_iso_key, default=None)
        base = [(k, v) for k, v in forward if k not in ("since", "until")]
        targets = {t.name: t for t in await self.fanout.targets()}
        walks = {name: walk.Walk(name, until, since) for name in targets}
        asks = {name: [w.first(self._first_ask(name, limit))] for name, w in walks.items()}
        results: dict[str, Result] = {}  # each agent's first answer (its counters), or why it has none
        page = merge.Page([], None, short=False)
        for round_ in range(MAX_ROUNDS):
            await self._read(targets, base, asks, walks, results)
            page = self._merge(walks, results, limit, after)
            if not page.short:
                break
            asks = self._next_asks(walks, results, page, limit, after, first=round_ == 0)
            if not asks:
                break
        self._learn(page, [name for name, r in results.items() if r.error is None])
        ok = [r.data for r in results.values() if r.error is None]
        # complete: False when an agent says the time window reaches back past what it holds
        complete = all(d.get("complete", True) for d in ok)
        return _page_answer(page, ok, complete, list(targets), Missing.of(list(results.values())))

    def _next_asks(
        self,
        walks: dict[str, walk.Walk],
        results: dict[str, Result],
        page: merge.Page,
        limit: int,
        after: merge.Position | None,
        first: bool,
    ) -> dict[str, list[walk.Ask]]:
        """The next round for a short page: agents whose unknown records start above where the page
        would end with what is held (the others cannot hold any of it). After the `first` answers, while
        an agent holding the page up has a tie, only the agents holding it up are asked: read whole, that
        microsecond (a sweep's) often fills the page by itself. Later rounds ask all at once, so a page
        costs few rounds however many agents have ties."""
        reach = merge.reach(self._answers(walks, results), limit, after, self.pair)
        more = {
            name: w.known_from
            for name, w in walks.items()
            if results[name].error is None
            and w.truncated
            and w.known_from is not None
            and (reach is None or w.known_from > reach)
        }
        top = max(more.values(), default=None)
        if first and any(walks[name].tie for name, known in more.items() if known == top):
            more = {name: known for name, known in more.items() if known == top}
        need = max(limit - len(page.rows), 1)
        return {name: walks[name].next(need) for name in more}

    async def _read(
        self,
        targets: dict[str, Target],
        base: Sequence[tuple[str, str]],
        asks: dict[str, list[walk.Ask]],
        walks: dict[str, walk.Walk],
        results: dict[str, Result],
    ) -> None:
        """One round: every agent's asks at once; the answers join each agent's walk. An agent that fails
        any ask is left out of the page, named with the reason."""
        sent = [(name, ask) for name, some in asks.items() for ask in some]
        got = await self.fanout.timed(
            "/api/flows", (self._flows_of(targets[name], base, ask) for name, ask in sent)
        )
        pieces: dict[str, list[walk.Piece]] = {}
        for (name, _), (ask, r) in zip(sent, got, strict=True):
            if r.error is not None:
                results[name] = r
            else:
                results.setdefault(name, r)
                pieces.setdefault(name, []).append((ask, r.data["flows"], r.data.get("source")))
        for name, some in pieces.items():
            if results[name].error is None:
                try:
                    walks[name].take(some)
                except merge.MalformedAnswer as exc:
                    self._left_out(results, exc)

    async def _flows_of(
        self, t: Target, base: Sequence[tuple[str, str]], ask: walk.Ask
    ) -> tuple[walk.Ask, Result]:
        """One ask of one agent, and the ask as it was answered."""
        if ask.limit:
            ask = replace(ask, limit=self._fit(t.name, ask.limit))
        r = await self.fanout.get(t, "/api/flows", [*base, *ask.params()])
        if r.status == 400 and ask.limit and "limit" in (r.error or ""):
            # asked for more than the agent holds: then everything it holds is the answer
            ask = replace(ask, limit=0)
            r = await self.fanout.get(t, "/api/flows", [*base, *ask.params()])
        if r.error is None and not (isinstance(r.data, dict) and isinstance(r.data.get("flows"), list)):
            self.fanout.mark(t, "not a flows answer", "format")
            return ask, Result(t, error="not a flows answer", status=r.status)
        if r.error is None and isinstance(r.data.get("capacity"), int):
            self.fanout.capacity[t.name] = r.data["capacity"]
        return ask, r

    def _merge(
        self,
        walks: dict[str, walk.Walk],
        results: dict[str, Result],
        limit: int,
        after: merge.Position | None,
    ) -> merge.Page:
        while True:
            try:
                return merge.merge_page(self._answers(walks, results), limit, after, self.pair)
            except merge.MalformedAnswer as exc:
                self._left_out(results, exc)

    def _left_out(self, results: dict[str, Result], exc: merge.MalformedAnswer) -> None:
        bad = results[exc.node]
        self.fanout.mark(bad.target, str(exc), "format")
        results[exc.node] = Result(bad.target, error=str(exc), status=bad.status)

    @staticmethod
    def _answers(walks: dict[str, walk.Walk], results: dict[str, Result]) -> list[merge.Answer]:
        return [w.answer() for name, w in walks.items() if name in results and results[name].error is None]

    def _first_ask(self, name: str, limit: int) -> int:
        """How many flows to ask an agent for first: its recent share of pages with room to spare, at
        most one more than the page (when that extra one is older than the page's oldest, nothing was
        cut inside the page's last microsecond). Too few only costs a second round for that agent:
        the merge never shows a flow before it knows nothing newer is missing."""
        if not limit:
            return 0
        share = self._share.get(name, 1.0)
        return self._fit(name, min(limit + 1, math.ceil(share * limit * ASK_SLACK) + 2))

    def _learn(self, page: merge.Page, answered: Sequence[str]) -> None:
        total = sum(page.taken.values())
        if total:
            for name in answered:
                part = page.taken.get(name, 0) / total
                old = self._share.get(name)
                self._share[name] = part if old is None else old + SHARE_WEIGHT * (part - old)

    def _fit(self, name: str, n: int) -> int:
        """n, or 0 (all it holds) when n reaches the agent's store size (it refuses a larger limit)."""
        capacity = self.fanout.capacity.get(name)
        return 0 if capacity is not None and n >= capacity else n

    # -- /api/flows/stream ---------------------------------------------------------------------------

    async def stream(
        self,
        forward: Sequence[tuple[str, str]],
        last: int,
        disconnected: Callable[[], Awaitable[bool]],
        request: FlowRequest | None = None,
    ) -> AsyncIterator[str]:
        """SSE text: a `nodes` event (which agents feed the stream, which do not and why) first and on
        every change, the newest `last` rows, then every agent's live flows interleaved as they come
        (through the hub all viewers of this filter share). `request`, the filter as data, lets the
        copies give the backlog."""
        targets = await self.fanout.targets()
        hub, viewer = self.hubs.join(targets, forward)
        self.fanout.metrics.streams.inc()
        try:
            yield ": lumen relay\n\n"
            backlog = await self.flows(forward, last, request=request) if last else None
            seen = {merge.record(r.get("node", ""), r).pos for r in backlog["flows"]} if backlog else set()
            try:  # the first word on the nodes once each agent's stream is open or has failed
                await asyncio.wait_for(hub.states.settled.wait(), self.fanout.timeout_s)
            except TimeoutError:
                pass
            said = hub.states.event()
            yield said
            if backlog is not None:
                yield "".join(streams.sse_row(row) for row in backlog["flows"])
            reported_lost = 0
            while True:
                try:
                    items = [await asyncio.wait_for(viewer.queue.get(), streams.KEEPALIVE_S)]
                    while len(items) < streams.BATCH and not viewer.queue.empty():
                        items.append(viewer.queue.get_nowait())
                except TimeoutError:
                    if await disconnected():
                        return
                    yield ": keepalive\n\n"
                    continue
                chunk = []
                for pos, text in items:
                    if pos is None:  # the nodes' states changed: say how they are now, if news to it
                        now = hub.states.event()
                        if now != said:
                            said = now
                            chunk.append(now)
                    elif pos not in seen:  # a row already sent with the backlog is not sent again
                        chunk.append(text)
                lost = hub.lost_for(viewer)
                if lost != reported_lost:
                    reported_lost = lost
                    chunk.insert(0, f"event: lost\ndata: {json.dumps({'dropped': lost})}\n\n")
                if chunk:
                    yield "".join(chunk)
        finally:
            self.fanout.metrics.streams.dec()
            await self.hubs.leave(hub, viewer)

    # -- /api/policy ---------------------------------------------------------------------------------

    async def policy_status(self) -> dict[str, Any]:
        """Every node's policy status: the set most nodes run (the agent's fields) and how each differs."""
        results = self._policy_answers(
            await self.fanout.gather("/api/policy", route="/api/policy", refused=POLICY_REFUSALS)
        )
        answers = _answered(results, {})
        return {**policy_merge.status(answers), **Missing.of(results).to_dict()}

    async def policy_explain(self, params: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """Every node's verdict on one connection, and whether they agree. A node that refuses it (does
        not know src or dst) disagrees; when all do, the question was bad: Refused 400."""
        results = self._policy_answers(
            await self.fanout.gather(
                "/api/policy/explain", params, route="/api/policy/explain", refused=POLICY_REFUSALS
            )
        )
        refusals = {r.target.name: r.detail for r in results if r.status == 400}
        answered = [r for r in results if r.status != 400]
        answers = _answered(answered, refusals)
        return {**policy_merge.explain(answers, refusals), **Missing.of(answered).to_dict()}

    async def policy_whatif(self, body: bytes) -> dict[str, Any]:
        """The proposed manifests replayed against every node's stored flows. Read here first: a body no
        agent would take is the client's 400 once, not every agent's."""
        try:  # in a thread: 4 MiB of YAML take about 2 s to read, the live streams must not wait
            await asyncio.to_thread(load_text, body.decode("utf-8", "replace"), "request body", Manifests())
        except PolicyError as exc:
            raise policy_merge.Refused(400, str(exc)) from None
        targets = await self.fanout.targets()
        posts = (
            self.fanout.post(
                t, "/api/policy/whatif", body, "application/yaml", WHATIF_TIMEOUT_S, POLICY_REFUSALS
            )
            for t in targets
        )
        results = self._policy_answers(await self.fanout.timed("/api/policy/whatif", posts))
        refusals = {r.target.name: r.detail for r in results if r.status == 400}
        answers = _answered(results, refusals)
        # a node that refused while others answered: its flows are not in the answer, so it is named
        return {**policy_merge.whatif(answers), **Missing.of(results).to_dict()}

    def _policy_answers(self, results: Sequence[Result]) -> list[Result]:
        """The results, an answer that is not a JSON object turned into that node's error."""
        out = []
        for r in results:
            if r.error is None and not isinstance(r.data, dict):
                self.fanout.mark(r.target, "not a policy answer", "format")
                r = Result(r.target, error="not a policy answer", status=r.status)
            out.append(r)
        return out

    # -- the other routes ----------------------------------------------------------------------------

    async def endpoints(self) -> tuple[list[dict[str, Any]], Missing]:
        results = await self.fanout.gather("/api/endpoints", route="/api/endpoints")
        out: list[dict[str, Any]] = []
        for r in results:
            if r.error is None:
                out.extend({**ep, "node": r.target.name} for ep in r.data)
        return out, Missing.of(results)

    async def status(self) -> dict[str, Any]:
        results = await self.fanout.gather("/api/status", route="/api/status")
        missing = Missing.of(results)
        return {
            "relay": True,
            "version": "0.1.0",
            "uptime_s": round(time.time() - self.started_at, 1),
            "ready": any(r.error is None for r in results),
            "agents": [
                {"node": r.target.name, "url": r.target.url, "up": r.error is None, "error": r.error}
                for r in results
            ],
            "nodes": {r.target.name: r.data for r in results if r.error is None},
            "history": await self._history_status(),
            **missing.to_dict(),
        }

    async def _history_status(self) -> dict[str, Any]:
        """The history backend as `lumen status` shows it: the writer's state (it asks the store for its
        size, in a thread), else the store read from, else off."""
        if self.writer is not None:
            return await asyncio.to_thread(self.writer.sink.status)
        if self.history is not None:
            h = self.history
            return {"backend": getattr(h, "backend", "history"), "url": getattr(h, "url", "")}
        return {"backend": "off"}

    async def service_map(
        self, forward: Sequence[tuple[str, str]], request: FlowRequest | None = None
    ) -> dict[str, Any]:
        """The agent's service map over every node's flows, cross-node flows counted once (paired).
        Built from every stored flow, so one answer serves every viewer asking within MAP_TTL_S (the
        UI's map and endpoints pages poll it); from the copies when they hold every agent's whole store
        (`request`: the filter as data)."""
        key = tuple(forward)
        cached = self._maps.get(key)
        if cached is not None and time.monotonic() - cached[0] < MAP_TTL_S:
            return cached[1]
        page = await self.flows(forward, 0, request=request)
        out = servicemap.build(flow_from_dict(f) for f in page["flows"])
        out["stored"] = page["stored"]
        out["unreachable"], out["errors"] = page["unreachable"], page["errors"]
        self._maps = {k: v for k, v in self._maps.items() if time.monotonic() - v[0] < MAP_TTL_S}
        self._maps[key] = (time.monotonic(), out)
        return out

    async def ready(self) -> tuple[bool, str]:
        targets = await self.fanout.targets()
        if not targets:
            return False, "no agents found"
        results = await self.fanout.gather("/healthz", targets=targets, route="/healthz")
        up = sum(r.error is None for r in results)
        if not up:
            return False, "no agent answers"
        return True, f"{up}/{len(results)} agents answer"


def _page_answer(
    page: merge.Page, counts: Sequence[dict[str, Any]], complete: bool, nodes: Sequence[str], missing: Missing
) -> dict[str, Any]:
    """/api/flows's answer: the page oldest first, its cursor, the agents' store counts summed."""
    return {
        "flows": list(reversed(page.rows)),
        "cursor": merge.encode_cursor(page.cursor) if page.cursor is not None else None,
        "stored": sum(d.get("stored", 0) for d in counts),
        "capacity": sum(d.get("capacity", 0) for d in counts),
        "evicted": sum(d.get("evicted", 0) for d in counts),
        "complete": complete,
        "source": "agents",
        "nodes": sorted(nodes),
        **missing.to_dict(),
    }


def _answered(results: Sequence[Result], refusals: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each answering node's answer; Refused when there is none: 400 if nodes refused the question
    (the agents' reason), else 503 naming why each node gave no answer."""
    answers = {r.target.name: r.data for r in results if r.error is None}
    if answers:
        return answers
    if refusals:
        raise policy_merge.Refused(400, policy_merge.refusal(refusals))
    errors = Missing.of(results).errors
    why = "; ".join(f"{n}: {e}" for n, e in sorted(errors.items())) if errors else "no agents found"
    raise policy_merge.Refused(503, f"no agent answered: {why}")


def _iso_key(iso: str) -> int:
    return time_us(iso)
