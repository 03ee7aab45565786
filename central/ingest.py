"""Central ingest: subscribe to the fleet, store, commit, then acknowledge.

Order matters for the delivery guarantee. For each round of messages:

1. store everything in one transaction and commit it;
2. only then send the MQTT PUBACKs (the session's manual ack: an uncommitted message
   stays the broker's to redeliver), and publish on each gateway's ``ack`` topic the seq
   ranges now committed, so the gateway may delete them from its outbox.

The sessions are persistent (clean start off, long session expiry), so messages that
arrive while the central service is down wait at the broker; what the broker could not
keep, the gateways resend when our acks do not come. There are two: alarms have their
own (``<client id>-alarms``), so that no telemetry queued on a connection is ahead of
them, and their own lane in the bounded inbox (``central.inbox``). Alarm rounds go first,
and alarms that arrive while a telemetry round is being stored cut it short at its next
message and join its commit: an alarm waits for one batch and one commit, never for a
backlog. Telemetry rounds take the gateways in turn. A full inbox stops the session
reading its socket (QoS 1 waits at the broker) and sheds QoS 0 telemetry, counted and
logged (``report_shed``).

What can fail, and what then:

- one message the store cannot take (it breaks the contract, or holds something SQLite
  cannot bind): each message is stored inside its own SAVEPOINT, so its writes alone are
  undone; it is rejected (counted, logged once per gateway), kept in the ``rejected``
  table (a dead letter, ``fleet rejected``: its head, size and hash, within a cap on the
  whole table), PUBACKed so that the broker does
  not redeliver it forever, and acked when it names its outbox rows beyond doubt, so that
  the gateway does not resend it either; the rest of the round commits. A message over
  the contract's ``MESSAGE_MAX_BYTES`` is refused so before it is parsed, naming nothing;
- the store itself (disk full, I/O error, locked beyond busy_timeout): the round is
  rolled back, nothing is PUBACKed or acked, and the round is tried again after
  ``STORE_RETRY_S``; after ``STORE_TRIES`` failures in a row the ingest thread stops;
- the ingest thread stops for any reason: ``run_central`` returns 1 and ``fleet central
  run`` exits with it, for its supervisor (systemd) to restart it. The broker keeps
  every message that was not PUBACKed for the next start.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from central.inbox import Inbox, Lane
from central.store.sqlite.legacy import REJECTED_KEEP, REJECTED_MAX_BYTES, Store
from edge_agent.contract import (
    Ack,
    Channel,
    PayloadError,
    Topics,
    decode_alarm,
    decode_health,
    decode_state,
    decode_telemetry,
    encode_ack,
    merge_ranges,
    named_rows,
)
from mqttlink.backoff import Backoff
from mqttlink.outage import OutageLog
from mqttlink.session import Message, Session, Subscription
from mqttlink.url import Broker

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
ROUND_MAX_MESSAGES = 500
ROUND_MAX_BYTES = 2 * 1024 * 1024  # ~22,000 readings: a round stays well under a second
GATHER_S = 0.02
INBOX_MAX_BYTES = 8 * 1024 * 1024  # telemetry, state and health waiting to be stored
ALARM_INBOX_MAX_BYTES = 4 * 1024 * 1024
SHED_TELEMETRY_AT = 0.5  # QoS 0 telemetry is dropped once the inbox is this full
SHED_LOG_S = 30.0  # shed messages are logged at the first, then at most this often
UNREACHABLE_REMIND_S = 60.0  # "still cannot reach the broker", this often in an outage
STORE_TRIES = 5  # rounds the store fails in a row before the service gives up (exit 1)
STORE_RETRY_S = 1.0  # pause before trying a failed round again


@dataclass
class IngestStats:
    messages: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    alarms_stored: int = 0
    rejected: int = 0
    rejected_by_gateway: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    store_failures: int = 0


class StoreFailed(RuntimeError):
    """The store failed ``STORE_TRIES`` rounds in a row: the service cannot go on."""


def store_fault(exc: BaseException) -> bool:
    """An error of the store itself (disk, locks, corruption) or of the machine, as opposed
    to one message it cannot take: never a reason to reject the message."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.ProgrammingError
    )


