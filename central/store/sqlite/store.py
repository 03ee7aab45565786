"""The embedded backend: the whole central store in one SQLite file.

Commits are durable when they return (WAL with ``synchronous=FULL``: the WAL is fsynced
at every commit), because the center acks what it has committed and the gateway then
deletes it: nothing acked may be lost to a power cut. SQLite has one writer at a time:
several ingest workers on one file are refused (``fleet central run --workers``); use
PostgreSQL for that.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from central.migrations import migrate_sqlite, sqlite_version
from central.store.api import Backend, Maintenance, Retention
from central.store.errors import StoreUnavailable
from central.store.sqlite.queries import SqliteQueries
from central.store.sqlite.writes import SqliteRound, translated
from edge_agent.sqlite_wal import use_wal

log = logging.getLogger(__name__)

RETENTION_BATCH = 50_000
"""Readings deleted per transaction by retention: the ingest round waits for one only."""


class SqliteStore(SqliteQueries):
    backend: ClassVar[Backend] = "sqlite"

    def __init__(self, path: Path | str) -> None:
        """Open the store at ``path`` (made if missing) and bring its schema to the latest
        version (``central.migrations``). ``StoreSchemaError`` if the file is a store of a
        newer release or not a central store: then nothing in it was changed."""
        self.label = str(path)
        try:
            # The ingest thread writes, the thread that opened it closes: one connection,
            # never used by two threads at once.
            conn = sqlite3.connect(str(path), check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {path}: {exc}") from exc
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            # before anything writes (the switch to WAL writes the header): a file this
            # version cannot use is left as it was
            sqlite_version(conn, str(path))
            use_wal(conn)
            # FULL: the WAL is fsynced at every commit, and the center acks only what it
            # has committed, after which the gateway deletes it. (NORMAL would fsync only at
            # checkpoints: a power cut could lose rows already acked.) One commit per ingest
            # round of up to hundreds of batches keeps the fsyncs few.
            conn.execute("PRAGMA synchronous=FULL")
            # A big page cache keeps the readings index in memory; fewer, larger
            # checkpoints cost fewer fsyncs at tens of thousands of rows a second.
            conn.execute("PRAGMA cache_size=-65536")
            conn.execute("PRAGMA wal_autocheckpoint=10000")
            migrate_sqlite(conn, str(path))
        except sqlite3.Error as exc:
            conn.close()
            raise StoreUnavailable(f"cannot open {path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    @contextmanager
    def round(self) -> Iterator[SqliteRound]:
        """One round's transaction. IMMEDIATE takes the write lock now, waiting up to
        busy_timeout for it, rather than failing half-way through the round. A transaction
        a failed round left open is rolled back first: none of it was acked."""
        conn = self.conn
        try:
            if conn.in_transaction:
                conn.rollback()
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc
        try:
            yield SqliteRound(conn)
            conn.commit()
        except BaseException as exc:
            try:
                if conn.in_transaction:
                    conn.rollback()
            except sqlite3.Error as err:  # the next round's begin tries again
                log.warning("rolling back a failed round failed too: %s", err)
            error = translated(exc)
            if error is exc:
                raise
            raise error from exc

    def maintain(self, retention: Retention, now: float | None = None) -> Maintenance:
        """Delete raw readings and rollups past their retention, a batch per transaction
        (SQLite has no partitions to drop)."""
        now = time.time() if now is None else now
        readings = rollups = 0
        try:
            if retention.raw_s is not None:
                readings = self._delete_batched(
                    "DELETE FROM readings WHERE (gateway, stream, seq) IN (SELECT gateway, "
                    "stream, seq FROM readings WHERE ts < ? LIMIT ?)",
                    now - retention.raw_s,
                )
            if retention.rollups_s is not None:
                rollups = self._delete_batched(
                    "DELETE FROM rollups_1m WHERE (gateway, device, point, minute) IN (SELECT "
                    "gateway, device, point, minute FROM rollups_1m WHERE minute < ? LIMIT ?)",
                    now - retention.rollups_s,
                )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc
        return Maintenance(readings_deleted=readings, rollups_deleted=rollups)

    def _delete_batched(self, sql: str, cutoff: float) -> int:
        deleted = 0
        while True:
            with self.conn:
                n = self.conn.execute(sql, (cutoff, RETENTION_BATCH)).rowcount
            deleted += n
            if n < RETENTION_BATCH:
                return deleted

    def close(self) -> None:
        self.conn.close()
