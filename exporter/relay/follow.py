"""One task per agent the discovery knows of, for whatever reads every agent for a long time (a hub's live
streams, the history writer): a node that joins gets its task, a node that leaves, or whose URL changed,
has its task cancelled (a moved node gets a new one). The discovery is asked again every `refresh_s`;
that is cheap (Static answers from memory, Kube re-lists in the background once its list is stale).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from exporter.relay.discovery import Target
from exporter.relay.fanout import Fanout

log = logging.getLogger("lumen.relay")

Start = Callable[[Target], Coroutine[Any, Any, None]]
Changed = Callable[[Sequence[Target], Sequence[Target]], None]  # (gone, new); a moved target is in both


class Follow:
    def __init__(
        self, fanout: Fanout, start: Start, refresh_s: float, changed: Changed | None = None
    ) -> None:
        self.fanout = fanout
        self.refresh_s = refresh_s
        self.targets: dict[str, Target] = {}  # name -> the target its task reads
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._start = start
        self._changed = changed
        self._watch: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()  # cancelled, maybe still closing their streams

    def start(self, known: Sequence[Target] | None = None) -> None:
        """Follow the discovery from the running event loop. `known`: targets just looked up, given their
        tasks now (so their states are there before anyone asks) and not looked up again at once."""
        if self._watch is not None:
            return
        if known is not None:
            self.sync(known)
        self._watch = asyncio.create_task(self._run(wait_first=known is not None))

    def sync(self, targets: Sequence[Target]) -> None:
        """Start a task for each new target; cancel the tasks of targets gone or moved."""
        wanted = {t.name: t for t in targets}
        gone = [t for name, t in self.targets.items() if wanted.get(name) != t]
        new = [t for name, t in wanted.items() if self.targets.get(name) != t]
        for t in gone:
            del self.targets[t.name]
            task = self.tasks.pop(t.name)
            task.cancel()
            self._stopping.add(task)  # so cancel() can still wait for it to close its stream
            task.add_done_callback(self._stopping.discard)
        for t in new:
            self.targets[t.name] = t
            self.tasks[t.name] = asyncio.create_task(self._start(t))
        if (gone or new) and self._changed is not None:
            self._changed(gone, new)

    def follows(self, target: Target) -> bool:
        """False once the target left or moved: its task was cancelled (a task that sees this after
        its stream failed returns, should the cancel have been lost in closing the stream)."""
        return self.targets.get(target.name) == target

    def cancel(self) -> list[asyncio.Task[None]]:
        """Stop following and cancel every task; returns what to wait for (those cancelled earlier that
        have not finished too)."""
        tasks = [t for t in (self._watch, *self.tasks.values(), *self._stopping) if t is not None]
        for t in tasks:
            t.cancel()
        self._watch = None
        self.targets.clear()
        self.tasks.clear()
        return tasks

    async def _run(self, wait_first: bool) -> None:
        if wait_first:
            await asyncio.sleep(self.refresh_s)
        while True:
            try:
                targets = await self.fanout.targets()
            except Exception as exc:  # noqa: BLE001 - discovery failed: keep the tasks, ask again
                log.warning("agent discovery failed; keeping the agents known", extra={"error": str(exc)})
            else:
                self.sync(targets)
            await asyncio.sleep(self.refresh_s)
