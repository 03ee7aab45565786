"""The agent's outbox: the SQLite file behind one async facade that owns its thread.

SQLite's fsyncs must never block the event loop, and the connection is not thread-safe:
every call runs on one worker thread (``DbThread``). ``AgentOutbox`` is the only object
that touches the file; each part of the agent sees it through the narrow interface it
needs (``interfaces.py``), so none of them can run arbitrary work on that thread.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from edge_agent.config.models import OutboxConfig
from edge_agent.contract.alarms import AlarmEvent
from edge_agent.outbox.interfaces import SeqRanges
from edge_agent.outbox.lanes import Lane, OutboxStats
from edge_agent.outbox.sync import Outbox

T = TypeVar("T")


class DbThread:
    """The one thread every outbox call runs on. Tests subclass it to hold calls at a
    gate, or to count them; ``run`` is the only way onto the thread."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


class AgentOutbox:
    """Implements ``TelemetryLog``, ``AlarmJournal``, ``CommandLedger``, ``RuleState`` and
    ``OutboxGauge`` (``interfaces.py``) over one ``Outbox`` file."""

    def __init__(self, outbox: Outbox, thread: DbThread) -> None:
        self._ob = outbox
        self._thread = thread
        self.telemetry = _Telemetry(self)
        self.alarms = _Alarms(self)

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        max_bytes: int,
        max_age_s: float | None = None,
        ballast_bytes: int = 0,
        thread: DbThread | None = None,
    ) -> AgentOutbox:
        """Open (check, set aside if corrupt) the file on the outbox thread. Raises
        ``OutboxUnavailable`` when it cannot be opened now; the thread is then stopped."""
        thread = thread or DbThread()
        try:
            outbox = await thread.run(lambda: Outbox(path, max_bytes, max_age_s, ballast_bytes))
        except BaseException:
            thread.shutdown()
            raise
        return cls(outbox, thread)

    @classmethod
    async def from_config(
        cls, settings: OutboxConfig, thread: DbThread | None = None
    ) -> AgentOutbox:
        """Open the outbox a gateway's config describes (sizes in MB there, bytes here)."""
        max_bytes = int(settings.max_mb * 1e6)
        return await cls.open(
            settings.path,
            max_bytes=max_bytes,
            max_age_s=settings.max_age,
            # at most a quarter of the cap: the ballast must never be most of the room
            ballast_bytes=int(min(settings.ballast_mb, settings.max_mb / 4) * 1e6),
            thread=thread,
        )

    @property
    def stream_id(self) -> str:
        return self._ob.stream_id

    @property
    def folder(self) -> Path:
        return self._ob.path.parent

    async def run(self, fn: Callable[[Outbox], T]) -> T:
        """``fn(outbox)`` on the outbox thread: for the interfaces below, and for tests."""
        return await self._thread.run(lambda: fn(self._ob))

    async def aclose(self) -> None:
        """Close the file and stop the thread, once every call under way has returned."""
        await self._thread.run(self._ob.close)
        self._thread.shutdown()

    # --- CommandLedger, RuleState, OutboxGauge -------------------------------------------

    async def remember(self, cmd_id: str, expires: float, now: float) -> bool:
        return await self.run(lambda ob: ob.remember_command(cmd_id, expires, now))

    async def load(self) -> dict[str, dict[str, object]]:
        return await self.run(lambda ob: ob.alarm_states())

    async def stats(self) -> OutboxStats:
        return await self.run(lambda ob: ob.stats())


def _forget(ob: Outbox, lane: Lane, ranges: SeqRanges) -> tuple[int, bool]:
    deleted = ob.delete(lane, ranges)
    if deleted:
        return deleted, True  # one transaction: all of them are gone
    # 0 is a repeated ack (nothing left to delete) or a delete that failed (disk full).
    # The first row from ``a`` on, not the rows before ``b + 1``: an ack may end at the
    # largest seq SQLite holds, and ``b + 1`` would not fit in its INTEGER.
    left = any(_first_row_at_or_after(ob, lane, a) <= b for a, b in ranges)
    return 0, not left


def _first_row_at_or_after(ob: Outbox, lane: Lane, seq: int) -> float:
    """The seq of the lane's first row from ``seq`` on; infinity if there is none."""
    rows = ob.fetch(lane, seq, None, 1)
    return rows[0][0] if rows else math.inf


class _Lane:
    lane: Lane

    def __init__(self, outbox: AgentOutbox) -> None:
        self._outbox = outbox

    @property
    def stream_id(self) -> str:
        return self._outbox.stream_id

    async def span(self) -> tuple[int | None, int]:
        lane = self.lane
        return await self._outbox.run(lambda ob: (ob.first_seq(lane), ob.last_seq(lane)))

    async def forget(self, ranges: SeqRanges) -> tuple[int, bool]:
        lane, spans = self.lane, list(ranges)
        return await self._outbox.run(lambda ob: _forget(ob, lane, spans))


class _Telemetry(_Lane):
    """``TelemetryLog``."""

    lane = Lane.TELEMETRY

    async def append(self, rows: Sequence[tuple[float, str]]) -> int:
        return await self._outbox.run(lambda ob: ob.append(Lane.TELEMETRY, rows))

    async def upkeep(self) -> None:
        def upkeep(ob: Outbox) -> None:
            ob.enforce_bounds()
            ob.ensure_ballast()

        await self._outbox.run(upkeep)

    async def fetch(self, start: int, stop: int | None, limit: int) -> list[tuple[int, str]]:
        return await self._outbox.run(lambda ob: ob.fetch(Lane.TELEMETRY, start, stop, limit))


class _Alarms(_Lane):
    """``AlarmJournal``."""

    lane = Lane.ALARMS

    async def record(self, events: Sequence[AlarmEvent], states: Sequence[tuple[str, str]]) -> int:
        return await self._outbox.run(lambda ob: ob.record_alarms(events, states))

    async def last_seq(self) -> int:
        return await self._outbox.run(lambda ob: ob.last_seq(Lane.ALARMS))

    async def fetch(self, start: int, limit: int) -> list[tuple[int, AlarmEvent]]:
        return await self._outbox.run(lambda ob: ob.alarms.fetch(start, limit))
