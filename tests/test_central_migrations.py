"""Versioned migrations of the central store: a store made by release 0.1.0 (and one by the
last unversioned main) opens, is upgraded to the latest version, and keeps every row; a
store of a newer release, or a file that is not a store, is refused and left as it was."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from central.migrations import (
    AGENT_OUTBOX_ID,
    APPLICATION_ID,
    LATEST,
    MIGRATIONS,
    SQLITE,
    Migration,
    NotACentralStore,
    StoreTooNew,
    check_migrations,
    migrate_sqlite,
)
from central.store.sqlite import SqliteStore
from cli.fleet import app as fleet_app
from edge_agent.outbox import Outbox
from edge_agent.outbox.path import OUTBOX_APPLICATION_ID
from tests.support import stored_readings

DATA = Path(__file__).parent / "data"
STORE_0_1_0 = DATA / "store-0.1.0.db"
STORE_MAIN = DATA / "store-unversioned-main.db"
FLEET = Path(sys.executable).with_name("fleet")
OLD_TABLES = ("readings", "alarm_events", "alarms", "losses", "rejected", "gateways")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "central.db"
    shutil.copyfile(source, target)
    return target


def test_the_outbox_mark_central_names_is_the_agents() -> None:
    assert AGENT_OUTBOX_ID == OUTBOX_APPLICATION_ID


def pragma(path: Path, name: str) -> int:
    """One integer of the file's header: ``application_id`` or ``user_version``."""
    conn = sqlite3.connect(path)
    try:
        (value,) = conn.execute(f"PRAGMA {name}").fetchone()
    finally:
        conn.close()
    return int(value)


def application_id(path: Path) -> int:
    return pragma(path, "application_id")


def user_version(path: Path) -> int:
    return pragma(path, "user_version")


