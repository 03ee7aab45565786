"""The central store: readings, alarm events and the fleet registry in one SQLite file.

The primary key of readings and alarm events is ``(gateway, stream, seq)``: a batch the
gateway resends (it always may: delivery is at-least-once) lands on rows that exist and
is dropped by ``INSERT OR IGNORE``, which makes delivery effectively-once. Timestamps
are the edge's; the center never re-stamps a reading.

Values are stored as they came: numbers, strings, booleans (0/1, ``is_bool = 1``) and
null. An integer beyond SQLite's signed 64 bits (a uint64 point such as a counter, or its
0xFFFFFFFFFFFFFFFF "not available" marker) is stored exactly, as its decimal digits in
TEXT, with ``is_bool = 2`` in ``readings`` so that ``readings()`` gives the integer back.

Commits are durable when they return (WAL with ``synchronous=FULL``: the WAL is fsynced
at every commit), because the center acks what it has committed and the gateway then
deletes it: nothing acked may be lost to a power cut.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from central.migrations import DEAD_LETTER_BYTES, migrate_sqlite, sqlite_version
from edge_agent.contract import AlarmMessage, AlarmState, NamedRows, TelemetryBatch
from edge_agent.contract.alarms import DroppedRows
from edge_agent.sqlite_wal import use_wal

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
REJECTED_KEEP = 1000
"""Dead letters kept per gateway (the newest): a gateway sending garbage cannot push out
the others' dead letters."""
REJECTED_HEAD_BYTES = 4096
"""What a dead letter keeps of its payload: enough to see what it was; ``size`` and the
sha256 ``digest`` stand for the rest."""
REJECTED_ERROR_MAX = 1000  # characters of the error kept (it may quote the payload)
REJECTED_MAX_BYTES = 64 * 1024 * 1024
"""Bytes of dead letters (topic, error, payload head) kept in all, the newest: gateway ids
are many (anyone may make one up), so only a cap on the whole table bounds the disk."""
VALUE_BOOL, VALUE_BIG_INT = 1, 2  # readings.is_bool
_KEPT = DEAD_LETTER_BYTES
"""What one dead letter keeps, in bytes (the triggers of the migrations count the same)."""


def cell(value: Any) -> Any:
    """``value`` as SQLite can bind it: an integer beyond 64 bits as its exact decimal text,
    a list or object (an unexpected extra field of an alarm event) as JSON text."""
    kind = type(value)
    if kind is int:
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    if value is None or kind is bool or kind is float or kind is str:
        return value
    return json.dumps(value)


@dataclass(frozen=True, slots=True)
class StoredReading:
    gateway: str
    device: str
    point: str
    value: Any
    unit: str | None
    quality: str
    reason: str | None
    ts: float
    stream: str
    seq: int

    def to_json(self) -> dict[str, Any]:
        return {
            "gateway": self.gateway,
            "device": self.device,
            "point": self.point,
            "value": self.value,
            "unit": self.unit,
            "quality": self.quality,
            "reason": self.reason,
            "ts": self.ts,
            "stream": self.stream,
            "seq": self.seq,
        }


