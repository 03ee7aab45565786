"""The Store protocol's queries on PostgreSQL: filters, sorting and paging in SQL, long
answers streamed through a server-side cursor (``conn.cursor(name=…)``), rows typed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from central.store.api import BACKLOG_AT, AlarmQuery, GatewayFilter, ReadingQuery
from central.store.postgres.writes import decode_value
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

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.Connection[tuple[Any, ...]]

ITERSIZE = 2000
"""Rows a server-side cursor fetches at a time."""
ACTIVE = ("active", "acknowledged")


def gateway_where(f: GatewayFilter, column: str = "id", table: str = "") -> tuple[str, list[Any]]:
    """``f`` as SQL conditions on the gateways table (``table`` its alias, with the dot)."""
    where: list[str] = []
    args: list[Any] = []
    if f.ids:
        where.append(f"{table}{column} = ANY(%s::text[])")
        args.append(list(f.ids))
    if f.site is not None:
        where.append(f"{table}site = %s")
        args.append(f.site)
    if f.tags:
        where.append(f"{table}tags @> %s::jsonb")
        args.append(json.dumps(dict(f.tags)))
    if f.online is not None:
        where.append(f"{table}online = %s")
        args.append(f.online)
    if f.version is not None:
        where.append(f"{table}agent_version = %s")
        args.append(f.version)
    return " AND ".join(where), args


def in_gateways(f: GatewayFilter, column: str) -> tuple[str, list[Any]]:
    """``column`` (a gateway id) is one of the gateways ``f`` selects."""
    if f.everything:
        return "", []
    where, args = gateway_where(f)
    return f"{column} IN (SELECT id FROM gateways WHERE {where})", args


def _and(parts: list[str]) -> str:
    parts = [p for p in parts if p]
    return (" WHERE " + " AND ".join(parts)) if parts else ""


def stream(conn: Conn, sql: str, args: list[Any] | tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql`` from a server-side cursor, a few thousand at a time."""
    with conn.transaction(), conn.cursor(name="edgefleet_stream") as cur:
        cur.itersize = ITERSIZE
        cur.execute(sql, args)
        yield from cur


GATEWAY_COLUMNS = (
    "g.id, g.site, g.tags, g.online, g.online_since, g.agent_version, g.config_rev, "
    "g.desired_rev, g.started, g.stream, g.last_seen, g.outbox_depth, g.outbox_oldest_age_s, "
    "g.dropped_telemetry, (SELECT count(*) FROM alarms a WHERE a.gateway = g.id "
    "AND a.state IN ('active', 'acknowledged'))"
)


def _gateway(row: tuple[Any, ...]) -> GatewayRow:
    (
        gw,
        site,
        tags,
        online,
        since,
        version,
        rev,
        desired,
        started,
        stream_id,
        seen,
        depth,
        age,
        dropped,
        active,
    ) = row
    return GatewayRow(
        gw,
        site,
        {} if tags is None else tags,
        bool(online),
        since,
        version,
        rev,
        desired,
        started,
        stream_id,
        seen,
        depth,
        age,
        dropped,
        alarms_active=int(active),
    )


def gateways(
    conn: Conn, where: GatewayFilter, after: str | None, limit: int | None
) -> Iterator[GatewayRow]:
    cond, args = gateway_where(where, table="g.")
    parts = [cond]
    if after is not None:
        parts.append("g.id > %s")
        args.append(after)
    sql = f"SELECT {GATEWAY_COLUMNS} FROM gateways g{_and(parts)} ORDER BY g.id"
    if limit is not None:
        sql += " LIMIT %s"
        args.append(max(0, int(limit)))
    for row in stream(conn, sql, args):
        yield _gateway(row)


def gateway(conn: Conn, gw: str) -> GatewayRow | None:
    row = conn.execute(
        f"SELECT {GATEWAY_COLUMNS} FROM gateways g WHERE g.id = %s", (gw,)
    ).fetchone()
    return None if row is None else _gateway(row)


def devices(conn: Conn, gw: str | None, where: GatewayFilter) -> Iterator[DeviceRow]:
    cond, args = in_gateways(where, "d.gateway")
    parts = [cond]
    if gw is not None:
        parts.append("d.gateway = %s")
        args.append(gw)
    sql = (
        "SELECT d.gateway, d.device, d.link, d.last_good, d.error, d.updated FROM devices d"
        f"{_and(parts)} ORDER BY d.gateway, d.device"
    )
    for row in stream(conn, sql, args):
        yield DeviceRow(*row)


