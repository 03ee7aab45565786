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

At open, ``PRAGMA quick_check`` runs; a corrupt file is moved aside (kept, never
deleted: it may hold the only copy of an outage's readings) and a new one, with a new
stream, takes its place.

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
from pathlib import Path
from typing import TypeVar

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


class OutboxFull(Exception):
    """The disk is full even after giving back the ballast and dropping old telemetry."""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    alarms_depth: int
    oldest_ts: float | None
    bytes: int
    dropped_telemetry: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """One drop round: telemetry seq ``first..last``, taken from ``ts_first`` to ``ts_last``."""

    first: int
    last: int
    count: int
    ts_first: float
    ts_last: float
    cause: str  # "cap" | "age" | "disk full"

    def notice(self) -> str:
        """The alarm-lane event that tells the center what was lost."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.ts_first))
        return json.dumps(
            {
                "id": "outbox.dropped",
                "rule": "outbox.dropped",
                "dev": "agent",
                "severity": "warning",
                "state": "active",
                "value": self.count,
                "ts": time.time(),
                "msg": (
                    f"outbox {self.cause}: dropped {self.count} oldest readings "
                    f"(seq {self.first}..{self.last}, taken from {when} UTC)"
                ),
                "dropped": {
                    "lane": "telemetry",
                    "first": self.first,
                    "last": self.last,
                    "count": self.count,
                    "ts_first": self.ts_first,
                    "ts_last": self.ts_last,
                    "cause": self.cause,
                },
            },
            separators=(",", ":"),
        )


def _is_disk_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)


def quick_check(path: Path) -> str | None:
    """None when the file is sound, else what SQLite found wrong."""
    try:
        db = sqlite3.connect(path)
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    if rows == [("ok",)]:
        return None
    return "; ".join(str(r[0]) for r in rows[:3])


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
        if path.exists() and (problem := quick_check(path)) is not None:
            self.moved_aside: Path | None = move_aside(path, problem)
        else:
            self.moved_aside = None
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self.stream_id = self._stream_id()
        self._dropped = int(self._meta("dropped_telemetry") or 0)
        self.ensure_ballast()

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
        return stream

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    # --- ballast -------------------------------------------------------------------------

    def ensure_ballast(self) -> bool:
        """(Re)create the ballast file; False while the disk has no room for it."""
        if self.ballast_bytes <= 0:
            return True
        try:
            if self.ballast.exists() and self.ballast.stat().st_size >= self.ballast_bytes:
                return True
            with open(self.ballast, "wb") as f:
                f.write(b"\0" * self.ballast_bytes)  # written, not sparse: the blocks are ours
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError:
            self.ballast.unlink(missing_ok=True)
            return False

    def _release_ballast(self) -> bool:
        if self.ballast.exists():
            self.ballast.unlink()
            log.warning(
                "disk full under %s: released the %d-byte ballast",
                self.path.parent,
                self.ballast_bytes,
            )
            return True
        return False

    # --- rows ----------------------------------------------------------------------------

    def append(self, lane: Lane, rows: Sequence[tuple[float, str]]) -> int:
        """Commit ``(ts, json_body)`` rows in one transaction; return the last seq given.

        On a full disk: give back the ballast, drop the oldest telemetry to make room,
        and try once more; if that fails too, raise ``OutboxFull`` (nothing was written).
        """
        if not rows:
            return self.last_seq(lane)
        try:
            return self._insert(lane, rows)
        except sqlite3.OperationalError as exc:
            if not _is_disk_full(exc):
                raise
        self._release_ballast()
        try:
            self._drop_oldest(max(1, len(rows)), "disk full")
            return self._insert(lane, rows)
        except sqlite3.OperationalError as exc:
            if _is_disk_full(exc):
                raise OutboxFull(str(exc)) from None
            raise

    def _insert(self, lane: Lane, rows: Sequence[tuple[float, str]]) -> int:
        with self._tx():
            self._db.executemany(f"INSERT INTO {lane.value}(ts, body) VALUES (?, ?)", rows)
            (last,) = self._db.execute("SELECT last_insert_rowid()").fetchone()
        return int(last)

    def record_alarms(
        self, events: Sequence[tuple[float, str]], states: Sequence[tuple[str, str]]
    ) -> int:
        """Alarm events and the alarm states they leave behind, in one transaction, so a
        restart resumes exactly where the published history stops."""
        with self._tx():
            if events:
                self._db.executemany("INSERT INTO alarms(ts, body) VALUES (?, ?)", events)
            if states:
                self._db.executemany(
                    "INSERT OR REPLACE INTO alarm_state(key, body) VALUES (?, ?)", states
                )
        return self.last_seq(Lane.ALARMS)

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

    def enforce_bounds(self, now: float | None = None) -> list[Dropped]:
        """Drop telemetry past ``max_age_s`` or the size cap, oldest first; alarms stay."""
        return self._with_room(lambda: self._enforce_bounds(now), [], "bounds not enforced")

    def _enforce_bounds(self, now: float | None) -> list[Dropped]:
        dropped: list[Dropped] = []
        if self.max_age_s is not None:
            cutoff = (time.time() if now is None else now) - self.max_age_s
            (n,) = self._db.execute(
                "SELECT count(*) FROM telemetry WHERE seq <= "
                "(SELECT max(seq) FROM telemetry WHERE ts < ?)",
                (cutoff,),
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

    def _drop_oldest(self, n: int, cause: str) -> list[Dropped]:
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
            drop = Dropped(first, last, count, ts_first, ts_last, cause)
            self._db.execute(
                "INSERT INTO alarms(ts, body) VALUES (?, ?)", (time.time(), drop.notice())
            )
            self._dropped += count
            self._set_meta("dropped_telemetry", str(self._dropped))
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
