"""The ``--db`` option of the ``fleet`` commands that use the central store: the path of
an SQLite file, or a PostgreSQL server's ``postgresql://…`` address."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from central.store import Store

DbOpt = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="EDGEFLEET_DB",
        help="central store: an SQLite file, or postgresql://user@host/db for a server",
    ),
]
DEFAULT_DB = "central.db"


def require_db(address: str) -> str:
    """``address``, if a central store is there; else a one-line error and exit 1. A query
    must neither create an empty store where the operator mistyped the path, nor add the
    store's tables to another file (an agent's outbox, the config) named by mistake. A
    server's address is checked when it is opened (``open_db``)."""
    # loaded by the command that uses it: fleet --help loads nothing of central
    from central.store import address_problem, is_postgres  # noqa: PLC0415

    if is_postgres(address):
        return address
    problem = address_problem(address) or store_problem(Path(address))
    if problem is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(1)
    return address


def open_db(address: str, *, create: bool = False) -> Store:
    """The store at ``address`` (with ``create``, an SQLite file is made if missing, as
    ``fleet central run`` does); a store that cannot be used or reached is a one-line
    error, exit 1."""
    # loaded by the command that uses it: fleet --help loads nothing of central
    from central.store import StoreError, StoreSchemaError, open_store  # noqa: PLC0415

    try:
        return open_store(address if create else require_db(address))
    except (
        StoreError,
        StoreSchemaError,
    ) as exc:  # a newer release's store, or not one: left untouched
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


SQLITE_MAGIC = b"SQLite format 3\x00"


def store_problem(path: Path) -> str | None:
    """None if ``path`` is a central store this release can open; else what it is, for the
    operator (also a store of a newer release). Reads only: the header, and the tables and
    schema version through a read-only connection."""
    if not path.exists():
        return f"no central store at {path} (is `fleet central run` using another --db?)"
    if not path.is_file():
        return f"{path} is not a file (a directory or a device), so not a central store"
    try:
        with path.open("rb") as f:
            header = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or exc})"
    if header != SQLITE_MAGIC:
        return f"{path} is not an SQLite database, so not a central store"
    # loaded by the command that uses it: fleet --help loads nothing of central
    from central.migrations import StoreSchemaError, sqlite_version  # noqa: PLC0415

    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            sqlite_version(db, str(path))
        finally:
            db.close()
    except StoreSchemaError as exc:
        return str(exc)
    except sqlite3.Error as exc:
        return f"{path}: cannot be read as a central store ({exc})"
    return None
