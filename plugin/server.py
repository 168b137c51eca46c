"""Warm plugin server: the `lumen` launcher hands each CNI call here over a root-only unix socket.

Why: a cold plugin process spends two thirds of an ADD importing (FACTS: ~8 ms interpreter, ~9 ms of
imports, ~6 ms of work). The server keeps the plugin imported and forks one worker per call, so each call
still runs in its own process with the caller's environment (a crash or SIGKILL of a worker is exactly a
crash of a cold plugin: GC reclaims) while skipping start-up.

Wire format (no json or struct on the launcher's side, see plugin/launcher.py):
  request  = u32 len + env block ("K=V\\0" ...), u32 len + stdin bytes
  response = u32 exit code, u32 len + stdout bytes, u32 len + stderr bytes
  A response with exit code FALLBACK tells the launcher to run the call itself (the server cannot
  see what the caller sees: another mount namespace, a delegated IPAM plugin path).
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import struct
import sys

FALLBACK = 0xFFFF
DEFAULT_SOCKET = "/run/lumen/plugin.sock"
SO_PEERCRED_FMT = "3i"


def _read_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("launcher closed the connection")
        buf += chunk
    return bytes(buf)


def _read_frame(conn: socket.socket) -> bytes:
    (length,) = struct.unpack("<I", _read_exact(conn, 4))
    return _read_exact(conn, length)


def encode_response(code: int, out: bytes, err: bytes) -> bytes:
    return struct.pack("<II", code, len(out)) + out + struct.pack("<I", len(err)) + err


def decode_env(block: bytes) -> dict[str, str]:
    env = {}
    for item in block.split(b"\0"):
        if item:
            key, _, value = item.decode("utf-8", "surrogateescape").partition("=")
            env[key] = value
    return env


def _must_fall_back(env: dict[str, str], stdin: bytes) -> bool:
    """Cases where this process cannot stand in for the caller."""
    from plugin import jsonio

    netns = env.get("CNI_NETNS", "")
    if netns and not os.path.exists(netns) and env.get("CNI_COMMAND") != "DEL":
        return True  # the caller's mount namespace differs from ours
    try:
        ipam = jsonio.loads(stdin).get("ipam") or {}
    except (ValueError, AttributeError):
        return False  # let the real run report the decode error
    # Delegated IPAM is exec'd from CNI_PATH, which may be a private mount of the caller's.
    return isinstance(ipam, dict) and ipam.get("type") not in (None, "lumen")


def handle(conn: socket.socket) -> None:
    """Runs in the forked worker: one CNI call, as the cold plugin would run it."""
    from plugin import jsonio
    from plugin.__main__ import run

    env = decode_env(_read_frame(conn))
    stdin = _read_frame(conn)
    if _must_fall_back(env, stdin):
        conn.sendall(encode_response(FALLBACK, b"", b""))
        return
    os.environ.clear()
    os.environ.update(env)
    err = io.StringIO()
    sys.stderr = err
    code, out = run(env, stdin)
    body = (jsonio.dumps(out) + "\n").encode() if out is not None else b""
    conn.sendall(encode_response(code, body, err.getvalue().encode("utf-8", "backslashreplace")))


def serve(path: str) -> None:
    # Import everything a call needs once, before the first fork.
    import ctypes  # noqa: F401 - setns in workers

    import plugin.__main__  # noqa: F401
    import plugin.delegate  # noqa: F401
    import plugin.ipam  # noqa: F401
    import plugin.verbs  # noqa: F401

    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(256)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"lumen plugin server listening on {path}", file=sys.stderr, flush=True)
    try:
        while True:
            conn, _ = sock.accept()
            pid, uid, gid = struct.unpack(
                SO_PEERCRED_FMT, conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            )
            if uid != 0:
                conn.close()
                continue
            if os.fork() == 0:
                code = 0
                try:
                    sock.close()
                    handle(conn)
                except BaseException:  # noqa: BLE001 - a worker must never return into the accept loop
                    code = 1
                finally:
                    os._exit(code)
            conn.close()
    finally:
        sock.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description="Serve CNI calls handed over by the lumen launcher.")
    ap.add_argument("--socket", default=DEFAULT_SOCKET)
    serve(ap.parse_args().socket)


if __name__ == "__main__":
    main()
