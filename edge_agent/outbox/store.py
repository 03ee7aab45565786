"""The outbox's SQLite file: schema, opening (and corruption), transactions, the ballast.

One SQLite file in WAL mode with ``synchronous=FULL``: a row whose write returned
survives a kill -9 or a power cut. A new file gets a new ``stream_id``.

A full disk must not stop the agent from deleting rows and recovering: a ballast file of
``ballast_bytes`` is kept beside the outbox and given back to the filesystem when SQLite
reports the disk full, so that deletes (which need room in the WAL) can proceed
(``with_room``). Who may take which part of it is the lanes' business (``lanes.py``).

Before anything is opened, ``path.py`` makes sure the file is an outbox this agent made
(its ``PRAGMA application_id``), or that there is none yet: anything else raises
``OutboxPathError`` and is left untouched. Then ``lock.py`` takes the outbox for this
agent alone, until ``close()``: held by another agent, it is ``OutboxUnavailable``. At
open, ``PRAGMA quick_check`` runs; a corrupt outbox (SQLite says corrupt, or the check
finds problems) is moved aside (kept, never deleted: it may hold the only copy of an
outage's readings) and a new one, with a new stream, takes its place; the new stream's
first alarm-lane event, ``outbox.corrupt``, tells the center. A file that cannot be
opened for any other reason (disk full, I/O error, locked) is not corrupt: the ballast
is given back and the open tried again; failing that, ``OutboxUnavailable`` is raised
and the file is left exactly as it is.

Not thread-safe: every call runs on the agent's one outbox thread (``facade.py``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.contract.alarms import encode_alarm_body
from edge_agent.outbox.lock import OutboxLock, OutboxLocked
from edge_agent.outbox.notices import corrupt_notice
from edge_agent.outbox.path import OUTBOX_APPLICATION_ID, OutboxPathError, outbox_path_problem
from edge_agent.sqlite_wal import use_wal

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS telemetry (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alarms (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alarm_state (key TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen_commands (id TEXT PRIMARY KEY, expires REAL NOT NULL);
"""


class OutboxFull(Exception):
    """The disk is full even after giving back the ballast and dropping old telemetry."""


class OutboxUnavailable(Exception):
    """The outbox file is sound (or cannot be told corrupt) but cannot be opened now: the
    disk is full or failing, or another process holds it. The file is left as it is."""


def _error_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code if isinstance(code, int) else None


def unless_disk_full(fn: Callable[[], T]) -> T | sqlite3.OperationalError:
    """``fn()``, or the disk-full error it raised instead; any other error is raised."""
    try:
        return fn()
    except sqlite3.OperationalError as exc:
        if not is_disk_full(exc):
            raise
        return exc


def is_disk_full(exc: sqlite3.Error) -> bool:
    code = _error_code(exc)
    if code == sqlite3.SQLITE_IOERR_SHMSIZE:  # no room to grow the -shm beside the WAL
        return True
    if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
        return True
    return "full" in str(exc)


def _is_corrupt(exc: sqlite3.Error) -> bool:
    """SQLite says the file is damaged or not a database: never a full disk or a lock."""
    code = _error_code(exc)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def quick_check(path: Path) -> str | None:
    """None when the file is sound, else what SQLite found wrong.

    Raises ``sqlite3.Error`` when the check itself cannot run (disk full, I/O error,
    locked): that says nothing about the file, which must then not be taken for corrupt.
    """
    try:
        rows = _query(path, "PRAGMA quick_check")
    except sqlite3.Error as exc:
        if _is_corrupt(exc):
            return str(exc)
        raise
    if rows == [("ok",)]:
        return None
    return "; ".join(str(r[0]) for r in rows[:3])


def _stream_of(path: Path) -> str | None:
    """The stream id a (possibly damaged) outbox file names, if it can still be read."""
    try:
        rows = _query(path, "SELECT value FROM meta WHERE key='stream_id'")
    except sqlite3.Error:
        return None
    return str(rows[0][0]) if rows else None


