"""In-memory implementations of the outbox's interfaces (``interfaces.py``), for tests.

They keep what the SQLite outbox keeps, in dicts, with the same numbering (seqs from 1,
never reused) and the same answers; nothing survives the process. Set ``full`` to a
message to make the next writes fail as a full disk would (``OutboxFull``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Generic, TypeVar

from edge_agent.contract.alarms import AlarmEvent
from edge_agent.outbox.interfaces import SeqRanges
from edge_agent.outbox.lanes import OutboxStats
from edge_agent.outbox.store import OutboxFull

T = TypeVar("T")


class _MemoryLane(Generic[T]):
    def __init__(self, stream_id: str | None = None) -> None:
        self.stream_id = stream_id or uuid.uuid4().hex[:16]
        self.rows: dict[int, tuple[float, T]] = {}
        self.last = 0
        self.full: str | None = None

    def _add(self, rows: Sequence[tuple[float, T]]) -> int:
        if rows and self.full is not None:
            raise OutboxFull(self.full)
        for row in rows:
            self.last += 1
            self.rows[self.last] = row
        return self.last

    def _run(self, start: int, stop: int | None, limit: int) -> list[tuple[int, T]]:
        out: list[tuple[int, T]] = []
        for seq in sorted(s for s in self.rows if s >= start and (stop is None or s < stop)):
            if len(out) == limit or (out and seq != out[-1][0] + 1):
                break
            out.append((seq, self.rows[seq][1]))
        return out

    async def span(self) -> tuple[int | None, int]:
        return min(self.rows, default=None), self.last

    async def forget(self, ranges: SeqRanges) -> tuple[int, bool]:
        gone = [s for s in self.rows if any(a <= s <= b for a, b in ranges)]
        for seq in gone:
            del self.rows[seq]
        return len(gone), True


class MemoryTelemetryLog(_MemoryLane[str]):
    """``TelemetryLog``; no bounds."""

    async def append(self, rows: Sequence[tuple[float, str]]) -> int:
        return self._add(rows)

    async def upkeep(self) -> None:
        pass

    async def fetch(self, start: int, stop: int | None, limit: int) -> list[tuple[int, str]]:
        return self._run(start, stop, limit)


class MemoryRuleState:
    """``RuleState``: what ``MemoryAlarmJournal.record`` saved, or what it is given."""

    def __init__(self, saved: dict[str, dict[str, object]] | None = None) -> None:
        self.saved: dict[str, dict[str, object]] = dict(saved or {})

    async def load(self) -> dict[str, dict[str, object]]:
        return {k: dict(v) for k, v in self.saved.items()}


class MemoryAlarmJournal(_MemoryLane[AlarmEvent]):
    """``AlarmJournal``; the states it records go to ``rule_state``."""

    def __init__(self, rule_state: MemoryRuleState | None = None, stream_id: str | None = None):
        super().__init__(stream_id)
        self.rule_state = rule_state or MemoryRuleState()

    async def record(self, events: Sequence[AlarmEvent], states: Sequence[tuple[str, str]]) -> int:
        if states and self.full is not None:
            raise OutboxFull(self.full)
        last = self._add([(e.ts, e) for e in events])
        self.rule_state.saved.update((key, json.loads(body)) for key, body in states)
        return last

    async def last_seq(self) -> int:
        return self.last

    async def fetch(self, start: int, limit: int) -> list[tuple[int, AlarmEvent]]:
        return self._run(start, None, limit)

    def events(self) -> list[AlarmEvent]:
        return [event for _, (_, event) in sorted(self.rows.items())]


class MemoryCommandLedger:
    """``CommandLedger``."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    async def remember(self, cmd_id: str, expires: float, now: float) -> bool:
        self.seen = {k: e for k, e in self.seen.items() if e >= now}
        if cmd_id in self.seen:
            return False
        self.seen[cmd_id] = expires
        return True


class MemoryGauge:
    """``OutboxGauge`` over the in-memory lanes."""

    def __init__(
        self, telemetry: MemoryTelemetryLog, alarms: MemoryAlarmJournal, folder: Path
    ) -> None:
        self._telemetry, self._alarms, self._folder = telemetry, alarms, folder

    @property
    def folder(self) -> Path:
        return self._folder

    async def stats(self) -> OutboxStats:
        rows = self._telemetry.rows
        oldest = min((ts for ts, _ in rows.values()), default=None)
        size = sum(len(body) for _, body in rows.values())
        return OutboxStats(len(rows), len(self._alarms.rows), oldest, size, 0)
