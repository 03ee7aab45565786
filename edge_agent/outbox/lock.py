"""One agent per outbox: an exclusive lock held from open to close.

Two agents on one ``outbox.path`` (two configs naming the same file, or the service
started twice) would both send its rows under one stream id, one gateway's readings as
the other's, and each delete what the center acked to the other. SQLite's own locks do
not stop that: they guard one transaction, not who owns the file. So the outbox takes an
exclusive ``flock`` on ``<outbox>.lock`` beside it, without waiting, and keeps it while
open; the kernel lets go of it when the process ends, kill -9 included, so a lock left by
a dead agent never blocks a restart.

The lock is on a file of its own, never on the database: SQLite's POSIX locks on the
database belong to the whole process and go when any descriptor of that file is closed,
and a corrupt outbox is renamed aside while the agent runs. The lock file is never
deleted (deleting it would let a third agent lock a new file while the second holds the
old one); it holds the pid of its holder, for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class OutboxLocked(Exception):
    """Another process holds the outbox; the message names it and its pid if known."""


class OutboxLock:
    """The held lock of one outbox; ``release()`` (or the process ending) lets it go."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def take(cls, outbox: Path) -> OutboxLock:
        """The lock of ``outbox``, or ``OutboxLocked`` at once if another process holds
        it. ``OSError`` if the lock file cannot be made (the caller's directory checks
        come first)."""
        path = outbox.with_name(outbox.name + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutboxLocked(
                f"the outbox {outbox} is in use by another agent{holder} (it holds "
                f"{path.name}); one agent per outbox: give each config an outbox.path of its own"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        _write_pid(fd)
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def _write_pid(fd: int) -> None:
    """Best effort: on a full disk the lock is held all the same, the pid just unsaid."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