def _query(path: Path, sql: str) -> list[Any]:
    """Run one query on a file of its own connection, closed whatever happens."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def move_aside(path: Path, why: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{kept}{suffix}"))
    log.error("outbox %s is corrupt (%s): kept as %s, starting a new stream", path, why, kept)
    return kept


class OutboxFile:
    """The open SQLite connection and what belongs to the file as a whole."""

    def __init__(self, path: Path, ballast_bytes: int = 0) -> None:
        self.path = path
        self.ballast = path.with_name(path.name + ".ballast")
        self.ballast_bytes = ballast_bytes
        # before anything is made, moved or written: is it an outbox, or a place for one?
        problem = outbox_path_problem(path)
        if problem is not None:
            raise OutboxPathError(problem)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = _lock(path)  # one agent per outbox, before the file is looked into
        self.moved_aside: Path | None = None
        self._corrupt: tuple[str, str | None, Path] | None = None  # why, old stream, kept as
        try:
            self.db, self.stream_id = self._open()
            self.ensure_ballast()
        except BaseException:
            self.lock.release()
            raise

    # --- open ----------------------------------------------------------------------------

    def _open(self) -> tuple[sqlite3.Connection, str]:
        """Check, set aside if corrupt, open. Only SQLite's word "corrupt" (or a failed
        check) sets a file aside; anything else gets the ballast back and one more try,
        then ``OutboxUnavailable``: a healthy backlog is never abandoned."""
        retried = False
        while True:  # at most: one set-aside, one retry
            try:
                if self.moved_aside is None and self.path.exists():
                    problem = quick_check(self.path)
                    if problem is not None:
                        self._set_aside(problem)
                return self._connect()
            except sqlite3.Error as exc:
                if _is_corrupt(exc) and self.moved_aside is None:
                    self._set_aside(str(exc))
                    continue
                if retried:
                    raise OutboxUnavailable(
                        f"cannot open the outbox {self.path}: {exc}. The file is kept as it "
                        f"is; make room under {self.path.parent} (or stop what holds the "
                        "file) and start again"
                    ) from exc
                retried = True
                log.warning("outbox %s: cannot open (%s), trying once more", self.path, exc)
                if (_error_code(exc) or 0) & 0xFF not in (
                    sqlite3.SQLITE_BUSY,
                    sqlite3.SQLITE_LOCKED,
                ):
                    self.release_ballast()  # full, or an I/O error a full disk can cause

    def _set_aside(self, why: str) -> None:
        old_stream = _stream_of(self.path)
        self.moved_aside = move_aside(self.path, why)
        self._corrupt = (why, old_stream, self.moved_aside)

    def _connect(self) -> tuple[sqlite3.Connection, str]:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            # the mark that makes the file recognisably an outbox (``path.py``): on a new
            # file before the switch to WAL, so that it is in the file's own header, not
            # in a WAL a power cut could leave unmerged; an older agent's file is adopted
            (app_id,) = db.execute("PRAGMA application_id").fetchone()
            if app_id != OUTBOX_APPLICATION_ID:
                db.execute(f"PRAGMA application_id={OUTBOX_APPLICATION_ID}")
            use_wal(db)
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            self.db = db
            return db, self._stream_id()
        except BaseException:
            db.close()
            raise

    # --- meta ----------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def _stream_id(self) -> str:
        stream = self.meta("stream_id")
        if stream is None:
            # A new file starts a new stream: its seq numbers restart, so the
            # center must not mistake them for the old file's.
            stream = uuid.uuid4().hex[:16]
            with self.tx():
                self.set_meta("stream_id", stream)
                self.set_meta("created", repr(time.time()))
                if self._corrupt is not None:
                    # the new stream's first alarm says what became of the old one
                    why, old, kept = self._corrupt
                    notice = corrupt_notice(why, kept, old, stream)
                    self.db.execute(
                        "INSERT INTO alarms(ts, body) VALUES (?, ?)",
                        (notice.ts, encode_alarm_body(notice)),
                    )
        return stream

    def tx(self) -> _Transaction:
        return _Transaction(self.db)

    # --- ballast -------------------------------------------------------------------------

    def ensure_ballast(self) -> bool:
        """(Re)create the ballast file; False while the disk has no room for it. What is
        left of it (the alarms' reserve) is kept while the rest cannot be had back."""
        if self.ballast_bytes <= 0:
            return True
        try:
            size = self.ballast.stat().st_size
        except FileNotFoundError:
            size = 0
        if size >= self.ballast_bytes:
            return True
        try:
            with open(self.ballast, "ab") as f:
                # written, not sparse: the blocks are ours
                f.write(b"\0" * (self.ballast_bytes - size))
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError:
            try:
                if size:
                    os.truncate(self.ballast, size)
                else:
                    self.ballast.unlink(missing_ok=True)
            except OSError:
                pass
            return False

    def release_ballast(self, keep: int = 0) -> bool:
        """Give the ballast back to the filesystem, all of it or all but ``keep`` bytes."""
        try:
            size = self.ballast.stat().st_size
        except FileNotFoundError:
            return False
        if size <= keep:
            return False
        if keep:
            os.truncate(self.ballast, keep)
        else:
            self.ballast.unlink()
        log.warning(
            "disk full under %s: released %d bytes of ballast (%d kept)",
            self.path.parent,
            size - keep,
            keep,
        )
        return True

    def with_room(self, fn: Callable[[], T], fallback: T, what: str) -> T:
        """Run ``fn``; on a full disk give back the ballast and run it once more."""
        for attempt in (1, 2):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc):
                    raise
                if attempt == 1 and self.release_ballast():
                    continue
                log.warning("outbox %s: disk full, %s", self.path, what)
        return fallback

    def used_bytes(self) -> int:
        (pages,) = self.db.execute("PRAGMA page_count").fetchone()
        (free,) = self.db.execute("PRAGMA freelist_count").fetchone()
        (size,) = self.db.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * size)

    def close(self) -> None:
        self.db.close()
        self.lock.release()  # after the database: no write of ours can follow it


def _lock(path: Path) -> OutboxLock:
    """The outbox's lock; held by another agent, the outbox is unavailable (exit 1 and
    nothing touched: systemd tries again, and the other may have stopped by then)."""
    try:
        return OutboxLock.take(path)
    except OutboxLocked as exc:
        raise OutboxUnavailable(str(exc)) from None
    except OSError as exc:
        raise OutboxUnavailable(
            f"cannot lock the outbox {path} ({exc.strerror or exc}); the file is kept as it is"
        ) from None


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:  # SQLite may have rolled back already (disk full)
            self.db.execute("ROLLBACK")