@dataclass
class _Round:
    telemetry: dict[tuple[str, str], list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    alarms: dict[tuple[str, str], list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    seen: set[str] = field(default_factory=set)
    readings_stored: int = 0
    duplicates: int = 0
    alarms_stored: int = 0
    rejected: list[tuple[str, Channel, Exception]] = field(default_factory=list)


class Ingest:
    """Two sessions with the broker, each persistent with manual acks: one for alarms
    (client id ``<client_id>-alarms``), one for the rest. One MQTT connection is first in,
    first out, so on a shared one an alarm would wait behind every telemetry batch queued
    before it; on its own it reaches the inbox's alarm lane at once, and cuts the round in
    progress short (``ingest_round``)."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        topics: Topics,
        client_id: str = "edgefleet-central",
    ) -> None:
        self.store = store
        self.topics = topics
        self.stats = IngestStats()
        self.connected = threading.Event()
        """Set while both sessions are connected."""
        self.inbox = Inbox(INBOX_MAX_BYTES, ALARM_INBOX_MAX_BYTES, self._gateway_of)
        self._broker = broker
        self._stop = threading.Event()
        self._pruned_dead_letters: set[str] = set()  # gateways told of, once each
        self._shed_logged = (0.0, 0)  # (when, how many shed by then)
        self._session = self._new_session(client_id, "central")
        self._alarm_session = self._new_session(f"{client_id}-alarms", "central-alarms")
        self._up: set[str] = set()
        self._up_lock = threading.Lock()
        for ch in (Channel.TELEMETRY, Channel.STATE, Channel.HEALTH):
            self._session.subscribe(Subscription(self.topics.pattern(ch), qos=1), self._on_message)
        self._alarm_session.subscribe(
            Subscription(self.topics.pattern(Channel.ALARMS), qos=1), self._on_alarm
        )
        # Centrals before this one took alarms on the main session: what that persistent
        # session still holds comes in and is stored (and acked) with the telemetry lane,
        # and no more after that.
        self._session.forget(self.topics.pattern(Channel.ALARMS), self._on_message)

    def _new_session(self, client_id: str, name: str) -> Session:
        session = Session(
            self._broker,
            client_id=client_id,
            name=name,
            keepalive_s=10,
            clean_start=False,
            session_expiry_s=SESSION_EXPIRY_S,
            manual_ack=True,
            backoff=Backoff(first_s=1.0, cap_s=4.0),
        )
        outage = OutageLog(log, f"{name} at {self._broker}", UNREACHABLE_REMIND_S)
        session.on_up(lambda present: self._on_connect(name, outage, present))
        session.on_down(lambda reason: self._on_disconnect(name, outage, reason))
        session.on_suback(self._on_suback)
        return session

    # --- the sessions' threads ---------------------------------------------------------

    def _on_connect(self, name: str, outage: OutageLog, session_present: bool) -> None:
        log.info("%s connected to %s (session present: %s)", name, self._broker, session_present)
        outage.up()
        with self._up_lock:
            self._up.add(name)
            if len(self._up) == 2:
                self.connected.set()

    def _on_disconnect(self, name: str, outage: OutageLog, reason: str) -> None:
        with self._up_lock:
            was_up = name in self._up
            self._up.discard(name)
            self.connected.clear()
        if self._stop.is_set():
            return  # a disconnect we asked for is not worth a warning
        if was_up:
            outage.lost(reason)
        else:
            outage.failed(reason)

    def _on_suback(self, topic: str, refusal: str | None) -> None:
        if refusal is not None:
            log.warning("broker %s refused central %s: %s", self._broker, topic, refusal)

    def _gateway_of(self, msg: Message) -> str:
        parsed = self.topics.parse(msg.topic)
        return "" if parsed is None else parsed[0]

    def _on_alarm(self, msg: Message) -> None:
        self.inbox.put(Lane.ALARMS, msg)

    def _on_message(self, msg: Message) -> None:
        """Telemetry, state, health: waits while the inbox is full (paho stops reading the
        socket), except QoS 0, which is shed under pressure, telemetry first."""
        shed_at = None
        if msg.qos == 0:
            telemetry = msg.topic.endswith("/" + Channel.TELEMETRY.value)
            shed_at = SHED_TELEMETRY_AT if telemetry else 1.0
        self.inbox.put(Lane.DATA, msg, shed_at)  # shed or not: report_shed tells

    def report_shed(self, *, final: bool = False) -> None:
        """Log what was shed since the last report: at once the first time, then at most
        every ``SHED_LOG_S``, and whatever is left at the end (``final``)."""
        when, count = self._shed_logged
        total = self.inbox.stats(Lane.DATA).shed
        if total == count or (count and not final and time.monotonic() - when < SHED_LOG_S):
            return
        total, by_gateway = self.inbox.shed_report(Lane.DATA)
        self._shed_logged = (time.monotonic(), total)
        top = sorted(by_gateway.items(), key=lambda kv: -kv[1])[:3]
        log.warning(
            "inbox full: shed %d QoS 0 messages (%d in all), most from %s; QoS 1 is never "
            "shed (it waits)",
            total - count,
            total,
            ", ".join(f"{gw or '?'} ({n})" for gw, n in top),
        )

    # --- ingest thread -----------------------------------------------------------------

    def start(self) -> None:
        self._alarm_session.start()
        self._session.start()

    def run(self) -> None:
        """Ingest until ``stop()``; call from the thread that owns the store. Raises
        ``StoreFailed`` when the store keeps failing, and whatever else stops ingest."""
        while not self._stop.is_set():
            lane, msgs = self.inbox.take(0.2, GATHER_S, ROUND_MAX_MESSAGES, ROUND_MAX_BYTES)
            if msgs:
                self.ingest_retrying(msgs, lane)
            self.report_shed()
        self.report_shed(final=True)

    def ingest_retrying(self, msgs: list[Message], lane: Lane = Lane.DATA) -> None:
        """``ingest_round``, tried again while the store fails, up to ``STORE_TRIES``."""
        for attempt in range(1, STORE_TRIES + 1):
            try:
                rest = self.ingest_round(msgs, lane)
                if rest:
                    self.inbox.put_back(lane, rest)
                return
            except Exception as exc:
                if not store_fault(exc):
                    raise
                self.stats.store_failures += 1
                if attempt == STORE_TRIES:
                    raise StoreFailed(
                        f"the store failed {STORE_TRIES} times in a row, last: {exc}"
                    ) from exc
                log.warning(
                    "store failed: %s; %d messages rolled back, not acked; try %d of %d in %.0f s",
                    exc,
                    len(msgs),
                    attempt + 1,
                    STORE_TRIES,
                    STORE_RETRY_S,
                )
            if self._stop.wait(STORE_RETRY_S):
                return  # not acked: the broker redelivers them to the next run

    def stop(self) -> None:
        self._stop.set()
        self.connected.clear()
        self.inbox.close()  # first: a session thread waiting for room lets go
        self._session.close()
        self._alarm_session.close()

    def ingest_round(self, msgs: list[Message], lane: Lane = Lane.DATA) -> list[Message]:
        """Store the round in one transaction, commit, then PUBACK and ack, each message on
        the session it came on. A message the store cannot take is rejected alone; an
        error of the store (``store_fault``) rolls the whole round back and is raised, with
        nothing acked.

        Alarms waiting when a telemetry round is about to store its next message cut it
        short: they are stored in its transaction, committed with what it has stored so
        far, and the messages not begun are returned, for ``put_back``. So an alarm waits
        for the one message being stored and one commit, not for a whole round."""
        rnd = _Round()
        done, alarms = msgs, []
        try:
            self.store.begin()
            for i, msg in enumerate(msgs):
                if lane is Lane.DATA and self.inbox.alarms_waiting():
                    alarms = self.inbox.take_now(Lane.ALARMS, ROUND_MAX_MESSAGES, ROUND_MAX_BYTES)
                    for alarm in alarms:
                        self._store_one(alarm, rnd)
                    done = msgs[:i]
                    break
                self._store_one(msg, rnd)
            if rnd.seen:
                self.store.seen(rnd.seen)
            self.store.commit()
        except BaseException:
            try:
                self.store.rollback()
            except sqlite3.Error as err:  # the next round's begin() tries again
                log.warning("rolling back a failed round failed too: %s", err)
            if alarms:
                self.inbox.put_back(Lane.ALARMS, alarms)  # first again, at the next try
            raise
        session = self._alarm_session if lane is Lane.ALARMS else self._session
        for msg in done:
            session.ack(msg)
        for alarm in alarms:
            self._alarm_session.ack(alarm)
        st = self.stats
        st.messages += len(done) + len(alarms)
        st.readings_stored += rnd.readings_stored
        st.duplicates += rnd.duplicates
        st.alarms_stored += rnd.alarms_stored
        for gw, channel, error in rnd.rejected:
            self._reject(gw, channel, error)
        for gw, stream in set(rnd.telemetry) | set(rnd.alarms):
            ack = Ack(
                stream,
                telemetry=merge_ranges(rnd.telemetry.get((gw, stream), [])),
                alarms=merge_ranges(rnd.alarms.get((gw, stream), [])),
            )
            # queued while the broker is away: it goes out after the reconnect; an alarm's
            # on the alarm session, which no telemetry holds up
            session = self._alarm_session if ack.alarms else self._session
            session.publish(
                self.topics.gw(gw, Channel.ACK), encode_ack(ack), qos=1, queue_offline=True
            )
        return msgs[len(done) :]

    def _store_one(self, msg: Message, rnd: _Round) -> None:
        parsed = self.topics.parse(msg.topic)
        if parsed is None or parsed[1] not in _STORED:
            return
        gw, channel = parsed
        try:
            with self.store.savepoint():
                self._store_message(gw, channel, msg.payload, rnd)
        except Exception as exc:
            if store_fault(exc):
                raise
            rnd.rejected.append((gw, channel, exc))
            self._dead_letter(gw, channel, msg, exc, rnd)
            return
        rnd.seen.add(gw)

    def _dead_letter(
        self, gw: str, channel: Channel, msg: Message, exc: Exception, rnd: _Round
    ) -> None:
        """Keep a rejected message (its head) in the store and, when it names the outbox rows
        it was sent for, ack them: the gateway would otherwise send it, and everything behind
        it, again at every ack timeout until its outbox drops it."""
        rows = None
        if channel in (Channel.TELEMETRY, Channel.ALARMS):
            rows = named_rows(msg.payload, alarm=channel is Channel.ALARMS)
            if rows is not None and rows.gw != gw:
                rows = None  # another gateway's rows are not this one's to ack
        try:
            with self.store.savepoint():
                pruned = self.store.insert_rejected(
                    gw, msg.topic, bytes(msg.payload), _why(exc), rows
                )
            if pruned and gw not in self._pruned_dead_letters:
                self._pruned_dead_letters.add(gw)
                log.warning(
                    "%s: more dead letters than the store keeps (%d per gateway, %d MiB in "
                    "all): the oldest make room",
                    gw,
                    REJECTED_KEEP,
                    REJECTED_MAX_BYTES >> 20,
                )
        except Exception as err:
            if store_fault(err):
                raise
            log.warning("could not keep a rejected message from %s: %s", gw, _why(err))
            return
        if rows is None:
            return
        acked = rnd.alarms if channel is Channel.ALARMS else rnd.telemetry
        acked[(gw, rows.stream)].append((rows.first, rows.last))

    def _store_message(self, gw: str, channel: Channel, payload: bytes, rnd: _Round) -> None:
        """Decode and store one message; ``rnd`` learns of it only once it is all stored."""
        if channel is Channel.TELEMETRY:
            batch = decode_telemetry(payload)
            self._same_gateway(gw, batch.gw)
            stored = self.store.insert_telemetry(batch)
            rnd.readings_stored += stored
            rnd.duplicates += len(batch.readings) - stored
            rnd.telemetry[(gw, batch.stream)].append((batch.seq_first, batch.seq_last))
        elif channel is Channel.ALARMS:
            event = decode_alarm(payload)
            self._same_gateway(gw, event.gw)
            rnd.alarms_stored += self.store.insert_alarm(event)
            rnd.alarms[(gw, event.stream)].append((event.seq, event.seq))
        elif channel is Channel.STATE:
            if payload:  # an empty retained message clears a decommissioned gateway
                self.store.update_state(gw, decode_state(payload))
        else:
            self.store.update_health(gw, decode_health(payload))

    def _same_gateway(self, topic_gw: str, payload_gw: str) -> None:
        if topic_gw != payload_gw:
            raise PayloadError(
                f"payload says gateway {payload_gw!r} on gateway {topic_gw!r}'s topic"
            )

    def _reject(self, gw: str, channel: Channel, exc: Exception) -> None:
        self.stats.rejected += 1
        count = self.stats.rejected_by_gateway[gw] = self.stats.rejected_by_gateway[gw] + 1
        if count == 1:  # log once per gateway, count the rest
            log.warning(
                "rejected a %s message from %s (kept as a dead letter, see fleet rejected; "
                "later ones are only counted): %s",
                channel.value,
                gw,
                _why(exc),
            )


def _why(exc: Exception) -> str:
    return str(exc) if isinstance(exc, PayloadError) else f"{type(exc).__name__}: {exc}"


_STORED = frozenset({Channel.TELEMETRY, Channel.ALARMS, Channel.STATE, Channel.HEALTH})


def run_central(store: Store, ingest: Ingest, stop: threading.Event) -> int:
    """Run ingest on its own thread until ``stop`` is set: 0. If the ingest thread ends
    by itself (the store keeps failing, or anything else), stop everything and return 1,
    so that the process exits non-zero and its supervisor restarts it."""
    ended = threading.Event()

    def work() -> None:
        try:
            ingest.run()
        except BaseException:
            log.critical("central ingest stopped; exiting to be restarted", exc_info=True)
        finally:
            ended.set()

    ingest.start()
    worker = threading.Thread(target=work, name="ingest", daemon=True)
    worker.start()
    failed = False
    try:
        while not stop.wait(0.2):
            if ended.is_set():
                failed = True
                break
    finally:
        ingest.stop()
        worker.join(timeout=5)
        try:
            store.close()
        except sqlite3.Error as exc:
            log.warning("closing the store failed: %s", exc)
    return 1 if failed else 0
