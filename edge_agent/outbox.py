"""The durable outbox: every reading and alarm event is committed here before it is sent.

One SQLite file in WAL mode with ``synchronous=FULL``: a row that ``append_*`` returned
for survives a kill -9 or a power cut. Rows are numbered per lane (``telemetry``,
``alarms``) by AUTOINCREMENT, so a sequence number is never reused within a stream even
after every row has been deleted; a new file gets a new ``stream_id``. Rows leave only
when the center acknowledges the range (``delete``), or, for telemetry only, when the
file outgrows its cap (``enforce_cap``), oldest first and counted.

The class is synchronous and not thread-safe: the agent runs all calls on one worker
thread, so SQLite's fsyncs never block the event loop.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

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
"""


class Lane(StrEnum):
    """Alarms go ahead of telemetry and are never dropped."""

    ALARMS = "alarms"
    TELEMETRY = "telemetry"


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    alarms_depth: int
    oldest_ts: float | None
    bytes: int
    dropped_telemetry: int


class Outbox:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self.stream_id = self._stream_id()
        self._dropped = int(self._meta("dropped_telemetry") or 0)

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
            self._db.execute("BEGIN IMMEDIATE")
            self._set_meta("stream_id", stream)
            self._set_meta("created", repr(time.time()))
            self._db.execute("COMMIT")
        return stream

    def append(self, lane: Lane, rows: Sequence[tuple[float, str]]) -> int:
        """Commit ``(ts, json_body)`` rows in one transaction; return the last seq given."""
        if not rows:
            return self.last_seq(lane)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(f"INSERT INTO {lane.value}(ts, body) VALUES (?, ?)", rows)
            (last,) = db.execute("SELECT last_insert_rowid()").fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(last)

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
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            n = 0
            for first, last in ranges:
                n += db.execute(
                    f"DELETE FROM {lane.value} WHERE seq BETWEEN ? AND ?", (first, last)
                ).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return n

    def used_bytes(self) -> int:
        (pages,) = self._db.execute("PRAGMA page_count").fetchone()
        (free,) = self._db.execute("PRAGMA freelist_count").fetchone()
        (size,) = self._db.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * size)

    def enforce_cap(self) -> int:
        """Drop the oldest telemetry while the file is over its cap; return how many."""
        dropped = 0
        while self.used_bytes() > self.max_bytes:
            (count,) = self._db.execute("SELECT count(*) FROM telemetry").fetchone()
            if count == 0:
                break  # only alarms left: they are never dropped
            chunk = max(1, count // 20)
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            n = db.execute(
                "DELETE FROM telemetry WHERE seq IN "
                "(SELECT seq FROM telemetry ORDER BY seq LIMIT ?)",
                (chunk,),
            ).rowcount
            self._dropped += n
            self._set_meta("dropped_telemetry", str(self._dropped))
            db.execute("COMMIT")
            dropped += n
        return dropped

    def stats(self) -> OutboxStats:
        (depth, oldest) = self._db.execute("SELECT count(*), min(ts) FROM telemetry").fetchone()
        (alarms,) = self._db.execute("SELECT count(*) FROM alarms").fetchone()
        return OutboxStats(int(depth), int(alarms), oldest, self.used_bytes(), self._dropped)

    def close(self) -> None:
        self._db.close()
