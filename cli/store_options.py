"""The ``--db`` option of the ``fleet`` commands that read the central store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DbOpt = Annotated[
    Path, typer.Option("--db", envvar="EDGEFLEET_DB", help="central store (SQLite file)")
]
DEFAULT_DB = Path("central.db")


def require_db(path: Path) -> Path:
    """``path``, if a store is there; else a one-line error and exit 1 (a query must not
    create an empty store where the operator mistyped the path)."""
    if not path.exists():
        typer.echo(
            f"error: no central store at {path} (is `fleet central run` using another --db?)",
            err=True,
        )
        raise typer.Exit(1)
    return path
