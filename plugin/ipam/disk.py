"""The disk store: one file per allocated IP under <dataDir>/<network>/, all changes under an flock.

A file appears only by `link()` of a fully written, fsync'd temp file, so a process killed at any point
leaves either no record or a whole one (which GC then releases), never a torn one, and two writers can
never both own an address even without the lock.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
from contextlib import contextmanager

from plugin.errors import IO_FAILURE, CNIError
from plugin.ipam.config import IPAddress

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

LOCK_FILE = "lock"
LAST_RESERVED = "last_reserved_ip."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DiskStore:
    def __init__(self, data_dir: str, network: str) -> None:
        if not network or "/" in network or network in (".", ".."):
            raise CNIError(IO_FAILURE, f"invalid network name {network!r} for the IPAM store")
        self.dir = os.path.join(data_dir, network)

    @contextmanager
    def lock(self) -> Iterator[None]:
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
            fd = os.open(os.path.join(self.dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise CNIError(IO_FAILURE, "cannot open the IPAM store", f"{self.dir}: {e}") from None
        try:
            # The kernel drops the lock when the holder dies, so a SIGKILL never wedges the node.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _path(self, ip: IPAddress) -> str:
        return os.path.join(self.dir, str(ip))

    def _write_new(self, path: str, data: bytes) -> bool:
        tmp = f"{path}.tmp.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def reserve(self, ip: IPAddress, container_id: str, ifname: str) -> bool:
        return self._write_new(self._path(ip), f"{container_id}\n{ifname}\n".encode())

    def release(self, ip: IPAddress) -> None:
        try:
            os.unlink(self._path(ip))
        except FileNotFoundError:
            pass

    def allocations(self) -> list[tuple[IPAddress, str, str]]:
        out: list[tuple[IPAddress, str, str]] = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out
        for name in names:
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                continue  # lock, last_reserved_ip.N, temp files of a killed writer
            try:
                with open(os.path.join(self.dir, name)) as f:
                    owner = f.read().split("\n")
            except FileNotFoundError:
                continue
            out.append((ip, owner[0], owner[1] if len(owner) > 1 else ""))
        return out

    def sweep(self) -> int:
        """Remove temp files left by writers that were killed; returns how many."""
        removed = 0
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return 0
        for name in names:
            _, sep, pid = name.rpartition(".tmp.")
            if not sep or not pid.isdigit() or _alive(int(pid)):
                continue
            try:
                os.unlink(os.path.join(self.dir, name))
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def last_reserved(self, set_index: int) -> IPAddress | None:
        try:
            with open(os.path.join(self.dir, f"{LAST_RESERVED}{set_index}")) as f:
                return ipaddress.ip_address(f.read().strip())
        except (FileNotFoundError, ValueError):
            return None

    def set_last_reserved(self, set_index: int, ip: IPAddress) -> None:
        path = os.path.join(self.dir, f"{LAST_RESERVED}{set_index}")
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(str(ip))
        os.replace(tmp, path)
