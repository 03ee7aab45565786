"""The durable outbox: every reading and alarm event is committed here before it is sent.

One SQLite file in WAL mode with ``synchronous=FULL``: a row that ``append`` returned
for survives a kill -9 or a power cut. Rows are numbered per lane (``telemetry``,
``alarms``) by AUTOINCREMENT, so a sequence number is never reused within a stream even
after every row has been deleted; a new file gets a new ``stream_id``.

Rows leave only when the center acknowledges their range (``delete``) or, telemetry
only, when the outbox outgrows its bounds (``enforce_bounds``): older than ``max_age_s``,
or over ``max_bytes``, oldest first, down to 90 % of the cap so that drops come in few,
large rounds. Every drop writes a notice into the alarms lane in the same transaction,
so the center learns exactly which sequence numbers were lost, and when they were taken.

A full disk must not stop the agent from deleting rows and recovering: a ballast file of
``ballast_bytes`` is kept beside the outbox and given back to the filesystem when SQLite
reports the disk full, so that deletes (which need room in the WAL) can proceed.
Readings may take all of it but a quarter (``ALARM_RESERVE``); alarm events and states
take the rest, and the oldest telemetry is dropped in growing rounds until they fit:
readings are given up for alarms, never the other way round.

At open, ``PRAGMA quick_check`` runs; a corrupt file (SQLite says corrupt or not a
database, or the check finds problems) is moved aside (kept, never deleted: it may hold
the only copy of an outage's readings) and a new one, with a new stream, takes its place;
the new stream's first alarm-lane event, ``outbox.corrupt``, tells the center. A file
that cannot be opened for any other reason (disk full, I/O error, locked) is not corrupt:
the ballast is given back and the open tried again; failing that, ``OutboxUnavailable``
is raised and the file is left exactly as it is.

The class is synchronous and not thread-safe: the agent runs all calls on one worker
thread, so SQLite's fsyncs never block the event loop.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.contract.alarms import (
    AlarmEvent,
    AlarmState,
    CorruptOutbox,
    DroppedRows,
    Severity,
    encode_alarm_body,
)
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
CAP_LOW_WATER = 0.9
"""Past the cap, drop down to this fraction of it: one drop round per ~10 % of growth."""


class Lane(StrEnum):
    """Alarms go ahead of telemetry and are never dropped."""

    ALARMS = "alarms"
    TELEMETRY = "telemetry"


ALARM_ROOM_ROUNDS = 6
"""Drop rounds an alarm write may take on a full disk, each 8 times the last (64 rows first)."""
ALARM_RESERVE = 0.25
"""Share of the ballast readings may not take: kept for alarms (and deletes), which get the
room to drop telemetry from it once readings have spent the rest."""


class OutboxFull(Exception):
    """The disk is full even after giving back the ballast and dropping old telemetry."""


class OutboxUnavailable(Exception):
    """The outbox file is sound (or cannot be told corrupt) but cannot be opened now: the
    disk is full or failing, or another process holds it. The file is left as it is."""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    alarms_depth: int
    oldest_ts: float | None
    bytes: int
    dropped_telemetry: int


def dropped_notice(d: DroppedRows) -> AlarmEvent:
    """The alarm-lane event that tells the center which readings were lost, and when."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.ts_first or 0))
    return AlarmEvent(
        id="outbox.dropped",
        rule="outbox.dropped",
        dev="agent",
        severity=Severity.WARNING,
        state=AlarmState.ACTIVE,
        value=d.count,
        ts=time.time(),
        msg=(
            f"outbox {d.cause}: dropped {d.count} oldest readings "
            f"(seq {d.first}..{d.last}, taken from {when} UTC)"
        ),
        dropped=d,
    )


def _error_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code if isinstance(code, int) else None


def _unless_disk_full(fn: Callable[[], T]) -> T | sqlite3.OperationalError:
    """``fn()``, or the disk-full error it raised instead; any other error is raised."""
    try:
        return fn()
    except sqlite3.OperationalError as exc:
        if not _is_disk_full(exc):
            raise
        return exc


def _is_disk_full(exc: sqlite3.Error) -> bool:
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