class Store:
    def __init__(self, path: Path | str) -> None:
        """Open the store at ``path`` (made if missing) and bring its schema to the latest
        version (``central.migrations``). ``StoreSchemaError`` if the file is a store of a
        newer release or not a central store: then nothing in it was changed."""
        # The ingest thread writes, the thread that opened it closes: one connection,
        # never used by two threads at once.
        conn = sqlite3.connect(str(path), check_same_thread=False)
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
        except BaseException:
            conn.close()
            raise
        self.db = sqlite_utils.Database(conn)

    # --- writes (one transaction per ingest round, committed before acks go out) -------

    def begin(self) -> None:
        """Start a round's transaction. IMMEDIATE takes the write lock now, waiting up to
        busy_timeout for it, rather than failing half-way through the round. A transaction
        a failed round left open is rolled back first: none of it was acked."""
        if self.db.conn.in_transaction:
            self.db.conn.rollback()
        self.db.conn.execute("BEGIN IMMEDIATE")

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """One message inside the round: on an error, undo its writes only, and re-raise."""
        conn = self.db.conn
        conn.execute("SAVEPOINT message")
        try:
            yield
        except BaseException:
            # An I/O error or a full disk may have rolled back the whole transaction and
            # its savepoints: then ROLLBACK TO fails too, and the round fails as a whole.
            conn.execute("ROLLBACK TO message")
            conn.execute("RELEASE message")
            raise
        conn.execute("RELEASE message")

    def rollback(self) -> None:
        self.db.conn.rollback()

    def insert_telemetry(self, batch: TelemetryBatch) -> int:
        gw, stream, seq = batch.gw, batch.stream, batch.seq_first
        rows = []
        for i, r in enumerate(batch.readings):
            v: Any = r.get("v")
            kind = v.__class__
            if kind is bool:
                tag = VALUE_BOOL
            elif kind is int and not INT64_MIN <= v <= INT64_MAX:
                v, tag = str(v), VALUE_BIG_INT
            else:
                tag = 0
            u, q, why, ts = r.get("u"), r["q"], r.get("r"), r["ts"]
            rows.append((gw, stream, seq + i, r["dev"], r["pt"], v, u, q, why, ts, tag))
        cur = self.db.conn.executemany(
            "INSERT OR IGNORE INTO readings "
            "(gateway, stream, seq, device, point, value, unit, quality, reason, ts, is_bool) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return int(cur.rowcount)

    def insert_alarm(self, message: AlarmMessage) -> int:
        dropped = message.event.dropped
        if message.event.rule == "outbox.dropped" and dropped is not None:
            self._insert_loss(message, dropped)
        stored = self._insert_alarm_event(message)
        if stored:
            self._update_alarm(message)
        return stored

    def _insert_loss(self, message: AlarmMessage, d: DroppedRows) -> None:
        """The gateway says exactly which readings it had to drop: keep that for operators."""
        self.db.conn.execute(
            "INSERT OR IGNORE INTO losses (gateway, stream, first_seq, last_seq, count, "
            "ts_first, ts_last, cause, reported) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.gw,
                message.stream,
                cell(d.first),
                cell(d.last),
                cell(d.count),
                d.ts_first,
                d.ts_last,
                str(d.cause),
                message.event.ts,
            ),
        )

    def insert_rejected(
        self, gateway: str, topic: str, payload: bytes, error: str, rows: NamedRows | None
    ) -> int:
        """Keep a message the store could not take as a dead letter for operators (``fleet
        rejected``): its first ``REJECTED_HEAD_BYTES``, its size and the sha256 of all of
        it; the same message sent again counts ``times``. A gateway keeps its newest
        ``REJECTED_KEEP`` dead letters, and all of them together at most
        ``REJECTED_MAX_BYTES``: return how many older ones made room."""
        digest = hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()
        now = time.time()
        if len(error) > REJECTED_ERROR_MAX:
            error = error[: REJECTED_ERROR_MAX - 1] + "…"
        self.db.conn.execute(
            "INSERT INTO rejected (gateway, digest, topic, error, payload, size, stream, "
            "seq_first, seq_last, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (gateway, digest) DO UPDATE SET last_seen = excluded.last_seen, "
            "times = rejected.times + 1",
            (
                gateway,
                digest,
                topic,
                error.encode("utf-8", "backslashreplace").decode(),
                payload[:REJECTED_HEAD_BYTES],
                len(payload),
                rows.stream if rows else None,
                rows.first if rows else None,
                rows.last if rows else None,
                now,
                now,
            ),
        )
        pruned = self.db.conn.execute(
            "DELETE FROM rejected WHERE gateway = ? AND digest IN (SELECT digest FROM rejected "
            "WHERE gateway = ? ORDER BY last_seen DESC LIMIT -1 OFFSET ?)",
            (gateway, gateway, REJECTED_KEEP),
        )
        return pruned.rowcount + self._prune_rejected_bytes()

    def _prune_rejected_bytes(self) -> int:
        """Past ``REJECTED_MAX_BYTES`` in all, delete the oldest dead letters down to 90 %
        of it: the total is a counter the triggers keep, so a dead letter costs no scan of
        the table, and the scan that prunes runs once per tenth of the cap, not each time."""
        ((total,),) = self.db.execute("SELECT bytes FROM rejected_bytes").fetchall()
        if total <= REJECTED_MAX_BYTES:
            return 0
        cur = self.db.conn.execute(
            "DELETE FROM rejected WHERE (gateway, digest) IN (SELECT gateway, digest FROM "
            f"(SELECT gateway, digest, sum({_KEPT}) OVER (ORDER BY last_seen DESC, gateway, "
            "digest ROWS UNBOUNDED PRECEDING) AS newer FROM rejected) WHERE newer > ?)",
            (REJECTED_MAX_BYTES * 9 // 10,),
        )
        return int(cur.rowcount)

    def rejected(self, gateway: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters, newest first; ``payload`` as bytes."""
        where, args = _filters(gateway=gateway)
        sql = "SELECT * FROM rejected" + (" WHERE " + " AND ".join(where) if where else "")
        return list(self.db.query(sql + " ORDER BY last_seen DESC LIMIT ?", [*args, limit]))

    def losses(self, gateway: str | None = None) -> list[dict[str, Any]]:
        where, args = _filters(gateway=gateway)
        sql = "SELECT * FROM losses" + (" WHERE " + " AND ".join(where) if where else "")
        return list(self.db.query(sql + " ORDER BY gateway, stream, first_seq", args))

    def _update_alarm(self, message: AlarmMessage) -> None:
        """The current state of each alarm, as its latest transition left it."""
        event = message.event
        if event.action is not None or "action" in event.extra:
            return  # an action's result is history, not a transition
        state = event.state
        if state in (AlarmState.SHELVED, AlarmState.UNSHELVED):
            shelved_until = event.shelved_until if state is AlarmState.SHELVED else None
            self.db.conn.execute(
                "UPDATE alarms SET shelved_until = ?, events = events + 1 "
                "WHERE gateway = ? AND alarm_id = ?",
                (shelved_until, message.gw, event.id),
            )
            return
        since = event.since  # when the occurrence began, on every event of a rule's alarm
        if since is None:
            new = state is AlarmState.ACTIVE and not event.retrigger and not event.reannounced
            since = event.ts if new else None
        self.db.conn.execute(
            "INSERT INTO alarms (gateway, alarm_id, rule, device, severity, state, value, since, "
            "ts, msg, occurrence, acked_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (gateway, alarm_id) DO UPDATE SET state = excluded.state, "
            "value = excluded.value, ts = excluded.ts, msg = excluded.msg, "
            "severity = excluded.severity, occurrence = excluded.occurrence, "
            "acked_by = excluded.acked_by, since = coalesce(excluded.since, alarms.since), "
            "events = alarms.events + 1 WHERE excluded.ts >= alarms.ts",
            (
                message.gw,
                event.id,
                event.rule,
                event.dev,
                event.severity.value,
                state.value,
                cell(event.value),
                since,
                event.ts,
                event.msg,
                cell(event.occurrence),
                event.acked_by,
            ),
        )

    def alarms(
        self, gateway: str | None = None, states: list[str] | None = None
    ) -> list[dict[str, Any]]:
        where, args = _filters(gateway=gateway)
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            args += states
        sql = "SELECT * FROM alarms" + (" WHERE " + " AND ".join(where) if where else "")
        return list(self.db.query(sql + " ORDER BY ts DESC", args))

    def alarm_history(self, gateway: str, alarm_id: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT body FROM alarm_events WHERE gateway = ? AND alarm_id = ? ORDER BY stream, seq",
            [gateway, alarm_id],
        )
        return [json.loads(r["body"]) for r in rows]

    def _insert_alarm_event(self, message: AlarmMessage) -> int:
        event = message.event
        cur = self.db.conn.execute(
            "INSERT OR IGNORE INTO alarm_events (gateway, stream, seq, alarm_id, rule, device, "
            "severity, state, value, ts, msg, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.gw,
                message.stream,
                message.seq,
                event.id,
                event.rule,
                event.dev,
                event.severity.value,
                event.state.value,
                cell(event.value),
                event.ts,
                event.msg,
                json.dumps(message.to_json()),
            ),
        )
        return int(cur.rowcount)

    def seen(self, gateways: Iterable[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.db.conn.executemany(
            "INSERT INTO gateways (id, last_seen) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen",
            [(gw, now) for gw in set(gateways)],
        )

    def update_state(self, gw: str, state: dict[str, Any]) -> None:
        row: dict[str, Any] = {"id": gw, "online": 1 if state.get("online") else 0}
        if state.get("online"):
            row.update(
                site=cell(state.get("site")),
                agent_version=cell(state.get("agent_version")),
                config_rev=cell(state.get("config_rev")),
                started=cell(state.get("started")),
                stream=cell(state.get("stream")),
                state=json.dumps(state),
            )
        self.db.table("gateways").upsert(row, pk="id")

    def update_health(self, gw: str, health: dict[str, Any]) -> None:
        outbox = health.get("outbox")
        outbox = outbox if isinstance(outbox, dict) else {}
        dropped = health.get("dropped")
        dropped = dropped if isinstance(dropped, dict) else {}
        self.db.table("gateways").upsert(
            {
                "id": gw,
                "outbox_depth": cell(outbox.get("depth")),
                "outbox_oldest_age_s": cell(outbox.get("oldest_age_s")),
                "dropped_telemetry": cell(dropped.get("telemetry")),
                "health": json.dumps(health),
            },
            pk="id",
        )

    def commit(self) -> None:
        self.db.conn.commit()

    # --- queries -----------------------------------------------------------------------

    def gateways(self) -> list[dict[str, Any]]:
        """Each gateway's row; ``tags`` as its last online state sent them (any JSON: the
        contract does not check them, so neither does the store), ``{}`` if none came."""
        return [
            {
                **{k: v for k, v in row.items() if k != "state"},
                "online": bool(row["online"]),
                "tags": _tags(row["state"]),
            }
            for row in self.db.query(
                "SELECT id, site, online, agent_version, config_rev, started, stream, last_seen, "
                "outbox_depth, outbox_oldest_age_s, dropped_telemetry, state "
                "FROM gateways ORDER BY id"
            )
        ]

    def readings(
        self,
        gateway: str | None = None,
        device: str | None = None,
        point: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[StoredReading]:
        where, args = _filters(gateway=gateway, device=device, point=point)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        sql = (
            "SELECT gateway, device, point, value, unit, quality, reason, ts, stream, seq, is_bool "
            "FROM readings"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY ts DESC, seq DESC LIMIT ?"
        )
        out = []
        for row in self.db.execute(sql, [*args, limit]).fetchall():
            *fields, tag = row
            if tag == VALUE_BOOL and fields[3] is not None:
                fields[3] = bool(fields[3])
            elif tag == VALUE_BIG_INT and isinstance(fields[3], str):
                fields[3] = int(fields[3])
            out.append(StoredReading(*fields))
        return out

    def sequence_keys(self, gateway: str) -> set[tuple[str, int]]:
        """Every ``(stream, seq)`` stored for a gateway: what delivery tests compare against."""
        rows = self.db.execute(
            "SELECT stream, seq FROM readings WHERE gateway = ?", [gateway]
        ).fetchall()
        return {(str(s), int(q)) for s, q in rows}

    def close(self) -> None:
        self.db.close()


def _tags(state: str | None) -> Any:
    """The ``tags`` of a stored state (JSON text written by ``update_state``)."""
    saved = json.loads(state) if state else {}
    return saved.get("tags", {}) if isinstance(saved, dict) else {}


def _filters(**eq: str | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for column, value in eq.items():
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    return where, args


def count_rows(store: Store, table: str) -> int:
    (n,) = store.db.execute(f"SELECT count(*) FROM [{table}]").fetchone()
    return int(n)
