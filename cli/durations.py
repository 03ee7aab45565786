"""Duration options (``--since 10m``, ``--for 2h``), read by the one duration parser.

A ``--since`` is a time (now minus the duration), a ``--for`` is a length; both read the
forms of ``edge_agent.durations``, and a wrong value is a usage error (exit 2) that names
the option it was given to.
"""

from __future__ import annotations

import time

import typer

from edge_agent.durations import parse_duration

LATEST = 253_402_300_799.0
"""The last second of 9999-12-31 UTC: the latest time ``--from`` and ``--to`` take."""


def length_option(text: str, option: str, *, positive: bool = False) -> float:
    """The seconds ``text`` (the value of ``option``) says; with ``positive``, more than 0
    (a shelving of 0 s would end as it begins)."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not {exc}", param_hint=option) from None
    if positive and seconds <= 0:
        raise typer.BadParameter(f"{text!r} is not a length above 0 s", param_hint=option)
    return seconds


def since_option(text: str | None, option: str = "--since") -> float | None:
    """The unix time ``text`` ago (``10m``: ten minutes ago), or None for no limit."""
    if text is None:
        return None
    return time.time() - length_option(text, option)


def time_option(text: str | None, option: str) -> float | None:
    """A point in time (``--from``, ``--to``): ISO 8601 (``2026-12-03T08:00``, UTC unless
    it names an offset; ``Z`` allowed), a unix time (``1796259334``), or a duration ago
    (``2h``); None for no limit."""
    if text is None:
        return None
    raw = text.strip()
    try:
        when = float(raw) if raw.replace(".", "", 1).isdigit() else _iso(raw)
    except ValueError:
        pass
    else:
        # enough digits read as infinity, or as a time no store can hold as an integer
        # minute (SQLite's rollups): a typo, not a point in time
        if when <= LATEST:
            return when
        raise typer.BadParameter(
            f"{text!r} is not a time: it is after the year 9999", param_hint=option
        )
    try:
        return time.time() - parse_duration(raw)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a time: use ISO 8601 (2026-12-03T08:00, UTC unless an offset "
            "is given), a unix time, or a duration ago (2h)",
            param_hint=option,
        ) from None


def _iso(text: str) -> float:
    # loaded by the option that uses it
    from datetime import UTC, datetime  # noqa: PLC0415

    when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