def columns(path: Path) -> dict[str, list[str]]:
    """The columns of the tables 0.1.0 had, as the file at ``path`` has them."""
    conn = sqlite3.connect(path)
    try:
        return {
            table: [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            for table in OLD_TABLES
        }
    finally:
        conn.close()


def rows(path: Path, kept: dict[str, list[str]] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables 0.1.0 had, in the columns ``kept`` names (by default the
    file's own), sorted: what must survive. ``size`` (added since) is left out."""
    kept = kept or columns(path)
    conn = sqlite3.connect(path)
    try:
        out = {}
        for table in OLD_TABLES:
            picked = ", ".join(c for c in kept[table] if c != "size")
            out[table] = sorted(conn.execute(f"SELECT {picked} FROM {table}").fetchall(), key=repr)
    finally:
        conn.close()
    return out


def schema(path: Path) -> set[tuple[str, str, str]]:
    """``sqlite_master`` with the whitespace of its SQL normalised."""
    conn = sqlite3.connect(path)
    try:
        found = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    finally:
        conn.close()
    return {(kind, name, re.sub(r"\s+", " ", sql or "").strip()) for kind, name, sql in found}


def fleet(*args: str) -> subprocess.CompletedProcess[str]:
    """``fleet`` through its real entry point, bounded in time (``central run`` waits for a
    broker for ever if it gets past the store)."""
    return subprocess.run(
        [str(FLEET), *args], capture_output=True, text=True, timeout=60, check=False
    )


def fleet_json(*args: str) -> Any:
    result = CliRunner().invoke(fleet_app, [*args, "--json"])
    assert result.exit_code == 0, (args, result.output, result.exception)
    return json.loads(result.stdout)


# --- a store of 0.1.0, and of the unversioned main, upgraded ------------------------------


@pytest.mark.parametrize("source", [STORE_0_1_0, STORE_MAIN], ids=["0.1.0", "unversioned-main"])
def test_an_older_store_opens_at_the_latest_version_with_every_row(
    tmp_path: Path, source: Path
) -> None:
    db = copy(source, tmp_path)
    assert user_version(db) == 0
    old_columns = columns(db)
    before = rows(db)
    assert all(before[table] for table in OLD_TABLES), "the test data has rows in every table"
    store = SqliteStore(db)
    try:
        assert stored_readings(store, limit=1000)
        with store.round() as rnd:
            rnd.insert_rejected("gw-new", "t", b"new dead letter", "bad", None)
        (counted,) = store.conn.execute("SELECT bytes FROM rejected_bytes").fetchone()
        (kept,) = store.conn.execute(
            "SELECT sum(length(topic) + length(error) + length(payload)) FROM rejected"
        ).fetchone()
        sizes = {r.gateway: r.size for r in store.rejected()}
        # migration 5: the registry's tags from each gateway's last state, its online_since
        # from when it was last seen, and the 1-minute rollups from the readings kept
        registry = store.conn.execute(
            "SELECT id, tags, online_since = last_seen FROM gateways ORDER BY id"
        ).fetchall()
        rollups = store.conn.execute(
            "SELECT gateway, device, point, minute, count, sum, min, max FROM rollups_1m"
        ).fetchall()
        expected = store.conn.execute(
            "SELECT gateway, device, point, CAST(ts / 60 AS INTEGER) * 60, count(*), sum(value), "
            "min(value), max(value) FROM readings WHERE is_bool IN (0, 1) AND typeof(value) IN "
            "('integer', 'real') GROUP BY 1, 2, 3, 4"
        ).fetchall()
    finally:
        store.close()
    assert user_version(db) == LATEST
    assert [(gw, json.loads(tags), same) for gw, tags, same in registry] == [
        ("gw-old-1", {"district": "north"}, 1),
        ("gw-old-2", {"district": "north"}, 1),
    ]
    assert rollups and sorted(rollups) == sorted(expected)
    flows = {(r[0], r[2]): r for r in rollups}
    assert flows[("gw-old-1", "flow")][4] >= 1  # numbers rolled up; text and big ints not
    assert ("gw-old-1", "mode") not in flows and ("gw-old-1", "counter") not in flows
    after = rows(db, old_columns)
    after["rejected"] = [r for r in after["rejected"] if r[0] != "gw-new"]
    assert after == before
    assert counted == kept  # the old dead letter counted by the migration, the new one by triggers
    assert sizes["gw-new"] == len(b"new dead letter")
    # 0.1.0 did not keep a dead letter's size; the unversioned main did
    assert sizes["gw-old-1"] == (None if source == STORE_0_1_0 else 24)


def test_the_store_api_reads_everything_an_upgraded_0_1_0_store_holds(tmp_path: Path) -> None:
    store = SqliteStore(copy(STORE_0_1_0, tmp_path))
    try:
        readings = stored_readings(store, "gw-old-1", limit=1000)
        alarms = {a.alarm_id: a for a in store.alarms()}
        history = store.alarm_history("gw-old-1", "smoke-1/smoke")
        losses = store.losses()
        gateways = list(store.gateways())
    finally:
        store.close()
    values = {(r.point, r.seq): r.value for r in readings}
    assert len(values) == 15
    assert values[("flow", 1)] == 1.25 and values[("flow", 6)] == 2.25
    assert values[("valve_open", 2)] is True and values[("valve_open", 7)] is False
    assert values[("counter", 4)] == 2**64 - 1  # stored as its digits, given back as an int
    assert values[("mode", 3)] == "auto" and values[("temp", 5)] is None
    assert alarms["smoke-1/smoke"].state == "cleared"
    assert alarms["smoke-1/smoke"].events == 3
    assert [e["state"] for e in history] == ["active", "acknowledged", "cleared"]
    assert history[1]["acked_by"] == "alice"
    assert [(x.first_seq, x.last_seq, x.cause) for x in losses] == [(100, 149, "cap")]
    assert [(g.id, g.site, g.tags, g.outbox_depth) for g in gateways] == [
        ("gw-old-1", "site-0", {"district": "north"}, 3),
        ("gw-old-2", "site-1", {"district": "north"}, 3),
    ]


def test_fleet_queries_read_an_upgraded_0_1_0_store(tmp_path: Path) -> None:
    db = copy(STORE_0_1_0, tmp_path)
    # the real entry point opens it first: the upgrade runs there
    listed = fleet("gateways", "list", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [g["id"] for g in json.loads(listed.stdout)] == ["gw-old-1", "gw-old-2"]
    assert user_version(db) == LATEST
    readings = fleet_json("readings", "--db", str(db), "--limit", "1000")
    assert len(readings) == 30
    assert {r["value"] for r in readings if r["point"] == "counter"} == {2**64 - 1}
    alarms = fleet_json("alarms", "list", "--db", str(db))
    assert sorted(a["alarm_id"] for a in alarms) == ["outbox/dropped", "smoke-1/smoke"]
    history = fleet_json("alarms", "history", "smoke-1/smoke", "-g", "gw-old-1", "--db", str(db))
    assert [e["state"] for e in history] == ["active", "acknowledged", "cleared"]
    (dead,) = fleet_json("rejected", "--db", str(db))
    assert dead["error"] == "not JSON: unterminated string"
    assert dead["topic"] == "edgefleet/gw/gw-old-1/telemetry"
    (loss,) = fleet_json("losses", "--db", str(db))
    assert loss["count"] == 50


def test_opening_an_upgraded_store_again_changes_nothing(tmp_path: Path) -> None:
    db = copy(STORE_0_1_0, tmp_path)
    SqliteStore(db).close()
    upgraded = digest(db)
    store = SqliteStore(db)
    try:
        assert migrate_sqlite(store.conn, str(db)) == []
    finally:
        store.close()
    assert digest(db) == upgraded


def test_a_fresh_store_has_the_schema_of_an_upgraded_0_1_0_store(tmp_path: Path) -> None:
    old = copy(STORE_0_1_0, tmp_path)
    SqliteStore(old).close()
    fresh = tmp_path / "fresh.db"
    SqliteStore(fresh).close()
    assert user_version(fresh) == LATEST
    assert schema(fresh) == schema(old)
    assert application_id(fresh) == application_id(old) == APPLICATION_ID
    assert {name for kind, name, _ in schema(fresh) if kind == "trigger"} == {
        "rejected_kept",
        "rejected_gone",
    }


def test_two_processes_opening_a_0_1_0_store_at_once_both_succeed(tmp_path: Path) -> None:
    for attempt in range(5):
        db = tmp_path / f"central-{attempt}.db"
        shutil.copyfile(STORE_0_1_0, db)
        start = threading.Barrier(2, timeout=10)
        failed: list[BaseException] = []

        def open_it(
            path: Path = db,
            barrier: threading.Barrier = start,
            errors: list[BaseException] = failed,
        ) -> None:
            try:
                barrier.wait()
                SqliteStore(path).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        assert failed == []
        assert user_version(db) == LATEST
        assert rows(db, columns(STORE_0_1_0)) == rows(STORE_0_1_0)


def test_a_failing_migration_leaves_the_store_at_the_version_before(tmp_path: Path) -> None:
    """Each migration is one transaction with its version bump: a step that fails half way
    undoes what it did (``executescript`` would have committed the statements before)."""
    db = copy(STORE_0_1_0, tmp_path)
    SqliteStore(db).close()
    broken = Migration(
        LATEST + 1,
        "fails after a first statement",
        {SQLITE: "CREATE TABLE half_done (a);\nINSERT INTO no_such_table VALUES (1);\n"},
    )
    conn = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            migrate_sqlite(conn, str(db), (*MIGRATIONS, broken))
        assert not conn.in_transaction
    finally:
        conn.close()
    assert user_version(db) == LATEST
    assert "half_done" not in {name for _, name, _ in schema(db)}


# --- refused: a newer release's store, and what is not a store ----------------------------


@pytest.fixture
def newer_store(tmp_path: Path) -> Path:
    db = copy(STORE_0_1_0, tmp_path)
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    return db


def test_a_store_of_a_newer_release_is_refused_and_left_untouched(newer_store: Path) -> None:
    before = digest(newer_store)
    with pytest.raises(StoreTooNew, match=f"schema version {LATEST + 1}, newer than"):
        SqliteStore(newer_store)
    assert digest(newer_store) == before
    assert sorted(p.name for p in newer_store.parent.iterdir()) == ["central.db"]


@pytest.mark.parametrize(
    "command",
    [
        ("gateways", "list"),
        ("readings",),
        ("alarms", "list"),
        ("rejected",),
        ("central", "run", "--broker", "mqtt://127.0.0.1:1"),
    ],
    ids=" ".join,
)
def test_fleet_refuses_a_store_of_a_newer_release_in_one_line(
    newer_store: Path, command: tuple[str, ...]
) -> None:
    before = digest(newer_store)
    result = fleet(*command, "--db", str(newer_store))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith(
        f"error: {newer_store} is at schema version {LATEST + 1}, newer than this release"
    ), result.stderr
    assert "Traceback" not in result.stderr
    assert digest(newer_store) == before


@pytest.fixture
def not_stores(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "agent.yaml"
    text.write_text("gateway: {id: gw-1}\n" * 100)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE telemetry (seq INTEGER PRIMARY KEY, body TEXT)")
    conn.commit()
    conn.close()
    partial = tmp_path / "partial.db"
    conn = sqlite3.connect(partial)
    conn.execute("CREATE TABLE readings (gateway TEXT)")
    conn.commit()
    conn.close()
    outbox = tmp_path / "outbox.db"
    Outbox(outbox, max_bytes=10**8).close()
    lookalike = tmp_path / "lookalike.db"  # every table of a store, another program's header
    SqliteStore(lookalike).close()
    conn = sqlite3.connect(lookalike)
    conn.execute("PRAGMA application_id = 1234")
    conn.close()
    another = "is an SQLite database of another program (application_id"
    return {
        "outbox": (outbox, "is an agent's outbox, not a central store; nothing changed"),
        "lookalike": (lookalike, f"{another} 0x000004d2), not a central store"),
        "text": (text, "is not a central store (SQLite says: file is not a database)"),
        "other": (other, "is an SQLite database, but not a central store (no alarm_events"),
        "partial": (partial, "is an SQLite database, but not a central store (no alarm_events"),
    }


def test_a_file_that_is_not_a_central_store_is_refused_and_left_untouched(
    not_stores: dict[str, tuple[Path, str]],
) -> None:
    for name, (path, says) in not_stores.items():
        before = digest(path)
        with pytest.raises(NotACentralStore) as refused:
            SqliteStore(path)
        assert str(refused.value).startswith(f"{path} {says}"), (name, refused.value)
        result = fleet("central", "run", "--broker", "mqtt://127.0.0.1:1", "--db", str(path))
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert result.stderr.startswith(f"error: {path} {says}"), (name, result.stderr)
        assert digest(path) == before, f"{name} was modified"


def test_a_migration_two_processes_start_at_once_runs_once(tmp_path: Path) -> None:
    """Both read the old version, then queue for the write lock: the second reads the
    version again inside its transaction and finds the work done. (Without that re-read,
    the second ran the step again, and a step that cannot run twice failed.)"""
    db = copy(STORE_0_1_0, tmp_path)
    SqliteStore(db).close()
    once = Migration(LATEST + 1, "a step that can run once", {SQLITE: "CREATE TABLE once (a);"})
    holder = sqlite3.connect(db)
    holder.execute("BEGIN IMMEDIATE")  # both wait behind it for the write lock
    results: list[object] = []

    def migrate(errors: list[object] = results) -> None:
        conn = sqlite3.connect(db)
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            errors.append(len(migrate_sqlite(conn, str(db), (*MIGRATIONS, once))))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # both past their first read, waiting in BEGIN IMMEDIATE
    holder.rollback()
    holder.close()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert sorted(results, key=repr) == [0, 1]  # one applied it, the other found it done
    assert user_version(db) == LATEST + 1


def test_migration_versions_must_follow_each_other() -> None:
    step = {SQLITE: "SELECT 1;"}
    with pytest.raises(ValueError, match=r"1\.\.2 in order: \[1, 3\]"):
        check_migrations((Migration(1, "a", step), Migration(3, "c", step)))
    check_migrations(MIGRATIONS)
