"""Moves outbox rows to the broker in batches and forgets them only when the center acks.

Order of service, each time there is room in the window of unacked batches:

1. alarm events, one per message, oldest first;
2. live telemetry: rows appended since the connection came up;
3. backlog: rows that were already waiting when it came up, oldest first.

So after an outage operators see the present at once while the past drains behind it.
The backlog has a share of its own: up to ``window // 4`` backlog batches are in flight
whatever live data does, and live data and alarms take at most ``window`` batches while
a backlog waits (``window + window // 4`` once there is none), so the backlog drains
however busy the live lane is, and no more than ``window + window // 4`` batches are ever
unacked.

A telemetry batch holds at most ``batch_max`` readings and ``MESSAGE_MAX_BYTES``, and an
alarm event is cut to fit that too (the broker drops a bigger message and disconnects the
gateway, and the center refuses one; either way it would be sent again for ever).

A batch unacked for ``ack_timeout_s``, a lost connection, or an ack from the center that
never comes all lead to the same recovery: forget what is in flight and start again from
the oldest unacked row. The center's primary key drops what it already has. Rows leave
the outbox only when the center acks them; an acked batch whose rows could not be deleted
(a full disk) stays in flight, so the ack timeout sends it again.

With the center's keys (``central.command_key``) an ack must be signed by one of them for
this gateway (``contract/acks.py``); any other deletes nothing and is counted in
``rejected_acks``, the first of each kind (unsigned, bad signature, another gateway's)
logged. Without keys acks are taken unsigned (the plain demo).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from edge_agent.contract import (
    Ack,
    AlarmEvent,
    AlarmMessage,
    Channel,
    PayloadError,
    Topics,
    decode_ack,
)
from edge_agent.contract.acks import AckRejected, verify_ack
from edge_agent.contract.alarms import encode_alarm_within
from edge_agent.contract.payloads import encode_telemetry_within
from edge_agent.outbox import AlarmJournal, Lane, SentLane, TelemetryLog
from edge_agent.uplink import Inbound

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

BAD_ACK_LOG_EVERY_S = 60.0
"""A peer that keeps sending bad acks gets one warning a minute, not one per message."""


class SenderUplink(Protocol):
    """What the sender needs of the MQTT session."""

    @property
    def connected(self) -> asyncio.Event: ...

    def subscribe(self, topic: str, handler: Callable[[Inbound], None]) -> None: ...

    def on_up(self, fn: Callable[[], None]) -> None: ...

    def on_down(self, fn: Callable[[], None]) -> None: ...

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> bool: ...


@dataclass(slots=True)
class InFlight:
    lane: Lane
    first: int
    last: int
    sent_at: float
    backlog: bool = False


@dataclass(slots=True)
class Cursors:
    """Where each lane's sending stands; ``live_from`` splits backlog from live rows."""

    alarms: int = 1
    backlog: int = 1
    live_from: int = 1
    live: int = 1


