"""One ingest round on PostgreSQL: a transaction, a SAVEPOINT per message.

Exactly-once without ``(gateway, stream, seq)`` as a key. PostgreSQL wants the partition
key (``ts``) in every unique index of a partitioned table, and ``(gateway, stream, seq,
ts)`` would not stop a resent reading (a gateway resends the same reading, but nothing
stops two readings with one seq and different times). So ``readings`` has no unique
index, and what was committed is kept beside it: ``readings_stored`` holds, per
``(gateway, stream)``, the disjoint seq ranges stored (adjacent ranges merged, so a
stream that arrives in order is one row). A round:

1. during its messages, checks every reading in Python (what PostgreSQL would refuse: a
   NUL in text, text that is not UTF-8) and keeps the batch aside; a bad one is
   ``MessageRejected`` at once, like any write of the message that fails;
2. before committing, creates the partitions its days lack (``partitions``), takes
   ``pg_advisory_xact_lock`` for each ``(gateway, stream)`` it writes, **sorted**, so
   that two workers never wait on each other in a cycle; reads the ranges stored of those
   streams; stores (COPY) only the readings not covered, upserts their 1-minute rollups
   (sorted), and records the new ranges; then the registry rows, sorted by gateway.
3. commits. The locks are held until then: a second worker with an overlapping batch
   waits, then sees the first's ranges and counts its readings as duplicates.

A covered seq is a duplicate only if it holds what is stored (``central.store.conflicts``):
the readings of covered seqs are looked for in ``readings`` by the index it has anyway
(``readings_by_point``: gateway, device, point, ts) with the rest of their content, all in
one query; one not found there is a conflict (the stored row stays). That costs nothing
while nothing is resent; a digest per stored reading would have cost every reading a hash
and a second write to save a lookup of the few resent after a lost ack. Covered by an
earlier batch of the same round, a seq is compared with that batch's row. A resent
reading whose partition retention has dropped is not found either: it is flagged as a
conflict (nothing is left to compare it with), where SQLite, whose retention deletes the
seq's row too, stores it again; only a gateway resending readings older than the raw
retention meets either.

The alternatives were worse: a dedup row per reading doubles the writes; a unique key on
``(gateway, stream, seq_first)`` of batches misses overlapping batches (an outbox may
re-batch after a restart); writing each batch at once under its lock makes workers
deadlock on each other's streams (a gateway's batches land on any worker).

Alarm events are few and their table is not partitioned: its primary key ``(gateway,
stream, seq)`` and ``ON CONFLICT DO NOTHING`` keep each once, written as they come.

Every error of psycopg is translated here: raised by a message's content (``DataError``,
``IntegrityError``, ``ProgrammingError``) it is ``MessageRejected`` out of ``message()``;
``OperationalError`` (the server gone, a deadlock, a timeout) and anything else of the
driver is ``StoreUnavailable``, and the round is rolled back.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from central.store.api import RoundCounts
from central.store.conflicts import Conflict, conflict, same_event
from central.store.errors import MessageRejected, StoreUnavailable
from central.store.limits import REJECTED_WHOLE_BYTES
from central.store.postgres import partitions
from edge_agent.contract import AlarmMessage, AlarmState, NamedRows, TelemetryBatch
from edge_agent.contract.alarms import DroppedRows

if TYPE_CHECKING:
    import psycopg


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
KIND_NULL, KIND_BOOL, KIND_INT, KIND_FLOAT, KIND_TEXT = 0, 1, 2, 3, 4
VALUE_KINDS = {
    KIND_NULL: "null",
    KIND_BOOL: "boolean",
    KIND_INT: "integer (any size)",
    KIND_FLOAT: "float",
    KIND_TEXT: "string",
}

REJECTED_KEEP = 1000
REJECTED_HEAD_BYTES = 4096
REJECTED_ERROR_MAX = 1000
REJECTED_MAX_BYTES = 64 * 1024 * 1024

COPY_READINGS = (
    "COPY readings (gateway, stream, seq, device, point, value, kind, unit, quality, "
    "reason, ts) FROM STDIN"
)


class ContentError(ValueError):
    """A message holds something PostgreSQL cannot keep."""


def text(value: str, what: str) -> str:
    """``value`` if PostgreSQL text can hold it (no NUL, valid UTF-8), else ContentError."""
    if "\x00" in value:
        raise ContentError(f"{what} holds a NUL character, which PostgreSQL text cannot")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ContentError(f"{what} is not valid UTF-8 text ({exc.reason})") from exc
    return value


def opt_text(value: object, what: str) -> str | None:
    """A text column from any JSON value: a string as it is, anything else as JSON."""
    if value is None:
        return None
    return text(value if isinstance(value, str) else json.dumps(value), what)


def opt_float(value: object) -> float | None:
    if type(value) in (int, float) and math.isfinite(float(value)):  # type: ignore[arg-type]
        return float(value)  # type: ignore[arg-type]
    return None


def opt_int(value: object) -> int | None:
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return value
    return None


def jsonb(value: Any, what: str) -> str:
    """``value`` as JSON text for a jsonb column: no NUL (jsonb cannot hold ``\\u0000``)."""
    out = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return text(out.replace("\\u0000", "\x00"), what)


def encode_value(v: Any) -> tuple[str | None, int]:
    kind = v.__class__
    if v is None:
        return None, KIND_NULL
    if kind is bool:
        return ("true" if v else "false"), KIND_BOOL
    if kind is int:
        return str(v), KIND_INT
    if kind is float:
        return repr(v), KIND_FLOAT
    if kind is str:
        return text(v, "a reading's value"), KIND_TEXT
    raise ContentError(f"a reading's value of type {kind.__name__} cannot be stored")


def decode_value(value: str | None, kind: int) -> Any:
    if value is None or kind == KIND_NULL:
        return None
    if kind == KIND_BOOL:
        return value == "true"
    if kind == KIND_INT:
        return int(value)
    if kind == KIND_FLOAT:
        return float(value)
    return value


def rollup_number(v: Any) -> float | None:
    """What a rollup counts of a value: numbers and booleans (as 0/1), as SQLite's
    migration 5 does (an integer past 64 bits is not a number there: neither here)."""
    kind = v.__class__
    if kind is bool or kind is float:
        return float(v)
    if kind is int and INT64_MIN <= v <= INT64_MAX:
        return float(v)
    return None


def lock_key(gateway: str, stream: str) -> int:
    """A stable signed 64-bit advisory lock key for a ``(gateway, stream)``."""
    digest = hashlib.blake2b(f"{gateway}\x1f{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


Row = tuple[Any, ...]


class _Staged:
    """What one message keeps aside until the round's end (dropped if it fails)."""

    __slots__ = ("batches", "devices", "gateway_ops")

    def __init__(self) -> None:
        self.batches: list[tuple[str, str, int, list[Row], TelemetryBatch]] = []
        self.gateway_ops: list[tuple[str, str, tuple[Any, ...]]] = []
        self.devices: dict[tuple[str, str], Row] = {}


