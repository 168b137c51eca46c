"""Numeric identities for label sets (as Cilium allocates them), kept across agent restarts.

<stateDir>/identities.json holds the allocations and, for the CNI plugin, the identity of every pod the
agent knows (by namespace/name) and of each namespace's unlabelled pods: the plugin writes it into the
endpoint map at ADD, so a pod's identity is in place before its first packet.
"""

from __future__ import annotations

import json
import os
import tempfile

from bpf import abi
from exporter.policy.compiler import LabelSet
from plugin.attach import IDENTITIES_FILE

FIRST_LABEL = int(abi.Identity.FIRST_LABEL)
LAST_LABEL = int(abi.Identity.FIRST_CIDR) - 1  # CIDR identities start above


class Identities:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, IDENTITIES_FILE)
        self._by_text: dict[str, int] = {}
        self._published: dict[str, object] | None = None
        try:
            with open(self.path) as f:
                data = json.load(f)
            self._by_text = {str(k): int(v) for k, v in data.get("allocations", {}).items()}
        except (OSError, ValueError, AttributeError):
            pass

    def identity(self, ls: LabelSet) -> int:
        text = ls.text()
        ident = self._by_text.get(text)
        if ident is None:
            ident = max(self._by_text.values(), default=FIRST_LABEL - 1) + 1
            if ident > LAST_LABEL:
                raise OverflowError("label identities exhausted")
            self._by_text[text] = ident
        return ident

    def publish(self, pods: dict[str, int], namespaces: dict[str, int]) -> bool:
        """Write the file when its content changes (atomically: the plugin may read it any time)."""
        data: dict[str, object] = {
            "allocations": dict(sorted(self._by_text.items())),
            "pods": dict(sorted(pods.items())),
            "namespaces": dict(sorted(namespaces.items())),
        }
        if data == self._published:
            return False
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".identities-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)
        self._published = data
        return True
