"""``outbox.path`` pointed at the wrong thing: the agent never moves or modifies a file that
is not an outbox it made.

The real ``edge-agent check`` and ``edge-agent run`` against the config file itself, a
foreign SQLite database, a directory, ``/dev/null`` and a read-only directory (a read-only
tmpfs: tests run as root, which file modes do not stop): a clear message naming the cause,
exit 2, no traceback, and every file as it was. An outbox of this agent, also one from
before the application id, opens as ever.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.outbox import Lane, Outbox, OutboxPathError, outbox_path_problem
from edge_agent.outbox.path import OUTBOX_APPLICATION_ID
from tests.support import agent_config, free_port, run_cli, tmpfs

DEVICES = (
    "  - id: d1\n"
    "    modbus: {host: 127.0.0.1, port: 1, unit: 1}\n"
    "    points: [{name: p, table: holding, address: 0, type: uint16}]\n"
)


def write_config(directory: Path, outbox: Path) -> Path:
    config = directory / "agent.yaml"
    broker = f"mqtt://127.0.0.1:{free_port()}"  # never reached: the agent stops before
    config.write_text(
        agent_config(gateway="gw-1", broker_url=broker, outbox=outbox, devices_yaml=DEVICES)
    )
    return config


def snapshot(directory: Path) -> dict[str, str]:
    """Every entry under ``directory`` with a digest of its content (or its kind)."""
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(directory))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(directory))] = "dir" if p.is_dir() else "other"
    return out


def foreign_db(path: Path, *, application_id: int = 0) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, what TEXT)")
    db.execute("INSERT INTO orders(what) VALUES ('keep me')")
    if application_id:
        db.execute(f"PRAGMA application_id={application_id}")
    db.commit()
    db.close()


def assert_refused(result: subprocess.CompletedProcess[str], cause: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "outbox.path" in result.stderr and cause in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "make room" not in result.stderr  # the disk-full advice is not the cause here
    assert "ok" not in result.stdout


def check_and_run(config: Path) -> list[subprocess.CompletedProcess[str]]:
    return [run_cli("edge-agent", cmd, "-c", str(config), timeout=60) for cmd in ("check", "run")]


def test_the_config_file_itself_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "agent.yaml")
    before = snapshot(tmp_path)
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if "path:" in text)
    for result in check_and_run(config):
        assert_refused(result, "is not an SQLite database")
        assert f"{config}:{line}: outbox.path: " in result.stderr  # at its line, as promised
    assert snapshot(tmp_path) == before  # not renamed to agent.yaml.corrupt-…, no -wal


@pytest.mark.parametrize("application_id", [0, 0x5EED])
def test_a_foreign_sqlite_file_is_refused_and_left_as_it_is(
    tmp_path: Path, application_id: int
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    outbox = data / "their.db"
    foreign_db(outbox, application_id=application_id)
    config = write_config(tmp_path, outbox)
    before = snapshot(tmp_path)
    cause = "another application" if application_id else "not an outbox (orders)"
    for result in check_and_run(config):
        assert_refused(result, cause)
    assert snapshot(tmp_path) == before  # no outbox tables, no ballast, no -wal or -shm
    db = sqlite3.connect(outbox)
    assert db.execute("SELECT what FROM orders").fetchall() == [("keep me",)]
    db.close()


def test_a_directory_is_refused(tmp_path: Path) -> None:
    outbox = tmp_path / "spool"
    outbox.mkdir()
    config = write_config(tmp_path, outbox)
    before = snapshot(tmp_path)
    for result in check_and_run(config):
        assert_refused(result, "is a directory")
    assert snapshot(tmp_path) == before


def test_dev_null_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, Path("/dev/null"))
    for result in check_and_run(config):
        assert_refused(result, "not a regular file")
    assert Path("/dev/null").is_char_device()


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs holding an outbox of this agent, then remounted read-only."""
    with tmpfs(tmp_path / "ro") as mnt:
        ob = Outbox(mnt / "outbox.db", max_bytes=10**8)
        ob.append(Lane.TELEMETRY, [(1.0, "{}")] * 5)
        ob.close()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, timeout=30)
        yield mnt


@pytest.mark.parametrize("name", ["outbox.db", "new/outbox.db"])
def test_a_read_only_directory_is_refused(tmp_path: Path, read_only_dir: Path, name: str) -> None:
    config = write_config(tmp_path, read_only_dir / name)
    before = snapshot(read_only_dir)
    for result in check_and_run(config):
        assert_refused(result, "read-only")
    assert snapshot(read_only_dir) == before


def test_an_outbox_of_this_agent_is_marked_and_opens_again(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path, max_bytes=10**8)
    ob.append(Lane.TELEMETRY, [(1.0, "{}")] * 3)
    stream = ob.stream_id
    ob.close()
    assert int.from_bytes(path.read_bytes()[68:72], "big") == OUTBOX_APPLICATION_ID
    assert outbox_path_problem(path) is None
    again = Outbox(path, max_bytes=10**8)
    assert (again.stream_id, again.stats().depth, again.moved_aside) == (stream, 3, None)
    again.close()


def test_an_outbox_from_before_the_application_id_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path, max_bytes=10**8)
    ob.append(Lane.TELEMETRY, [(1.0, "{}")] * 4)
    stream = ob.stream_id
    ob.close()
    db = sqlite3.connect(path)  # what an older agent left: the same schema, id 0
    db.execute("PRAGMA application_id=0")
    db.commit()
    db.close()
    assert int.from_bytes(path.read_bytes()[68:72], "big") == 0
    assert outbox_path_problem(path) is None
    again = Outbox(path, max_bytes=10**8)
    assert (again.stream_id, again.stats().depth, again.moved_aside) == (stream, 4, None)
    again.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone() == (OUTBOX_APPLICATION_ID,)
    db.close()


def test_an_old_looking_file_with_a_table_of_its_own_is_not_adopted(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path, max_bytes=10**8).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA application_id=0")
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    before = snapshot(tmp_path)
    with pytest.raises(OutboxPathError, match="not an outbox"):
        Outbox(path, max_bytes=10**8)
    assert snapshot(tmp_path) == before


def test_examining_a_foreign_wal_database_creates_nothing_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    before = snapshot(tmp_path)
    problem = outbox_path_problem(path)
    assert problem is not None and "not an outbox" in problem
    assert snapshot(tmp_path) == before  # an ordinary read-only open leaves -wal and -shm


def test_a_symbolic_link_to_nothing_is_refused_by_check_as_by_run(tmp_path: Path) -> None:
    """check said ok, and run failed with the advice of a full disk (make room)."""
    link = tmp_path / "outbox.db"
    link.symlink_to(tmp_path / "gone" / "outbox.db")
    config = write_config(tmp_path, link)
    before = snapshot(tmp_path)
    for result in check_and_run(config):
        assert_refused(result, "is a symbolic link to")
        assert "which does not exist" in result.stderr
    assert snapshot(tmp_path) == before
