"""Delegated IPAM: exec another CNI plugin from CNI_PATH, as the reference bridge does."""

from __future__ import annotations

import os
import time

from plugin import jsonio
from plugin.errors import DECODE_FAILURE, INVALID_CONFIG, IO_FAILURE, CNIError

TYPE_CHECKING = False  # typing costs ~3 ms of start-up; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any


TIMEOUT_S = 60


def run(binary: str, stdin: bytes, env: dict[str, str], timeout: float) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr) of `binary` fed `stdin`, on os.posix_spawn and poll(2).

    Not `subprocess`: it imports `signal`, `selectors`, `threading` and `re` (enum among them), about
    4 ms of start-up on this machine that every ADD with delegated IPAM would pay. A negative exit code is
    the signal that ended the child; TimeoutError (an OSError) when it outlives `timeout`.
    """
    import select

    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = os.posix_spawn(
            binary,
            [binary],
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, in_r, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
            ],
        )
    except BaseException:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    poller.register(err_r, select.POLLIN)
    pending = memoryview(stdin)
    if pending:
        poller.register(in_w, select.POLLOUT)
    else:
        os.close(in_w)
    deadline = time.monotonic() + timeout
    try:
        open_fds = {out_r, err_r} | ({in_w} if pending else set())
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, 9)  # SIGKILL: `signal` would import enum
                os.waitpid(pid, 0)
                raise TimeoutError(f"{binary} did not finish within {timeout:.0f} s")
            for fd, _events in poller.poll(int(left * 1000) + 1):
                if fd == in_w:
                    try:
                        pending = pending[os.write(in_w, pending[:65536]) :]
                    except BrokenPipeError:
                        pending = pending[:0]  # the child stopped reading: its answer tells why
                    if not pending:
                        poller.unregister(in_w)
                        os.close(in_w)
                        open_fds.discard(in_w)
                    continue
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
        _, status = os.waitpid(pid, 0)
    finally:
        for fd in (out_r, err_r, *((in_w,) if in_w in open_fds else ())):
            os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks[out_r]), b"".join(chunks[err_r])


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
        returncode, stdout, stderr = run(binary, jsonio.dumps(netconf).encode(), env, TIMEOUT_S)
    except OSError as e:
        raise CNIError(IO_FAILURE, f"failed to run IPAM plugin {name!r}", str(e)) from None
    out = stdout.strip()
    parsed: dict[str, Any] | None = None
    if out:
        try:
            parsed = jsonio.loads(out)
        except ValueError:
            raise CNIError(
                DECODE_FAILURE, f"IPAM plugin {name!r} wrote invalid JSON", out[:200].decode(errors="replace")
            ) from None
    if returncode != 0:
        code = parsed.get("code") if isinstance(parsed, dict) else None
        if type(code) is int and 0 < code < 2**31:
            raise CNIError(code, str(parsed.get("msg", "")), str(parsed.get("details", "")))  # type: ignore[union-attr]
        raise CNIError(
            IO_FAILURE,
            f"IPAM plugin {name!r} failed (exit {returncode})",
            stderr[-500:].decode(errors="replace"),
        )
    if parsed is not None and not isinstance(parsed, dict):
        raise CNIError(DECODE_FAILURE, f"IPAM plugin {name!r} wrote JSON that is not an object")
    return parsed
