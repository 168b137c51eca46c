"""Plugin logging: every line to the log file, warnings and errors also to stderr; stdout is the result.

The stdlib `logging` package would cost start-up time on every pod for two sinks and one format.
"""

from __future__ import annotations

import os
import sys
import time

_state: dict[str, str] = {"file": "", "prefix": ""}


def configure(log_file: str, command: str, container_id: str) -> None:
    _state["file"] = log_file
    _state["prefix"] = f"pid={os.getpid()} cmd={command} container={container_id[:12] or '-'}"


def _emit(level: str, msg: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    line = f"{stamp}Z {level} {_state['prefix']} {msg}\n"
    if level in ("WARN", "ERROR"):
        sys.stderr.write(line)
    path = _state["file"]
    if not path:
        return
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            # A pod name from CNI_ARGS may hold undecodable bytes (surrogates): never fail on them.
            os.write(fd, line.encode("utf-8", "backslashreplace"))
        finally:
            os.close(fd)
    except OSError as e:
        sys.stderr.write(f"lumen: cannot write log file {path}: {e}\n")


def info(msg: str) -> None:
    _emit("INFO", msg)


def warn(msg: str) -> None:
    _emit("WARN", msg)


def error(msg: str) -> None:
    _emit("ERROR", msg)
