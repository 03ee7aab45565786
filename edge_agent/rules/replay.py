"""Replay a recorded or hand-written series through a gateway's rules: which alarms it
would raise, and when. For technicians checking a rule before deploying it.

The series is CSV with a header, read and checked by ``edge_agent.rules.series``. The clock
advances in steps of ``step_s`` between samples, so on- and off-delays fire when they
would on the gateway, not only when the next sample comes.

Those steps are what a replay costs, so their number is bounded (``MAX_STEPS``) before the
first one is taken: one row stamped in seconds from 0 among epoch times, or a ``--tail``
of years, would otherwise step for hours (and past 1e16 s, where adding 0.1 s no longer
changes a double, for ever: a step that does not move the clock ends the stepping).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_agent.contract.alarms import AlarmEvent
from edge_agent.rules.compile import CompiledRule
from edge_agent.rules.engine import RuleEngine
from edge_agent.rules.series import Catalog, Sample, read_series, read_text

MAX_STEPS = 10_000_000
"""Clock steps one replay may take: 11.5 days of series (and tail) at 0.1 s, some
seconds of work per rule."""


class ReplayError(ValueError):
    """The series cannot be replayed as given: every problem found, each naming its line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SeriesRefused(ReplayError):
    """The series as a whole cannot be replayed, whatever its rows: the one problem says
    why (not a file one can read to its end, too large, too long a span)."""


class ReplayTooLong(SeriesRefused):
    """The rows are sound, but the series (with its tail) spans more than ``MAX_STEPS``
    clock steps; the one problem says from which line to which."""


SERIES_BYTES_MAX = 256 * 1024 * 1024
"""The largest CSV a replay reads (it is read whole): past it, a part is to be replayed."""


def replay(
    rules: list[CompiledRule],
    samples: Iterable[Sample],
    step_s: float = 0.1,
    tail_s: float = 0.0,
    settings: Mapping[str, Any] | None = None,
) -> list[AlarmEvent]:
    """Every event the rules produce over the series, in time order; ``settings`` are the
    gateway's ``alarms`` settings (flood, chatter, re-annunciation). ``ReplayError`` when
    the series and tail span more than ``MAX_STEPS`` steps: nothing is replayed then."""
    ordered = sorted(samples, key=lambda s: s.reading.ts)
    if not ordered:
        return []
    problem = span_problem(ordered, step_s, tail_s)
    if problem is not None:
        raise ReplayTooLong([problem])
    clock = ordered[0].reading.ts
    engine = RuleEngine(rules, now=clock, **(settings or {}))
    events: list[AlarmEvent] = []
    for sample in ordered:
        ts = sample.reading.ts
        # (clock < clock + step_s: false once the clock is so large that a step is lost)
        while clock < clock + step_s < ts:
            clock += step_s
            events += engine.tick(clock)
        clock = max(clock, ts)
        events += engine.observe([sample.reading])
    end = clock + tail_s
    while clock < min(end, clock + step_s):
        clock = min(end, clock + step_s)
        events += engine.tick(clock)
    return events


def span_problem(ordered: Sequence[Sample], step_s: float, tail_s: float) -> str | None:
    """None if the samples (in time order) and the tail take at most ``MAX_STEPS`` steps."""
    first, last = ordered[0], ordered[-1]
    span = last.reading.ts - first.reading.ts + tail_s
    if span / step_s <= MAX_STEPS:
        return None
    tail = f" and --tail {tail_s:g} s" if tail_s else ""
    return (
        f"the series spans {span:.6g} s (line {first.line} at {first.reading.ts:.6g} to "
        f"line {last.line} at {last.reading.ts:.6g}{tail}), more than a replay steps "
        f"through ({MAX_STEPS * step_s / 86400:.1f} days in steps of {step_s:g} s): replay "
        "a shorter part, or check that every row's ts is in the same unit"
    )


def replay_file(
    rules: list[CompiledRule],
    path: Path,
    catalog: Catalog,
    tail_s: float = 0.0,
    settings: Mapping[str, Any] | None = None,
) -> list[AlarmEvent]:
    """The events of the series in ``path``; ReplayError with every row that cannot be
    replayed on the gateway of ``catalog`` (then nothing is replayed: the answer would be
    for another series)."""
    text, problem = read_text(_series_bytes(path), str(path))
    if text is None:
        raise ReplayError([problem or f"{path}: unreadable"])
    series = read_series(text, str(path), catalog)
    if series.problems:
        raise ReplayError(series.problems)
    try:
        return replay(rules, series.samples, tail_s=tail_s, settings=settings)
    except ReplayTooLong as exc:
        raise ReplayTooLong([f"{path}: {p}" for p in exc.problems]) from None


def _series_bytes(path: Path) -> bytes:
    """The file's bytes; ``SeriesRefused`` for what is not a file read to its end (a pipe
    waits for ever, ``/dev/zero`` fills the memory) or is larger than ``SERIES_BYTES_MAX``.
    ``OSError`` when it cannot be read at all."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise SeriesRefused([f"{path}: not a regular file (a pipe or a device): give a CSV file"])
    with path.open("rb") as f:
        data = f.read(SERIES_BYTES_MAX + 1)
    if len(data) > SERIES_BYTES_MAX:
        raise SeriesRefused(
            [f"{path}: larger than {SERIES_BYTES_MAX // 2**20} MB: replay a part of it"]
        )
    return data
