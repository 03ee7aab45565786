"""What the SQLite backend answers: the ``Store`` protocol's queries, as typed rows."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from central.store.api import (
    ALL_ALARMS,
    ALL_GATEWAYS,
    BACKLOG_AT,
    AlarmQuery,
    GatewayFilter,
    ReadingQuery,
)
from central.store.rows import (
    AlarmRow,
    CommandRecord,
    DeadLetter,
    DeviceRow,
    FleetStatus,
    GatewayRow,
    Identity,
    LossRow,
    ReadingBucket,
    StoredReading,
)
from central.store.sqlite.cells import exact, value_of

GATEWAY_COLUMNS = (
    "id, site, tags, online, online_since, agent_version, config_rev, desired_rev, started, "
    "stream, last_seen, outbox_depth, outbox_oldest_age_s, dropped_telemetry"
)


class SqliteQueries:
    conn: sqlite3.Connection

    def gateways(
        self,
        where: GatewayFilter = ALL_GATEWAYS,
        after: str | None = None,
        limit: int | None = None,
    ) -> Iterator[GatewayRow]:
        clauses, args = gateway_clauses(where)
        if after is not None:
            clauses.append("id > ?")
            args.append(after)
        sql = f"SELECT {GATEWAY_COLUMNS}, (SELECT count(*) FROM alarms a WHERE a.gateway = g.id "
        sql += "AND a.state IN ('active', 'acknowledged')) FROM gateways g"
        sql += _where(clauses) + " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        for row in self.conn.execute(sql, args):
            yield gateway_row(row)

    def gateway(self, gateway: str) -> GatewayRow | None:
        return next(self.gateways(GatewayFilter(ids=(gateway,))), None)

    def devices(
        self, gateway: str | None = None, where: GatewayFilter = ALL_GATEWAYS
    ) -> Iterator[DeviceRow]:
        clauses, args = _eq(gateway=gateway)
        if not where.everything:
            more, more_args = gateway_clauses(where)
            clauses.append(f"gateway IN (SELECT id FROM gateways g{_where(more)})")
            args += more_args
        sql = "SELECT gateway, device, link, last_good, error, updated FROM devices"
        for row in self.conn.execute(sql + _where(clauses) + " ORDER BY gateway, device", args):
            yield DeviceRow(*row)

    def status(self, now: float | None = None) -> FleetStatus:
        now = time.time() if now is None else now
        ((total, online, backlog),) = self.conn.execute(
            "SELECT count(*), coalesce(sum(online), 0), coalesce(sum(outbox_depth >= ?), 0) "
            "FROM gateways",
            (BACKLOG_AT,),
        ).fetchall()
        by_severity = dict(
            self.conn.execute(
                "SELECT severity, count(*) FROM alarms WHERE state IN ('active', 'acknowledged') "
                "GROUP BY severity ORDER BY severity"
            ).fetchall()
        )
        ((unacked,),) = self.conn.execute(
            "SELECT count(*) FROM alarms WHERE state IN ('active', 'cleared_unacked')"
        ).fetchall()
        ((losses,),) = self.conn.execute(
            "SELECT count(*) FROM gateways WHERE dropped_telemetry > 0 "
            "OR id IN (SELECT gateway FROM losses)"
        ).fetchall()
        versions = dict(
            self.conn.execute(
                "SELECT coalesce(agent_version, '?'), count(*) FROM gateways "
                "GROUP BY agent_version ORDER BY count(*) DESC"
            ).fetchall()
        )
        ((recent,),) = self.conn.execute(
            "SELECT coalesce(sum(count), 0) FROM rollups_1m WHERE minute >= ?",
            (int((now - 60) // 60) * 60,),
        ).fetchall()
        return FleetStatus(
            gateways=int(total),
            online=int(online),
            offline=int(total) - int(online),
            alarms_by_severity={str(k): int(v) for k, v in by_severity.items()},
            unacked=int(unacked),
            with_backlog=int(backlog),
            with_losses=int(losses),
            versions={str(k): int(v) for k, v in versions.items()},
            readings_last_minute=int(recent),
        )

    def buckets(self, query: ReadingQuery, bucket_s: int) -> Iterator[ReadingBucket]:
        if bucket_s < 60 or bucket_s % 60:
            raise ValueError(f"a bucket is a whole number of minutes, not {bucket_s} s")
        clauses, args = _eq(gateway=query.gateway, device=query.device, point=query.point)
        if query.since is not None:
            clauses.append("minute >= ?")
            args.append(int(query.since // 60) * 60)
        if query.until is not None:
            clauses.append("minute < ?")
            args.append(query.until)
        if not query.where.everything:
            more, more_args = gateway_clauses(query.where)
            clauses.append(f"gateway IN (SELECT id FROM gateways g{_where(more)})")
            args += more_args
        sql = (
            f"SELECT gateway, device, point, (minute / {int(bucket_s)}) * {int(bucket_s)} AS b, "
            "sum(count), sum(sum) / sum(count), min(min), max(max) FROM rollups_1m"
            f"{_where(clauses)} GROUP BY gateway, device, point, b ORDER BY b, gateway, device, "
            "point"
        )
        for gw, dev, pt, start, count, avg, low, high in self.conn.execute(sql, args):
            yield ReadingBucket(gw, dev, pt, float(start), int(count), avg, low, high)

    def readings(self, query: ReadingQuery) -> Iterator[StoredReading]:
        clauses, args = _eq(gateway=query.gateway, device=query.device, point=query.point)
        if query.since is not None:
            clauses.append("ts >= ?")
            args.append(query.since)
        if query.until is not None:
            clauses.append("ts < ?")
            args.append(query.until)
        if not query.where.everything:
            where, more = gateway_clauses(query.where)
            clauses.append(f"gateway IN (SELECT id FROM gateways g{_where(where)})")
            args += more
        order = "ASC" if query.oldest_first else "DESC"
        sql = (
            "SELECT gateway, device, point, value, unit, quality, reason, ts, stream, seq, is_bool "
            f"FROM readings{_where(clauses)} ORDER BY ts {order}, seq {order}"
        )
        if query.limit is not None:
            sql += " LIMIT ?"
            args.append(query.limit)
        for row in self.conn.execute(sql, args):
            *fields, tag = row
            fields[3] = value_of(fields[3], tag)
            yield StoredReading(*fields)

    def alarms(self, query: AlarmQuery = ALL_ALARMS) -> list[AlarmRow]:
        clauses, args = _eq(gateway=query.gateway)
        for column, values in (("state", query.states), ("severity", query.severities)):
            if values:
                clauses.append(f"{column} IN ({', '.join('?' for _ in values)})")
                args += values
        if not query.where.everything:
            where, more = gateway_clauses(query.where)
            clauses.append(f"gateway IN (SELECT id FROM gateways g{_where(where)})")
            args += more
        sql = f"SELECT {ALARM_COLUMNS}, exact FROM alarms{_where(clauses)} ORDER BY ts DESC"
        return [alarm_row(row) for row in self.conn.execute(sql, args)]

    def alarm(self, gateway: str, alarm_id: str) -> AlarmRow | None:
        row = self.conn.execute(
            f"SELECT {ALARM_COLUMNS}, exact FROM alarms WHERE gateway = ? AND alarm_id = ?",
            (gateway, alarm_id),
        ).fetchone()
        return None if row is None else alarm_row(row)

    def alarm_history(self, gateway: str, alarm_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT body FROM alarm_events WHERE gateway = ? AND alarm_id = ? ORDER BY stream, seq",
            (gateway, alarm_id),
        )
        return [json.loads(body) for (body,) in rows]

    def losses(self, gateway: str | None = None) -> list[LossRow]:
        clauses, args = _eq(gateway=gateway)
        sql = (
            "SELECT gateway, stream, first_seq, last_seq, count, ts_first, ts_last, cause, "
            f"reported FROM losses{_where(clauses)} ORDER BY gateway, stream, first_seq"
        )
        return [LossRow(*row) for row in self.conn.execute(sql, args)]

    def rejected(self, gateway: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, newest first."""
        clauses, args = _eq(gateway=gateway)
        sql = (
            "SELECT gateway, digest, topic, error, payload, size, stream, seq_first, seq_last, "
            f"first_seen, last_seen, times FROM rejected{_where(clauses)} "
            "ORDER BY last_seen DESC LIMIT ?"
        )
        return [
            DeadLetter(row[0], row[1], row[2], row[3], bytes(row[4]), *row[5:])
            for row in self.conn.execute(sql, [*args, limit])
        ]

    def sequence_keys(self, gateway: str) -> set[tuple[str, int]]:
        rows = self.conn.execute("SELECT stream, seq FROM readings WHERE gateway = ?", (gateway,))
        return {(str(s), int(q)) for s, q in rows}

    def count_readings(self) -> int:
        ((n,),) = self.conn.execute("SELECT count(*) FROM readings").fetchall()
        return int(n)

    # --- the command ledger ------------------------------------------------------------

    def record_command(self, record: CommandRecord) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO commands (id, gateway, cmd, args, by, sent, result, detail, replied) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.gateway,
                    record.cmd,
                    json.dumps(record.args),
                    record.by,
                    record.sent,
                    record.result,
                    None if record.detail is None else json.dumps(record.detail),
                    record.replied,
                ),
            )

    def command_result(
        self, command_id: str, result: str, detail: Any, replied: float | None = None
    ) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE commands SET result = ?, detail = ?, replied = ? WHERE id = ?",
                (result, json.dumps(detail), replied, command_id),
            )

    def commands(self, gateway: str | None = None, limit: int = 100) -> list[CommandRecord]:
        clauses, args = _eq(gateway=gateway)
        sql = (
            "SELECT id, gateway, cmd, args, by, sent, result, detail, replied FROM commands"
            f"{_where(clauses)} ORDER BY sent DESC LIMIT ?"
        )
        return [
            CommandRecord(i, gw, cmd, json.loads(a), by, sent, res, _loads(detail), replied)
            for i, gw, cmd, a, by, sent, res, detail, replied in self.conn.execute(
                sql, [*args, limit]
            )
        ]

    def add_identity(
        self, identity: Identity, site: str | None = None, tags: dict[str, str] | None = None
    ) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO gateways (id, site, tags) VALUES (?, ?, ?) ON CONFLICT (id) DO "
                "UPDATE SET site = coalesce(excluded.site, gateways.site), "
                "tags = coalesce(excluded.tags, gateways.tags)",
                (identity.gateway, site, None if tags is None else json.dumps(tags)),
            )
            self.conn.execute(
                "INSERT INTO identities (gateway, kind, fingerprint, issued, expires, revoked) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    identity.gateway,
                    identity.kind,
                    identity.fingerprint,
                    identity.issued,
                    identity.expires,
                    identity.revoked,
                ),
            )

    def identities(self, gateway: str | None = None) -> list[Identity]:
        clauses, args = _eq(gateway=gateway)
        sql = (
            "SELECT gateway, kind, fingerprint, issued, expires, revoked FROM identities"
            f"{_where(clauses)} ORDER BY issued, gateway, fingerprint"
        )
        return [Identity(*row) for row in self.conn.execute(sql, args)]

    def revoke_identities(self, gateway: str, when: float) -> int:
        with self.conn:
            cur = self.conn.execute(
                "UPDATE identities SET revoked = ? WHERE gateway = ? AND revoked IS NULL",
                (when, gateway),
            )
        return cur.rowcount

    def revoked_gateways(self) -> frozenset[str]:
        return frozenset(row[0] for row in self.conn.execute(REVOKED_SQL))

    def expiring(self, before: float) -> list[Identity]:
        return [Identity(*row) for row in self.conn.execute(EXPIRING_SQL, (before,))]


