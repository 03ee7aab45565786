"""``fleet readings``: raw readings, or aggregates per time bucket, as a table, CSV or JSON.

Everything streams: the store's cursor is read row by row and each row is written as it
comes (a CSV line, a JSON line, a JSON array element), so a month of one point never sits
in memory. A table is drawn ``TABLE_CHUNK`` rows at a time.

Aggregates come from the 1-minute rollups (``--bucket 1m|15m|1h``, any whole number of
minutes), which the center keeps longer than raw readings: a month-old day still has its
minutes after its raw readings are gone.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import StrEnum
from itertools import islice
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.durations import length_option, since_option, time_option
from cli.output import Cell, json_line, print_rich, shown, table, utc
from cli.store_options import DEFAULT_DB, DbOpt, open_db
from cli.where import WhereOpt, parse_where

if TYPE_CHECKING:
    from central.store.rows import ReadingBucket, StoredReading

TABLE_CHUNK = 1000
WRITE_CHUNK = 256
AGGREGATES = ("avg", "min", "max", "count")
LIMIT_MAX = 2**63 - 1


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    jsonl = "jsonl"


RAW_COLUMNS = ("ts", "gateway", "device", "point", "value", "unit", "quality", "reason")


def readings(
    gateway: Annotated[str | None, typer.Option("--gateway", "-g", help="gateway id")] = None,
    device: Annotated[str | None, typer.Option("--device", "-d", help="device id")] = None,
    point: Annotated[str | None, typer.Option("--point", "-p", help="point name")] = None,
    where: WhereOpt = None,
    since: Annotated[
        str | None, typer.Option(help="only newer than this long ago, e.g. 30s, 10m, 2h")
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from", help="from this time: ISO 8601 (UTC unless an offset), unix time, or 2h ago"
        ),
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="until this time (excluded)")] = None,
    bucket: Annotated[
        str | None,
        typer.Option(help="aggregate per bucket of this length: 1m, 15m, 1h (whole minutes)"),
    ] = None,
    agg: Annotated[
        str, typer.Option(help="with --bucket: which of avg,min,max,count (comma-separated)")
    ] = ",".join(AGGREGATES),
    limit: Annotated[
        int, typer.Option(min=1, max=LIMIT_MAX, help="at most this many raw readings")
    ] = 100,
    all_: Annotated[bool, typer.Option("--all", help="every raw reading in the range")] = False,
    oldest_first: Annotated[
        bool, typer.Option("--oldest-first", help="raw readings oldest first (default newest)")
    ] = False,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table, csv, json or jsonl")] = (
        Format.table
    ),
    json_out: Annotated[bool, typer.Option("--json", help="the same as --format json")] = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="the same as --format jsonl")] = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Readings stored at the center, with the edge's timestamps: raw (newest first, at
    most --limit), or aggregated per --bucket from the 1-minute rollups (oldest first,
    also for days whose raw readings retention removed)."""
    # loaded by the command that uses it: fleet --help stays under 0.3 s
    from central.store.api import ReadingQuery  # noqa: PLC0415

    if since is not None and from_ is not None:
        raise typer.BadParameter("give --since or --from, not both", param_hint="--since")
    start = since_option(since) if since is not None else time_option(from_, "--from")
    end = time_option(to, "--to")
    if start is not None and end is not None and end <= start:
        raise typer.BadParameter("--to must be after the start", param_hint="--to")
    out = Format.jsonl if jsonl else Format.json if json_out else fmt
    query = ReadingQuery(
        gateway,
        device,
        point,
        since=start,
        until=end,
        limit=None if all_ or bucket is not None else limit,
        oldest_first=oldest_first,
        where=parse_where(where),
    )
    store = open_db(db)
    if bucket is None:
        _write(out, RAW_COLUMNS, (_raw(r) for r in store.readings(query)), _raw_cells)
        return
    bucket_s = _bucket_option(bucket)
    wanted = _agg_option(agg)
    columns = ("start", "gateway", "device", "point", *wanted)
    rows = (_bucketed(b, wanted) for b in store.buckets(query, bucket_s))
    _write(out, columns, rows, lambda r: _bucket_cells(r, wanted))


