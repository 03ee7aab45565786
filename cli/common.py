"""What the ``fleet`` commands share: where the broker and the store are, and output."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from edge_agent.config import ConfigError, LoadedConfig, load_config

DbOpt = Annotated[
    Path, typer.Option("--db", envvar="EDGEFLEET_DB", help="central store (SQLite file)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
DEFAULT_DB = Path("central.db")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


EXIT_CONFIG = 2  # systemd's unit does not restart on 2: a bad file cannot crash-loop


def load_or_exit(path: Path) -> LoadedConfig:
    """The config, or every problem printed as file:line: field: message and exit 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        n = len(exc.problems)
        typer.echo(f"{path}: {n} problem{'s' if n != 1 else ''}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None


def parse_since(text: str | None) -> float | None:
    """``10m`` → the unix time ten minutes ago."""
    if text is None:
        return None
    m = _DURATION.match(text.strip())
    if not m:
        raise typer.BadParameter(
            "use a number and s, m, h or d, e.g. 30s, 10m, 2h", param_hint="--since"
        )
    return time.time() - float(m.group(1)) * _UNIT_S[m.group(2)]


def show(
    data: Any, json_out: bool, headers: Sequence[str], rows: Callable[[], Iterable[Sequence[str]]]
) -> None:
    """Print ``data`` as JSON, or as a table of ``headers`` and ``rows()``; rich is
    imported only when a table is drawn."""
    if json_out:
        print_json(data)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(*headers)
    for row in rows():
        # cells hold what gateways and sensors sent: text, never rich markup
        table.add_row(*(escape(cell) for cell in row))
    Console().print(table)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    s = max(0.0, time.time() - ts)
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def require_db(path: Path) -> Path:
    if not path.exists():
        typer.echo(
            f"error: no central store at {path} (is `fleet central run` using another --db?)",
            err=True,
        )
        raise typer.Exit(1)
    return path
