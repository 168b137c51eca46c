"""Which pods run this agent's programs, and attaching those that do not.

The plugin attaches the pinned programs at ADD, then writes the endpoint record "ready". A record written
after this agent pinned its programs names a pod running them; older records name pods that run a
previous agent's programs (whose ring buffer nobody reads) or none, and get (re-)attached.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from exporter.enrich import EndpointDirectory, LocalPod
from plugin import endpoint as records

log = logging.getLogger("lumen.attach")


class Attachments:
    def __init__(
        self, state_dir: str, directory: EndpointDirectory, attach_all: Callable[[str], list[int]]
    ) -> None:
        self.state_dir = state_dir
        self.directory = directory
        self.attach_all = attach_all  # attaches every ready record's veth; returns their ifindexes
        self.loaded_at = float("inf")  # when our programs were pinned
        self.attached: set[int] = set()
        self._plugin_attached: set[int] = set()

    def _attached_by_plugin(self, pod: LocalPod) -> bool:
        if not pod.observed:
            return False
        if pod.host_ifindex in self._plugin_attached:
            return True
        try:
            mtime = os.stat(records.record_path(self.state_dir, pod.container_id, pod.ifname)).st_mtime
        except FileNotFoundError:
            return False
        if mtime > self.loaded_at:
            self._plugin_attached.add(pod.host_ifindex)
            return True
        return False

    def is_attached(self, pod: LocalPod) -> bool:
        return pod.host_ifindex in self.attached or self._attached_by_plugin(pod)

    def sync(self) -> int:
        """Attach every ready pod not running our programs; returns how many are attached."""
        self.directory.refresh()
        ready = [p for p in self.directory.pods if p.state == "ready" and p.host_ifindex]
        if any(not self.is_attached(p) for p in ready):
            try:
                self.attached = set(self.attach_all(self.state_dir))
            except OSError as exc:
                log.warning("attaching endpoints failed", extra={"error": str(exc)})
        alive = {p.host_ifindex for p in ready}
        self.attached &= alive
        self._plugin_attached &= alive
        return self.count()

    def count(self) -> int:
        self.directory.refresh()
        return sum(1 for p in self.directory.pods if p.state == "ready" and self.is_attached(p))
