"""The outbox's two lanes of rows: readings (``telemetry``) and alarm events (``alarms``).

Rows are numbered per lane by AUTOINCREMENT, so a sequence number is never reused within
a stream even after every row has been deleted.

Rows leave only when the center acknowledges their range (``delete``) or, telemetry
only, when the outbox outgrows its bounds (``enforce_bounds``): older than ``max_age_s``,
or over ``max_bytes``, oldest first, down to 90 % of the cap so that drops come in few,
large rounds. Every drop writes a notice into the alarms lane in the same transaction,
so the center learns exactly which sequence numbers were lost, and when they were taken.

On a full disk, readings may take all of the file's ballast but a quarter
(``ALARM_RESERVE``); alarm events and states take the rest, and the oldest telemetry is
dropped in growing rounds until they fit (``make_room``): readings are given up for
alarms, never the other way round.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import TypeVar

from edge_agent.contract.alarms import DroppedRows, encode_alarm_body
from edge_agent.outbox.notices import dropped_notice
from edge_agent.outbox.store import OutboxFile, OutboxFull, unless_disk_full

log = logging.getLogger(__name__)
T = TypeVar("T")


class Lane(StrEnum):
    """Alarms go ahead of telemetry and are never dropped."""

    ALARMS = "alarms"
    TELEMETRY = "telemetry"


CAP_LOW_WATER = 0.9
"""Past the cap, drop down to this fraction of it: one drop round per ~10 % of growth."""


ALARM_ROOM_ROUNDS = 6
"""Drop rounds an alarm write may take on a full disk, each 8 times the last (64 rows first)."""
ALARM_RESERVE = 0.25
"""Share of the ballast readings may not take: kept for alarms (and deletes), which get the
room to drop telemetry from it once readings have spent the rest."""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    alarms_depth: int
    oldest_ts: float | None
    bytes: int
    dropped_telemetry: int


class Lanes:
    """The rows of both lanes, and the bounds of the telemetry lane."""

    def __init__(self, file: OutboxFile, max_bytes: int, max_age_s: float | None = None) -> None:
        self.file = file
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._dropped = int(file.meta("dropped_telemetry") or 0)

    def append(self, lane: Lane, rows: Sequence[tuple[float, str]]) -> int:
        """Commit ``(ts, json_body)`` rows in one transaction; return the last seq given.

        On a full disk: give back the ballast, drop the oldest telemetry to make room,
        and try once more (alarms: in growing rounds, see ``_make_room``); if that fails
        too, raise ``OutboxFull`` (nothing was written).
        """
        if not rows:
            return self.last_seq(lane)
        if lane is Lane.ALARMS:
            return self.make_room(lambda: self._insert(lane, rows), 64, ALARM_ROOM_ROUNDS)
        keep = int(self.file.ballast_bytes * ALARM_RESERVE)
        return self.make_room(lambda: self._insert(lane, rows), len(rows), 1, keep)

    def make_room(self, fn: Callable[[], T], need: int, rounds: int, keep: int = 0) -> T:
        """Run ``fn`` (one transaction). On a full disk give back the ballast (all but
        ``keep`` bytes), then, up to ``rounds`` times, drop the oldest telemetry (``need``
        rows, 8 times more each round) and run ``fn`` again. ``OutboxFull`` if there was
        no room even so."""
        result = unless_disk_full(fn)
        if not isinstance(result, sqlite3.OperationalError):
            return result
        last = result
        self.file.release_ballast(keep)
        n = max(1, need)
        for _ in range(rounds):
            dropped = unless_disk_full(partial(self._drop_oldest, n, "disk full"))
            if isinstance(dropped, sqlite3.OperationalError):
                last = dropped  # the drop found no room either; what is free may still do
            result = unless_disk_full(fn)
            if not isinstance(result, sqlite3.OperationalError):
                return result
            last = result
            if self.first_seq(Lane.TELEMETRY) is None:
                break  # no telemetry left to give up
            n *= 8
        raise OutboxFull(str(last))

    def _insert(self, lane: Lane, rows: Sequence[tuple[float, str]]) -> int:
        with self.file.tx():
            self.file.db.executemany(f"INSERT INTO {lane.value}(ts, body) VALUES (?, ?)", rows)
            (last,) = self.file.db.execute("SELECT last_insert_rowid()").fetchone()
        return int(last)

    def last_seq(self, lane: Lane) -> int:
        row = self.file.db.execute("SELECT seq FROM sqlite_sequence WHERE name=?", (lane.value,))
        found = row.fetchone()
        return int(found[0]) if found else 0

    def first_seq(self, lane: Lane) -> int | None:
        (first,) = self.file.db.execute(f"SELECT min(seq) FROM {lane.value}").fetchone()
        return None if first is None else int(first)

    def fetch(self, lane: Lane, start: int, stop: int | None, limit: int) -> list[tuple[int, str]]:
        """Rows with ``start <= seq < stop`` in order, cut at the first gap in seq.

        A telemetry batch numbers its readings implicitly from ``seq_first``, so one
        batch must be a run of consecutive sequence numbers.
        """
        if stop is None:
            cur = self.file.db.execute(
                f"SELECT seq, body FROM {lane.value} WHERE seq >= ? ORDER BY seq LIMIT ?",
                (start, limit),
            )
        else:
            cur = self.file.db.execute(
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
            with self.file.tx():
                for first, last in spans:
                    n += self.file.db.execute(
                        f"DELETE FROM {lane.value} WHERE seq BETWEEN ? AND ?", (first, last)
                    ).rowcount
            return n

        return self.file.with_room(delete, 0, "acknowledged rows kept for now")

    def enforce_bounds(self, now: float | None = None) -> list[DroppedRows]:
        """Drop telemetry past ``max_age_s`` or the size cap, oldest first; alarms stay."""
        return self.file.with_room(lambda: self._enforce_bounds(now), [], "bounds not enforced")

    def _enforce_bounds(self, now: float | None) -> list[DroppedRows]:
        dropped: list[DroppedRows] = []
        if self.max_age_s is not None:
            cutoff = (time.time() if now is None else now) - self.max_age_s
            # Only the oldest run in which every row is too old: one reading stamped by a
            # wrong clock (a PLC's, a gateway's before NTP) must not take the newer ones
            # with it; it goes once everything before it is old too.
            young = self.file.db.execute(
                "SELECT seq FROM telemetry WHERE ts >= ? ORDER BY seq LIMIT 1", (cutoff,)
            ).fetchone()
            if young is None:
                (n,) = self.file.db.execute("SELECT count(*) FROM telemetry").fetchone()
            else:
                (n,) = self.file.db.execute(
                    "SELECT count(*) FROM telemetry WHERE seq < ?", (young[0],)
                ).fetchone()
            if n:
                dropped += self._drop_oldest(int(n), "age")
        used = self.file.used_bytes()
        if used > self.max_bytes:
            (count,) = self.file.db.execute("SELECT count(*) FROM telemetry").fetchone()
            if count:
                # rows are of similar size: drop the share that brings us to the low-water mark
                share = 1 - CAP_LOW_WATER * self.max_bytes / used
                dropped += self._drop_oldest(max(1, int(count * share) + 1), "cap")
        return dropped

    def _drop_oldest(self, n: int, cause: str) -> list[DroppedRows]:
        with self.file.tx():
            row = self.file.db.execute(
                "SELECT min(seq), max(seq), count(*), min(ts), max(ts) FROM "
                "(SELECT seq, ts FROM telemetry ORDER BY seq LIMIT ?)",
                (n,),
            ).fetchone()
            if not row or row[2] == 0:
                return []
            first, last, count, ts_first, ts_last = row
            self.file.db.execute("DELETE FROM telemetry WHERE seq BETWEEN ? AND ?", (first, last))
            drop = DroppedRows(first, last, count, ts_first, ts_last, cause)
            notice = dropped_notice(drop)
            self.file.db.execute(
                "INSERT INTO alarms(ts, body) VALUES (?, ?)",
                (notice.ts, encode_alarm_body(notice)),
            )
            total = self._dropped + count
            self.file.set_meta("dropped_telemetry", str(total))
        self._dropped = total  # only once the drop is committed: a failed one lost nothing
        log.warning(
            "outbox %s: dropped telemetry seq %d..%d (%d readings)", cause, first, last, count
        )
        return [drop]

    def stats(self) -> OutboxStats:
        (depth, oldest) = self.file.db.execute("SELECT count(*), min(ts) FROM telemetry").fetchone()
        (alarms,) = self.file.db.execute("SELECT count(*) FROM alarms").fetchone()
        return OutboxStats(int(depth), int(alarms), oldest, self.file.used_bytes(), self._dropped)
