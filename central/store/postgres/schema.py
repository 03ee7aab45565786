"""The PostgreSQL schema, as versioned migrations run when a store is opened.

The versions are ``central.migrations``' (1: release 0.1.0's tables, 2: a dead letter's
size, 3: the dead letters' byte total, 4: the store marked as one, 5: the registry, the
command ledger and 1-minute rollups, 6: exact alarm values, 7: the default partition): a
version means the same data on both backends, and this module checks that it knows exactly
those versions. The version is kept in the table ``schema_version`` (one row per migration
applied, with when).

All missing migrations run in one transaction that first takes
``pg_advisory_xact_lock(MIGRATION_LOCK)`` and then reads the version again: two workers
opening a new database at once both succeed (the second finds the work done). A crash
leaves the database before or after, never half way (PostgreSQL's DDL is transactional).

A database with tables but no ``schema_version`` is someone else's (``NotACentralStore``),
one at a version newer than this code knows is refused (``StoreTooNew``): both untouched.

How values are kept (the same data as SQLite's, other types):

- times are ``double precision``: the edge's unix time, as on SQLite; ``readings`` is
  partitioned by RANGE on ``ts``, one partition per UTC day (``partitions``);
- a reading's value is ``value text`` with ``kind`` saying what it was (``VALUE_KINDS``):
  an integer of any size as its decimal digits, a float as its ``repr`` (both read back
  exactly), a boolean as ``true``/``false``, a string as itself;
- an alarm's ``value`` and ``occurrence`` are ``jsonb`` (numbers exact, booleans kept);
- exactly-once for readings is the table ``readings_stored`` (see ``writes``), for alarm
  events the primary key ``(gateway, stream, seq)`` of the unpartitioned ``alarm_events``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from central.migrations import MIGRATIONS, NotACentralStore, StoreTooNew

if TYPE_CHECKING:
    import psycopg

MIGRATION_LOCK = 0x45466373_00000001
"""The advisory lock key migrations run under ("EFcs", 1)."""
MARK = "EdgeFleet central store"
"""The comment on ``schema_version`` (version 4): what tells our database from others."""

V1 = """
CREATE TABLE readings (
    gateway text NOT NULL,
    stream text NOT NULL,
    seq bigint NOT NULL,
    device text NOT NULL,
    point text NOT NULL,
    value text,
    kind smallint NOT NULL, -- VALUE_KINDS: what value holds
    unit text,
    quality text NOT NULL,
    reason text,
    ts double precision NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX readings_by_point ON readings (gateway, device, point, ts);
CREATE TABLE readings_stored ( -- exactly-once: the seq ranges committed, disjoint
    gateway text NOT NULL,
    stream text NOT NULL,
    seq_first bigint NOT NULL,
    seq_last bigint NOT NULL,
    committed double precision NOT NULL,
    PRIMARY KEY (gateway, stream, seq_last)
);
CREATE TABLE alarm_events (
    gateway text NOT NULL,
    stream text NOT NULL,
    seq bigint NOT NULL,
    alarm_id text NOT NULL,
    rule text NOT NULL,
    device text NOT NULL,
    severity text NOT NULL,
    state text NOT NULL,
    value jsonb,
    ts double precision NOT NULL,
    msg text NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (gateway, stream, seq)
);
CREATE INDEX alarm_events_by_alarm ON alarm_events (gateway, alarm_id, stream, seq);
CREATE TABLE alarms (
    gateway text NOT NULL,
    alarm_id text NOT NULL,
    rule text NOT NULL,
    device text NOT NULL,
    severity text NOT NULL,
    state text NOT NULL,
    value jsonb,
    since double precision,
    ts double precision NOT NULL,
    msg text NOT NULL,
    occurrence jsonb,
    acked_by text,
    shelved_until double precision,
    events bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (gateway, alarm_id)
);
CREATE TABLE losses (
    gateway text NOT NULL,
    stream text NOT NULL,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    count bigint NOT NULL,
    ts_first double precision,
    ts_last double precision,
    cause text NOT NULL,
    reported double precision NOT NULL,
    PRIMARY KEY (gateway, stream, first_seq)
);
CREATE TABLE rejected (
    gateway text NOT NULL,
    digest text NOT NULL,
    topic text NOT NULL,
    error text NOT NULL,
    payload bytea NOT NULL,
    stream text,
    seq_first bigint,
    seq_last bigint,
    first_seen double precision NOT NULL,
    last_seen double precision NOT NULL,
    times bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (gateway, digest)
);
CREATE INDEX rejected_by_time ON rejected (last_seen);
CREATE TABLE gateways (
    id text PRIMARY KEY,
    site text,
    online boolean NOT NULL DEFAULT false,
    agent_version text,
    config_rev text,
    started double precision,
    stream text,
    last_seen double precision,
    outbox_depth bigint,
    outbox_oldest_age_s double precision,
    dropped_telemetry bigint,
    state jsonb,
    health jsonb
);
"""

V2 = "ALTER TABLE rejected ADD COLUMN size bigint;"

V3 = """
CREATE TABLE rejected_bytes (
    id integer PRIMARY KEY CHECK (id = 1),
    bytes bigint NOT NULL
);
INSERT INTO rejected_bytes SELECT 1, coalesce(sum(octet_length(topic) + octet_length(error)
    + octet_length(payload)), 0) FROM rejected;
CREATE FUNCTION rejected_bytes_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE rejected_bytes SET bytes = bytes + octet_length(NEW.topic)
            + octet_length(NEW.error) + octet_length(NEW.payload);
        RETURN NEW;
    END IF;
    UPDATE rejected_bytes SET bytes = bytes - octet_length(OLD.topic)
        - octet_length(OLD.error) - octet_length(OLD.payload);
    RETURN OLD;
END $$;
CREATE TRIGGER rejected_kept AFTER INSERT ON rejected
    FOR EACH ROW EXECUTE FUNCTION rejected_bytes_count();
CREATE TRIGGER rejected_gone AFTER DELETE ON rejected
    FOR EACH ROW EXECUTE FUNCTION rejected_bytes_count();
"""

V4 = f"COMMENT ON TABLE schema_version IS '{MARK}';"

V5 = """
ALTER TABLE gateways ADD COLUMN online_since double precision;
ALTER TABLE gateways ADD COLUMN tags jsonb;
ALTER TABLE gateways ADD COLUMN desired_rev text;
CREATE INDEX gateways_by_site ON gateways (site, id);
CREATE INDEX gateways_by_tags ON gateways USING gin (tags jsonb_path_ops);
CREATE INDEX readings_by_time ON readings (ts);
CREATE INDEX alarms_by_state ON alarms (state, severity);
CREATE TABLE devices (
    gateway text NOT NULL,
    device text NOT NULL,
    link text,
    last_good double precision,
    error text,
    updated double precision NOT NULL,
    PRIMARY KEY (gateway, device)
);
CREATE TABLE rollups_1m (
    gateway text NOT NULL,
    device text NOT NULL,
    point text NOT NULL,
    minute bigint NOT NULL,
    count bigint NOT NULL,
    sum double precision NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    PRIMARY KEY (gateway, device, point, minute)
);
CREATE INDEX rollups_by_minute ON rollups_1m (minute);
CREATE TABLE commands (
    id text PRIMARY KEY,
    gateway text NOT NULL,
    cmd text NOT NULL,
    args jsonb NOT NULL,
    by text,
    sent double precision NOT NULL,
    result text,
    detail jsonb,
    replied double precision
);
CREATE INDEX commands_by_gateway ON commands (gateway, sent);
CREATE INDEX commands_by_time ON commands (sent);
CREATE TABLE identities (
    gateway text NOT NULL,
    kind text NOT NULL,
    fingerprint text NOT NULL,
    issued double precision NOT NULL,
    expires double precision,
    revoked double precision,
    PRIMARY KEY (gateway, fingerprint)
);
CREATE TABLE config_revisions (
    gateway text NOT NULL,
    rev text NOT NULL,
    body text NOT NULL,
    created double precision NOT NULL,
    by text,
    PRIMARY KEY (gateway, rev)
);
UPDATE gateways SET tags = state -> 'tags' WHERE jsonb_typeof(state -> 'tags') = 'object';
UPDATE gateways SET online_since = last_seen;
"""

# Version 6 gives SQLite a column for the alarm fields it cannot hold exactly; here
# ``value`` and ``occurrence`` are jsonb since version 1, so the step only says so.
V6 = "COMMENT ON COLUMN alarms.value IS 'the event value, exactly as it came (jsonb)';"

# Version 7: readings whose day has no partition of its own (a backfill from long ago, a
# gateway's clock years off) go to one default partition, rather than each such day
# getting a table: a hostile gateway could otherwise make thousands (``partitions``).
V7 = "CREATE TABLE readings_default PARTITION OF readings DEFAULT;"

STEPS: Mapping[int, str] = MappingProxyType({1: V1, 2: V2, 3: V3, 4: V4, 5: V5, 6: V6, 7: V7})
if sorted(STEPS) != [m.version for m in MIGRATIONS]:  # pragma: no cover - import-time check
    raise RuntimeError("central.store.postgres.schema must give a step for every migration")
LATEST = max(STEPS)

_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"


def schema_version(conn: psycopg.Connection[tuple[Any, ...]], label: str) -> int:
    """The database's schema version, 0 for an empty one; ``StoreSchemaError`` if this code
    cannot use it. Reads only."""
    tables = {str(name) for (name,) in conn.execute(_TABLES).fetchall()}
    if "schema_version" not in tables:
        if tables:
            shown = ", ".join(sorted(tables)[:5]) + (", …" if len(tables) > 5 else "")
            raise NotACentralStore(
                f"{label} is a PostgreSQL database, but not a central store (it has tables "
                f"of something else: {shown}); nothing changed. Give the center a database "
                "of its own."
            )
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    version = int(row[0]) if row and row[0] is not None else 0
    if version > LATEST:
        raise StoreTooNew(
            f"{label} is at schema version {version}, newer than this release knows "
            f"({LATEST}): a newer release made or upgraded it. Use that release (or a "
            "backup made before the upgrade); this one changes nothing in it."
        )
    if version >= 1 and "readings" not in tables:
        raise NotACentralStore(
            f"{label} has a schema_version table but no readings: not a central store; "
            "nothing changed"
        )
    return version


def migrate(conn: psycopg.Connection[tuple[Any, ...]], label: str, now: float) -> list[int]:
    """Bring the database on ``conn`` (autocommit, no transaction open) to ``LATEST``;
    return the versions applied."""
    if schema_version(conn, label) >= LATEST:
        return []
    descriptions = {m.version: m.description for m in MIGRATIONS}
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        version = schema_version(conn, label)  # again: another worker may have done it
        if version == 0:
            conn.execute(
                "CREATE TABLE schema_version (version integer PRIMARY KEY, "
                "description text NOT NULL, applied double precision NOT NULL)"
            )
        for v in sorted(STEPS):
            if v > version:
                conn.execute(STEPS[v])
                conn.execute(
                    "INSERT INTO schema_version (version, description, applied) "
                    "VALUES (%s, %s, %s)",
                    (v, descriptions[v], now),
                )
                applied.append(v)
    return applied
