"""Read a series of readings from CSV for a replay, checking every row against the gateway
it is replayed on; every row that cannot be replayed is a problem with its line.

A replay that skipped a row it could not read would answer for another series than the
one given, so the reader never skips silently: it reads the whole file, collects every
problem (``file:line: message``) and the caller replays nothing when there are any.

Columns are found by header name, in any order; other columns are ignored, so the CSV of
an export with more columns (unit, reason, stream, ...) reads as it is:

* ``ts``: epoch seconds (or seconds from 0), or ISO 8601 with an offset or ``Z``; a time
  a calendar has (years 1 to 9999);
* ``device`` (or ``dev``) and ``point`` (or ``pt``): one of the gateway's points;
* ``value``: a number, ``true``/``false`` (``on``/``off``, ``yes``/``no``), or empty for a
  bad reading; text only for a point that carries text;
* optional ``gateway`` (or ``gw``): must be the gateway replayed on;
* optional ``quality``: ``good``, ``bad`` or ``stale`` (default ``good``).

Rows go forward in time (equal timestamps are fine). A file going backwards all through
(newest first, as a listing of stored readings is) is replayed oldest first; a row older
than one before it in any other file is a problem.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from drivers.base import Quality, Reading, Value

COLUMNS: dict[str, tuple[str, ...]] = {
    "ts": ("ts",),
    "device": ("device", "dev"),
    "point": ("point", "pt"),
    "value": ("value",),
    "gateway": ("gateway", "gw"),
    "quality": ("quality",),
}
REQUIRED = ("ts", "device", "point", "value")
TS_MIN = datetime(1, 1, 1, tzinfo=UTC).timestamp()
TS_MAX = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
"""The times a row may have, in epoch seconds: those of a calendar."""
TRUE_WORDS = frozenset({"true", "on", "yes"})
FALSE_WORDS = frozenset({"false", "off", "no"})


@dataclass(frozen=True, slots=True)
class Sample:
    line: int
    reading: Reading


@dataclass(frozen=True)
class Catalog:
    """What the gateway replayed on has: its id, and per device the points a row may
    name, each with whether it carries text (a string register, an untyped OPC-UA node)."""

    gateway: str
    points: Mapping[str, Mapping[str, bool]]
    # OPC-UA arrays read flattened: one reading per element, named <name>.<index>
    arrays: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def point_problem(self, device: str, point: str) -> str | None:
        known = self.points.get(device)
        if known is None:
            return f"unknown device {device!r} (the gateway has {_names(self.points)})"
        if point in known or self._element(device, point) is not None:
            return None
        return f"device {device!r} has no point {point!r} (it has {_names(known)})"

    def carries_text(self, device: str, point: str) -> bool:
        known = self.points[device]
        return known[point] if point in known else known[self._element(device, point) or ""]

    def _element(self, device: str, point: str) -> str | None:
        name, _, index = point.rpartition(".")
        return name if index.isdigit() and name in self.arrays.get(device, ()) else None


@dataclass
class Series:
    samples: list[Sample]
    problems: list[str]


def _names(names: Mapping[str, object], shown: int = 8) -> str:
    listed = ", ".join(sorted(names)[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def parse_ts(text: str) -> float:
    """Epoch seconds, or ISO 8601 with an offset; a ValueError says which it is not."""
    t = text.strip()
    try:
        ts = float(t)
    except ValueError:
        try:
            when = datetime.fromisoformat(t)
        except ValueError:
            raise ValueError(
                f"ts {text!r} is neither seconds nor an ISO 8601 time (e.g. 2026-03-01T08:00:00Z)"
            ) from None
        if when.tzinfo is None:
            raise ValueError(f"ts {text!r} has no offset: add Z (UTC) or one like +01:00") from None
        return when.timestamp()
    if not math.isfinite(ts):
        raise ValueError(f"ts {text!r} is not a finite number of seconds")
    if not TS_MIN <= ts <= TS_MAX:
        # past these, 0.1 s steps are lost in a double's rounding: a clock that stands still
        raise ValueError(f"ts {text!r} is not a time of the years 1 to 9999 in epoch seconds")
    return ts


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""What a spreadsheet runs a cell starting with: ``fleet readings --format csv`` writes a
sent text starting so with a ``'`` before it, and a value read here loses that ``'``."""


def parse_value(text: str, carries_text: bool) -> Value:
    """A row's value; None for an empty one (a bad reading)."""
    if text.startswith("'") and text[1:].startswith(FORMULA_START):
        text = text[1:]  # a text that fleet readings kept from a spreadsheet's formulas
    t = text.strip()
    low = t.lower()
    if t == "":
        return None
    if low in TRUE_WORDS or low in FALSE_WORDS:
        return low in TRUE_WORDS
    try:
        number: float = int(t) if t.lstrip("+-").isdigit() else float(t)
    except ValueError:
        if carries_text:
            return t
        raise ValueError(f"value {text!r} is not a number, true/false or empty") from None
    try:
        finite = math.isfinite(number)  # an int past a double's range cannot be compared
    except OverflowError:
        finite = False
    if not finite:
        raise ValueError(f"value {_shortened(text)} is not a finite number")
    return number


