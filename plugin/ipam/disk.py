"""The disk store: one file per allocated IP under <dataDir>/<network>/, all changes under an flock.

A record appears only by `link()` of a fully written, fsync'd temp file, so a process killed at any point
leaves either no record or a whole one (which GC then releases), never a torn one, and two writers can
never both own an address even without the lock. Directory entries are not fsync'd: after a power loss
every pod is gone anyway, and GC reconciles the rest.
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
TEMP_MARK = ".tmp."


@contextmanager
def _io(what: str, path: str) -> Iterator[None]:
    """Disk trouble (ENOSPC, EROFS, EACCES...) becomes the spec's I/O error instead of a traceback."""
    try:
        yield
    except OSError as e:
        raise CNIError(IO_FAILURE, f"IPAM store: cannot {what}", f"{path}: {e.strerror or e}") from None


class DiskStore:
    def __init__(self, data_dir: str, network: str) -> None:
        # parse_ipam_config has checked the name; this guards direct use.
        assert network and "/" not in network and network not in (".", ".."), network
        self.dir = os.path.join(data_dir, network)

    @contextmanager
    def lock(self) -> Iterator[None]:
        path = os.path.join(self.dir, LOCK_FILE)
        with _io("open the lock file", path):
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # The kernel drops the lock when the holder dies, so a SIGKILL never wedges the node.
            with _io("lock", path):
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _path(self, ip: IPAddress) -> str:
        return os.path.join(self.dir, str(ip))

    def _write_temp(self, path: str, data: bytes, durable: bool = True) -> str:
        tmp = f"{path}{TEMP_MARK}{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(28, "short write")  # ENOSPC in all but name
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def reserve(self, ip: IPAddress, container_id: str, ifname: str) -> bool:
        path = self._path(ip)
        with _io("record the address", path):
            tmp = self._write_temp(path, f"{container_id}\n{ifname}\n".encode())
            try:
                os.link(tmp, path)  # fails if the record exists: never overwrite an owner
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)

    def release(self, ip: IPAddress) -> None:
        path = self._path(ip)
        with _io("release the address", path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def release_by_owner(self, container_id: str, ifname: str) -> list[IPAddress]:
        mine = self.get_by_owner(container_id, ifname)
        for ip in mine:
            self.release(ip)
        return mine

    def get_by_owner(self, container_id: str, ifname: str) -> list[IPAddress]:
        return [ip for ip, cid, ifn in self.allocations() if (cid, ifn) == (container_id, ifname)]

    def _names(self) -> list[str]:
        with _io("list the store", self.dir):
            try:
                return os.listdir(self.dir)
            except FileNotFoundError:
                return []

    def allocations(self) -> list[tuple[IPAddress, str, str]]:
        out: list[tuple[IPAddress, str, str]] = []
        for name in self._names():
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                continue  # lock, last_reserved_ip.N, temp files of a killed writer
            path = os.path.join(self.dir, name)
            with _io("read a record", path):
                try:
                    with open(path, "rb") as f:
                        owner = f.read().decode(errors="replace").split("\n")
                except FileNotFoundError:
                    continue  # released while we listed
            out.append((ip, owner[0], owner[1] if len(owner) > 1 else ""))
        return out

    def sweep(self) -> int:
        """Remove temp files; under lock() every one is left by a writer that was killed mid-write."""
        removed = 0
        for name in self._names():
            if TEMP_MARK not in name:
                continue
            path = os.path.join(self.dir, name)
            with _io("remove debris", path):
                try:
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def last_reserved(self, set_index: int) -> IPAddress | None:
        try:
            with open(os.path.join(self.dir, f"{LAST_RESERVED}{set_index}")) as f:
                return ipaddress.ip_address(f.read().strip())
        except (OSError, ValueError):
            return None  # only a hint: without it round robin restarts at rangeStart

    def set_last_reserved(self, set_index: int, ip: IPAddress) -> None:
        path = os.path.join(self.dir, f"{LAST_RESERVED}{set_index}")
        with _io("record the round-robin position", path):
            # A hint, so no fsync: a lost or torn one only restarts round robin at rangeStart.
            os.replace(self._write_temp(path, str(ip).encode(), durable=False), path)
