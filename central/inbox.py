"""The central service's inbox: bounded, alarms first, gateways served in turn.

Between the MQTT sessions (their network threads put) and the ingest thread (it takes a
round, stores, commits, acks) sit two lanes: ``ALARMS`` and ``DATA`` (telemetry, state,
health). A round is taken from one lane only, alarms first; a telemetry round in progress
asks ``alarms_waiting()`` before each message and takes them in (``take_now``), so an
alarm waits for one message, however much telemetry is queued.

Why bounded: an unbounded queue let a QoS 0 flood grow the process by hundreds of MB and
put a real gateway's readings minutes behind. Each lane holds at most ``max_bytes`` of
payload. When a lane is full:

- a QoS 1 message waits (``put`` blocks). ``put`` runs on the session's network thread, so
  waiting there stops paho reading the socket: backpressure, and the broker keeps what we
  have not read. This cannot deadlock: the ingest thread, which empties the lane, never
  waits for the network thread (mqttlink.session makes every socket write on that
  thread; the ingest thread's PUBACKs and acks are only queued for it), and ``close()``
  releases every waiting ``put``, so that the session can end its thread;
- a message the caller marks sheddable (``shed_at``: a fill fraction) is dropped instead
  of waited for once the lane is that full: QoS 0 telemetry at half (the contract says
  telemetry is QoS 1; a client that sends it at QoS 0 asked for at most once), other
  QoS 0 (health) only when full. Every drop is counted; the caller logs them.

Why fair: each gateway has its own first-in-first-out queue in a lane, and a round takes
one message from each gateway in turn (the one served longest ago first; a gateway whose
queue was empty joins behind those waiting), so a noisy gateway fills its own queue, not
everyone's rounds.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from mqttlink.session import Message

MESSAGE_OVERHEAD = 256
"""Bytes counted per message besides its payload (the Message, its topic, the queues)."""


class Lane(Enum):
    ALARMS = "alarms"
    DATA = "data"


SHED_GATEWAYS_KEPT = 1000
"""Gateways counted by name in ``shed_by_gateway``; the rest under ``OTHERS`` (ids come
from topics: a flood of made-up ones must not grow the map without end)."""
OTHERS = "(others)"


@dataclass
class LaneStats:
    peak_bytes: int = 0
    waits: int = 0
    """``put`` calls that had to wait for room (backpressure on the socket)."""
    shed: int = 0
    shed_by_gateway: dict[str, int] = field(default_factory=dict)
    """Since the last ``Inbox.shed_report``."""


class _Queues:
    """One lane: a FIFO per gateway, in the order the gateways were last served."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # (message, its size, when it came: time.monotonic())
        self.by_gateway: OrderedDict[str, deque[tuple[Message, int, float]]] = OrderedDict()
        self.bytes = 0
        self.count = 0
        self.stats = LaneStats()
        self.taken_since = 0.0
        """When the oldest message of the last ``take`` came: what ``prepend`` stamps a
        message put back with (it came no later than that)."""

    def fill(self) -> float:
        return self.bytes / self.max_bytes

    def append(self, gw: str, msg: Message, size: int) -> None:
        queue = self.by_gateway.get(gw)
        if queue is None:
            queue = self.by_gateway[gw] = deque()
        queue.append((msg, size, time.monotonic()))
        self.bytes += size
        self.count += 1
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.bytes)

    def prepend(self, gw: str, msg: Message, size: int) -> None:
        queue = self.by_gateway.get(gw)
        if queue is None:
            queue = self.by_gateway[gw] = deque()
            self.by_gateway.move_to_end(gw, last=False)  # its turn was interrupted: first
        queue.appendleft((msg, size, self.taken_since))
        self.bytes += size
        self.count += 1

    def take(self, max_messages: int, max_bytes: int) -> list[Message]:
        """Round-robin over the gateways: at least one message, and no more once either
        limit is reached (so a round may pass ``max_bytes`` by one message)."""
        out: list[Message] = []
        taken = 0
        since = time.monotonic()
        while self.by_gateway and len(out) < max_messages and (not out or taken < max_bytes):
            gw, queue = next(iter(self.by_gateway.items()))
            msg, size, came = queue.popleft()
            since = min(since, came)
            if queue:
                self.by_gateway.move_to_end(gw)  # served: the others go before it next time
            else:
                del self.by_gateway[gw]
            out.append(msg)
            taken += size
            self.bytes -= size
            self.count -= 1
        self.taken_since = since
        return out

    def oldest(self) -> float | None:
        """When the oldest message waiting came (``time.monotonic()``); None if none
        waits. Each gateway's queue is first in, first out: its head is its oldest."""
        return min((queue[0][2] for queue in self.by_gateway.values()), default=None)


