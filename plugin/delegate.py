"""Delegated IPAM: exec another CNI plugin from CNI_PATH, as the reference bridge does."""

from __future__ import annotations

import os
import subprocess

from plugin import jsonio
from plugin.errors import DECODE_FAILURE, INVALID_CONFIG, IO_FAILURE, CNIError

TYPE_CHECKING = False  # typing costs ~3 ms of start-up; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any


def find_plugin(name: str, path: tuple[str, ...]) -> str:
    for directory in path:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(INVALID_CONFIG, f"failed to find plugin {name!r}", f"searched CNI_PATH {':'.join(path)}")


def exec_plugin(
    name: str, command: str, netconf: dict[str, Any], environ: dict[str, str], path: tuple[str, ...]
) -> dict[str, Any] | None:
    """Run `name` with CNI_COMMAND=`command`; its error JSON becomes our CNIError, code preserved."""
    binary = find_plugin(name, path)
    env = dict(environ, CNI_COMMAND=command)
    try:
        proc = subprocess.run(
            [binary], input=jsonio.dumps(netconf).encode(), env=env, capture_output=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CNIError(IO_FAILURE, f"failed to run IPAM plugin {name!r}", str(e)) from None
    out = proc.stdout.strip()
    parsed: dict[str, Any] | None = None
    if out:
        try:
            parsed = jsonio.loads(out)
        except ValueError:
            raise CNIError(
                DECODE_FAILURE, f"IPAM plugin {name!r} wrote invalid JSON", out[:200].decode(errors="replace")
            ) from None
    if proc.returncode != 0:
        code = parsed.get("code") if isinstance(parsed, dict) else None
        if type(code) is int and 0 < code < 2**31:
            raise CNIError(code, str(parsed.get("msg", "")), str(parsed.get("details", "")))  # type: ignore[union-attr]
        raise CNIError(
            IO_FAILURE,
            f"IPAM plugin {name!r} failed (exit {proc.returncode})",
            proc.stderr[-500:].decode(errors="replace"),
        )
    if parsed is not None and not isinstance(parsed, dict):
        raise CNIError(DECODE_FAILURE, f"IPAM plugin {name!r} wrote JSON that is not an object")
    return parsed