def _shortened(text: str, keep: int = 40) -> str:
    """``text`` as a problem quotes it: a value of 4000 digits is not printed whole."""
    return repr(text) if len(text) <= keep else f"{text[:keep]!r}... ({len(text)} characters)"


def parse_quality(text: str) -> Quality:
    """A row's quality; good when the column is absent or empty."""
    try:
        return Quality(text.strip().lower() or Quality.GOOD)
    except ValueError:
        raise ValueError(
            f"quality {text!r} is not one of {', '.join(q.value for q in Quality)}"
        ) from None


def _header(names: Sequence[str] | None) -> tuple[dict[str, int], str | None]:
    """Column index per field; a problem when a required one is missing or doubled."""
    found: dict[str, int] = {}
    cells = [n.strip().lower() for n in names or ()]
    for key, aliases in COLUMNS.items():
        at = [i for i, name in enumerate(cells) if name in aliases]
        if len(at) > 1:
            return found, f"the header names {key} twice ({', '.join(cells[i] for i in at)})"
        if at:
            found[key] = at[0]
    missing = [k for k in REQUIRED if k not in found]
    if missing:
        return found, (
            f"the header needs ts, device, point and value (missing {', '.join(missing)}; "
            f"it has {', '.join(cells) or 'nothing'})"
        )
    return found, None


def _row(
    cells: list[str], columns: dict[str, int], width: int, catalog: Catalog
) -> tuple[Reading | None, str | None]:
    if len(cells) <= max(columns.values()):
        return None, f"{len(cells)} fields, fewer than the header's {width}"

    def cell(key: str) -> str:
        return cells[columns[key]].strip() if key in columns else ""

    if "gateway" in columns and cell("gateway") != catalog.gateway:
        return None, f"gateway {cell('gateway')!r} is not this config's ({catalog.gateway!r})"
    device, point = cell("device"), cell("point")
    problem = catalog.point_problem(device, point)
    if problem is not None:
        return None, problem
    try:
        ts = parse_ts(cell("ts"))
        quality = parse_quality(cell("quality"))
        value = parse_value(cell("value"), catalog.carries_text(device, point))
    except ValueError as exc:
        return None, str(exc)
    if value is None and quality is Quality.GOOD:
        quality = Quality.BAD  # an empty value is a failed read
    return Reading(device, point, value, None, quality, ts), None


def read_series(f: TextIO, name: str, catalog: Catalog) -> Series:
    """Every sample of ``f`` and every problem, each as ``name:line: message``."""
    series = Series([], [])
    problems: list[tuple[int, str]] = []
    rows = csv.reader(f)
    try:
        header = next(rows, None)
        columns, problem = _header(header)
        if problem is not None:
            series.problems.append(f"{name}:1: {problem}")
            return series
        line = rows.line_num
        for cells in rows:
            line, at = rows.line_num, line + 1  # a quoted field may span lines
            if not any(c.strip() for c in cells):
                continue
            reading, problem = _row(cells, columns, len(header or ()), catalog)
            if problem is not None:
                problems.append((at, problem))
            elif reading is not None:
                series.samples.append(Sample(at, reading))
    except csv.Error as exc:
        problems.append((rows.line_num, f"not CSV ({exc}); read no further"))
    problems += _order_problems(series)
    series.problems = [f"{name}:{at}: {problem}" for at, problem in sorted(problems)]
    return series


def _order_problems(series: Series) -> list[tuple[int, str]]:
    """Rows must go forward in time; a file that goes backwards all through is turned
    round (newest first is how stored readings are listed)."""
    ts = [s.reading.ts for s in series.samples]
    forward = all(a <= b for a, b in itertools.pairwise(ts))
    if forward:
        return []
    if all(a >= b for a, b in itertools.pairwise(ts)):
        series.samples.reverse()
        return []
    problems: list[tuple[int, str]] = []
    latest, previous_line = -math.inf, 0
    for s in series.samples:
        if s.reading.ts < latest:
            problems.append(
                (
                    s.line,
                    f"ts {s.reading.ts:.3f} goes back in time "
                    f"(line {previous_line} is at {latest:.3f})",
                )
            )
        elif s.reading.ts > latest:
            latest, previous_line = s.reading.ts, s.line
    return problems


def read_text(data: bytes, name: str) -> tuple[TextIO | None, str | None]:
    """The file's text; a problem with the line of the first byte that is not UTF-8."""
    try:
        return io.StringIO(data.decode("utf-8-sig"), newline=""), None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return None, f"{name}:{line}: not UTF-8 text (byte {data[exc.start]:#04x})"
