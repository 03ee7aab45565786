"""How commands print what they found: JSON, or a table of cells.

What a cell holds, its type says:

- ``str``: text that came from outside (a gateway's site, a sensor's value, a message,
  a profile's title). It is printed as it is, character for character: a gateway that
  sends ``[red]x[/]`` as its site is shown ``[red]x[/]``, never in red, and ``:fire:``
  stays those six characters (rich's ``escape()`` would have let it become an emoji).
- ``Styled``: a word the program chose, drawn in a rich style (``online`` as a green
  ``yes``).
- a tuple of both, for a cell that mixes them (``smoke=``, then a red ``bad``).

Rich is imported only when a table is drawn, so that ``fleet --help`` and every
``--json`` run stay quick.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@dataclass(frozen=True, slots=True)
class Styled:
    """A cell the program wrote itself, drawn in a rich ``style`` (``"green"``, ``"bold"``)."""

    text: str
    style: str


Part = str | Styled
Cell = Part | tuple[Part, ...]
"""A table cell: sent text (``str``, shown literally), the program's own word (``Styled``),
or both in one cell (``("smoke=", Styled("bad", "red"))``)."""


@dataclass(frozen=True, slots=True)
class Column:
    """A column header, with how its cells are laid out when that is not the default."""

    header: str
    justify: Literal["left", "right"] = "left"
    no_wrap: bool = False
    fold: bool = False
    """Break a long cell anywhere (raw registers) rather than at spaces."""


def text(*parts: Part) -> Text:
    """The parts as one rich ``Text``: each ``str`` literal, each ``Styled`` in its style."""
    # rich loads only when a table is drawn
    from rich.text import Text  # noqa: PLC0415

    out = Text()
    for part in parts:
        if isinstance(part, Styled):
            out.append(part.text, style=part.style)
        else:
            out.append(part)
    return out


def table(
    columns: Sequence[str | Column], rows: Iterable[Sequence[Cell]], *, title: str | None = None
) -> Table:
    """A rich table of ``rows``; no cell, nor the title, is ever read as markup."""
    # rich loads only when a table is drawn
    from rich.table import Table  # noqa: PLC0415

    out = Table(title=None if title is None else text(title))
    for col in columns:
        c = col if isinstance(col, Column) else Column(col)
        overflow: Literal["fold", "ellipsis"] = "fold" if c.fold else "ellipsis"
        out.add_column(c.header, justify=c.justify, no_wrap=c.no_wrap, overflow=overflow)
    for row in rows:
        out.add_row(*(text(*cell) if isinstance(cell, tuple) else text(cell) for cell in row))
    return out


def print_rich(*renderables: RenderableType) -> None:
    """Print on stdout, as wide as the terminal (``COLUMNS``) allows."""
    # rich loads only when a table is drawn
    from rich.console import Console  # noqa: PLC0415

    console = Console()
    for r in renderables:
        console.print(r)


def show(
    data: Any,
    json_out: bool,
    columns: Sequence[str | Column],
    rows: Callable[[], Iterable[Sequence[Cell]]],
) -> None:
    """Print ``data`` as JSON, or as a table of ``columns`` and ``rows()``."""
    if json_out:
        print_json(data)
        return
    print_rich(table(columns, rows()))


def strict(data: Any) -> Any:
    """``data`` with every NaN or infinite float as None: JSON has no such numbers, and
    what a store written by an older version holds must still print as JSON a strict
    parser (``jq``, JavaScript) reads."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: strict(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [strict(value) for value in data]
    return data


def print_json(data: Any) -> None:
    """Print strict JSON (``allow_nan=False``: no ``NaN`` or ``Infinity`` ever comes out)."""
    typer.echo(json.dumps(strict(data), indent=2, ensure_ascii=False, allow_nan=False))


def utc(ts: float | None) -> str:
    """An edge timestamp as UTC to the millisecond; empty when there is none. One no date
    can hold (a store written before the contract bounded times may have ``1e308``) is
    printed as the number it is, never an error that hides the rest of the table."""
    if ts is None:
        return ""
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return f"{ts!r} (no date)"


def ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    if not math.isfinite(ts):
        return repr(ts)
    s = max(0.0, time.time() - ts)
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"
