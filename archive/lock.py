"""The lab lock: serialises the processes that write to one lab.

An ``fcntl.flock`` on ``lab/.lock`` (the kernel drops it when its holder dies, so a killed
process never leaves the lab locked). The holder writes its pid, command and start time into the
file and truncates it on a clean release; a new holder that finds a pid there knows the previous
writer died while holding the lock (``LabLock.previous_crashed``), so any git lock files it left
in the archive are stale and safe to remove.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any


class LabBusyError(RuntimeError):
    """Another process holds the lab lock and did not release it in time."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LabLock:
    """Re-entrant inter-process lock (re-entrant within one process, across its threads it
    serialises like a ``threading.RLock``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._depth = 0
        self._owner: int | None = None
        self._rlock = threading.RLock()
        #: The holder info found in the file when this process took the lock, if the previous
        #: holder did not release it cleanly (it died); None otherwise.
        self.previous_crashed: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        """Whether this thread holds the lock now."""
        return self._fd is not None and self._owner == threading.get_ident()

    def holder(self) -> dict[str, Any] | None:
        """The info (pid, cmd, since) written by the current or last unclean holder, if any."""
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not text:
            return None
        try:
            info = json.loads(text)
        except ValueError:
            return None
        return info if isinstance(info, dict) else None

    def acquire(self, timeout: float | None = 30.0, poll: float = 0.05) -> None:
        """Take the lock, waiting up to ``timeout`` seconds (None: forever, 0: do not wait).
        Raises :class:`LabBusyError` with a clear message naming the holder if it cannot."""
        if not self._rlock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise LabBusyError(f"the lab lock {self.path} is held by another thread of this process")
        if self._depth > 0:
            self._depth += 1
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        os.close(fd)
                        info = self.holder() or {}
                        who = (
                            f"process {info.get('pid')} ({info.get('cmd', '?')}, since {info.get('since', '?')})"
                            if info else "another process"
                        )
                        raise LabBusyError(
                            f"The lab {self.path.parent} is in use by {who}. Only one process may "
                            "write to a lab at a time: wait for it to finish, stop it, or use "
                            "another lab folder."
                        ) from None
                    time.sleep(poll)
            prev = _read_fd(fd)
            self.previous_crashed = prev if prev and prev.get("pid") != os.getpid() else None
            info = {"pid": os.getpid(), "cmd": " ".join(sys.argv[:3])[:120],
                    "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._fd = fd
            self._owner = threading.get_ident()
            self._depth = 1
        except BaseException:
            self._rlock.release()
            raise

    def release(self) -> None:
        """Release one level; the last one truncates the file (a clean exit) and unlocks."""
        if self._depth <= 0:
            raise RuntimeError("LabLock.release() without acquire()")
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            self._owner = None
            try:
                os.ftruncate(fd, 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        self._rlock.release()

    def __enter__(self) -> "LabLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_fd(fd: int) -> dict[str, Any] | None:
    data = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    if not data:
        return None
    try:
        info = json.loads(data)
    except ValueError:
        return {"pid": None, "raw": data[:200]}
    return info if isinstance(info, dict) else None
