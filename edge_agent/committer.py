"""Group commit: readings from every poller become one outbox transaction at a time.

Pollers put their readings on a bounded queue; the committer takes everything waiting,
encodes it, and commits it in one transaction on the outbox thread. Many devices polled
at once cost one fsync, not one each. The bounded queue is the backpressure: if the
disk stalls, pollers wait (and count overruns) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import logging
import time

from drivers.base import Reading
from edge_agent.alarms import AlarmService, Rows
from edge_agent.contract import ReadingEncoder
from edge_agent.outbox import Lane, Outbox, OutboxFull
from edge_agent.sender import RunInDb, Sender

log = logging.getLogger(__name__)
BOUNDS_CHECK_S = 1.0


class Committer:
    def __init__(
        self,
        outbox: Outbox,
        in_db: RunInDb,
        sender: Sender,
        alarms: AlarmService | None = None,
        queue_max: int = 256,
    ) -> None:
        self._alarms = alarms
        self._outbox = outbox
        self._in_db = in_db
        self._sender = sender
        self._queue: asyncio.Queue[list[Reading]] = asyncio.Queue(maxsize=queue_max)
        self._encoder = ReadingEncoder()
        self._last_bounds_check = 0.0
        self.committed = 0
        self.lost_disk_full = 0
        self._disk_full = False

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
        events, alarm_rows = self._alarms.observe(readings) if self._alarms else ([], ([], []))
        encode = self._encoder.encode
        rows = [(r.ts, encode(r)) for r in readings]
        check_bounds = time.monotonic() - self._last_bounds_check >= BOUNDS_CHECK_S
        if check_bounds:
            self._last_bounds_check = time.monotonic()
        try:
            last, last_alarm = await self._in_db(
                lambda: self._commit(rows, alarm_rows, check_bounds)
            )
        except OutboxFull as exc:
            self.lost_disk_full += len(rows)
            if not self._disk_full:
                log.error("outbox disk full, readings are being lost until space returns: %s", exc)
                self._disk_full = True
            return
        if self._disk_full:
            log.warning("outbox writable again; %d readings were lost", self.lost_disk_full)
            self._disk_full = False
        self.committed += len(rows)
        self._sender.appended(Lane.TELEMETRY, last)
        self._sender.appended(Lane.ALARMS, last_alarm)
        if self._alarms is not None and events:
            self._alarms.committed(events, last_alarm)

    def _commit(
        self, rows: list[tuple[float, str]], alarm_rows: Rows, check_bounds: bool
    ) -> tuple[int, int]:
        """On the outbox thread: alarms first, then the readings, then (now and then)
        the bounds."""
        ob = self._outbox
        if alarm_rows[0] or alarm_rows[1]:
            ob.record_alarms(*alarm_rows)
        last = ob.append(Lane.TELEMETRY, rows)
        if check_bounds:
            ob.enforce_bounds()
            ob.ensure_ballast()
        return last, ob.last_seq(Lane.ALARMS)