def _bucket_option(text: str) -> int:
    seconds = length_option(text, "--bucket", positive=True)
    if seconds % 60 or seconds > 366 * 86_400:
        raise typer.BadParameter(
            f"{text!r} is not a whole number of minutes up to a year (1m, 15m, 1h, 1d)",
            param_hint="--bucket",
        )
    return int(seconds)


def _agg_option(text: str) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    unknown = [a for a in wanted if a not in AGGREGATES]
    if unknown or not wanted:
        raise typer.BadParameter(
            f"{', '.join(map(repr, unknown)) or 'nothing'}: --agg takes {', '.join(AGGREGATES)}",
            param_hint="--agg",
        )
    return wanted


def _raw(r: StoredReading) -> dict[str, Any]:
    return {
        "ts": r.ts,
        "gateway": r.gateway,
        "device": r.device,
        "point": r.point,
        "value": r.value,
        "unit": r.unit,
        "quality": r.quality,
        "reason": r.reason,
        "stream": r.stream,
        "seq": r.seq,
    }


def _raw_cells(r: dict[str, Any]) -> tuple[Cell, ...]:
    quality = r["quality"] if r["reason"] is None else f"{r['quality']}: {r['reason']}"
    return (
        utc(r["ts"]),
        r["gateway"],
        r["device"],
        r["point"],
        shown(r["value"]),
        r["unit"] or "",
        quality,
    )


def _bucketed(b: ReadingBucket, wanted: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "start": b.start,
        "gateway": b.gateway,
        "device": b.device,
        "point": b.point,
    }
    for a in wanted:
        row[a] = getattr(b, a)
    return row


def _bucket_cells(r: dict[str, Any], wanted: Sequence[str]) -> tuple[Cell, ...]:
    return (
        utc(r["start"]),
        r["gateway"],
        r["device"],
        r["point"],
        *(shown(r[a]) for a in wanted),
    )


def _write(
    out: Format,
    columns: Sequence[str],
    rows: Iterator[dict[str, Any]],
    cells: Callable[[dict[str, Any]], Sequence[Cell]],
) -> None:
    write = sys.stdout.write
    if out is Format.jsonl:
        while chunk := list(islice(rows, WRITE_CHUNK)):  # one write a chunk, not a row
            write("".join(json_line(row) + "\n" for row in chunk))
    elif out is Format.json:
        # one JSON document, written element by element
        first = True
        write("[")
        for row in rows:
            write(("\n  " if first else ",\n  ") + json_line(row))
            first = False
        write("\n]\n" if not first else "]\n")
    elif out is Format.csv:
        _csv(columns, rows)
    else:
        headers = ["time (UTC)" if c in ("ts", "start") else c for c in columns]
        if "reason" in headers:  # a table shows the reason with the quality
            headers.remove("reason")
        shown_any = False
        while chunk := list(islice(rows, TABLE_CHUNK)):
            print_rich(table(headers, (cells(r) for r in chunk)))
            shown_any = True
        if not shown_any:
            typer.echo("no readings match", err=True)
    sys.stdout.flush()


def _csv(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """RFC 4180 CSV, times as ISO 8601 UTC (what ``rules test --replay`` reads back)."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    # the csv module quotes a field holding the line terminator (\n) but not a lone \r,
    # which readers take for the end of a line: a row with one is quoted whole
    quoted = csv.writer(sys.stdout, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(columns)
    for row in rows:
        cells = [_csv_cell(c, row.get(c)) for c in columns]
        (quoted if any("\r" in cell for cell in cells) else writer).writerow(cells)


def _csv_cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in ("ts", "start"):
        return utc(float(value)).replace(" ", "T") + "Z"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):
        return _csv_text(value)
    return shown(value) if isinstance(value, float) else str(value)


def _csv_text(sent: str) -> str:
    """Text a gateway sent, as a spreadsheet shows rather than runs it: one that would
    start a formula (``=HYPERLINK(…)``, ``@SUM(…)``, ``+cmd|…``) gets a leading ``'``,
    which ``rules test --replay`` takes off again; a text that is a number is left be."""
    # loaded by the format that uses it
    from edge_agent.rules.series import FORMULA_START  # noqa: PLC0415

    if not sent.startswith(FORMULA_START):
        return sent
    try:
        float(sent)
    except ValueError:
        return "'" + sent
    return sent
