"""The outbox as one synchronous object: the file and what it keeps, for one thread.

The agent reaches it only through the async facade (``facade.py``), which runs every
call on the outbox's own thread; tests and the bench use it directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from edge_agent.contract.alarms import AlarmEvent, DroppedRows
from edge_agent.outbox.alarms import AlarmRows
from edge_agent.outbox.commands import SeenCommands
from edge_agent.outbox.lanes import Lane, Lanes, OutboxStats
from edge_agent.outbox.rule_state import SavedRuleState
from edge_agent.outbox.store import OutboxFile


class Outbox:
    def __init__(
        self,
        path: Path,
        max_bytes: int,
        max_age_s: float | None = None,
        ballast_bytes: int = 0,
    ) -> None:
        self.file = OutboxFile(path, ballast_bytes)
        self.lanes = Lanes(self.file, max_bytes, max_age_s)
        self.alarms = AlarmRows(self.lanes)
        self.commands = SeenCommands(self.file)
        self.rule_state = SavedRuleState(self.file)

    # --- the file ------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.file.path

    @property
    def stream_id(self) -> str:
        return self.file.stream_id

    @property
    def moved_aside(self) -> Path | None:
        return self.file.moved_aside

    @property
    def ballast(self) -> Path:
        return self.file.ballast

    def ensure_ballast(self) -> bool:
        return self.file.ensure_ballast()

    def used_bytes(self) -> int:
        return self.file.used_bytes()

    def close(self) -> None:
        self.file.close()

    # --- the lanes -----------------------------------------------------------------------

    @property
    def max_bytes(self) -> int:
        return self.lanes.max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self.lanes.max_bytes = value

    def append(self, lane: Lane, rows: Sequence[tuple[float, str]]) -> int:
        return self.lanes.append(lane, rows)

    def fetch(self, lane: Lane, start: int, stop: int | None, limit: int) -> list[tuple[int, str]]:
        return self.lanes.fetch(lane, start, stop, limit)

    def delete(self, lane: Lane, ranges: Iterable[tuple[int, int]]) -> int:
        return self.lanes.delete(lane, ranges)

    def first_seq(self, lane: Lane) -> int | None:
        return self.lanes.first_seq(lane)

    def last_seq(self, lane: Lane) -> int:
        return self.lanes.last_seq(lane)

    def enforce_bounds(self, now: float | None = None) -> list[DroppedRows]:
        return self.lanes.enforce_bounds(now)

    def stats(self) -> OutboxStats:
        return self.lanes.stats()

    # --- alarms, rule state, commands ----------------------------------------------------

    def record_alarms(self, events: Sequence[AlarmEvent], states: Sequence[tuple[str, str]]) -> int:
        return self.alarms.record(events, states)

    def alarm_states(self) -> dict[str, dict[str, object]]:
        return self.rule_state.load()

    def remember_command(self, cmd_id: str, expires: float, now: float) -> bool:
        return self.commands.remember(cmd_id, expires, now)