class Inbox:
    def __init__(
        self, max_bytes: int, alarm_max_bytes: int, gateway_of: Callable[[Message], str]
    ) -> None:
        """``gateway_of``: whose message it is, for the per-gateway queues."""
        self._lanes = {Lane.ALARMS: _Queues(alarm_max_bytes), Lane.DATA: _Queues(max_bytes)}
        self._gateway_of = gateway_of
        self._cond = threading.Condition()
        self._closed = False

    def stats(self, lane: Lane) -> LaneStats:
        return self._lanes[lane].stats

    def pending(self, lane: Lane) -> int:
        with self._cond:
            return self._lanes[lane].count

    def waiting(self, lane: Lane) -> tuple[int, int, float | None]:
        """Messages waiting in ``lane``, their bytes, and how long the oldest of them has
        waited in seconds (None: none waits): the ingest's lag, for its metrics."""
        with self._cond:
            queues = self._lanes[lane]
            oldest = queues.oldest()
            age = None if oldest is None else max(0.0, time.monotonic() - oldest)
            return queues.count, queues.bytes, age

    def alarms_waiting(self) -> bool:
        """For a round in progress: stop at the next message and let the alarms go first."""
        return self._lanes[Lane.ALARMS].count > 0  # one int read: no lock needed

    def put(self, lane: Lane, msg: Message, shed_at: float | None = None) -> bool:
        """Queue ``msg``; False when it was shed (``shed_at`` given and the lane that full)
        or the inbox is closed. Without ``shed_at`` it waits while the lane is full; a lone
        message bigger than the lane is let in when the lane is empty."""
        size = len(msg.payload) + MESSAGE_OVERHEAD
        gw = self._gateway_of(msg)
        queues = self._lanes[lane]
        with self._cond:
            waited = False
            while not self._closed:
                fits = queues.count == 0 or queues.bytes + size <= queues.max_bytes
                if shed_at is not None and (not fits or queues.fill() >= shed_at):
                    queues.stats.shed += 1
                    by_gw = queues.stats.shed_by_gateway
                    key = gw if gw in by_gw or len(by_gw) < SHED_GATEWAYS_KEPT else OTHERS
                    by_gw[key] = by_gw.get(key, 0) + 1
                    return False
                if fits:
                    queues.append(gw, msg, size)
                    self._cond.notify_all()
                    return True
                if not waited:
                    waited = True
                    queues.stats.waits += 1
                self._cond.wait(0.5)  # woken by take() or close(); the timeout is a backstop
            return False

    def take(
        self, timeout_s: float, gather_s: float, max_messages: int, max_bytes: int
    ) -> tuple[Lane, list[Message]]:
        """The next round: all waiting alarms (within the limits) if there are any, else
        the telemetry that arrived within ``gather_s`` of the first (one commit for many
        batches; an alarm arriving meanwhile goes first). ``(DATA, [])`` if nothing came
        within ``timeout_s`` or the inbox is closed."""
        alarms, data = self._lanes[Lane.ALARMS], self._lanes[Lane.DATA]
        with self._cond:
            self._cond.wait_for(lambda: self._closed or alarms.count or data.count, timeout_s)
            deadline = time.monotonic() + gather_s
            while (
                not self._closed
                and not alarms.count
                and data.count < max_messages
                and data.bytes < max_bytes
            ):
                left = deadline - time.monotonic()
                if left <= 0 or not data.count:
                    break
                self._cond.wait(left)
            if self._closed:
                return Lane.DATA, []
            lane = Lane.ALARMS if alarms.count else Lane.DATA
            msgs = self._lanes[lane].take(max_messages, max_bytes)
            if msgs:
                self._cond.notify_all()  # room: a waiting put may go on
            return lane, msgs

    def shed_report(self, lane: Lane) -> tuple[int, dict[str, int]]:
        """Messages shed in all, and by gateway since the last report (then cleared)."""
        with self._cond:
            stats = self._lanes[lane].stats
            by_gateway, stats.shed_by_gateway = stats.shed_by_gateway, {}
            return stats.shed, by_gateway

    def take_now(self, lane: Lane, max_messages: int, max_bytes: int) -> list[Message]:
        """What waits in ``lane`` now, without waiting: alarms joining a round in progress."""
        with self._cond:
            msgs = self._lanes[lane].take(max_messages, max_bytes)
            if msgs:
                self._cond.notify_all()
            return msgs

    def put_back(self, lane: Lane, msgs: list[Message]) -> None:
        """Return the part of a round that was not stored, ahead of what came since (each
        gateway's queue keeps its order). Taken out a moment ago, so no bound applies."""
        queues = self._lanes[lane]
        with self._cond:
            for msg in reversed(msgs):
                queues.prepend(self._gateway_of(msg), msg, len(msg.payload) + MESSAGE_OVERHEAD)
            self._cond.notify_all()

    def close(self) -> None:
        """Release every waiting ``put`` and ``take``; nothing is queued after this."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