class RoundHost(Protocol):
    """What a round needs of its ``PostgresStore`` (named so, not imported: the store
    imports this module)."""

    def translating(self) -> AbstractContextManager[None]: ...

    def translating_content(self) -> AbstractContextManager[None]: ...

    def unavailable(self, exc: BaseException) -> str: ...

    def ensure_partitions(self, days: Iterable[int]) -> int: ...


class PgRound:
    def __init__(self, store: RoundHost, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.store = store
        self.conn = conn
        self.counts = RoundCounts()
        self.conflicts: list[Conflict] = []
        self._round = _Staged()
        self._staged: _Staged | None = None
        self._seen: set[str] = set()
        self._seen_at: float = time.time()
        self._texts: set[str] = set()

    # --- messages ----------------------------------------------------------------------

    @contextmanager
    def message(self) -> Iterator[None]:
        import psycopg  # noqa: PLC0415 (loaded by the command that uses it)

        if self._staged is not None:
            raise RuntimeError("rnd.message() does not nest")
        staged = self._staged = _Staged()
        alarms_before = self.counts.alarms_stored
        conflicts_before = self.counts.conflicts, len(self.conflicts)
        with self.store.translating():
            self.conn.execute("SAVEPOINT message")
        try:
            yield
        except (
            ContentError,
            psycopg.DataError,
            psycopg.IntegrityError,
            psycopg.ProgrammingError,
        ) as exc:
            self._staged = None
            self.counts.alarms_stored = alarms_before
            self._undo_conflicts(*conflicts_before)
            with self.store.translating():
                self.conn.execute("ROLLBACK TO SAVEPOINT message")
                self.conn.execute("RELEASE SAVEPOINT message")
            raise MessageRejected(_why(exc)) from exc
        except psycopg.Error as exc:
            self._staged = None
            raise StoreUnavailable(self.store.unavailable(exc)) from exc
        except BaseException:
            self._staged = None
            self.counts.alarms_stored = alarms_before
            self._undo_conflicts(*conflicts_before)
            with self.store.translating():
                self.conn.execute("ROLLBACK TO SAVEPOINT message")
                self.conn.execute("RELEASE SAVEPOINT message")
            raise
        self._staged = None
        with self.store.translating():
            self.conn.execute("RELEASE SAVEPOINT message")
        self._round.batches += staged.batches
        self._round.gateway_ops += staged.gateway_ops
        self._round.devices.update(staged.devices)

    def _undo_conflicts(self, count: int, listed: int) -> None:
        self.counts.conflicts = count
        del self.conflicts[listed:]

    def _stage(self) -> _Staged:
        return self._staged if self._staged is not None else self._round

    # --- telemetry (kept aside, written at the end: see the module's docstring) --------

    def insert_telemetry(self, batch: TelemetryBatch) -> None:
        ok = self._texts
        gw = text(batch.gw, "the gateway id")
        stream = text(batch.stream, "the stream id")
        rows: list[Row] = []
        seq = batch.seq_first
        if seq < 1 or seq + len(batch.readings) - 1 > INT64_MAX:
            raise ContentError("seqs must be within 1..2**63-1")
        append = rows.append
        for i, r in enumerate(batch.readings):
            v = r.get("v")
            if v.__class__ is float:  # the common case first
                value: str | None = repr(v)
                kind = KIND_FLOAT
            else:
                value, kind = encode_value(v)
            dev, pt, q, u, why = r["dev"], r["pt"], r["q"], r.get("u"), r.get("r")
            # the same few names come again and again: each is checked once a round
            for name in (dev, pt, q, u, why):
                if name is not None and name not in ok:
                    ok.add(text(name, "a reading's dev, pt, q, u or r"))
            append((gw, stream, seq + i, dev, pt, value, kind, u, q, why, float(r["ts"]), v))
        self._stage().batches.append((gw, stream, seq, rows, batch))

    # --- alarms (written at once) ------------------------------------------------------

    def insert_alarm(self, message: AlarmMessage) -> None:
        with self.store.translating_content():
            dropped = message.event.dropped
            if message.event.rule == "outbox.dropped" and dropped is not None:
                self._insert_loss(message, dropped)
            if self._insert_alarm_event(message):
                self.counts.alarms_stored += 1
                self._update_alarm(message)
            else:
                self._compare_alarm_event(message)

    def _compare_alarm_event(self, message: AlarmMessage) -> None:
        """An event whose seq is stored: a duplicate, or a conflict if its fields differ."""
        row = self.conn.execute(
            "SELECT body FROM alarm_events WHERE gateway = %s AND stream = %s AND seq = %s",
            (message.gw, message.stream, message.seq),
        ).fetchone()
        if row is None or same_event(row[0], message.to_json()):
            return
        self.conflicts.append(
            Conflict(message.gw, message.stream, True, ((message.seq, message.seq),), message)
        )
        self.counts.conflicts += 1

    def _insert_loss(self, message: AlarmMessage, d: DroppedRows) -> None:
        self.conn.execute(
            "INSERT INTO losses (gateway, stream, first_seq, last_seq, count, ts_first, "
            "ts_last, cause, reported) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            (
                text(message.gw, "the gateway id"),
                text(message.stream, "the stream id"),
                d.first,
                d.last,
                d.count,
                d.ts_first,
                d.ts_last,
                text(str(d.cause), "a loss's cause"),
                message.event.ts,
            ),
        )

    def _insert_alarm_event(self, message: AlarmMessage) -> bool:
        event = message.event
        cur = self.conn.execute(
            "INSERT INTO alarm_events (gateway, stream, seq, alarm_id, rule, device, severity, "
            "state, value, ts, msg, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, "
            "%s, %s, %s::jsonb) ON CONFLICT DO NOTHING",
            (
                text(message.gw, "the gateway id"),
                text(message.stream, "the stream id"),
                message.seq,
                text(event.id, "the alarm id"),
                text(event.rule, "the rule"),
                text(event.dev, "the device"),
                event.severity.value,
                event.state.value,
                jsonb(event.value, "the alarm's value"),
                event.ts,
                text(event.msg, "the alarm's msg"),
                jsonb(message.to_json(), "the alarm event"),
            ),
        )
        return cur.rowcount > 0

    def _update_alarm(self, message: AlarmMessage) -> None:
        """The current state of each alarm, as its latest transition left it (the rules of
        the SQLite store, ``central.store.sqlite``)."""
        event = message.event
        if event.action is not None or "action" in event.extra:
            return  # an action's result is history, not a transition
        state = event.state
        if state in (AlarmState.SHELVED, AlarmState.UNSHELVED):
            shelved_until = event.shelved_until if state is AlarmState.SHELVED else None
            self.conn.execute(
                "UPDATE alarms SET shelved_until = %s, events = events + 1 "
                "WHERE gateway = %s AND alarm_id = %s",
                (shelved_until, message.gw, event.id),
            )
            return
        since = event.since
        if since is None:
            new = state is AlarmState.ACTIVE and not event.retrigger and not event.reannounced
            since = event.ts if new else None
        self.conn.execute(
            "INSERT INTO alarms AS a (gateway, alarm_id, rule, device, severity, state, value, "
            "since, ts, msg, occurrence, acked_by) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, "
            "%s, %s, %s, %s::jsonb, %s) "
            "ON CONFLICT (gateway, alarm_id) DO UPDATE SET state = excluded.state, "
            "value = excluded.value, ts = excluded.ts, msg = excluded.msg, "
            "severity = excluded.severity, occurrence = excluded.occurrence, "
            "acked_by = excluded.acked_by, since = coalesce(excluded.since, a.since), "
            "events = a.events + 1 WHERE excluded.ts >= a.ts",
            (
                message.gw,
                event.id,
                event.rule,
                event.dev,
                event.severity.value,
                state.value,
                jsonb(event.value, "the alarm's value"),
                since,
                event.ts,
                event.msg,
                jsonb(event.occurrence, "the alarm's occurrence"),
                None if event.acked_by is None else text(event.acked_by, "acked_by"),
            ),
        )

    # --- dead letters --------------------------------------------------------------------

    def insert_rejected(
        self,
        gateway: str,
        topic: str,
        payload: bytes,
        error: str,
        rows: NamedRows | None,
        whole: bool = False,
    ) -> int:
        digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass") + b"\0" + payload)
        now = time.time()
        if len(error) > REJECTED_ERROR_MAX:
            error = error[: REJECTED_ERROR_MAX - 1] + "…"
        with self.store.translating_content():
            if whole:  # the gateway's at most REJECTED_KEEP rows, by the primary key's prefix
                row = self.conn.execute(
                    "SELECT coalesce(sum(octet_length(payload)), 0) FROM rejected "
                    "WHERE gateway = %s",
                    (_printable(gateway),),
                ).fetchone()
                whole = int(row[0] if row else 0) + len(payload) <= REJECTED_WHOLE_BYTES
            self.conn.execute(
                "INSERT INTO rejected AS r (gateway, digest, topic, error, payload, size, "
                "stream, seq_first, seq_last, first_seen, last_seen) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (gateway, digest) DO UPDATE SET last_seen = excluded.last_seen, "
                "times = r.times + 1",
                (
                    _printable(gateway),
                    digest.hexdigest(),
                    _printable(topic),
                    _printable(error),
                    payload if whole else payload[:REJECTED_HEAD_BYTES],
                    len(payload),
                    _printable(rows.stream) if rows else None,
                    rows.first if rows else None,
                    rows.last if rows else None,
                    now,
                    now,
                ),
            )
            pruned = self.conn.execute(
                "DELETE FROM rejected WHERE gateway = %s AND digest IN (SELECT digest FROM "
                "rejected WHERE gateway = %s ORDER BY last_seen DESC OFFSET %s)",
                (_printable(gateway), _printable(gateway), REJECTED_KEEP),
            ).rowcount
            return max(pruned, 0) + self._prune_rejected_bytes()

    def _prune_rejected_bytes(self) -> int:
        row = self.conn.execute("SELECT bytes FROM rejected_bytes").fetchone()
        if row is None or int(row[0]) <= REJECTED_MAX_BYTES:
            return 0
        cur = self.conn.execute(
            "DELETE FROM rejected WHERE (gateway, digest) IN (SELECT gateway, digest FROM "
            "(SELECT gateway, digest, sum(octet_length(topic) + octet_length(error) + "
            "octet_length(payload)) OVER (ORDER BY last_seen DESC, gateway, digest ROWS "
            "UNBOUNDED PRECEDING) AS newer FROM rejected) n WHERE newer > %s)",
            (REJECTED_MAX_BYTES * 9 // 10,),
        )
        return max(cur.rowcount, 0)

    # --- the registry (kept aside, written at the end sorted by gateway) ---------------

    def seen(self, gateways: Iterable[str], now: float | None = None) -> None:
        self._seen.update(_printable(g) for g in gateways)
        self._seen_at = time.time() if now is None else now

    def update_state(self, gateway: str, state: dict[str, Any], now: float | None = None) -> None:
        now = time.time() if now is None else now
        gw = text(gateway, "the gateway id")
        online = bool(state.get("online"))
        if online:
            tags = state.get("tags")
            params: tuple[Any, ...] = (
                online,
                now,
                opt_text(state.get("site"), "site"),
                opt_text(state.get("agent_version"), "agent_version"),
                opt_text(state.get("config_rev"), "config_rev"),
                opt_float(state.get("started")),
                opt_text(state.get("stream"), "stream"),
                jsonb(state, "the state"),
                jsonb(tags, "tags") if isinstance(tags, dict) else None,
            )
        else:
            params = (online, now)
        self._stage().gateway_ops.append((gw, "state", params))

    def update_health(self, gateway: str, health: dict[str, Any], now: float | None = None) -> None:
        now = time.time() if now is None else now
        gw = text(gateway, "the gateway id")
        outbox = health.get("outbox")
        outbox = outbox if isinstance(outbox, dict) else {}
        dropped = health.get("dropped")
        dropped = dropped if isinstance(dropped, dict) else {}
        params = (
            opt_int(outbox.get("depth")),
            opt_float(outbox.get("oldest_age_s")),
            opt_int(dropped.get("telemetry")),
            jsonb(health, "the health report"),
        )
        stage = self._stage()
        stage.gateway_ops.append((gw, "health", params))
        devices = health.get("devices")
        if isinstance(devices, dict):
            for dev, info in devices.items():
                if not isinstance(info, dict):
                    continue
                error = info.get("error", info.get("reason"))
                stage.devices[(gw, text(str(dev), "a device id"))] = (
                    gw,
                    text(str(dev), "a device id"),
                    opt_text(info.get("link"), "a device's link"),
                    opt_float(info.get("last_good")),
                    opt_text(error, "a device's error"),
                    now,
                )

    # --- the end of the round ----------------------------------------------------------

    def flush(self) -> None:
        """Write what the messages kept aside (see the module's docstring); before COMMIT."""
        if self._round.batches:
            self._write_readings(self._round.batches)
        self._write_registry()

    def _write_readings(
        self, batches: list[tuple[str, str, int, list[Row], TelemetryBatch]]
    ) -> None:
        days = {partitions.day_of(row[10]) for _, _, _, rows, _ in batches for row in rows}
        self.store.ensure_partitions(partitions.on_demand(days))
        conn = self.conn
        spans: dict[tuple[str, str], list[int]] = {}
        for gw, stream, first, rows, _ in batches:
            span = spans.setdefault((gw, stream), [first, first + len(rows) - 1])
            span[0] = min(span[0], first)
            span[1] = max(span[1], first + len(rows) - 1)
        keys = sorted(spans, key=lambda k: lock_key(*k))
        conn.execute(
            "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k",
            ([lock_key(*k) for k in keys],),
        )
        stored: dict[tuple[str, str], list[list[int]]] = defaultdict(list)
        # ranges touching the round's spans (and adjacent to them, to merge with)
        for gw, stream, lo, hi in conn.execute(
            "SELECT s.gateway, s.stream, s.seq_first, s.seq_last FROM readings_stored s "
            "JOIN unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[]) AS q(gw, st, lo, hi) "
            "ON s.gateway = q.gw AND s.stream = q.st AND s.seq_last >= q.lo - 1 "
            "AND s.seq_first <= q.hi + 1",
            (
                [k[0] for k in keys],
                [k[1] for k in keys],
                [spans[k][0] for k in keys],
                [spans[k][1] for k in keys],
            ),
        ):
            stored[(gw, stream)].append([int(lo), int(hi)])
        new_rows: list[Row] = []
        taken: dict[tuple[str, str], list[list[int]]] = defaultdict(list)
        earlier: dict[tuple[str, str, int], Row] = {}
        """Rows of this round's batches, by seq: only once a batch overlaps another."""
        to_look_up: list[tuple[Row, int]] = []
        differ: dict[int, list[int]] = defaultdict(list)
        duplicates = 0
        for b, (gw, stream, first, rows, _) in enumerate(batches):
            last = first + len(rows) - 1
            in_store = [
                (max(lo, first), min(hi, last))
                for lo, hi in stored.get((gw, stream), ())
                if lo <= last and hi >= first
            ]
            in_round = [
                (max(lo, first), min(hi, last))
                for lo, hi in taken[(gw, stream)]
                if lo <= last and hi >= first
            ]
            if not in_store and not in_round:  # the usual case: nothing of it stored yet
                new_rows += rows
            else:
                skip: set[int] = set()
                for lo, hi in in_store:
                    skip.update(range(lo - first, hi - first + 1))
                to_look_up += [(rows[i], b) for i in sorted(skip)]
                if in_round and not earlier:
                    for _, _, _, rs, _ in batches[:b]:
                        for row in rs:
                            earlier.setdefault((row[0], row[1], row[2]), row)
                for lo, hi in in_round:
                    for i in range(lo - first, hi - first + 1):
                        if i in skip:
                            continue
                        skip.add(i)
                        if earlier[(gw, stream, first + i)][3:11] != rows[i][3:11]:
                            differ[b].append(first + i)
                duplicates += len(skip)
                new_rows += [row for i, row in enumerate(rows) if i not in skip]
            taken[(gw, stream)].append([first, last])
            if earlier:  # the first row of a seq in the round is the one it writes
                for row in rows:
                    earlier.setdefault((row[0], row[1], row[2]), row)
        for row, b in self._not_stored_so(to_look_up):
            differ[b].append(row[2])
        for b, seqs in sorted(differ.items()):
            gw, stream, _, _, source = batches[b]
            found = conflict(gw, stream, False, seqs, source)
            if found is not None:
                self.conflicts.append(found)
                self.counts.conflicts += found.count
                duplicates -= found.count
        if new_rows:
            with conn.cursor() as cur, cur.copy(COPY_READINGS) as copy:
                write = copy.write_row
                for row in new_rows:
                    write(row[:11])
            self._write_rollups(new_rows)
            self._record_ranges(stored, taken)
        self.counts.readings_stored += len(new_rows)
        self.counts.duplicates += duplicates

    def _not_stored_so(self, rows: list[tuple[Row, int]]) -> list[tuple[Row, int]]:
        """Of readings whose seqs are stored, those no stored row holds as they are: one
        query, an index probe per reading (``readings_by_point``: gateway, device, point,
        ts). LATERAL with LIMIT keeps it so: as an anti join the planner hashes a whole
        partition instead, 40 ms a round where the probes take 7. The readings go as one
        JSON array (json's C encoder; eleven arrays of parameters took psycopg five times
        as long to send); texts were checked by ``insert_telemetry``, floats are their
        shortest exact spelling."""
        if not rows:
            return []
        missing = self.conn.execute(
            "SELECT q.i FROM (SELECT e.i, e.x->>0 AS gw, e.x->>1 AS st, (e.x->>2)::bigint "
            "AS seq, e.x->>3 AS dev, e.x->>4 AS pt, e.x->>5 AS v, (e.x->>6)::smallint AS kind, "
            "e.x->>7 AS u, e.x->>8 AS qual, e.x->>9 AS why, (e.x->>10)::float8 AS ts "
            "FROM json_array_elements(%s::json) WITH ORDINALITY AS e(x, i)) q "
            "LEFT JOIN LATERAL (SELECT 1 AS found FROM readings r WHERE r.gateway = q.gw "
            "AND r.device = q.dev AND r.point = q.pt AND r.ts = q.ts AND r.stream = q.st "
            "AND r.seq = q.seq AND r.kind = q.kind AND r.quality = q.qual "
            "AND r.value IS NOT DISTINCT FROM q.v AND r.unit IS NOT DISTINCT FROM q.u "
            "AND r.reason IS NOT DISTINCT FROM q.why LIMIT 1) f ON true WHERE f.found IS NULL",
            (json.dumps([r[:11] for r, _ in rows], allow_nan=False),),
        ).fetchall()
        return [rows[int(i) - 1] for (i,) in missing]

    def _write_rollups(self, rows: list[Row]) -> None:
        agg: dict[tuple[str, str, str, int], list[float]] = {}
        get = agg.get
        for row in rows:
            if row[6] == KIND_FLOAT:
                x = row[11]
            else:
                x = rollup_number(row[11])
                if x is None:
                    continue
            key = (row[0], row[3], row[4], int(row[10] // 60) * 60)
            a = get(key)
            if a is None:
                agg[key] = [1, x, x, x]
            else:
                a[0] += 1
                a[1] += x
                a[2] = min(a[2], x)
                a[3] = max(a[3], x)
        if not agg:
            return
        keys = sorted(agg)
        self.conn.execute(
            "INSERT INTO rollups_1m AS r (gateway, device, point, minute, count, sum, min, max) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], "
            "%s::bigint[], %s::float8[], %s::float8[], %s::float8[]) "
            "ON CONFLICT (gateway, device, point, minute) DO UPDATE SET "
            "count = r.count + excluded.count, sum = r.sum + excluded.sum, "
            "min = least(r.min, excluded.min), max = greatest(r.max, excluded.max)",
            (
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
                [k[3] for k in keys],
                [int(agg[k][0]) for k in keys],
                [agg[k][1] for k in keys],
                [agg[k][2] for k in keys],
                [agg[k][3] for k in keys],
            ),
        )

    def _record_ranges(
        self,
        stored: dict[tuple[str, str], list[list[int]]],
        new: dict[tuple[str, str], list[list[int]]],
    ) -> None:
        """Replace the ranges read with their union with the batches stored now (merged)."""
        gone: list[tuple[str, str, int]] = []
        made: list[tuple[str, str, int, int]] = []
        for key, spans in new.items():
            old = stored.get(key, [])
            gone += [(key[0], key[1], hi) for _, hi in old]
            merged: list[list[int]] = []
            for lo, hi in sorted([*old, *spans]):
                if merged and lo <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            made += [(key[0], key[1], lo, hi) for lo, hi in merged]
        if gone:
            self.conn.execute(
                "DELETE FROM readings_stored s USING unnest(%s::text[], %s::text[], "
                "%s::bigint[]) AS g(gw, st, hi) WHERE s.gateway = g.gw AND s.stream = g.st "
                "AND s.seq_last = g.hi",
                ([g[0] for g in gone], [g[1] for g in gone], [g[2] for g in gone]),
            )
        made.sort()
        self.conn.execute(
            "INSERT INTO readings_stored (gateway, stream, seq_first, seq_last, committed) "
            "SELECT gw, st, lo, hi, %s FROM unnest(%s::text[], %s::text[], %s::bigint[], "
            "%s::bigint[]) AS m(gw, st, lo, hi)",
            (
                time.time(),
                [m[0] for m in made],
                [m[1] for m in made],
                [m[2] for m in made],
                [m[3] for m in made],
            ),
        )

    def _write_registry(self) -> None:
        ops = self._round.gateway_ops
        ids = sorted(self._seen | {gw for gw, _, _ in ops} | {gw for gw, _ in self._round.devices})
        if not ids:
            return
        seen = sorted(self._seen)
        # every row the round touches, created if new and locked in one order (by id)
        self.conn.execute(
            "INSERT INTO gateways AS g (id, last_seen) "
            "SELECT id, CASE WHEN id = ANY(%s::text[]) THEN %s::float8 END "
            "FROM unnest(%s::text[]) AS id ORDER BY id "
            "ON CONFLICT (id) DO UPDATE SET last_seen = "
            "coalesce(excluded.last_seen, g.last_seen)",
            (seen, self._seen_at, ids),
        )
        for gw, kind, params in sorted(ops, key=lambda op: op[0]):  # stable: message order
            if kind == "state" and params[0]:
                self.conn.execute(
                    "UPDATE gateways SET online_since = CASE WHEN online AND online_since "
                    "IS NOT NULL THEN online_since ELSE %s END, online = %s, site = %s, "
                    "agent_version = %s, config_rev = %s, started = %s, stream = %s, "
                    "state = %s::jsonb, tags = %s::jsonb WHERE id = %s",
                    (params[1], params[0], *params[2:], gw),
                )
            elif kind == "state":
                self.conn.execute(
                    "UPDATE gateways SET online_since = CASE WHEN online OR online_since "
                    "IS NULL THEN %s ELSE online_since END, online = false WHERE id = %s",
                    (params[1], gw),
                )
            else:
                self.conn.execute(
                    "UPDATE gateways SET outbox_depth = %s, outbox_oldest_age_s = %s, "
                    "dropped_telemetry = %s, health = %s::jsonb WHERE id = %s",
                    (*params, gw),
                )
        if self._round.devices:
            rows = [self._round.devices[k] for k in sorted(self._round.devices)]
            self.conn.execute(
                "INSERT INTO devices AS d (gateway, device, link, last_good, error, updated) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], "
                "%s::text[], %s::float8[]) ON CONFLICT (gateway, device) DO UPDATE SET "
                "link = excluded.link, last_good = coalesce(excluded.last_good, d.last_good), "
                "error = excluded.error, updated = excluded.updated",
                tuple([r[i] for r in rows] for i in range(6)),
            )


def _printable(value: str) -> str:
    """Text of a dead letter as PostgreSQL can keep it: a NUL shown as ``\\x00``,
    undecodable characters escaped (a dead letter is kept whatever it holds)."""
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()


def _why(exc: BaseException) -> str:
    import psycopg  # noqa: PLC0415 (loaded by the command that uses it)

    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return f"the store cannot take it: {exc.diag.message_primary}"
    return f"the store cannot take it: {exc}"
