"""The session-wide check that no secret reached a log or a central store (issue 14).

What each command run by ``tests.support.run_cli`` prints (its ``--json`` output and its
messages) is searched when it ends. At the end of the session every log under pytest's
base temp folder (``*.log``, and the files the test helpers of ``tests/support.py`` send
a process's output to) and every central store there (SQLite files whose
``application_id`` is a central store's: all their text and blob cells) is searched for

- a PEM private key's marker (``PRIVATE KEY-----``: PKCS#8, ``EC``, ``RSA``,
  ``OPENSSH``, encrypted): always forbidden in a log, an output or a store;
- the passwords and tokens the tests made, registered with ``tests.support.secret``.

A PostgreSQL central store is searched the same way when its test ends, before its
database is dropped (``scan_postgres``, called by the ``pg_url`` fixture), and the
PostgreSQL server's log before its folder goes (``scan_log_now``).

A find fails the session (exit status 1) with a report naming the file (table and
column for a store) and the secret. Key files, certificates and bundles that tests write
on purpose are neither logs nor stores, so they are not searched. Each file is read in
chunks and each store table is searched by one SQL scan, so the check adds seconds to a
session that makes hundreds of temp folders.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from central.migrations import APPLICATION_ID

PEM_PRIVATE_KEY = "PRIVATE KEY-----"
"""In every private key's PEM armour (``-----BEGIN [EC |RSA |ENCRYPTED ]PRIVATE KEY-----``
and its END line): a key in a log or a store shows it, however it was quoted."""

CHUNK = 1 << 20
SQLITE_MAGIC = b"SQLite format 3\x00"
STORE_SUFFIXES = (".db", ".sqlite", ".sqlite3")

_secrets: set[str] = set()
_outputs: set[Path] = set()
_early_findings: list[Finding] = []
_searched: list[str] = []
"""What the check at the end searched, for its one line in the summary."""
_factory: list[pytest.TempPathFactory] = []
_findings: list[Finding] = []


@dataclass(frozen=True, slots=True)
class Finding:
    where: str
    """The file, and for a store its table and column."""
    what: str
    """The secret, shown by what it is, never in full."""

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def remember_secret(value: str) -> str:
    """``value``, remembered as one that no log or store may hold."""
    if len(value) < 6:
        # a short one would match by chance (and says nothing: make test secrets long)
        raise ValueError(f"a test secret needs at least 6 characters, not {len(value)}")
    _secrets.add(value)
    return value


def remember_output(path: Path) -> Path:
    """``path`` is where a process's output goes: searched at the end like a log."""
    _outputs.add(path)
    return path


def _needles(secrets: Iterable[str]) -> dict[bytes, str]:
    """What to look for (its bytes) -> how a report names it."""
    found = {PEM_PRIVATE_KEY.encode(): "a PEM private key"}
    for s in sorted(secrets):
        found[s.encode()] = f"the test secret {s[:3]}…({len(s)} characters)"
    return found


