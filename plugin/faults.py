"""Fault injection for the rollback and crash tests: LUMEN_FAULT=<step>:error|kill.

The runtimes pass their environment through, so the variable must be set on purpose; unset, this is
one dictionary lookup per step.
"""

from __future__ import annotations

import os

from plugin.errors import INTERNAL, CNIError


def checkpoint(step: str) -> None:
    fault = os.environ.get("LUMEN_FAULT")
    if not fault:
        return
    where, _, action = fault.partition(":")
    if where != step:
        return
    if action == "kill":
        os.kill(os.getpid(), 9)  # SIGKILL; the signal module would import enum on every ADD
    raise CNIError(INTERNAL, f"injected fault at {step}")
