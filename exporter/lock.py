"""One agent per datapath: an exclusive flock on the pin directory and on the state directory's
agent.lock, taken before anything is compiled, pinned or attached. A second agent with either directory
in common learns who holds it (pid, from /proc/locks) and leaves the datapath alone."""

from __future__ import annotations

import errno
import fcntl
import os

LOCK_FILE = "agent.lock"


class LockHeld(RuntimeError):
    """Another process holds the datapath; the message names the directory and the pid."""


def holder(path: str) -> int | None:
    """The pid holding an flock on `path`, from /proc/locks (None if it cannot be told)."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 00:1f:1234 0 EOF"; blocked waiters carry "->" first
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == want and parts[4].isdigit():
            return int(parts[4])
    return None


class DatapathLock:
    def __init__(self, pin_dir: str, state_dir: str) -> None:
        self.pin_dir = pin_dir
        self.state_dir = state_dir
        self._fds: list[int] = []

    def acquire(self) -> None:
        """Both locks, or neither (LockHeld, or OSError when a directory cannot be made)."""
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            self._lock(os.path.join(self.state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, "state dir")
            os.makedirs(self.pin_dir, exist_ok=True)
            self._lock(self.pin_dir, os.O_RDONLY | os.O_DIRECTORY, "pin dir")
        except BaseException:
            self.release()
            raise
        state_fd = self._fds[0]
        os.ftruncate(state_fd, 0)
        os.pwrite(state_fd, f"{os.getpid()}\n".encode(), 0)

    def _lock(self, path: str, flags: int, what: str) -> None:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            pid = holder(path)
            who = f"process {pid}" if pid else "another process"
            raise LockHeld(
                f"{what} {os.path.dirname(path) if what == 'state dir' else path} is in use by {who} "
                "(another lumen agent?); this one changes nothing and exits"
            ) from None
        self._fds.append(fd)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing drops the flock
        self._fds = []