def scan_file(path: Path, needles: dict[bytes, str]) -> list[Finding]:
    """The needles in one file, read in chunks that overlap by the longest needle."""
    pattern = re.compile(b"|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True)))
    overlap = max(map(len, needles)) - 1
    seen: set[bytes] = set()
    try:
        with path.open("rb") as f:
            tail = b""
            while chunk := f.read(CHUNK):
                data = tail + chunk
                seen.update(m.group() for m in pattern.finditer(data))
                tail = data[-overlap:] if overlap else b""
    except OSError:
        return []  # gone or unreadable (a process's private file): not ours to judge
    return [Finding(str(path), needles[n]) for n in needles if n in seen]


def is_central_store(path: Path) -> bool:
    """By its ``application_id``: in the file's header, or (0 there) through SQLite, which
    reads the WAL too: a store whose first commits were never checkpointed (its process
    was killed) has it only there."""
    try:
        with path.open("rb") as f:
            head = f.read(100)
    except OSError:
        return False
    if head[:16] != SQLITE_MAGIC:
        return False
    found = int.from_bytes(head[68:72], "big")
    if found == 0:
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                (found,) = db.execute("PRAGMA application_id").fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            return False
    return bool(found == APPLICATION_ID)


def scan_store(path: Path, needles: dict[bytes, str]) -> list[Finding]:
    """The needles in any text or blob cell of an SQLite central store, opened read-only
    (its WAL too): one scan per table, and one more per column only where it found one."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    found: list[Finding] = []
    try:
        tables = [
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for table in tables:
            columns = [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]
            found += _scan_table(db, path, table, columns, needles)
    except sqlite3.Error as exc:
        found.append(Finding(str(path), f"could not be searched ({exc})"))
    finally:
        db.close()
    return found


def _scan_table(
    db: sqlite3.Connection, path: Path, table: str, columns: list[str], needles: dict[bytes, str]
) -> list[Finding]:
    def hits(cols: list[str], needle: list[bytes]) -> bool:
        # CAST AS BLOB: a text cell as its UTF-8 bytes, so one bytes needle fits both kinds
        cond = " OR ".join(f'instr(CAST("{c}" AS BLOB), ?)' for c in cols for _ in needle)
        args = [n for _ in cols for n in needle]
        query = f'SELECT 1 FROM "{table}" WHERE {cond} LIMIT 1'
        return db.execute(query, args).fetchone() is not None

    every = list(needles)
    if not columns or not hits(columns, every):
        return []
    return [
        Finding(f"{path} (table {table}, column {c})", needles[n])
        for c in columns
        for n in every
        if hits([c], [n])
    ]


def scan_postgres(url: str, where: str) -> list[Finding]:
    """``search_postgres`` for the session's secrets, before the test's database is
    dropped: what it finds is remembered for the session's report, and returned."""
    found = search_postgres(url, where, _secrets)
    _early_findings.extend(found)
    return found


def search_postgres(url: str, where: str, secrets: Iterable[str]) -> list[Finding]:
    """The needles in any cell of a PostgreSQL database's tables: one scan per table (a
    partitioned one with its partitions), one more per column only where it found one."""
    import psycopg  # noqa: PLC0415 (loaded by the tests that use it)
    from psycopg import sql  # noqa: PLC0415

    needles = _needles(secrets)
    found: list[Finding] = []
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError:
        return []  # its test stopped the server, or dropped the database itself
    with conn:
        rows = conn.execute(
            "SELECT n.nspname, c.relname, a.attname, a.atttypid = 'bytea'::regtype "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid "
            "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND a.attnum > 0 "
            "AND NOT a.attisdropped AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%%' ORDER BY 1, 2, a.attnum"
        ).fetchall()
        by_table: dict[tuple[str, str], list[tuple[str, bool]]] = {}
        for schema, table, column, binary in rows:
            by_table.setdefault((schema, table), []).append((column, binary))

        def hits(name: sql.Composable, cols: list[tuple[str, bool]], some: list[bytes]) -> bool:
            conds: list[sql.Composable] = []
            args: list[object] = []
            for column, binary in cols:
                for n in some:
                    col = sql.Identifier(column)
                    if binary:  # bytea: its bytes, not the text of its hex
                        conds.append(sql.SQL("position(%s::bytea in {}) > 0").format(col))
                        args.append(n)
                    else:
                        conds.append(sql.SQL("strpos({}::text, %s) > 0").format(col))
                        args.append(n.decode())
            query = sql.SQL("SELECT 1 FROM {} WHERE {} LIMIT 1").format(
                name, sql.SQL(" OR ").join(conds)
            )
            return conn.execute(query, args).fetchone() is not None

        every = list(needles)
        for (schema, table), cols in by_table.items():
            name = sql.Identifier(schema, table)
            if not hits(name, cols, every):
                continue
            found += [
                Finding(f"{where} (table {table}, column {col[0]})", needles[n])
                for col in cols
                for n in every
                if hits(name, [col], [n])
            ]
    return found


def search_text(where: str, text: str, secrets: Iterable[str]) -> list[Finding]:
    data = text.encode(errors="replace")
    return [Finding(where, what) for n, what in _needles(secrets).items() if n in data]


def remember_output_text(command: str, text: str) -> list[Finding]:
    """Search what a command printed (``tests.support.run_cli``: its ``--json`` output and
    its messages); what it finds is remembered for the session's report, and returned."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    found = search_text(f"{test}: the output of `{command}`", text, _secrets)
    _early_findings.extend(found)
    return found


def scan_log_now(path: Path) -> list[Finding]:
    """Search a log that will be gone by the end of the session (the PostgreSQL server's,
    in a folder of its own); remembered for the session's report, and returned."""
    found = scan_file(path, _needles(_secrets))
    _early_findings.extend(found)
    return found


def _files(base: Path) -> Iterator[tuple[str, Path]]:
    """Under ``base``: ``("log", path)`` and ``("store", path)`` for what is searched."""
    for folder, dirs, names in os.walk(base):
        dirs[:] = [d for d in dirs if d != "node_modules"]
        for name in names:
            path = Path(folder, name)
            if name.endswith(".log") or path in _outputs:
                yield "log", path
            elif name.endswith(STORE_SUFFIXES) and is_central_store(path):
                yield "store", path


def scan(
    base: Path | None,
    secrets: Iterable[str] = (),
    outputs: Iterable[Path] = (),
    counts: dict[str, int] | None = None,
) -> list[Finding]:
    """Every find in the logs and central stores under ``base``, and in ``outputs``;
    ``counts`` (if given) is told how many of each were searched."""
    needles = _needles(secrets)
    found: list[Finding] = []
    done: set[Path] = set()
    tally = counts if counts is not None else {}
    for kind, path in _files(base) if base is not None else ():
        done.add(path)
        tally[kind] = tally.get(kind, 0) + 1
        found += scan_file(path, needles) if kind == "log" else scan_store(path, needles)
    for path in outputs:
        if path not in done and path.is_file():
            tally["log"] = tally.get("log", 0) + 1
            found += scan_file(path, needles)
    return found


# --- the plugin ---------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _secret_scan_base(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keeps the session's temp path factory for the check at the end."""
    _factory[:] = [tmp_path_factory]


@pytest.hookimpl(tryfirst=True)  # before the temp folders may be cleaned away
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.option.collectonly:
        return  # nothing ran
    base = _factory[0].getbasetemp() if _factory else None
    start, counts = time.monotonic(), {"log": 0, "store": 0}
    found = [*_early_findings, *scan(base, _secrets, _outputs, counts)]
    _findings[:] = found
    _searched[:] = [
        f"secret check: {counts['log']} logs and {counts['store']} SQLite central stores "
        f"searched for {len(_secrets)} test secrets and PEM private keys in "
        f"{time.monotonic() - start:.1f} s"
    ]
    if found:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _findings:
        if _searched and terminalreporter.verbosity >= -1:
            terminalreporter.write_line(f"{_searched[0]}: none found")
        return
    terminalreporter.write_sep(
        "=", "secrets in logs, command output or central stores (issue 14)", red=True
    )
    for finding in _findings:
        terminalreporter.write_line(str(finding))
    terminalreporter.write_line(
        f"{len(_findings)} find(s): a secret was written where no secret may be; exit status 1"
    )
