"""Replay a recorded or hand-written series through a gateway's rules: which alarms it
would raise, and when. For technicians checking a rule before deploying it.

The series is CSV with a header: ``ts,device,point,value`` (``ts`` in seconds, absolute
or from 0; ``value`` a number, ``true``/``false``, or empty for a bad reading). The clock
advances in steps of ``step_s`` between samples, so on- and off-delays fire when they
would on the gateway, not only when the next sample comes.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from drivers.base import Quality, Reading, Value
from edge_agent.contract.alarms import AlarmEvent
from edge_agent.rules.compile import CompiledRule
from edge_agent.rules.engine import RuleEngine


class ReplayError(ValueError):
    """A line of the series that cannot be read; names the line."""


@dataclass(frozen=True, slots=True)
class Sample:
    line: int
    reading: Reading


def parse_value(text: str) -> tuple[Value, Quality]:
    t = text.strip()
    if t == "":
        return None, Quality.BAD
    low = t.lower()
    if low in ("true", "on", "yes"):
        return True, Quality.GOOD
    if low in ("false", "off", "no"):
        return False, Quality.GOOD
    try:
        return (int(t) if t.lstrip("+-").isdigit() else float(t)), Quality.GOOD
    except ValueError:
        return t, Quality.GOOD


def read_series(f: TextIO, name: str) -> Iterator[Sample]:
    rows = csv.DictReader(f)
    missing = {"ts", "device", "point", "value"} - set(rows.fieldnames or [])
    if missing:
        raise ReplayError(
            f"{name}:1: the header needs ts,device,point,value "
            f"(missing {', '.join(sorted(missing))})"
        )
    for row in rows:
        try:
            ts = float(row["ts"])
        except (TypeError, ValueError):
            raise ReplayError(f"{name}:{rows.line_num}: ts {row['ts']!r} is not a number") from None
        value, quality = parse_value(row["value"] or "")
        yield Sample(rows.line_num, Reading(row["device"], row["point"], value, None, quality, ts))


def replay(
    rules: list[CompiledRule],
    samples: Iterable[Sample],
    step_s: float = 0.1,
    tail_s: float = 0.0,
    settings: Mapping[str, Any] | None = None,
) -> list[AlarmEvent]:
    """Every event the rules produce over the series, in time order; ``settings`` are the
    gateway's ``alarms`` settings (flood, chatter, re-annunciation)."""
    engine: RuleEngine | None = None
    events: list[AlarmEvent] = []
    clock = 0.0
    for sample in sorted(samples, key=lambda s: s.reading.ts):
        ts = sample.reading.ts
        if engine is None:
            engine, clock = RuleEngine(rules, now=ts, **(settings or {})), ts
        while clock + step_s < ts:
            clock += step_s
            events += engine.tick(clock)
        clock = max(clock, ts)
        events += engine.observe([sample.reading])
    if engine is not None:
        end = clock + tail_s
        while clock < end:
            clock = min(end, clock + step_s)
            events += engine.tick(clock)
    return events


def replay_file(
    rules: list[CompiledRule],
    path: Path,
    tail_s: float = 0.0,
    settings: Mapping[str, Any] | None = None,
) -> list[AlarmEvent]:
    with path.open(newline="") as f:
        return replay(rules, list(read_series(f, str(path))), tail_s=tail_s, settings=settings)
