"""Group commit: readings from every poller become one outbox transaction at a time.

Pollers put their readings on a bounded queue; the committer takes everything waiting,
encodes it, and commits it in one transaction on the outbox thread. Many devices polled
at once cost one fsync, not one each. The bounded queue is the backpressure: if the
disk stalls, pollers wait (and count overruns) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import time

from drivers.base import Reading
from edge_agent.contract import ReadingEncoder
from edge_agent.outbox import Lane, Outbox
from edge_agent.sender import RunInDb, Sender

CAP_CHECK_S = 1.0


class Committer:
    def __init__(
        self, outbox: Outbox, in_db: RunInDb, sender: Sender, queue_max: int = 256
    ) -> None:
        self._outbox = outbox
        self._in_db = in_db
        self._sender = sender
        self._queue: asyncio.Queue[list[Reading]] = asyncio.Queue(maxsize=queue_max)
        self._encoder = ReadingEncoder()
        self._last_cap_check = 0.0
        self.committed = 0
        self.dropped_at_cap = 0

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
        encode = self._encoder.encode
        rows = [(r.ts, encode(r)) for r in readings]
        last = await self._in_db(lambda: self._outbox.append(Lane.TELEMETRY, rows))
        self.committed += len(rows)
        self._sender.appended(Lane.TELEMETRY, last)
        now = time.monotonic()
        if now - self._last_cap_check >= CAP_CHECK_S:
            self._last_cap_check = now
            self.dropped_at_cap += await self._in_db(self._outbox.enforce_cap)
