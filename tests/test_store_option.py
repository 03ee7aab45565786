"""``--db`` names the central store: anything else (a device, a directory, the config, an
agent's outbox) is a one-line error, exit 1, and the file is left exactly as it was. It
was a traceback from SQLite, or worse, the store's tables added to the agent's outbox.
``--limit`` past SQLite's integers was an ``OverflowError`` traceback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from central.store.sqlite import SqliteStore
from cli.fleet import app as fleet_app
from edge_agent.outbox import Outbox


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def not_stores(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    config = tmp_path / "agent.yaml"
    config.write_text("gateway: {id: gw-1}\n")
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=10**8)
    outbox.close()
    (tmp_path / "empty.db").touch()
    return {
        "device": (Path("/dev/null"), "is not a file (a directory or a device)"),
        "directory": (tmp_path, "is not a file (a directory or a device)"),
        "config": (config, "is not an SQLite database, so not a central store"),
        "empty": (tmp_path / "empty.db", "is not an SQLite database, so not a central store"),
        "outbox": (tmp_path / "outbox.db", "is an agent's outbox, not a central store"),
    }


@pytest.mark.parametrize(
    "command", [("gateways", "list"), ("readings",), ("alarms", "list"), ("losses",)]
)
def test_a_db_that_is_not_a_central_store_is_refused_and_left_as_it_is(
    not_stores: dict[str, tuple[Path, str]], command: tuple[str, ...]
) -> None:
    for name, (path, says) in not_stores.items():
        before = digest(path) if path.is_file() else None
        result = CliRunner().invoke(fleet_app, [*command, "--db", str(path)])
        assert result.exit_code == 1, (name, result.output, result.exception)
        assert isinstance(result.exception, SystemExit), (name, result.exception)
        assert result.output.startswith(f"error: {path} {says}"), (name, result.output)
        if before is not None:
            assert digest(path) == before, f"{name} was modified"


def test_a_limit_past_sqlite_integers_is_a_usage_error(tmp_path: Path) -> None:
    db = tmp_path / "central.db"
    SqliteStore(db).close()
    for command in (("readings",), ("rejected",)):
        args = [*command, "--db", str(db), "--limit", str(10**23)]
        result = CliRunner().invoke(fleet_app, args)
        assert result.exit_code == 2, (result.output, result.exception)
        assert "Invalid value for '--limit'" in result.output
