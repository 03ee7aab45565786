"""Open SQLite files in WAL mode when another process may be opening them too."""

from __future__ import annotations

import sqlite3
import time

WAL_SWITCH_TIMEOUT_S = 10.0


def use_wal(db: sqlite3.Connection, timeout_s: float = WAL_SWITCH_TIMEOUT_S) -> None:
    """Put ``db`` in WAL mode, waiting for another connection that holds a lock.

    Switching a new file to WAL needs an exclusive lock, and SQLite refuses at once with
    "database is locked" (the busy handler is not asked) while another connection holds
    one: the central service and a ``fleet`` query opening a new store together did, one
    time in seven, and the one refused was sometimes the service, which then exited. Once
    the file is in WAL mode, asking again needs no lock.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