def corrupt_notice(why: str, kept: Path, old_stream: str | None, new_stream: str) -> AlarmEvent:
    """The alarm-lane event that tells the center a corrupt outbox was set aside: whatever
    it still held (readings, alarms) will not arrive."""
    return AlarmEvent(
        id="outbox.corrupt",
        rule="outbox.corrupt",
        dev="agent",
        severity=Severity.MAJOR,
        state=AlarmState.ACTIVE,
        value=None,
        ts=time.time(),
        msg=(
            f"outbox file was corrupt ({why}): kept as {kept.name}, what it still held "
            f"(stream {old_stream or 'unknown'}) is not delivered; new stream {new_stream}"
        ),
        corrupt=CorruptOutbox(old_stream=old_stream, kept_as=str(kept), problem=why),
    )


def move_aside(path: Path, why: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{kept}{suffix}"))
    log.error("outbox %s is corrupt (%s): kept as %s, starting a new stream", path, why, kept)
    return kept


class Outbox:
    def __init__(
        self,
        path: Path,
        max_bytes: int,
        max_age_s: float | None = None,
        ballast_bytes: int = 0,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.ballast = path.with_name(path.name + ".ballast")
        self.ballast_bytes = ballast_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self.moved_aside: Path | None = None
        self._corrupt: tuple[str, str | None, Path] | None = None  # why, old stream, kept as
        self._db, self.stream_id = self._open()
        self._dropped = int(self._meta("dropped_telemetry") or 0)
        self.ensure_ballast()

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
                    self._release_ballast()  # full, or an I/O error a full disk can cause

    def _set_aside(self, why: str) -> None:
        old_stream = _stream_of(self.path)
        self.moved_aside = move_aside(self.path, why)
        self._corrupt = (why, old_stream, self.moved_aside)

    def _connect(self) -> tuple[sqlite3.Connection, str]:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            use_wal(db)
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            self._db = db
            return db, self._stream_id()
        except BaseException:
            db.close()
            raise

    # --- meta ----------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def _stream_id(self) -> str:
        stream = self._meta("stream_id")
        if stream is None:
            # A new file starts a new stream: its seq numbers restart, so the
            # center must not mistake them for the old file's.
            stream = uuid.uuid4().hex[:16]
            with self._tx():
                self._set_meta("stream_id", stream)
                self._set_meta("created", repr(time.time()))
                if self._corrupt is not None:
                    # the new stream's first alarm says what became of the old one
                    why, old, kept = self._corrupt
                    notice = corrupt_notice(why, kept, old, stream)
                    self._db.execute(
                        "INSERT INTO alarms(ts, body) VALUES (?, ?)",
                        (notice.ts, encode_alarm_body(notice)),
                    )
        return stream

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

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

    def _release_ballast(self, keep: int = 0) -> bool:
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

    # --- rows ----------------------------------------------------------------------------

    def append(self, lane: Lane, rows: Sequence[tuple[float, str]]) -> int:
        """Commit ``(ts, json_body)`` rows in one transaction; return the last seq given.

        On a full disk: give back the ballast, drop the oldest telemetry to make room,
        and try once more (alarms: in growing rounds, see ``_make_room``); if that fails
        too, raise ``OutboxFull`` (nothing was written).
        """
        if not rows:
            return self.last_seq(lane)
        if lane is Lane.ALARMS:
            return self._make_room(lambda: self._insert(lane, rows), 64, ALARM_ROOM_ROUNDS)
        keep = int(self.ballast_bytes * ALARM_RESERVE)
        return self._make_room(lambda: self._insert(lane, rows), len(rows), 1, keep)

    def _make_room(self, fn: Callable[[], T], need: int, rounds: int, keep: int = 0) -> T:
        """Run ``fn`` (one transaction). On a full disk give back the ballast (all but
        ``keep`` bytes), then, up to ``rounds`` times, drop the oldest telemetry (``need``
        rows, 8 times more each round) and run ``fn`` again. ``OutboxFull`` if there was
        no room even so."""
        result = _unless_disk_full(fn)
        if not isinstance(result, sqlite3.OperationalError):
            return result
        last = result
        self._release_ballast(keep)
        n = max(1, need)
        for _ in range(rounds):
            dropped = _unless_disk_full(partial(self._drop_oldest, n, "disk full"))
            if isinstance(dropped, sqlite3.OperationalError):
                last = dropped  # the drop found no room either; what is free may still do
            result = _unless_disk_full(fn)
            if not isinstance(result, sqlite3.OperationalError):
                return result
            last = result
            if self.first_seq(Lane.TELEMETRY) is None:
                break  # no telemetry left to give up
            n *= 8
        raise OutboxFull(str(last))

    def _insert(self, lane: Lane, rows: Sequence[tuple[float, str]]) -> int:
        with self._tx():
            self._db.executemany(f"INSERT INTO {lane.value}(ts, body) VALUES (?, ?)", rows)
            (last,) = self._db.execute("SELECT last_insert_rowid()").fetchone()
        return int(last)

    def record_alarms(self, events: Sequence[AlarmEvent], states: Sequence[tuple[str, str]]) -> int:
        """Alarm events and the alarm states they leave behind, in one transaction, so a
        restart resumes exactly where the published history stops.

        On a full disk, room is made as for ``append`` to the alarm lane: the ballast,
        then the oldest telemetry in growing rounds; ``OutboxFull`` (nothing written) only
        when even that was not enough."""

        rows = [(e.ts, encode_alarm_body(e)) for e in events]

        def write() -> int:
            with self._tx():
                if rows:
                    self._db.executemany("INSERT INTO alarms(ts, body) VALUES (?, ?)", rows)
                if states:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO alarm_state(key, body) VALUES (?, ?)", states
                    )
            return self.last_seq(Lane.ALARMS)

        if not events and not states:
            return self.last_seq(Lane.ALARMS)
        return self._make_room(write, 64 + 4 * len(events), ALARM_ROOM_ROUNDS)

    def alarm_states(self) -> dict[str, dict[str, object]]:
        rows = self._db.execute("SELECT key, body FROM alarm_state").fetchall()
        return {str(k): json.loads(b) for k, b in rows}

    def remember_command(self, cmd_id: str, expires: float, now: float) -> bool:
        """False if ``cmd_id`` was seen before (a replay); forget ids past their expiry."""
        with self._tx():
            self._db.execute("DELETE FROM seen_commands WHERE expires < ?", (now,))
            cur = self._db.execute(
                "INSERT OR IGNORE INTO seen_commands(id, expires) VALUES (?, ?)", (cmd_id, expires)
            )
        return cur.rowcount == 1

    def last_seq(self, lane: Lane) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name=?", (lane.value,))
        found = row.fetchone()
        return int(found[0]) if found else 0

    def first_seq(self, lane: Lane) -> int | None:
        (first,) = self._db.execute(f"SELECT min(seq) FROM {lane.value}").fetchone()
        return None if first is None else int(first)

    def fetch(self, lane: Lane, start: int, stop: int | None, limit: int) -> list[tuple[int, str]]:
        """Rows with ``start <= seq < stop`` in order, cut at the first gap in seq.

        A telemetry batch numbers its readings implicitly from ``seq_first``, so one
        batch must be a run of consecutive sequence numbers.
        """
        if stop is None:
            cur = self._db.execute(
                f"SELECT seq, body FROM {lane.value} WHERE seq >= ? ORDER BY seq LIMIT ?",
                (start, limit),
            )
        else:
            cur = self._db.execute(
                f"SELECT seq, body FROM {lane.value} WHERE seq >= ? AND seq < ? "
                "ORDER BY seq LIMIT ?",
                (start, stop, limit),
            )
        rows: list[tuple[int, str]] = cur.fetchall()
        for i in range(1, len(rows)):
            if rows[i][0] != rows[i - 1][0] + 1:
                return rows[:i]
        return rows

    def delete(self, lane: Lane, ranges: Iterable[tuple[int, int]]) -> int:
        """Forget acknowledged rows. A delete needs room in the WAL too: on a full disk,
        give back the ballast and try once more; failing that, keep the rows (they are
        sent again, and the center drops the duplicates) and return 0."""
        spans = list(ranges)

        def delete() -> int:
            n = 0
            with self._tx():
                for first, last in spans:
                    n += self._db.execute(
                        f"DELETE FROM {lane.value} WHERE seq BETWEEN ? AND ?", (first, last)
                    ).rowcount
            return n

        return self._with_room(delete, 0, "acknowledged rows kept for now")

    def _with_room(self, fn: Callable[[], T], fallback: T, what: str) -> T:
        """Run ``fn``; on a full disk give back the ballast and run it once more."""
        for attempt in (1, 2):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_disk_full(exc):
                    raise
                if attempt == 1 and self._release_ballast():
                    continue
                log.warning("outbox %s: disk full, %s", self.path, what)
        return fallback

    # --- bounds --------------------------------------------------------------------------

    def used_bytes(self) -> int:
        (pages,) = self._db.execute("PRAGMA page_count").fetchone()
        (free,) = self._db.execute("PRAGMA freelist_count").fetchone()
        (size,) = self._db.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * size)

    def enforce_bounds(self, now: float | None = None) -> list[DroppedRows]:
        """Drop telemetry past ``max_age_s`` or the size cap, oldest first; alarms stay."""
        return self._with_room(lambda: self._enforce_bounds(now), [], "bounds not enforced")

    def _enforce_bounds(self, now: float | None) -> list[DroppedRows]:
        dropped: list[DroppedRows] = []
        if self.max_age_s is not None:
            cutoff = (time.time() if now is None else now) - self.max_age_s
            # Only the oldest run in which every row is too old: one reading stamped by a
            # wrong clock (a PLC's, a gateway's before NTP) must not take the newer ones
            # with it; it goes once everything before it is old too.
            young = self._db.execute(
                "SELECT seq FROM telemetry WHERE ts >= ? ORDER BY seq LIMIT 1", (cutoff,)
            ).fetchone()
            if young is None:
                (n,) = self._db.execute("SELECT count(*) FROM telemetry").fetchone()
            else:
                (n,) = self._db.execute(
                    "SELECT count(*) FROM telemetry WHERE seq < ?", (young[0],)
                ).fetchone()
            if n:
                dropped += self._drop_oldest(int(n), "age")
        used = self.used_bytes()
        if used > self.max_bytes:
            (count,) = self._db.execute("SELECT count(*) FROM telemetry").fetchone()
            if count:
                # rows are of similar size: drop the share that brings us to the low-water mark
                share = 1 - CAP_LOW_WATER * self.max_bytes / used
                dropped += self._drop_oldest(max(1, int(count * share) + 1), "cap")
        return dropped

    def _drop_oldest(self, n: int, cause: str) -> list[DroppedRows]:
        with self._tx():
            row = self._db.execute(
                "SELECT min(seq), max(seq), count(*), min(ts), max(ts) FROM "
                "(SELECT seq, ts FROM telemetry ORDER BY seq LIMIT ?)",
                (n,),
            ).fetchone()
            if not row or row[2] == 0:
                return []
            first, last, count, ts_first, ts_last = row
            self._db.execute("DELETE FROM telemetry WHERE seq BETWEEN ? AND ?", (first, last))
            drop = DroppedRows(first, last, count, ts_first, ts_last, cause)
            notice = dropped_notice(drop)
            self._db.execute(
                "INSERT INTO alarms(ts, body) VALUES (?, ?)",
                (notice.ts, encode_alarm_body(notice)),
            )
            total = self._dropped + count
            self._set_meta("dropped_telemetry", str(total))
        self._dropped = total  # only once the drop is committed: a failed one lost nothing
        log.warning(
            "outbox %s: dropped telemetry seq %d..%d (%d readings)", cause, first, last, count
        )
        return [drop]

    def stats(self) -> OutboxStats:
        (depth, oldest) = self._db.execute("SELECT count(*), min(ts) FROM telemetry").fetchone()
        (alarms,) = self._db.execute("SELECT count(*) FROM alarms").fetchone()
        return OutboxStats(int(depth), int(alarms), oldest, self.used_bytes(), self._dropped)

    def close(self) -> None:
        self._db.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:  # SQLite may have rolled back already (disk full)
            self._db.execute("ROLLBACK")