class Sender:
    def __init__(
        self,
        *,
        gateway: str,
        topics: Topics,
        telemetry: TelemetryLog,
        alarms: AlarmJournal,
        uplink: SenderUplink,
        batch_max: int,
        window: int,
        ack_timeout_s: float,
        keys: Sequence[Ed25519PublicKey] = (),
    ) -> None:
        """``keys``: the center's public keys; with any, only acks they sign are taken."""
        self._gw = gateway
        self._keys = tuple(keys)
        self._topics = topics
        self._telemetry = telemetry
        self._alarms = alarms
        self._lanes: dict[Lane, SentLane] = {Lane.TELEMETRY: telemetry, Lane.ALARMS: alarms}
        self._stream = telemetry.stream_id
        self._uplink = uplink
        self._batch_max = batch_max
        self._window = window
        # The backlog keeps fewer batches in flight than live data may: everything in
        # flight queues at the broker and the center ahead of the next live batch, so a
        # short backlog queue is what keeps live data under a second behind in a drain.
        # The share is the backlog's own, counted apart from live data and alarms, so a
        # busy live lane cannot starve it.
        self._backlog_window = max(1, window // 4)
        self._ack_timeout = ack_timeout_s
        self._inflight: dict[tuple[Lane, int], InFlight] = {}
        self._cursors = Cursors()
        self._last = {Lane.TELEMETRY: 0, Lane.ALARMS: 0}
        self._wake = asyncio.Event()
        self._need_reset = True
        self._acks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.batches_sent = 0
        self.readings_sent = 0
        """Readings published in telemetry batches, a resend's again."""
        self.resends = 0
        self.acked = 0
        self.bad_acks = 0
        self._bad_acks_logged = 0  # bad_acks when the last warning went out
        self._bad_ack_logged_at: float | None = None
        self.rejected_acks = 0
        """Acks of the right shape but not signed by the center's key for this gateway."""
        self._rejections_logged: set[str] = set()
        uplink.subscribe(topics.gw(gateway, Channel.ACK), self.on_ack)
        uplink.on_up(self._on_up)
        uplink.on_down(self._on_down)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def backlog_inflight(self) -> int:
        return sum(1 for fl in self._inflight.values() if fl.backlog)

    def appended(self, lane: Lane, last_seq: int) -> None:
        """The committer tells us new rows are durable up to ``last_seq``."""
        self._last[lane] = max(self._last[lane], last_seq)
        self._wake.set()

    # --- connection and acks ----------------------------------------------------------

    def _on_up(self) -> None:
        self._need_reset = True
        self._wake.set()

    def _on_down(self) -> None:
        self._inflight.clear()

    def on_ack(self, message: Inbound) -> None:
        try:
            if self._keys:
                ack = verify_ack(message.payload, self._keys, self._gw)
            else:
                ack = decode_ack(message.payload)
        except PayloadError as exc:
            self._bad_ack(exc)
            return
        except AckRejected as exc:
            self._rejected_ack(exc)
            return
        if ack.stream != self._stream:
            return  # an ack for an outbox file this gateway no longer has
        if self._closing:
            return  # stopping: the outbox may be closed; the rows are sent again next time
        task = asyncio.get_running_loop().create_task(self._apply_ack(ack), name="sender-ack")
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    def _bad_ack(self, exc: PayloadError) -> None:
        """Count an ack that breaks the contract; it deletes nothing. Warn at the first,
        then at most every ``BAD_ACK_LOG_EVERY_S`` with the count since, so that a peer
        flooding the ack topic cannot flood the log."""
        self.bad_acks += 1
        now = time.monotonic()
        if (
            self._bad_ack_logged_at is not None
            and now - self._bad_ack_logged_at < BAD_ACK_LOG_EVERY_S
        ):
            return
        since = self.bad_acks - self._bad_acks_logged - 1
        self._bad_ack_logged_at, self._bad_acks_logged = now, self.bad_acks
        more = f" ({since} more ignored since the last warning)" if since else ""
        log.warning("ignoring an ack that breaks the contract: %s%s", exc, more)

    def _rejected_ack(self, exc: AckRejected) -> None:
        """Count an ack that is not the center's for this gateway; it deletes nothing. The
        first of each kind is logged: someone else publishes on our ack topic (the broker's
        ACL lets them), or the center signs with a key this gateway does not trust, or not
        at all; the count is in the health report from then on."""
        self.rejected_acks += 1
        if exc.reason in self._rejections_logged:
            return
        self._rejections_logged.add(exc.reason)
        log.warning(
            "ignoring an ack that is not the center's for this gateway: %s (nothing deleted; "
            "later ones of this kind are only counted, uplink.rejected_acks in health)",
            exc,
        )

    async def _apply_ack(self, ack: Ack) -> None:
        for lane, ranges in ((Lane.TELEMETRY, ack.telemetry), (Lane.ALARMS, ack.alarms)):
            if not ranges:
                continue
            try:
                deleted, forgotten = await self._lanes[lane].forget(ranges)
            except Exception:
                log.exception("outbox: deleting acknowledged %s rows failed", lane.value)
                deleted, forgotten = 0, False
            self.acked += deleted
            if not forgotten:
                # The rows are still in the outbox and the cursors are past them: keep the
                # batches in flight, so the ack timeout sends them again (after ack_timeout_s,
                # not at once: a disk that is full now is likely still full in a moment).
                log.warning(
                    "acknowledged %s rows %s kept in the outbox: resending them after %.0f s",
                    lane.value,
                    list(ranges),
                    self._ack_timeout,
                )
                continue
            for key, fl in list(self._inflight.items()):
                if fl.lane is lane and any(a <= fl.first and fl.last <= b for a, b in ranges):
                    del self._inflight[key]
        self._wake.set()

    async def aclose(self) -> None:
        """Stop taking acks and let those under way finish, before the outbox is closed."""
        self._closing = True
        if not self._acks:
            return
        _, pending = await asyncio.wait(set(self._acks), timeout=5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Send until cancelled; the acks under way are finished (``aclose``) on the way out."""
        try:
            while True:
                await self._uplink.connected.wait()
                if self._need_reset:
                    await self._reset()
                progressed = await self._fill_window()
                self._check_timeouts()
                if not progressed:
                    self._wake.clear()
                    # asyncio.timeout, not wait_for: before Python 3.12, wait_for drops a
                    # cancellation that meets the wake-up in one loop turn, and the agent's
                    # stop would wait for a sender that runs on
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(0.5, self._ack_timeout)):
                            await self._wake.wait()
        finally:
            await self.aclose()

    async def _reset(self) -> None:
        """Start again from the oldest unacked row; rows appended from now on are live."""
        self._need_reset = False
        self._inflight.clear()

        first_alarm, last_alarm = await self._alarms.span()
        first_tel, last_tel = await self._telemetry.span()
        self._last[Lane.ALARMS] = max(self._last[Lane.ALARMS], last_alarm)
        self._last[Lane.TELEMETRY] = max(self._last[Lane.TELEMETRY], last_tel)
        c = self._cursors
        c.alarms = first_alarm if first_alarm is not None else last_alarm + 1
        c.live_from = self._last[Lane.TELEMETRY] + 1
        c.live = c.live_from
        c.backlog = first_tel if first_tel is not None else c.live_from

    def _check_timeouts(self) -> None:
        if not self._inflight:
            return
        oldest = min(fl.sent_at for fl in self._inflight.values())
        if time.monotonic() - oldest > self._ack_timeout:
            log.info(
                "no ack from the center for %.0f s: resending %d batch(es) from the oldest unacked",
                self._ack_timeout,
                len(self._inflight),
            )
            self.resends += 1
            self._need_reset = True

    async def _fill_window(self) -> bool:
        progressed = False
        while len(self._inflight) < self._window + self._backlog_window:
            if not self._uplink.connected.is_set() or self._need_reset:
                break
            sent = await self._send_next()
            if not sent:
                break
            progressed = True
        return progressed

    def _room(self) -> tuple[bool, bool]:
        """(room for alarms and live data, room for the backlog) in the window."""
        backlog = self.backlog_inflight
        other = len(self._inflight) - backlog
        if self._cursors.backlog < self._cursors.live_from:
            # a backlog waits: its share stays free for it, whatever live data does
            other_max = self._window
        else:
            other_max = self._window + self._backlog_window - backlog
        return other < other_max, backlog < self._backlog_window

    async def _send_next(self) -> bool:
        c = self._cursors
        room, backlog_room = self._room()
        if room and c.alarms <= self._last[Lane.ALARMS]:
            events = await self._alarms.fetch(c.alarms, 1)
            if events:
                seq, event = events[0]
                c.alarms = seq + 1
                return self._publish_alarm(seq, event)
            c.alarms = self._last[Lane.ALARMS] + 1
        if room and c.live <= self._last[Lane.TELEMETRY]:
            rows = await self._telemetry.fetch(c.live, None, self._batch_max)
            if rows:
                payload, rows = self._telemetry_payload(rows)
                c.live = rows[-1][0] + 1
                return self._publish_telemetry(payload, rows)
            c.live = self._last[Lane.TELEMETRY] + 1
        if backlog_room and c.backlog < c.live_from:
            rows = await self._telemetry.fetch(c.backlog, c.live_from, self._batch_max)
            if rows:
                payload, rows = self._telemetry_payload(rows)
                c.backlog = rows[-1][0] + 1
                return self._publish_telemetry(payload, rows, backlog=True)
            c.backlog = c.live_from
        return False

    def _telemetry_payload(
        self, rows: list[tuple[int, str]]
    ) -> tuple[bytes, list[tuple[int, str]]]:
        """The batch of the first ``rows`` that fits in ``MESSAGE_MAX_BYTES``, and those
        rows: ``batch_max`` readings of long texts may not; the rest go in the next batch."""
        payload, count = encode_telemetry_within(
            self._gw, self._stream, rows[0][0], [body for _, body in rows]
        )
        return payload, rows[:count]

    def _publish_telemetry(
        self, payload: bytes, rows: list[tuple[int, str]], *, backlog: bool = False
    ) -> bool:
        first, last = rows[0][0], rows[-1][0]
        topic = self._topics.gw(self._gw, Channel.TELEMETRY)
        ok = self._uplink.publish(topic, payload)
        if ok:
            self.readings_sent += len(rows)
        return self._track(Lane.TELEMETRY, first, last, ok, backlog=backlog)

    def _publish_alarm(self, seq: int, event: AlarmEvent) -> bool:
        payload = encode_alarm_within(AlarmMessage(self._gw, self._stream, seq, event))
        topic = self._topics.gw(self._gw, Channel.ALARMS)
        return self._track(Lane.ALARMS, seq, seq, self._uplink.publish(topic, payload))

    def _track(self, lane: Lane, first: int, last: int, ok: bool, *, backlog: bool = False) -> bool:
        if not ok:
            self._need_reset = True  # the session went away under us; start over
            return False
        self._inflight[(lane, first)] = InFlight(lane, first, last, time.monotonic(), backlog)
        self.batches_sent += 1
        return True