def status(conn: Conn, now: float) -> FleetStatus:
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE online), "
        "count(*) FILTER (WHERE outbox_depth > %s), "
        "count(*) FILTER (WHERE dropped_telemetry > 0 OR id IN (SELECT gateway FROM losses)) "
        "FROM gateways",
        (BACKLOG_AT,),
    ).fetchone()
    total, online, backlog, lossy = (int(x) for x in row) if row else (0, 0, 0, 0)
    by_severity = {
        str(s): int(n)
        for s, n in conn.execute(
            "SELECT severity, count(*) FROM alarms WHERE state IN ('active', 'acknowledged') "
            "GROUP BY severity ORDER BY severity"
        )
    }
    unacked = conn.execute(
        "SELECT count(*) FROM alarms WHERE state IN ('active', 'cleared_unacked')"
    ).fetchone()
    versions = {
        str(v): int(n)
        for v, n in conn.execute(
            "SELECT agent_version, count(*) FROM gateways WHERE agent_version IS NOT NULL "
            "GROUP BY agent_version ORDER BY agent_version"
        )
    }
    rate = conn.execute(
        "SELECT count(*) FROM readings WHERE ts >= %s AND ts <= %s", (now - 60, now)
    ).fetchone()
    return FleetStatus(
        gateways=total,
        online=online,
        offline=total - online,
        alarms_by_severity=by_severity,
        unacked=int(unacked[0]) if unacked else 0,
        with_backlog=backlog,
        with_losses=lossy,
        versions=versions,
        readings_last_minute=int(rate[0]) if rate else 0,
    )


def _reading_filters(query: ReadingQuery, ts: str = "ts") -> tuple[list[str], list[Any]]:
    cond, args = in_gateways(query.where, "gateway")
    parts = [cond]
    for column, value in (
        ("gateway", query.gateway),
        ("device", query.device),
        ("point", query.point),
    ):
        if value is not None:
            parts.append(f"{column} = %s")
            args.append(value)
    if query.since is not None:
        parts.append(f"{ts} >= %s")
        args.append(query.since)
    if query.until is not None:
        parts.append(f"{ts} < %s")
        args.append(query.until)
    return parts, args


def readings(conn: Conn, query: ReadingQuery) -> Iterator[StoredReading]:
    parts, args = _reading_filters(query)
    order = "ASC" if query.oldest_first else "DESC"
    sql = (
        "SELECT gateway, device, point, value, kind, unit, quality, reason, ts, stream, seq "
        f"FROM readings{_and(parts)} ORDER BY ts {order}, seq {order}"
    )
    if query.limit is not None:
        sql += " LIMIT %s"
        args.append(max(0, int(query.limit)))
    for gw, dev, pt, value, kind, unit, q, why, ts, st, seq in stream(conn, sql, args):
        yield StoredReading(gw, dev, pt, decode_value(value, kind), unit, q, why, ts, st, seq)


def buckets(conn: Conn, query: ReadingQuery, bucket_s: int) -> Iterator[ReadingBucket]:
    if type(bucket_s) is not int or bucket_s <= 0 or bucket_s % 60:
        raise ValueError(f"a bucket is a positive multiple of 60 s, not {bucket_s!r}")
    parts, args = _reading_filters(query, ts="minute")
    # a bucket's start: ``minute`` rounded down to a multiple of bucket_s
    start = f"(minute - ((minute %% {bucket_s}) + {bucket_s}) %% {bucket_s})"
    sql = (
        f"SELECT gateway, device, point, {start} AS start, sum(count), sum(sum), min(min), "
        f"max(max) FROM rollups_1m{_and(parts)} GROUP BY gateway, device, point, start "
        "ORDER BY start, gateway, device, point"
    )
    for gw, dev, pt, begin, count, total, lo, hi in stream(conn, sql, args):
        n = int(count)
        yield ReadingBucket(gw, dev, pt, float(begin), n, total / n if n else None, lo, hi)


ALARM_COLUMNS = (
    "gateway, alarm_id, rule, device, severity, state, value, since, ts, msg, occurrence, "
    "acked_by, shelved_until, events"
)


def _alarm(row: tuple[Any, ...]) -> AlarmRow:
    values = list(row)
    values[13] = int(values[13])
    return AlarmRow(*values)