REVOKED_SQL = "SELECT gateway FROM identities GROUP BY gateway HAVING count(revoked) = count(*)"
"""Gateways with identities, every one revoked (one provisioned again has a live one)."""
EXPIRING_SQL = (
    "SELECT gateway, kind, fingerprint, issued, expires, revoked FROM identities AS i "
    "WHERE revoked IS NULL AND expires IS NOT NULL AND expires < ? AND issued = "
    "(SELECT max(issued) FROM identities WHERE gateway = i.gateway AND revoked IS NULL) "
    "ORDER BY expires, gateway"
)
"""Each gateway's newest live identity, if it expires before the time given."""


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


ALARM_COLUMNS = (
    "gateway, alarm_id, rule, device, severity, state, value, since, ts, msg, occurrence, "
    "acked_by, shelved_until, events"
)


def alarm_row(row: tuple[Any, ...]) -> AlarmRow:
    *fields, kept = row
    names = AlarmRow.__dataclass_fields__
    return AlarmRow(**exact(dict(zip(names, fields, strict=True)), kept))


def gateway_row(row: tuple[Any, ...]) -> GatewayRow:
    (gid, site, tags, online, since, version, rev, desired, started, stream, seen, depth,
     age, dropped, active) = row  # fmt: skip
    return GatewayRow(
        id=gid,
        site=site,
        tags=json.loads(tags) if tags else {},
        online=bool(online),
        online_since=since,
        agent_version=version,
        config_rev=rev,
        desired_rev=desired,
        started=started,
        stream=stream,
        last_seen=seen,
        outbox_depth=depth,
        outbox_oldest_age_s=age,
        dropped_telemetry=dropped,
        alarms_active=int(active),
    )


def gateway_clauses(where: GatewayFilter) -> tuple[list[str], list[Any]]:
    """SQL conditions on ``gateways`` (aliased ``g`` or not) for a filter."""
    clauses: list[str] = []
    args: list[Any] = []
    if where.ids:
        clauses.append(f"id IN ({', '.join('?' for _ in where.ids)})")
        args += where.ids
    if where.site is not None:
        clauses.append("site = ?")
        args.append(where.site)
    if where.online is not None:
        clauses.append("online = ?")
        args.append(1 if where.online else 0)
    if where.version is not None:
        clauses.append("agent_version = ?")
        args.append(where.version)
    for key, value in where.tags:
        # by json_each, not a JSON path: a path cannot name a key holding a quote; and only
        # a text value, as PostgreSQL's ``tags @> {key: value}`` has it
        clauses.append(
            "EXISTS (SELECT 1 FROM json_each(tags) t WHERE t.key = ? AND t.type = 'text' "
            "AND t.value = ?)"
        )
        args += [key, value]
    return clauses, args


def _eq(**eq: str | None) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in eq.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    return clauses, args


def _where(clauses: list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""
