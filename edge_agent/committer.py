"""Group commit: readings from every poller become one outbox transaction at a time.

Pollers put their readings on a bounded queue; the committer takes everything waiting,
encodes it, and commits it in one transaction (alarm events in one before it). Many devices polled
at once cost one fsync, not one each. The bounded queue is the backpressure: if the
disk stalls, pollers wait (and count overruns) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from drivers.base import Reading
from edge_agent.alarms import AlarmService, AlarmWrite
from edge_agent.contract import ReadingEncoder
from edge_agent.outbox import AlarmJournal, AppendListener, Lane, OutboxFull, TelemetryLog

log = logging.getLogger(__name__)
BOUNDS_CHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class _Outcome:
    last: int | None  # telemetry seq, None: the readings were lost to a full disk
    last_alarm: int
    alarms_ok: bool
    full: str | None  # what the full disk said


class Committer:
    def __init__(
        self,
        telemetry: TelemetryLog,
        journal: AlarmJournal,
        sender: AppendListener,
        alarms: AlarmService | None = None,
        queue_max: int = 256,
    ) -> None:
        self._alarms = alarms
        self._telemetry = telemetry
        self._journal = journal
        self._sender = sender
        self._queue: asyncio.Queue[list[Reading]] = asyncio.Queue(maxsize=queue_max)
        self._encoder = ReadingEncoder()
        self._last_bounds_check = 0.0
        self.produced = 0
        """Readings handed over by the pollers (committed, or lost to a full disk)."""
        self.committed = 0
        self.lost_disk_full = 0
        self._disk_full = False

    def health(self) -> dict[str, object]:
        return {"lost_disk_full": self.lost_disk_full}

    async def put(self, readings: list[Reading]) -> None:
        await self._queue.put(readings)

    async def run(self) -> None:
        while True:
            batch = await self._queue.get()
            await self.commit_pending(batch)

    async def commit_pending(self, first: list[Reading] | None = None) -> None:
        readings: list[Reading] = list(first) if first else []
        while not self._queue.empty():
            readings.extend(self._queue.get_nowait())
        if not readings:
            return
        alarms = self._alarms
        write = alarms.take(alarms.observe(readings)) if alarms else AlarmWrite()
        self.produced += len(readings)
        encode = self._encoder.encode
        rows = [(r.ts, encode(r)) for r in readings]
        check_bounds = time.monotonic() - self._last_bounds_check >= BOUNDS_CHECK_S
        if check_bounds:
            self._last_bounds_check = time.monotonic()
        try:
            out = await self._commit(rows, write, check_bounds)
        except BaseException as exc:
            if alarms is not None:
                alarms.not_committed(write, exc, act=False)
            raise
        # alarms first: their fate does not hang on the readings'
        if alarms is not None:
            if out.alarms_ok:
                alarms.committed(write, out.last_alarm)
            else:
                alarms.not_committed(write, out.full)
        self._sender.appended(Lane.ALARMS, out.last_alarm)  # drop notices, if nothing else
        if out.last is None:
            self.lost_disk_full += len(rows)
            if not self._disk_full:
                log.error(
                    "outbox disk full, readings are being lost until space returns: %s", out.full
                )
                self._disk_full = True
            return
        if self._disk_full:
            log.warning("outbox writable again; %d readings were lost", self.lost_disk_full)
            self._disk_full = False
        self.committed += len(rows)
        self._sender.appended(Lane.TELEMETRY, out.last)

    async def _commit(
        self, rows: list[tuple[float, str]], write: AlarmWrite, check_bounds: bool
    ) -> _Outcome:
        """Alarms first, then the readings, then (now and then) the bounds. A full disk
        costs readings (counted), never the agent: alarms get the room first, and
        readings are not even tried while alarms wait for it."""
        full: str | None = None
        alarms_ok = True
        last: int | None = None
        if write:
            try:
                await self._journal.record(write.events(), write.states)
            except OutboxFull as exc:
                alarms_ok, full = False, str(exc)
        if alarms_ok:
            try:
                last = await self._telemetry.append(rows)
            except OutboxFull as exc:
                full = str(exc)
        if check_bounds:
            await self._telemetry.upkeep()
        return _Outcome(last, await self._journal.last_seq(), alarms_ok, full)
