"""What each part of the agent may do with the outbox: one narrow interface per consumer.

``facade.AgentOutbox`` implements all of them over the SQLite file (on its own thread);
``memory.py`` has a small in-memory implementation of each, for tests.

========================  ==========================================================
interface                 used by
========================  ==========================================================
``TelemetryLog``          the committer (append, upkeep) and the sender (read, forget)
``AlarmJournal``          the alarm service and the committer (record), the sender
``CommandLedger``         the command channel (the replay guard)
``RuleState``             the alarm service, once, to restore the rule engine
``OutboxGauge``           the health report
``AppendListener``        (the other way) the sender, told what is durable
========================  ==========================================================

Every method runs its work to completion (one transaction) before it returns; a write
the disk refuses even after the outbox made room raises ``OutboxFull`` and writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from edge_agent.contract.alarms import AlarmEvent
from edge_agent.outbox.lanes import Lane as LaneName
from edge_agent.outbox.lanes import OutboxStats

SeqRanges = Sequence[tuple[int, int]]


class SentLane(Protocol):
    """What the sender needs of either lane."""

    @property
    def stream_id(self) -> str: ...

    async def span(self) -> tuple[int | None, int]:
        """(the first seq still kept, None if none; the last seq ever given)."""
        ...

    async def forget(self, ranges: SeqRanges) -> tuple[int, bool]:
        """Delete acknowledged rows: (rows deleted, True if none of them is left). A full
        disk keeps them (0, False): they are sent again."""
        ...


class TelemetryLog(SentLane, Protocol):
    async def append(self, rows: Sequence[tuple[float, str]]) -> int:
        """Commit ``(ts, encoded reading)`` rows; the last seq given. ``OutboxFull``."""
        ...

    async def upkeep(self) -> None:
        """Enforce the bounds (age, size) and take the ballast back when there is room."""
        ...

    async def fetch(self, start: int, stop: int | None, limit: int) -> list[tuple[int, str]]:
        """Rows with ``start <= seq < stop`` in order, cut at the first gap in seq."""
        ...


class AlarmJournal(SentLane, Protocol):
    async def record(self, events: Sequence[AlarmEvent], states: Sequence[tuple[str, str]]) -> int:
        """Commit events and the ``(alarm key, json)`` rule states they leave behind in one
        transaction; the alarm lane's last seq. ``OutboxFull``."""
        ...

    async def last_seq(self) -> int:
        """The alarm lane's last seq (the outbox writes notices there by itself)."""
        ...

    async def fetch(self, start: int, limit: int) -> list[tuple[int, AlarmEvent]]: ...


class CommandLedger(Protocol):
    async def remember(self, cmd_id: str, expires: float, now: float) -> bool:
        """False if ``cmd_id`` was seen before (a replay); ids past their expiry are forgotten."""
        ...


class RuleState(Protocol):
    async def load(self) -> dict[str, dict[str, object]]:
        """The rule engine's saved state per alarm key (written with ``AlarmJournal.record``)."""
        ...


class OutboxGauge(Protocol):
    @property
    def folder(self) -> Path:
        """Where the outbox file is: the disk whose free space the health report shows."""
        ...

    async def stats(self) -> OutboxStats: ...


class AppendListener(Protocol):
    """Told when rows are durable: the sender, which then sends them."""

    def appended(self, lane: LaneName, last_seq: int) -> None: ...
