"""Replay a recorded or hand-written series through a gateway's rules: which alarms it
would raise, and when. For technicians checking a rule before deploying it.

The series is CSV with a header, read and checked by ``edge_agent.rules.series``. The clock
advances in steps of ``step_s`` between samples, so on- and off-delays fire when they
would on the gateway, not only when the next sample comes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.contract.alarms import AlarmEvent
from edge_agent.rules.compile import CompiledRule
from edge_agent.rules.engine import RuleEngine
from edge_agent.rules.series import Catalog, Sample, read_series, read_text


class ReplayError(ValueError):
    """The series cannot be replayed as given: every problem found, each naming its line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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
    catalog: Catalog,
    tail_s: float = 0.0,
    settings: Mapping[str, Any] | None = None,
) -> list[AlarmEvent]:
    """The events of the series in ``path``; ReplayError with every row that cannot be
    replayed on the gateway of ``catalog`` (then nothing is replayed: the answer would be
    for another series)."""
    text, problem = read_text(path.read_bytes(), str(path))
    if text is None:
        raise ReplayError([problem or f"{path}: unreadable"])
    series = read_series(text, str(path), catalog)
    if series.problems:
        raise ReplayError(series.problems)
    return replay(rules, series.samples, tail_s=tail_s, settings=settings)
