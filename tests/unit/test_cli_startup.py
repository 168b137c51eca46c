"""`lumen observe` starts light: its --help imports none of the server's libraries and few modules beyond
the interpreter's own (counted, not timed: timing on a shared machine proves nothing)."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVER_SIDE = ("fastapi", "starlette", "uvicorn", "pydantic", "prometheus_client", "asyncio", "anyio",
               "opentelemetry", "bcc", "yaml", "ctypes", "urllib.request", "http.client", "ssl")  # fmt: skip


def imported(*args: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env, timeout=60
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return {line.split("|")[-1].strip() for line in lines}


def test_observe_help_imports_nothing_of_the_server_and_few_modules():
    base = imported("-c", "pass")
    observe = imported("-m", "exporter.cli", "observe", "--help")
    assert "exporter.filters" in observe  # the command ran (as __main__, so not listed itself)
    heavy = {m for m in observe if m.split(".")[0] in SERVER_SIDE or m in SERVER_SIDE}
    assert not heavy, heavy
    # argparse, json, dataclasses (and what they pull in), the filters and the vocabulary: about 35
    assert len(observe - base) <= 45, sorted(observe - base)
