"""Versioned schema migrations of the central store, run once when a store is opened.

Each migration has a version, a one-line description and, per backend, the step that
brings a store from the version before to its own: SQL, or a function for what SQL alone
cannot say (add a column only where it is missing). A backend that comes later (a server
database) gives its own step for each version; the versions, and what they mean, are the
same for every backend.

On SQLite the version is ``PRAGMA user_version``. Each missing migration runs in its own
``BEGIN IMMEDIATE`` transaction, with the version bump in the same transaction: a crash
leaves the store at the version before or after, never half way. The version is read again
inside the transaction, so two processes that open an older store at once both succeed
(the second finds the work done and does nothing).

Release 0.1.0 created its tables with no version (``user_version`` 0): a store that has its
tables, and only tables a central store has, is recognised as version 1, whose SQL is that
release's schema, so nothing is re-created. Stores a later, still unversioned, main made
have some of the later changes already (its ad-hoc upgrades), so migrations 2 and 3 add
only what is missing.

A store at a version newer than this code knows (made by a newer release) is refused, and
so is a file that is not a central store (an agent's outbox, the config): both untouched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType

SQLITE = "sqlite"

APPLICATION_ID = 0x45466373
"""``PRAGMA application_id`` of a central store ("EFcs"), set by migration 4: from then
on a store is told from any other SQLite file (an agent's outbox has its own) by its
header, not only by its table names."""

AGENT_OUTBOX_ID = 0x45466F62
"""An agent's outbox's ``application_id`` (``edge_agent.outbox.path``, which central does
not import; a test keeps the two equal): named in the refusal, the likeliest mistake."""

Step = str | Callable[[sqlite3.Connection], None]
"""What one migration does on one backend: SQL statements, or a function given the
connection inside the migration's transaction (it must not commit)."""


class StoreSchemaError(Exception):
    """The file at the store's path cannot be used as this version's central store. The
    message says why and what to do, for the operator; nothing in the file was changed."""


class StoreTooNew(StoreSchemaError):
    """The store was made or upgraded by a newer release: this one does not know its schema."""


class NotACentralStore(StoreSchemaError):
    """The file is not a central store (another SQLite database, or not SQLite at all)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    steps: Mapping[str, Step]
    """Per backend (``SQLITE``): how this version is reached from the one before."""


# Version 1: the schema of release 0.1.0 (commit 08001e6), as it created it.
SCHEMA_0_1_0 = """
CREATE TABLE IF NOT EXISTS readings (
    gateway TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    device TEXT NOT NULL,
    point TEXT NOT NULL,
    value,
    unit TEXT,
    quality TEXT NOT NULL,
    reason TEXT,
    ts REAL NOT NULL,
    is_bool INTEGER NOT NULL DEFAULT 0, -- what value holds: 1 a boolean, 2 a big integer as TEXT
    PRIMARY KEY (gateway, stream, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS readings_by_point ON readings (gateway, device, point, ts);
CREATE TABLE IF NOT EXISTS alarm_events (
    gateway TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    alarm_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    device TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    value,
    ts REAL NOT NULL,
    msg TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (gateway, stream, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alarm_events_by_alarm ON alarm_events (alarm_id, ts);
CREATE TABLE IF NOT EXISTS alarms (
    gateway TEXT NOT NULL,
    alarm_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    device TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    value,
    since REAL,
    ts REAL NOT NULL,
    msg TEXT NOT NULL,
    occurrence INTEGER,
    acked_by TEXT,
    shelved_until REAL,
    events INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (gateway, alarm_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS losses (
    gateway TEXT NOT NULL,
    stream TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    ts_first REAL,
    ts_last REAL,
    cause TEXT NOT NULL,
    reported REAL NOT NULL,
    PRIMARY KEY (gateway, stream, first_seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected (
    gateway TEXT NOT NULL,
    digest TEXT NOT NULL, -- sha256 of topic and payload: a message sent again is one row
    topic TEXT NOT NULL,
    error TEXT NOT NULL,
    payload BLOB NOT NULL,
    stream TEXT, -- the outbox rows it was sent for, when it names them (then they are acked)
    seq_first INTEGER,
    seq_last INTEGER,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    times INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (gateway, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gateways (
    id TEXT PRIMARY KEY,
    site TEXT,
    online INTEGER NOT NULL DEFAULT 0,
    agent_version TEXT,
    config_rev TEXT,
    started REAL,
    stream TEXT,
    last_seen REAL,
    outbox_depth INTEGER,
    outbox_oldest_age_s REAL,
    dropped_telemetry INTEGER,
    state TEXT,
    health TEXT
);
"""

TABLES_0_1_0 = frozenset({"readings", "alarm_events", "alarms", "losses", "rejected", "gateways"})
"""The tables release 0.1.0 made: all of them there and ``user_version`` 0 is version 1."""
TABLES_UNVERSIONED = TABLES_0_1_0 | {"rejected_bytes"}
"""Every table an unversioned store may have (a main after 0.1.0 also made
``rejected_bytes``): a table outside these means the file is something else."""

DEAD_LETTER_BYTES = "length(CAST(topic AS BLOB)) + length(CAST(error AS BLOB)) + length(payload)"
"""What one dead letter keeps, in bytes: what the triggers of version 3 count, and what
``central.store`` prunes by."""


def _nothing(conn: sqlite3.Connection) -> None:
    """A version that changes nothing here: SQLite's readings are not partitioned."""


def _add_rejected_size(conn: sqlite3.Connection) -> None:
    """A dead letter keeps only the head of its payload, so it says how big all of it was.
    An unversioned store from a main after 0.1.0 may have the column already."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(rejected)")}
    if "size" not in columns:
        conn.execute("ALTER TABLE rejected ADD COLUMN size INTEGER")


SQL_REJECTED_BYTES = f"""
CREATE TABLE IF NOT EXISTS rejected_bytes ( -- what the dead letters keep, in all: one row
    id INTEGER PRIMARY KEY CHECK (id = 1),
    bytes INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS rejected_kept AFTER INSERT ON rejected BEGIN
    UPDATE rejected_bytes SET bytes = bytes + length(CAST(NEW.topic AS BLOB))
        + length(CAST(NEW.error AS BLOB)) + length(NEW.payload);
END;
CREATE TRIGGER IF NOT EXISTS rejected_gone AFTER DELETE ON rejected BEGIN
    UPDATE rejected_bytes SET bytes = bytes - length(CAST(OLD.topic AS BLOB))
        - length(CAST(OLD.error AS BLOB)) - length(OLD.payload);
END;
INSERT OR IGNORE INTO rejected_bytes SELECT 1, total({DEAD_LETTER_BYTES}) FROM rejected;
"""

# Version 5: the fleet registry (devices, tags and online_since of gateways, identities,
# config revisions), the command ledger, 1-minute rollups, and the indexes the operator's
# queries need (newest readings fleet-wide, active alarms, gateways by site).
SQL_REGISTRY = """
ALTER TABLE gateways ADD COLUMN online_since REAL;
ALTER TABLE gateways ADD COLUMN tags TEXT; -- JSON: the tags of the last online state
ALTER TABLE gateways ADD COLUMN desired_rev TEXT;
CREATE INDEX IF NOT EXISTS gateways_by_site ON gateways (site, id);
CREATE INDEX IF NOT EXISTS readings_by_time ON readings (ts);
CREATE INDEX IF NOT EXISTS alarms_by_state ON alarms (state, severity);
CREATE TABLE IF NOT EXISTS devices (
    gateway TEXT NOT NULL,
    device TEXT NOT NULL,
    link TEXT,
    last_good REAL, -- the edge's time of its last good reading
    error TEXT,
    updated REAL NOT NULL, -- the center's time of the health report
    PRIMARY KEY (gateway, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollups_1m ( -- numbers and booleans (0/1) per point per minute
    gateway TEXT NOT NULL,
    device TEXT NOT NULL,
    point TEXT NOT NULL,
    minute INTEGER NOT NULL, -- unix time of the minute's start (a multiple of 60)
    count INTEGER NOT NULL,
    sum REAL NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    PRIMARY KEY (gateway, device, point, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollups_by_minute ON rollups_1m (minute);
CREATE TABLE IF NOT EXISTS commands ( -- the command ledger
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    cmd TEXT NOT NULL,
    args TEXT NOT NULL, -- JSON
    by TEXT,
    sent REAL NOT NULL,
    result TEXT, -- NULL while no answer came: ok, refused, timeout, failed
    detail TEXT, -- JSON: the reply's result or error
    replied REAL
);
CREATE INDEX IF NOT EXISTS commands_by_gateway ON commands (gateway, sent);
CREATE TABLE IF NOT EXISTS identities ( -- what a gateway proves itself with
    gateway TEXT NOT NULL,
    kind TEXT NOT NULL, -- certificate, password
    fingerprint TEXT NOT NULL, -- sha256 of the certificate, or of the password's hash
    issued REAL NOT NULL,
    expires REAL,
    revoked REAL,
    PRIMARY KEY (gateway, fingerprint)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS config_revisions ( -- desired configurations, per gateway
    gateway TEXT NOT NULL,
    rev TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    by TEXT,
    PRIMARY KEY (gateway, rev)
) WITHOUT ROWID;
UPDATE gateways SET tags = json_extract(state, '$.tags')
    WHERE state IS NOT NULL AND json_valid(state) AND json_type(state, '$.tags') = 'object';
UPDATE gateways SET online_since = last_seen;
INSERT OR IGNORE INTO rollups_1m (gateway, device, point, minute, count, sum, min, max)
    SELECT gateway, device, point, CAST(ts / 60 AS INTEGER) * 60, count(*), sum(value),
        min(value), max(value)
    FROM readings
    WHERE is_bool IN (0, 1) AND typeof(value) IN ('integer', 'real')
    GROUP BY gateway, device, point, CAST(ts / 60 AS INTEGER) * 60;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the schema of release 0.1.0", MappingProxyType({SQLITE: SCHEMA_0_1_0})),
    Migration(
        2,
        "dead letters keep the size of the whole payload",
        MappingProxyType({SQLITE: _add_rejected_size}),
    ),
    Migration(
        3,
        "the dead letters' byte total, kept by triggers in one row",
        MappingProxyType({SQLITE: SQL_REJECTED_BYTES}),
    ),
    Migration(
        4,
        "the store marked as one in its header (application_id)",
        MappingProxyType({SQLITE: f"PRAGMA application_id = {APPLICATION_ID};"}),
    ),
    Migration(
        5,
        "the fleet registry, the command ledger and 1-minute rollups",
        MappingProxyType({SQLITE: SQL_REGISTRY}),
    ),
    Migration(
        6,
        "alarms keep booleans and integers beyond 64 bits exactly",
        MappingProxyType({SQLITE: "ALTER TABLE alarms ADD COLUMN exact TEXT; -- JSON"}),
    ),
    Migration(
        7,
        "readings of days far from today in one default partition (PostgreSQL only)",
        MappingProxyType({SQLITE: _nothing}),
    ),
)
LATEST = MIGRATIONS[-1].version


def check_migrations(migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
    """Versions 1, 2, 3… in order, none missing: a gap would skip a step on every store."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise ValueError(f"migration versions must be 1..{len(migrations)} in order: {versions}")


check_migrations()


# --- the SQLite runner ---------------------------------------------------------------


def sqlite_version(conn: sqlite3.Connection, label: str, latest: int = LATEST) -> int:
    """The store's schema version, 0 for a new file; ``StoreSchemaError`` if this code,
    which knows versions up to ``latest``, cannot use it. Reads only. ``label`` names the
    file in messages."""
    # One read transaction for the three reads: read one by one, another process's
    # migrations could commit between them, and version 0 with version 5's tables looked
    # like a foreign database (CI saw it once, with two processes opening a new store).
    snapshot = not conn.in_transaction
    try:
        if snapshot:
            conn.execute("BEGIN")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            (application_id,) = conn.execute("PRAGMA application_id").fetchone()
            tables = {
                str(name)
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master"
                    " WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                )
            }
        finally:
            if snapshot and conn.in_transaction:
                conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:  # not SQLite at all, or damaged
        raise NotACentralStore(f"{label} is not a central store (SQLite says: {exc})") from exc
    if application_id == AGENT_OUTBOX_ID:
        raise NotACentralStore(
            f"{label} is an agent's outbox, not a central store; nothing changed"
        )
    if application_id not in (0, APPLICATION_ID):
        raise NotACentralStore(
            f"{label} is an SQLite database of another program (application_id "
            f"{application_id:#010x}), not a central store; nothing changed"
        )
    if version > latest:
        raise StoreTooNew(
            f"{label} is at schema version {version}, newer than this release knows "
            f"({latest}): a newer release made or upgraded it. Use that release (or a "
            "backup made before the upgrade); this one changes nothing in it."
        )
    if version == 0 and tables:
        if not TABLES_0_1_0 <= tables <= TABLES_UNVERSIONED:
            raise NotACentralStore(_not_a_store(label, tables))
        return 1  # release 0.1.0, or a main after it: its tables are version 1's
    if version > 0 and not tables >= TABLES_0_1_0:
        raise NotACentralStore(_not_a_store(label, tables))
    return int(version)


def _not_a_store(label: str, tables: set[str]) -> str:
    missing = sorted(TABLES_0_1_0 - tables)
    other = sorted(tables - TABLES_UNVERSIONED)
    why = f"no {', '.join(missing)} table" if missing else f"it has {', '.join(other)}"
    return f"{label} is an SQLite database, but not a central store ({why}); nothing changed"


def migrate_sqlite(
    conn: sqlite3.Connection, label: str, migrations: tuple[Migration, ...] = MIGRATIONS
) -> list[Migration]:
    """Bring the store on ``conn`` to the latest version; return the migrations applied
    (none for a store already there: then it writes nothing). ``conn`` must have no open
    transaction; ``StoreSchemaError`` if the store cannot be used, and then nothing changed."""
    latest = migrations[-1].version
    if sqlite_version(conn, label, latest) >= latest:
        return []
    applied = []
    for migration in migrations:
        with _immediate(conn):
            version = sqlite_version(conn, label, latest)  # again: another may have done it
            if version == 1 and _user_version(conn) == 0:
                conn.execute("PRAGMA user_version = 1")  # an unversioned store: name it
            if version < migration.version:
                _run(conn, migration.steps[SQLITE])
                conn.execute(f"PRAGMA user_version = {int(migration.version)}")
                applied.append(migration)
    return applied


def _user_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One migration's transaction: BEGIN IMMEDIATE takes the write lock at once (waiting
    up to busy_timeout for another process's), COMMIT if the step ran, else ROLLBACK."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (disk full)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _run(conn: sqlite3.Connection, step: Step) -> None:
    if callable(step):
        step(conn)
        return
    for statement in statements(step):
        conn.execute(statement)


def statements(sql: str) -> Iterator[str]:
    """The statements of ``sql`` one by one (a trigger's body is part of its statement).
    ``executescript`` would commit the migration's transaction before running them."""
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {pending.strip()[:80]}")
