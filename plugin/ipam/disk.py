"""The disk store: one file per allocated IP under <dataDir>/<network>/, all changes under an flock.

A record appears only by `link()` of a fully written temp file, so a process killed at any point leaves
either no record or a whole one (which GC then releases), never a torn one, and two writers can never both
own an address even without the lock. Nothing is fsync'd: a record only has to outlive the processes of
this boot, and the page cache shows it to them at once; after a power loss every pod is gone anyway and GC
reconciles the rest (host-local does not fsync either). Measured on this ext4 root: an fsync costs 3.7 ms,
a fifth of a cold ADD. A full file system still fails the write itself (ENOSPC), checked below.
"""

from __future__ import annotations

import fcntl
import os

from plugin.errors import IO_FAILURE, CNIError
from plugin.ip import ip_address
from plugin.ipam.config import IPAddress

TYPE_CHECKING = False
if TYPE_CHECKING:
    pass

LOCK_FILE = "lock"
LAST_RESERVED = "last_reserved_ip."
TEMP_MARK = ".tmp."
CURSOR_WIDTH = 40  # the longest IPv6 text is 39 characters; padding keeps every write the same size


class _io:  # noqa: N801 - used as `with _io(...)`, like the function it replaces
    """Disk trouble (ENOSPC, EROFS, EACCES...) becomes the spec's I/O error instead of a traceback.

    A class, not @contextlib.contextmanager: contextlib imports functools and collections (~3 ms of CPU
    per cold ADD, see plugin/ip.py)."""

    __slots__ = ("what", "path")

    def __init__(self, what: str, path: str) -> None:
        self.what = what
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: object) -> None:
        if isinstance(e, OSError):
            raise CNIError(
                IO_FAILURE, f"IPAM store: cannot {self.what}", f"{self.path}: {e.strerror or e}"
            ) from None


class _Lock:
    """The store's flock, held for the body of a `with`."""

    __slots__ = ("path", "fd")

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, LOCK_FILE)
        self.fd = -1

    def __enter__(self) -> None:
        with _io("open the lock file", self.path):
            os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # The kernel drops the lock when the holder dies, so a SIGKILL never wedges the node.
            with _io("lock", self.path):
                fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _parse_name(name: str) -> IPAddress | None:
    """The address a record is named for; None for the lock, cursors and temp files."""
    try:
        return ip_address(name)
    except ValueError:
        return None


class DiskStore:
    def __init__(self, data_dir: str, network: str) -> None:
        # parse_ipam_config has checked the name; this guards direct use.
        assert network and "/" not in network and network not in (".", ".."), network
        self.dir = os.path.join(data_dir, network)

    def lock(self) -> _Lock:
        return _Lock(self.dir)

    def _path(self, ip: IPAddress) -> str:
        return os.path.join(self.dir, str(ip))

    def _write_temp(self, path: str, data: bytes) -> str:
        tmp = f"{path}{TEMP_MARK}{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(28, "short write")  # ENOSPC in all but name
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
        want = f"{container_id}\n{ifname}\n"
        mine = [_parse_name(name) for name, owner in self._records() if owner == want]
        return [ip for ip in mine if ip is not None]

    def allocations(self) -> list[tuple[IPAddress, str, str]]:
        out: list[tuple[IPAddress, str, str]] = []
        for name, owner in self._records():
            ip = _parse_name(name)
            if ip is not None:
                cid, _, rest = owner.partition("\n")
                out.append((ip, cid, rest.partition("\n")[0]))
        return out

    def _names(self) -> list[str]:
        with _io("list the store", self.dir):
            try:
                return os.listdir(self.dir)
            except FileNotFoundError:
                return []

    def _records(self) -> list[tuple[str, str]]:
        """(file name, raw content) of every record; one pass of os.open/os.read (half of open()'s cost)."""
        out: list[tuple[str, str]] = []
        # Only the names can tell a record from the store's own files; parsing them all costs more.
        names = [n for n in self._names() if n != LOCK_FILE and TEMP_MARK not in n and LAST_RESERVED not in n]
        if not names:
            return out
        with _io("read the store", self.dir):
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for name in names:
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
                    except FileNotFoundError:
                        continue  # released while we listed
                    try:
                        out.append((name, os.read(fd, 1024).decode(errors="replace")))
                    finally:
                        os.close(fd)
            finally:
                os.close(dfd)
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
                return ip_address(f.read().strip())
        except (OSError, ValueError):
            return None  # only a hint: without it round robin restarts at rangeStart

    def set_last_reserved(self, set_index: int, ip: IPAddress) -> None:
        path = os.path.join(self.dir, f"{LAST_RESERVED}{set_index}")
        # A hint, so overwritten in place without fsync: a lost or torn one only restarts round robin at
        # rangeStart, and replacing the file would free a block per ADD (slow on ext4 mounted `discard`).
        with _io("record the round-robin position", path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.pwrite(fd, str(ip).ljust(CURSOR_WIDTH).encode(), 0)
            finally:
                os.close(fd)