def alarms(conn: Conn, query: AlarmQuery) -> list[AlarmRow]:
    cond, args = in_gateways(query.where, "gateway")
    parts = [cond]
    if query.gateway is not None:
        parts.append("gateway = %s")
        args.append(query.gateway)
    if query.states:
        parts.append("state = ANY(%s::text[])")
        args.append(list(query.states))
    if query.severities:
        parts.append("severity = ANY(%s::text[])")
        args.append(list(query.severities))
    sql = f"SELECT {ALARM_COLUMNS} FROM alarms{_and(parts)} ORDER BY ts DESC, gateway, alarm_id"
    return [_alarm(r) for r in conn.execute(sql, args)]


def alarm(conn: Conn, gw: str, alarm_id: str) -> AlarmRow | None:
    row = conn.execute(
        f"SELECT {ALARM_COLUMNS} FROM alarms WHERE gateway = %s AND alarm_id = %s",
        (gw, alarm_id),
    ).fetchone()
    return None if row is None else _alarm(row)


def alarm_history(conn: Conn, gw: str, alarm_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT body::text FROM alarm_events WHERE gateway = %s AND alarm_id = %s "
        "ORDER BY stream, seq",
        (gw, alarm_id),
    )
    # as text, parsed here: json keeps integers past 64 bits exact, as they came
    return [json.loads(body) for (body,) in rows]


def losses(conn: Conn, gw: str | None) -> list[LossRow]:
    sql = (
        "SELECT gateway, stream, first_seq, last_seq, count, ts_first, ts_last, cause, reported "
        "FROM losses"
    )
    args: list[Any] = []
    if gw is not None:
        sql += " WHERE gateway = %s"
        args.append(gw)
    return [LossRow(*r) for r in conn.execute(sql + " ORDER BY gateway, stream, first_seq", args)]


def rejected(conn: Conn, gw: str | None, limit: int) -> list[DeadLetter]:
    sql = (
        "SELECT gateway, digest, topic, error, payload, size, stream, seq_first, seq_last, "
        "first_seen, last_seen, times FROM rejected"
    )
    args: list[Any] = []
    if gw is not None:
        sql += " WHERE gateway = %s"
        args.append(gw)
    sql += " ORDER BY last_seen DESC, gateway, digest LIMIT %s"
    args.append(max(0, int(limit)))
    out = []
    for row in conn.execute(sql, args):
        values = list(row)
        values[4] = bytes(values[4])
        values[11] = int(values[11])
        out.append(DeadLetter(*values))
    return out


def sequence_keys(conn: Conn, gw: str) -> set[tuple[str, int]]:
    return {
        (str(s), int(q))
        for s, q in stream(conn, "SELECT stream, seq FROM readings WHERE gateway = %s", (gw,))
    }


def count_readings(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM readings").fetchone()
    return int(row[0]) if row else 0


def commands(conn: Conn, gw: str | None, limit: int) -> list[CommandRecord]:
    sql = (
        "SELECT id, gateway, cmd, args::text, by, sent, result, detail::text, replied FROM commands"
    )
    args: list[Any] = []
    if gw is not None:
        sql += " WHERE gateway = %s"
        args.append(gw)
    sql += " ORDER BY sent DESC, id LIMIT %s"
    args.append(max(0, int(limit)))
    out = []
    for cid, g, cmd, a, by, sent, result, detail, replied in conn.execute(sql, args):
        out.append(
            CommandRecord(
                cid,
                g,
                cmd,
                json.loads(a),
                by,
                sent,
                result,
                None if detail is None else json.loads(detail),
                replied,
            )
        )
    return out


def identities(conn: Conn, gw: str | None) -> list[Identity]:
    sql = "SELECT gateway, kind, fingerprint, issued, expires, revoked FROM identities"
    args: list[Any] = []
    if gw is not None:
        sql += " WHERE gateway = %s"
        args.append(gw)
    sql += " ORDER BY issued, gateway, fingerprint"
    return [Identity(*row) for row in conn.execute(sql, args)]


def revoked_gateways(conn: Conn) -> frozenset[str]:
    rows = conn.execute(
        "SELECT gateway FROM identities GROUP BY gateway HAVING count(revoked) = count(*)"
    )
    return frozenset(row[0] for row in rows)


def expiring(conn: Conn, before: float) -> list[Identity]:
    sql = (
        "SELECT gateway, kind, fingerprint, issued, expires, revoked FROM identities AS i "
        "WHERE revoked IS NULL AND expires IS NOT NULL AND expires < %s AND issued = "
        "(SELECT max(issued) FROM identities WHERE gateway = i.gateway AND revoked IS NULL) "
        "ORDER BY expires, gateway"
    )
    return [Identity(*row) for row in conn.execute(sql, (before,))]
