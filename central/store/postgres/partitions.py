"""Partitions of ``readings`` (one per UTC day, RANGE on ``ts``) and retention.

``maintain()`` creates the partitions from yesterday to ``AHEAD_DAYS`` days from now, so
that ingest normally finds its day there (the contract refuses times more than a day ahead).
A batch that names a recent day without a partition (a gateway back after up to
``RECENT_DAYS`` days offline) gets one on demand, before the round writes ``readings``. Days
older than that go to the default partition ``readings_default`` (version 7): the contract
lets a time be anything from 2000 on, and a partition per day named would let one hostile
batch of 2,000 readings make 2,000 tables (and every query of the fleet plan over them).
Such a day never gets a partition later (its rows are in the default one; ``create_days``
checks), and retention deletes its rows from the default partition. Partitions are created
on a connection of their own in a short transaction under
``pg_advisory_xact_lock(PARTITION_LOCK)`` (``CREATE TABLE IF NOT EXISTS … PARTITION OF``):
workers creating the same day at once do not fail, and the round's transaction never waits
on its own DDL. Which partitions exist is cached.

Retention drops whole partitions whose day ended more than ``Retention.raw_s`` ago (a ``DROP
TABLE`` is instant, where a ``DELETE`` of millions of rows is not); rollups older than
``rollups_s`` are deleted row by row (they are few).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

DAY = 86_400
AHEAD_DAYS = 7
RECENT_DAYS = 7
"""How far back a day still gets a partition of its own on demand."""
DEFAULT = "readings_default"
PARTITION_LOCK = 0x45466373_00000002
LOCK_TIMEOUT = "10s"
"""How long creating or dropping a partition waits for other sessions' locks on
``readings`` (it needs the table to itself for a moment) before the store says it is
unavailable, rather than queueing every reader behind it."""
_NAME = re.compile(r"^readings_d(\d+)$")


def partition_name(day: int) -> str:
    """``day`` is days since 1970-01-01 (UTC)."""
    return f"readings_d{day}"


def day_of(ts: float) -> int:
    return int(ts // DAY)


def existing_days(conn: psycopg.Connection[tuple[Any, ...]]) -> set[int]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'readings'::regclass"
    ).fetchall()
    days = set()
    for (name,) in rows:
        m = _NAME.match(str(name))
        if m:
            days.add(int(m.group(1)))
    return days


def create_days(conn: psycopg.Connection[tuple[Any, ...]], days: set[int]) -> int:
    """Create the partitions of ``days`` (``conn``: autocommit); how many were new."""
    if not days:
        return 0
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
        have = existing_days(conn)
        made = 0
        for day in sorted(days - have):
            held = conn.execute(
                f"SELECT 1 FROM {DEFAULT} WHERE ts >= %s AND ts < %s LIMIT 1",
                (day * DAY, (day + 1) * DAY),
            ).fetchone()
            if held:  # its rows are in the default partition: the day stays there
                continue
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF readings "
                f"FOR VALUES FROM ({day * DAY}) TO ({(day + 1) * DAY})"
            )
            made += 1
    return made


def drop_before(conn: psycopg.Connection[tuple[Any, ...]], cutoff: float) -> tuple[int, int]:
    """Drop every partition whose day ends at or before ``cutoff``, and delete the default
    partition's readings older than it: (partitions dropped, readings removed)."""
    dropped = readings = 0
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
        for day in sorted(existing_days(conn)):
            if (day + 1) * DAY > cutoff:
                continue
            row = conn.execute(f"SELECT count(*) FROM {partition_name(day)}").fetchone()
            readings += int(row[0]) if row else 0
            conn.execute(f"DROP TABLE {partition_name(day)}")
            dropped += 1
        cur = conn.execute(f"DELETE FROM {DEFAULT} WHERE ts < %s", (cutoff,))
        readings += max(cur.rowcount, 0)
    return dropped, readings


def on_demand(days: set[int], now: float | None = None) -> set[int]:
    """Of the days a round names, those that get a partition of their own if missing: from
    ``RECENT_DAYS`` ago to tomorrow (the rest go to the default partition)."""
    today = day_of(time.time() if now is None else now)
    return {d for d in days if today - RECENT_DAYS <= d <= today + 1}


def ahead(now: float | None = None) -> set[int]:
    today = day_of(time.time() if now is None else now)
    return set(range(today - 1, today + AHEAD_DAYS + 1))
