"""The SQLite backend's unit of work: one ingest round in one ``BEGIN IMMEDIATE``
transaction, one SAVEPOINT per message.

The primary key of readings and alarm events is ``(gateway, stream, seq)``: a batch the
gateway resends (it always may: delivery is at-least-once) lands on rows that exist and
is dropped by ``INSERT OR IGNORE``, which makes delivery effectively-once; SQLite has one
writer at a time, so several writers cannot race past it either. Timestamps are the
edge's; the center never re-stamps a reading.

Values are stored as they came: numbers, strings, booleans (0/1, ``is_bool = 1``) and
null. An integer beyond SQLite's signed 64 bits (a uint64 point such as a counter, or its
0xFFFFFFFFFFFFFFFF "not available" marker) is stored exactly, as its decimal digits in
TEXT, with ``is_bool = 2`` in ``readings`` so that queries give the integer back.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from central.migrations import DEAD_LETTER_BYTES
from central.store.api import RoundCounts
from central.store.conflicts import Conflict, conflict, same_event
from central.store.errors import MessageRejected, StoreUnavailable
from central.store.limits import (
    REJECTED_ERROR_MAX,
    REJECTED_HEAD_BYTES,
    REJECTED_KEEP,
    REJECTED_MAX_BYTES,
    REJECTED_WHOLE_BYTES,
)
from central.store.sqlite.cells import (
    INT64_MAX,
    INT64_MIN,
    VALUE_BIG_INT,
    VALUE_BOOL,
    cell,
    inexact,
)
from edge_agent.contract import AlarmMessage, AlarmState, NamedRows, TelemetryBatch
from edge_agent.contract.alarms import DroppedRows

_KEPT = DEAD_LETTER_BYTES
"""What one dead letter keeps, in bytes (the triggers of the migrations count the same)."""


ROLLUP_UPSERT = (
    "INSERT INTO rollups_1m (gateway, device, point, minute, count, sum, min, max) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway, device, point, minute) DO UPDATE "
    "SET count = rollups_1m.count + excluded.count, sum = rollups_1m.sum + excluded.sum, "
    "min = min(rollups_1m.min, excluded.min), max = max(rollups_1m.max, excluded.max)"
)


def rollups(rows: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The 1-minute rollups of reading rows (as ``insert_telemetry`` makes them), per
    point per minute: numbers, and booleans as 0/1; text, null and big integers are not
    aggregated."""
    acc: dict[tuple[str, str, str, int], list[float]] = {}
    for gw, _stream, _seq, dev, pt, v, _u, _q, _why, ts, tag in rows:
        if tag == VALUE_BIG_INT or v is None or v.__class__ is str:
            continue
        x = float(v)
        key = (gw, dev, pt, int(ts // 60) * 60)
        a = acc.get(key)
        if a is None:
            acc[key] = [1, x, x, x]
        else:
            a[0] += 1
            a[1] += x
            a[2] = min(a[2], x)
            a[3] = max(a[3], x)
    return [(*key, int(a[0]), *a[1:]) for key, a in acc.items()]


def store_fault(exc: BaseException) -> bool:
    """An error of the store itself (disk, locks, corruption) or of the machine, as opposed
    to one message it cannot take."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.ProgrammingError
    )


def translated(exc: BaseException) -> BaseException:
    """``exc`` as the store's own error: a fault of the store is ``StoreUnavailable``, an
    SQLite error about the data (or a value it cannot bind) ``MessageRejected``; anything
    else (a payload that breaks the contract) as it is."""
    if store_fault(exc):
        return StoreUnavailable(f"SQLite: {exc}")
    if isinstance(exc, sqlite3.Error | OverflowError | UnicodeEncodeError):
        return MessageRejected(f"{type(exc).__name__}: {exc}")
    return exc


class SqliteRound:
    """The writes of one round, inside the transaction ``SqliteStore.round`` opened."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.counts = RoundCounts()
        self.conflicts: list[Conflict] = []

    @contextmanager
    def message(self) -> Iterator[None]:
        """One message inside the round: on an error, undo its writes only, and raise it as
        the store's error (``translated``)."""
        conn = self.conn
        try:
            conn.execute("SAVEPOINT message")
        except sqlite3.Error as exc:
            raise translated(exc) from exc
        c = self.counts
        counts = (c.readings_stored, c.duplicates, c.alarms_stored, c.conflicts)
        conflicts = len(self.conflicts)
        try:
            yield
        except BaseException as exc:
            # An I/O error or a full disk may have rolled back the whole transaction and
            # its savepoints: then ROLLBACK TO fails too, and the round fails as a whole.
            try:
                conn.execute("ROLLBACK TO message")
                conn.execute("RELEASE message")
            except sqlite3.Error as err:
                raise StoreUnavailable(f"SQLite: {err}") from err
            c.readings_stored, c.duplicates, c.alarms_stored, c.conflicts = counts
            del self.conflicts[conflicts:]
            error = translated(exc)
            if error is exc:
                raise
            raise error from exc
        try:
            conn.execute("RELEASE message")
        except sqlite3.Error as exc:
            raise translated(exc) from exc

    def insert_telemetry(self, batch: TelemetryBatch) -> None:
        """Store the batch's readings that are not stored yet, and roll them up. Which
        are is asked first (one range lookup on the primary key, which holds the rows: a
        batch not stored yet costs no more than before): a resent batch, or one that
        overlaps a stored one, must count in no rollup twice; and a seq stored already
        is a duplicate only if it holds what is stored (``central.store.conflicts``)."""
        gw, stream, first = batch.gw, batch.stream, batch.seq_first
        stored_before = {
            row[0]: row[1:]
            for row in self.conn.execute(
                "SELECT seq, device, point, value, unit, quality, reason, ts, is_bool "
                "FROM readings WHERE gateway = ? AND stream = ? AND seq BETWEEN ? AND ?",
                (gw, stream, first, first + len(batch.readings) - 1),
            )
        }
        rows = []
        differ = []
        for i, r in enumerate(batch.readings):
            stored = stored_before.get(first + i)
            if stored is not None:
                if not _same_reading(stored, r):
                    differ.append(first + i)
                continue
            v: Any = r.get("v")
            kind = v.__class__
            if kind is bool:
                tag = VALUE_BOOL
            elif kind is int and not INT64_MIN <= v <= INT64_MAX:
                v, tag = str(v), VALUE_BIG_INT
            else:
                tag = 0
            u, q, why, ts = r.get("u"), r["q"], r.get("r"), r["ts"]
            rows.append((gw, stream, first + i, r["dev"], r["pt"], v, u, q, why, ts, tag))
        if rows:
            self.conn.executemany(
                "INSERT INTO readings "
                "(gateway, stream, seq, device, point, value, unit, quality, reason, ts, is_bool) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self.conn.executemany(ROLLUP_UPSERT, rollups(rows))
        self.counts.readings_stored += len(rows)
        self.counts.duplicates += len(batch.readings) - len(rows) - len(differ)
        found = conflict(gw, stream, False, differ, batch)
        if found is not None:
            self.conflicts.append(found)
            self.counts.conflicts += found.count

    def insert_alarm(self, message: AlarmMessage) -> None:
        dropped = message.event.dropped
        if message.event.rule == "outbox.dropped" and dropped is not None:
            self._insert_loss(message, dropped)
        stored = self._insert_alarm_event(message)
        if stored:
            self._update_alarm(message)
        else:
            self._compare_alarm_event(message)
        self.counts.alarms_stored += stored

    def _compare_alarm_event(self, message: AlarmMessage) -> None:
        """An event whose seq is stored: a duplicate, or a conflict if its fields differ."""
        row = self.conn.execute(
            "SELECT body FROM alarm_events WHERE gateway = ? AND stream = ? AND seq = ?",
            (message.gw, message.stream, message.seq),
        ).fetchone()
        if row is None or same_event(json.loads(row[0]), message.to_json()):
            return
        self.conflicts.append(
            Conflict(message.gw, message.stream, True, ((message.seq, message.seq),), message)
        )
        self.counts.conflicts += 1

    def _insert_loss(self, message: AlarmMessage, d: DroppedRows) -> None:
        """The gateway says exactly which readings it had to drop: keep that for operators."""
        self.conn.execute(
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
        self,
        gateway: str,
        topic: str,
        payload: bytes,
        error: str,
        rows: NamedRows | None,
        whole: bool = False,
    ) -> int:
        """Keep a message the store could not take as a dead letter for operators (``fleet
        rejected``): its first ``REJECTED_HEAD_BYTES`` (all of it if ``whole``), its size
        and the sha256 of all of it; the same message sent again counts ``times``. A
        gateway keeps its newest ``REJECTED_KEEP`` dead letters, and all of them together
        at most ``REJECTED_MAX_BYTES``: return how many older ones made room."""
        digest = hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()
        now = time.time()
        if whole:  # the gateway's at most REJECTED_KEEP rows, by the primary key's prefix
            ((held,),) = self.conn.execute(
                "SELECT coalesce(sum(length(payload)), 0) FROM rejected WHERE gateway = ?",
                (gateway,),
            )
            whole = held + len(payload) <= REJECTED_WHOLE_BYTES
        if len(error) > REJECTED_ERROR_MAX:
            error = error[: REJECTED_ERROR_MAX - 1] + "…"
        self.conn.execute(
            "INSERT INTO rejected (gateway, digest, topic, error, payload, size, stream, "
            "seq_first, seq_last, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (gateway, digest) DO UPDATE SET last_seen = excluded.last_seen, "
            "times = rejected.times + 1",
            (
                gateway,
                digest,
                topic,
                error.encode("utf-8", "backslashreplace").decode(),
                payload if whole else payload[:REJECTED_HEAD_BYTES],
                len(payload),
                rows.stream if rows else None,
                rows.first if rows else None,
                rows.last if rows else None,
                now,
                now,
            ),
        )
        pruned = self.conn.execute(
            "DELETE FROM rejected WHERE gateway = ? AND digest IN (SELECT digest FROM rejected "
            "WHERE gateway = ? ORDER BY last_seen DESC LIMIT -1 OFFSET ?)",
            (gateway, gateway, REJECTED_KEEP),
        )
        return pruned.rowcount + self._prune_rejected_bytes()

    def _prune_rejected_bytes(self) -> int:
        """Past ``REJECTED_MAX_BYTES`` in all, delete the oldest dead letters down to 90 %
        of it: the total is a counter the triggers keep, so a dead letter costs no scan of
        the table, and the scan that prunes runs once per tenth of the cap, not each time."""
        ((total,),) = self.conn.execute("SELECT bytes FROM rejected_bytes").fetchall()
        if total <= REJECTED_MAX_BYTES:
            return 0
        cur = self.conn.execute(
            "DELETE FROM rejected WHERE (gateway, digest) IN (SELECT gateway, digest FROM "
            f"(SELECT gateway, digest, sum({_KEPT}) OVER (ORDER BY last_seen DESC, gateway, "
            "digest ROWS UNBOUNDED PRECEDING) AS newer FROM rejected) WHERE newer > ?)",
            (REJECTED_MAX_BYTES * 9 // 10,),
        )
        return int(cur.rowcount)

    def _update_alarm(self, message: AlarmMessage) -> None:
        """The current state of each alarm, as its latest transition left it."""
        event = message.event
        if event.action is not None or "action" in event.extra:
            return  # an action's result is history, not a transition
        state = event.state
        if state in (AlarmState.SHELVED, AlarmState.UNSHELVED):
            shelved_until = event.shelved_until if state is AlarmState.SHELVED else None
            self.conn.execute(
                "UPDATE alarms SET shelved_until = ?, events = events + 1 "
                "WHERE gateway = ? AND alarm_id = ?",
                (shelved_until, message.gw, event.id),
            )
            return
        since = event.since  # when the occurrence began, on every event of a rule's alarm
        if since is None:
            new = state is AlarmState.ACTIVE and not event.retrigger and not event.reannounced
            since = event.ts if new else None
        self.conn.execute(
            "INSERT INTO alarms (gateway, alarm_id, rule, device, severity, state, value, since, "
            "ts, msg, occurrence, acked_by, exact) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (gateway, alarm_id) DO UPDATE SET state = excluded.state, "
            "value = excluded.value, exact = excluded.exact, ts = excluded.ts, msg = excluded.msg, "
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
                inexact({"value": event.value, "occurrence": event.occurrence}),
            ),
        )

    def _insert_alarm_event(self, message: AlarmMessage) -> int:
        event = message.event
        cur = self.conn.execute(
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
        self.conn.executemany(
            "INSERT INTO gateways (id, last_seen) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen",
            [(gw, now) for gw in set(gateways)],
        )

    def update_state(self, gateway: str, state: dict[str, Any], now: float | None = None) -> None:
        """The retained state (or the Last Will, ``{online: false}``): ``online_since``
        moves only when ``online`` flips; an offline state keeps what the online one said."""
        now = time.time() if now is None else now
        online = 1 if state.get("online") is True else 0
        self.conn.execute(
            "INSERT INTO gateways (id, online, online_since) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET online = excluded.online, online_since = "
            "CASE WHEN gateways.online IS excluded.online AND gateways.online_since IS NOT NULL "
            "THEN gateways.online_since ELSE excluded.online_since END",
            (gateway, online, now),
        )
        if not online:
            return
        tags = state.get("tags")
        self.conn.execute(
            "UPDATE gateways SET site = ?, agent_version = ?, config_rev = ?, started = ?, "
            "stream = ?, state = ?, tags = ? WHERE id = ?",
            (
                cell(state.get("site")),
                cell(state.get("agent_version")),
                cell(state.get("config_rev")),
                cell(state.get("started")),
                cell(state.get("stream")),
                json.dumps(state),
                # any JSON, as it came (the contract does not check tags): `fleet gateways`
                # shows what is not a mapping as it is; a tag filter matches only mappings
                None if tags is None else json.dumps(tags),
                gateway,
            ),
        )

    def update_health(self, gateway: str, health: dict[str, Any], now: float | None = None) -> None:
        """A health report: the gateway's backlog and drops, and each device's link."""
        now = time.time() if now is None else now
        outbox = health.get("outbox")
        outbox = outbox if isinstance(outbox, dict) else {}
        dropped = health.get("dropped")
        dropped = dropped if isinstance(dropped, dict) else {}
        self.conn.execute(
            "INSERT INTO gateways (id, outbox_depth, outbox_oldest_age_s, dropped_telemetry, "
            "health) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "outbox_depth = excluded.outbox_depth, "
            "outbox_oldest_age_s = excluded.outbox_oldest_age_s, "
            "dropped_telemetry = excluded.dropped_telemetry, health = excluded.health",
            (
                gateway,
                cell(outbox.get("depth")),
                cell(outbox.get("oldest_age_s")),
                cell(dropped.get("telemetry")),
                json.dumps(health),
            ),
        )
        devices = health.get("devices")
        if isinstance(devices, dict):
            self.conn.executemany(
                "INSERT INTO devices (gateway, device, link, last_good, error, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (gateway, device) DO UPDATE SET "
                "link = excluded.link, last_good = coalesce(excluded.last_good, "
                "devices.last_good), error = excluded.error, updated = excluded.updated",
                [
                    (gateway, *device_fields(dev, body), now)
                    for dev, body in devices.items()
                    if isinstance(body, dict)  # anything else says nothing of a device
                ],
            )


def _same_reading(stored: tuple[Any, ...], r: dict[str, Any]) -> bool:
    """Whether a stored row (``device, point, value, unit, quality, reason, ts, is_bool``)
    holds the reading ``r`` (``central.store.conflicts``): the value of the same type, a
    boolean as its 0/1 and tag, a big integer as its digits."""
    dev, pt, value, unit, quality, reason, ts, tag = stored
    if (dev, pt, unit, quality, reason) != (r["dev"], r["pt"], r.get("u"), r["q"], r.get("r")):
        return False
    if ts != r["ts"]:  # a REAL column: an integer time was stored as its float
        return False
    v = r.get("v")
    if tag == VALUE_BOOL:
        return v.__class__ is bool and bool(value) is v
    if tag == VALUE_BIG_INT:
        return v.__class__ is int and value == str(v)
    return v.__class__ is value.__class__ and v == value


def device_fields(
    device: str, body: dict[str, Any]
) -> tuple[str, str | None, float | None, str | None]:
    """``(device, link, last_good, error)`` of one device in a health report; fields of the
    wrong type are None (the contract checks the report's shape, not each device's)."""
    link, last_good, error = body.get("link"), body.get("last_good"), body.get("reason")
    return (
        str(device),
        link if isinstance(link, str) else None,
        float(last_good)
        if isinstance(last_good, int | float) and last_good is not True and last_good is not False
        else None,
        error if isinstance(error, str) else None,
    )
