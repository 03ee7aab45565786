"""How commands print what they found: JSON, or a table of cells.

What a cell holds, its type says:

- ``str``: text that came from outside (a gateway's site, a sensor's value, a message,
  a profile's title). It is printed as it is, character for character: a gateway that
  sends ``[red]x[/]`` as its site is shown ``[red]x[/]``, never in red, and ``:fire:``
  stays those six characters (rich's ``escape()`` would have let it become an emoji).
  Only the characters a terminal obeys rather than shows are written out (``printable``):
  rich passes an escape sequence in a cell to the terminal as it is, so a site of
  ``ESC[2J`` would clear the operator's screen.
- ``Styled``: a word the program chose, drawn in a rich style (``online`` as a green
  ``yes``).
- a tuple of both, for a cell that mixes them (``smoke=``, then a red ``bad``).

Numbers are shown to the precision they have (``number``): a float32 from a device,
which Python widens to a double (``4.499000072479248``), to float32's 7 significant
digits (``4.499``); ``--json`` keeps every digit.

Rich is imported only when a table is drawn, so that ``fleet --help`` and every
``--json`` run stay quick.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
JsonlOpt = Annotated[
    bool, typer.Option("--jsonl", help="print one JSON object a line, as they are read")
]


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
    min_width: int | None = None
    """At least this wide: an id the operator types next is never cut (``ids``)."""


def text(*parts: Part) -> Text:
    """The parts as one rich ``Text``: each ``str`` literal, each ``Styled`` in its style."""
    # rich loads only when a table is drawn
    from rich.text import Text  # noqa: PLC0415

    out = Text()
    for part in parts:
        if isinstance(part, Styled):
            out.append(part.text, style=part.style)
        else:
            out.append(printable(part))
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
        out.add_column(
            c.header,
            justify=c.justify,
            no_wrap=c.no_wrap,
            overflow=overflow,
            min_width=c.min_width,
        )
    for row in rows:
        out.add_row(*(text(*cell) if isinstance(cell, tuple) else text(cell) for cell in row))
    return out


ID_WIDTH_MAX = 40
"""Wider ids than this may wrap: past it the other columns would have no room at 80."""


def ids(header: str, values: Iterable[str]) -> Column:
    """A column of ids (gateway, device, alarm) as wide as its longest, up to
    ``ID_WIDTH_MAX``: what a person copies into the next command is shown whole."""
    longest = max((len(printable(v)) for v in values), default=0)
    return Column(header, min_width=min(max(longest, len(header)), ID_WIDTH_MAX))


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
    if isinstance(data, Mapping):
        return {key: strict(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [strict(value) for value in data]
    return data


def print_json(data: Any) -> None:
    """Print strict JSON (``allow_nan=False``: no ``NaN`` or ``Infinity`` ever comes out)."""
    typer.echo(json.dumps(strict(data), indent=2, ensure_ascii=False, allow_nan=False))


def print_jsonl(rows: Iterable[Any]) -> int:
    """Print each row as one line of strict JSON as it comes (a script reads the first
    before the store has found the last); return how many."""
    n = 0
    write = sys.stdout.write
    for row in rows:
        write(json_line(row) + "\n")
        n += 1
    sys.stdout.flush()
    return n


_LINE = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def json_line(row: Any) -> str:
    """``row`` as one line of strict JSON. Rows are encoded as they are, and only one that
    holds a NaN or an infinity is walked by ``strict`` (walking every row of a month of
    readings took two thirds of the time)."""
    try:
        return _LINE.encode(row)
    except ValueError:
        return _LINE.encode(strict(row))


def utc(ts: float | None) -> str:
    """An edge timestamp as UTC to the millisecond; empty when there is none. One no date
    can hold (a store written before the contract bounded times may have ``1e308``) is
    printed as the number it is, never an error that hides the rest of the table."""
    if ts is None:
        return ""
    when = _calendar(ts)
    return f"{number(ts)} (no date)" if when is None else when


def _calendar(ts: float) -> str | None:
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, ValueError, OSError):  # not a time a calendar has (NaN, 1e300)
        return None


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


FLOAT32_DIGITS = 7
"""Significant digits a float32 holds (24-bit mantissa: 7.2 decimal digits)."""
DOUBLE_DIGITS = 15
"""Significant digits a double holds for certain (``0.1 + 0.2`` is shown ``0.3``)."""


def number(value: float) -> str:
    """``value`` to the precision it has: a whole number as one, a value that a float32
    holds exactly (what every float32 register or OPC-UA Float decodes to) to 7 significant
    digits, any other double to 15."""
    if not math.isfinite(value):
        return str(value)
    if value.is_integer() and abs(value) < 10**DOUBLE_DIGITS:
        return str(int(value))
    try:
        float32 = struct.unpack("<f", struct.pack("<f", value))[0] == value
    except OverflowError:  # beyond float32's range: a double for certain
        float32 = False
    return f"{value:.{FLOAT32_DIGITS if float32 else DOUBLE_DIGITS}g}"


def shown(value: object) -> str:
    """A value as a cell shows it: floats by ``number``, nothing as empty, a list or a
    mapping as compact JSON (never a Python repr), the rest as its text."""
    if value is None:
        return ""
    if isinstance(value, float):
        return number(value)
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    return str(value)


def flat(fields: Mapping[str, object], prefix: str = "") -> list[tuple[str, str]]:
    """``(key, shown value)`` pairs, a nested mapping's keys joined with dots
    (``scale.factor``), so that a setting reads as ``key: value`` rather than a dict."""
    out: list[tuple[str, str]] = []
    for key, value in fields.items():
        if isinstance(value, Mapping) and value:
            out += flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", shown(value)))
    return out


def inline(fields: Mapping[str, object]) -> str:
    """``key: value, key: value``, on one line (``flat``)."""
    return ", ".join(f"{key}: {value}" for key, value in flat(fields))


_BIDI = (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
"""Bidirectional marks, overrides and isolates: they reorder the text after them (a
``\\u202e`` makes one alarm id read as another)."""
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROL |= {c: f"\\u{c:04x}" for c in _BIDI}


def printable(sent: str) -> str:
    """Text that came from outside, safe to print: control characters (an escape sequence
    that would recolour or clear the terminal, a newline that would forge a line) as
    ``\\xNN``, bidirectional controls as ``\\uNNNN``. Every table cell of sent text goes
    through it (``text``), as does every ``key: value`` line."""
    return sent.translate(_CONTROL)


def print_fields(fields: Mapping[str, object], times: Iterable[str] = ()) -> None:
    """One ``key: value`` line per field (``flat``), each printable; the ``times`` keys
    (unix times) in UTC."""
    as_time = set(times)
    for key, value in flat(fields):
        raw = fields.get(key)
        when = _calendar(float(raw)) if key in as_time and type(raw) in (int, float) else None  # type: ignore[arg-type]
        typer.echo(printable(f"{key}: {value if when is None else f'{when} UTC'}"))
