"""The session-wide secret check itself (``tests.secret_scan``): it finds a key or a test
password in a log or a central store, leaves key files alone, and fails a session.

Planted secrets go into folders of their own, outside pytest's base temp folder, so that
the check of this very session does not find them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from central.migrations import APPLICATION_ID
from central.store import open_store
from tests import secret_scan
from tests.secret_scan import scan

ROOT = Path(__file__).resolve().parent.parent
KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIFakeFakeFake\n-----END EC PRIVATE KEY-----\n"
PASSWORD = "pw-7f3a9c1e-test"


@pytest.fixture
def outside() -> Iterator[Path]:
    """A temporary folder outside the session's base temp folder."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-secret-scan-") as d:
        yield Path(d)


def test_a_key_or_a_password_in_a_log_is_found_and_named(outside: Path) -> None:
    (outside / "gw").mkdir()
    (outside / "gw" / "agent.log").write_text(f"starting\nloaded {KEY}")
    (outside / "central.log").write_text(f"login with {PASSWORD} refused\n")
    (outside / "quiet.log").write_text("nothing to see\n")
    found = {(Path(f.where).name, f.what) for f in scan(outside, [PASSWORD])}
    assert found == {
        ("agent.log", "a PEM private key"),
        ("central.log", "the test secret pw-…(16 characters)"),
    }


def test_key_files_certificates_and_bundles_are_not_logs(outside: Path) -> None:
    for name in ("gateway.key", "ca.pem", "gw-1.bundle", "command.key", "agent.yaml"):
        (outside / name).write_text(KEY + PASSWORD)
    assert scan(outside, [PASSWORD]) == []


def test_a_secret_across_two_chunks_is_found(
    outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secret_scan, "CHUNK", 8)
    log = outside / "long.log"
    log.write_text("x" * 13 + PASSWORD + "y" * 5)
    assert [f.what for f in scan(outside, [PASSWORD])] == ["the test secret pw-…(16 characters)"]


def test_the_output_file_of_a_process_is_searched_whatever_its_name(outside: Path) -> None:
    out = outside / "fleet.out"
    out.write_text(KEY)
    assert scan(outside, []) == []
    assert [f.what for f in scan(None, [], [out])] == ["a PEM private key"]


def test_a_secret_in_any_cell_of_a_central_store_is_found_with_its_table(outside: Path) -> None:
    path = outside / "central.db"
    open_store(str(path)).close()
    other = outside / "other.db"  # an SQLite file that is not a central store
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (v TEXT)")
        db.execute("INSERT INTO t VALUES (?)", [KEY])
    assert scan(outside, [PASSWORD]) == []
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE planted (n INTEGER, note TEXT, raw BLOB)")
        db.execute("INSERT INTO planted VALUES (1, 'ok', ?)", [KEY.encode()])
        db.execute("INSERT INTO planted VALUES (2, ?, NULL)", [f"pw was {PASSWORD}"])
    db.close()
    found = {(f.where.split(" ", 1)[1], f.what) for f in scan(outside, [PASSWORD])}
    assert found == {
        ("(table planted, column raw)", "a PEM private key"),
        ("(table planted, column note)", "the test secret pw-…(16 characters)"),
    }


def test_what_a_command_prints_is_searched_too() -> None:
    printed = '{"gateway": "gw-1", "key": "' + KEY.replace("\n", "\\n") + '"}'
    found = secret_scan.search_text("fleet x", printed + f" {PASSWORD}", [PASSWORD])
    assert {f.what for f in found} == {"a PEM private key", "the test secret pw-…(16 characters)"}
    assert secret_scan.search_text("fleet x", '{"gateway": "gw-1"}', [PASSWORD]) == []


def test_a_store_known_only_by_its_wal_is_searched(outside: Path) -> None:
    """Killed before a checkpoint, a store's header (application_id) is only in its WAL."""
    path = outside / "central.db"
    keep = sqlite3.connect(path)
    keep.execute("PRAGMA journal_mode = WAL")
    keep.execute("PRAGMA wal_autocheckpoint = 0")
    keep.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    keep.execute("CREATE TABLE rejected (head BLOB)")
    keep.execute("INSERT INTO rejected VALUES (?)", [KEY.encode()])
    keep.commit()
    try:
        assert path.read_bytes()[68:72] == b"\0\0\0\0"  # not in the main file yet
        assert [f.what for f in scan(outside, [])] == ["a PEM private key"]
    finally:
        keep.close()


def test_a_short_secret_is_refused_as_it_would_match_by_chance() -> None:
    with pytest.raises(ValueError, match="at least 6"):
        secret_scan.remember_secret("pw")


INNER = """
from pathlib import Path

from tests.support import secret


def test_writes_a_log(tmp_path: Path) -> None:
    pw = secret("inner-pw-5b1d0e")
    (tmp_path / "agent.log").write_text(LOGGED)
"""


def run_session(folder: Path, logged: str) -> subprocess.CompletedProcess[str]:
    (folder / "test_inner.py").write_text(INNER.replace("LOGGED", logged))
    (folder / "pytest.ini").write_text("[pytest]\n")
    plugins = ["-p", "tests.secret_scan", "-p", "no:cacheprovider"]
    where = [f"--basetemp={folder / 'base'}", str(folder / "test_inner.py")]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, "-q", *where],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_a_session_whose_tests_log_a_secret_fails_and_says_where(outside: Path) -> None:
    clean = run_session(outside, repr("connected\n"))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    leaked = run_session(outside, 'f"login as center with {pw}\\n"')
    assert leaked.returncode == 1, leaked.stdout + leaked.stderr
    out = leaked.stdout
    assert "secrets in logs, command output or central stores" in out and "1 passed" in out
    assert "agent.log: the test secret inn…(15 characters)" in out
    assert "inner-pw-5b1d0e" not in out  # the report names a secret, never shows it


def test_a_secret_in_a_postgresql_store_is_found_with_its_table(pg_url: str) -> None:
    import psycopg  # noqa: PLC0415 (loaded by the tests that use it)

    open_store(pg_url).close()
    assert secret_scan.search_postgres(pg_url, "pg", [PASSWORD]) == []
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE planted (n int, note text, raw bytea)")
        conn.execute("INSERT INTO planted VALUES (1, 'ok', %s)", [KEY.encode()])
        conn.execute("INSERT INTO planted VALUES (2, %s, NULL)", [f"pw was {PASSWORD}"])
        try:
            found = {
                (f.where, f.what) for f in secret_scan.search_postgres(pg_url, "pg", [PASSWORD])
            }
        finally:  # the session's own check searches this database when the test ends
            conn.execute("DROP TABLE planted")
    assert found == {
        ("pg (table planted, column raw)", "a PEM private key"),
        ("pg (table planted, column note)", "the test secret pw-…(16 characters)"),
    }
