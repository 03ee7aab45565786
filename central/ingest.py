"""Central ingest: subscribe to the fleet, store, commit, then acknowledge.

Order matters for the delivery guarantee. For each round of messages:

1. store everything in one transaction and commit it;
2. only then send the MQTT PUBACKs (the session's manual ack: an uncommitted message
   stays the broker's to redeliver), and publish on each gateway's ``ack`` topic the seq
   ranges now committed, so the gateway may delete them from its outbox; signed with the
   center's key when it has one (``contract.acks``: one signature per ack message), so
   that a gateway that trusts the key takes acks from no one else.

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

Several workers (``central.workers``, ``fleet central run --workers N``) split the fleet
between them through MQTT v5 shared subscriptions (``$share/<group>/…/telemetry``,
``…/alarms``, ``…/health``): the broker hands each message to one member of the group,
and each worker stores, commits and acks what it was given, on sessions of its own
(``<client id>-w<k>``, ``<client id>-w<k>-alarms``). A gateway's state is retained and is
also its Last Will, and a shared subscription gets no retained message, so worker 0 alone
subscribes to it, unshared. The workers share one PostgreSQL store, which keeps every
reading once whoever writes it; SQLite has one writer, so one worker.

After each commit the worker publishes what it committed on the center's feed
(``central.feed``: ``<root>/center/feed``, QoS 0), after the PUBACKs and acks.

What can fail, and what then:

- one message the store cannot take (it breaks the contract, or holds something the
  store cannot keep): each message is stored in its own part of the round's unit of work
  (``central.rounds``, ``Round.message()``), so its writes alone are undone; it is
  rejected (counted, logged once per gateway), kept in the ``rejected`` table (a dead
  letter, ``fleet rejected``: its head, size and hash, within a cap on the whole table),
  PUBACKed so that the broker does not redeliver it forever, and acked when it names its
  outbox rows beyond doubt, so that the gateway does not resend it either; the rest of
  the round commits. A message over the contract's ``MESSAGE_MAX_BYTES`` is refused so
  before it is parsed, naming nothing;
- a message that resends seqs stored with other content (a conflict,
  ``central.store.conflicts``): the stored rows stay; the message is kept whole as a dead
  letter flagged as a conflict, PUBACKed and acked; logged once per gateway and stream
  (telemetry and alarms apart), the rest counted;
- the store itself (``StoreUnavailable``: disk full, I/O error, a lock held too long,
  the server gone): the round is rolled back, nothing is PUBACKed or acked, and the
  round is tried again after ``STORE_RETRY_S``; after ``STORE_TRIES`` failures in a row
  the ingest thread stops;
- retention (``Retention``, ``fleet central run --keep-raw/--keep-rollups``): the ingest
  thread, which owns the store's connection, runs ``store.maintain`` at start and every
  ``MAINTAIN_S`` between rounds; a store that fails it is tried again the next time;
- the ingest thread stops for any reason: ``run_central`` returns 1 and ``fleet central
  run`` exits with it, for its supervisor (systemd) to restart it. The broker keeps
  every message that was not PUBACKed for the next start.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from central.feed import feed_events
from central.inbox import Inbox, Lane
from central.rounds import RoundResult, store_round
from central.store.api import Maintenance, Retention, Store
from central.store.conflicts import Conflict
from central.store.errors import StoreError, StoreUnavailable
from central.store.limits import REJECTED_KEEP, REJECTED_MAX_BYTES
from edge_agent.contract import Channel, Topics, encode_ack
from edge_agent.contract.acks import sign_ack
from mqttlink.backoff import Backoff
from mqttlink.outage import OutageLog
from mqttlink.session import Message, Session, Subscription
from mqttlink.url import Broker

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
REVOKED_REFRESH_S = 5.0  # how soon a gateway revoked is refused here too
MAINTAIN_S = 300.0  # retention runs this often (and at start), between rounds


@dataclass
class IngestStats:
    messages: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    alarms_stored: int = 0
    rejected: int = 0
    rejected_by_gateway: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    conflicts: int = 0
    """Messages that resent seqs with other content than stored."""
    conflicts_by_stream: dict[tuple[str, str, bool], int] = field(
        default_factory=lambda: defaultdict(int)
    )
    """By (gateway, stream, alarm): an alarm's conflict is logged even after telemetry's."""
    store_failures: int = 0


RoundObserver = Callable[[RoundResult, float], None]
"""Told of each round once it has committed and been acked: what it did, and how long
storing and committing it took in seconds (``central.metrics``)."""


class StoreFailed(RuntimeError):
    """The store failed ``STORE_TRIES`` rounds in a row: the service cannot go on."""


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
        retention: Retention | None = None,
        *,
        worker: int = 0,
        share_group: str | None = None,
        ack_key: Ed25519PrivateKey | None = None,
    ) -> None:
        """``retention``: what ``store.maintain`` removes, run on the ingest thread; None:
        nothing is ever removed. ``share_group``: take telemetry, alarms and health
        through MQTT v5 shared subscriptions of that group (``$share/<group>/…``), so
        that the broker splits them between the workers (``central.workers``); None: all
        of them. ``worker``: this one's number, in the feed; worker 0 alone takes the
        gateways' state (retained, and their Last Will), which a shared subscription
        would not deliver. ``ack_key``: the center's signing key (``fleet keys init``, the
        one commands are signed with): every ack is signed with it (``contract.acks``), so
        that a gateway that trusts it takes acks from no one else; None: acks go unsigned,
        which only a gateway without ``central.command_key`` takes."""
        self.store = store
        self._ack_key = ack_key
        self.worker = worker
        self.client_id = client_id
        self.retention = retention
        self.topics = topics
        self.stats = IngestStats()
        self.round_observers: list[RoundObserver] = []
        self.connected = threading.Event()
        """Set while both sessions are connected."""
        self.inbox = Inbox(INBOX_MAX_BYTES, ALARM_INBOX_MAX_BYTES, self._gateway_of)
        self._broker = broker
        self._share_group = share_group
        self._stop = threading.Event()
        self._pruned_dead_letters: set[str] = set()  # gateways told of, once each
        self._shed_logged = (0.0, 0)  # (when, how many shed by then)
        self._session = self._new_session(client_id, "central")
        self._alarm_session = self._new_session(f"{client_id}-alarms", "central-alarms")
        self._up: set[str] = set()
        self._up_lock = threading.Lock()
        self._revoked: frozenset[str] = frozenset()
        self._revoked_at = -math.inf  # monotonic time of the last look
        for ch in (Channel.TELEMETRY, Channel.HEALTH):
            self._session.subscribe(Subscription(self._filter(ch), qos=1), self._on_message)
        state = self.topics.pattern(Channel.STATE)
        if worker == 0:  # never shared: a shared subscription gets no retained message
            self._session.subscribe(Subscription(state, qos=1), self._on_message)
        else:
            self._session.forget(state, self._on_message)
        self._alarm_session.subscribe(
            Subscription(self._filter(Channel.ALARMS), qos=1), self._on_alarm
        )
        # Centrals before this one took alarms on the main session: what that persistent
        # session still holds comes in and is stored (and acked) with the telemetry lane,
        # and no more after that.
        self._session.forget(self.topics.pattern(Channel.ALARMS), self._on_message)
        if share_group is not None:  # the same, for a session that was not shared before
            self._session.forget(self.topics.pattern(Channel.TELEMETRY), self._on_message)
            self._session.forget(self.topics.pattern(Channel.HEALTH), self._on_message)
            self._alarm_session.forget(self.topics.pattern(Channel.ALARMS), self._on_alarm)

    def _filter(self, channel: Channel) -> str:
        if self._share_group is None:
            return self.topics.pattern(channel)
        return self.topics.shared(self._share_group, channel)

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
        log.info("%s: client id %s", name, session.client_id)
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
        maintain_at = time.monotonic()  # at start, then every MAINTAIN_S
        while not self._stop.is_set():
            if self.retention is not None and time.monotonic() >= maintain_at:
                self.maintain(self.retention)
                maintain_at = time.monotonic() + MAINTAIN_S
            lane, msgs = self.inbox.take(0.2, GATHER_S, ROUND_MAX_MESSAGES, ROUND_MAX_BYTES)
            if msgs:
                self.ingest_retrying(msgs, lane)
            self.report_shed()
        self.report_shed(final=True)

    def maintain(self, retention: Retention) -> Maintenance | None:
        """Retention now (``store.maintain``), logged when it removed something; a store
        that fails it is logged and tried again at the next time (None)."""
        try:
            done = self.store.maintain(retention)
        except StoreError as exc:
            log.warning("retention failed (tried again in %.0f s): %s", MAINTAIN_S, exc)
            return None
        if done.readings_deleted or done.rollups_deleted or done.partitions_dropped:
            log.info(
                "retention: removed %d readings, %d 1-minute rollups, %d partitions",
                done.readings_deleted,
                done.rollups_deleted,
                done.partitions_dropped,
            )
        return done

    def ingest_retrying(self, msgs: list[Message], lane: Lane = Lane.DATA) -> None:
        """``ingest_round``, tried again while the store is unavailable, up to
        ``STORE_TRIES``."""
        for attempt in range(1, STORE_TRIES + 1):
            try:
                rest = self.ingest_round(msgs, lane)
                if rest:
                    self.inbox.put_back(lane, rest)
                return
            except StoreUnavailable as exc:
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
        """Store the round in one unit of work and commit it (``central.rounds``), then
        PUBACK and ack, each message on the session it came on. A message the store cannot
        take is rejected alone; ``StoreUnavailable`` rolls the whole round back and is
        raised, with nothing acked.

        Alarms waiting when a telemetry round is about to store its next message cut it
        short: they are stored in its unit of work, committed with what it has stored so
        far, and the messages not begun are returned, for ``put_back``. So an alarm waits
        for the one message being stored and one commit, not for a whole round."""
        taken: list[Message] = []

        def alarms_now() -> Sequence[Message]:
            if not self.inbox.alarms_waiting():
                return ()
            taken.extend(self.inbox.take_now(Lane.ALARMS, ROUND_MAX_MESSAGES, ROUND_MAX_BYTES))
            return taken

        started = time.monotonic()
        try:
            result = store_round(
                self.store, self.topics, msgs, lane, alarms_now, self._revoked_now(started)
            )
        except BaseException:
            if taken:
                self.inbox.put_back(Lane.ALARMS, taken)  # first again, at the next try
            raise
        took = time.monotonic() - started
        self._after_commit(result)
        for observe in self.round_observers:
            observe(result, took)
        return result.rest

    def _revoked_now(self, now: float) -> frozenset[str]:
        """The revoked gateways (``fleet revoke``), looked up again every
        ``REVOKED_REFRESH_S``: what one sends after that is refused, not stored."""
        if now - self._revoked_at >= REVOKED_REFRESH_S:
            self._revoked = self.store.revoked_gateways()
            self._revoked_at = now
        return self._revoked

    def _after_commit(self, result: RoundResult) -> None:
        for lane, msg in result.puback:
            (self._alarm_session if lane is Lane.ALARMS else self._session).ack(msg)
        st = self.stats
        st.messages += result.messages
        st.readings_stored += result.counts.readings_stored
        st.duplicates += result.counts.duplicates
        st.alarms_stored += result.counts.alarms_stored
        for rejection in result.rejected:
            self._reject(rejection.gateway, rejection.channel, rejection.why)
        for conflict in result.conflicts:
            self._conflict(conflict)
        for gw in result.pruned:
            if gw not in self._pruned_dead_letters:
                self._pruned_dead_letters.add(gw)
                log.warning(
                    "%s: more dead letters than the store keeps (%d per gateway, %d MiB in "
                    "all): the oldest make room",
                    gw,
                    REJECTED_KEEP,
                    REJECTED_MAX_BYTES >> 20,
                )
        for gw, ack in result.acks:
            # queued while the broker is away: it goes out after the reconnect; an alarm's
            # on the alarm session, which no telemetry holds up
            session = self._alarm_session if ack.alarms else self._session
            # one signature per ack message: per gateway and stream per round
            key = self._ack_key
            payload = encode_ack(ack) if key is None else sign_ack(ack, gw, key)
            session.publish(self.topics.gw(gw, Channel.ACK), payload, qos=1, queue_offline=True)
        # the feed last: a listener that hears of a commit finds it acked already. QoS 0, not
        # queued: a notice missed is only a notice (central.feed); an alarm round's on the
        # alarm session, behind no telemetry
        feed = self._alarm_session if result.alarms else self._session
        for event in feed_events(self.worker, self.client_id, result.committed()):
            feed.publish(self.topics.feed(), event, qos=0)

    def _reject(self, gw: str, channel: Channel, why: str) -> None:
        self.stats.rejected += 1
        count = self.stats.rejected_by_gateway[gw] = self.stats.rejected_by_gateway[gw] + 1
        if count == 1:  # log once per gateway, count the rest
            log.warning(
                "rejected a %s message from %s (kept as a dead letter, see fleet rejected; "
                "later ones are only counted): %s",
                channel.value,
                gw,
                why,
            )

    def _conflict(self, c: Conflict) -> None:
        self.stats.conflicts += 1
        key = (c.gateway, c.stream, c.alarm)
        count = self.stats.conflicts_by_stream[key] = self.stats.conflicts_by_stream[key] + 1
        if count == 1:  # log once per gateway and stream (and lane), count the rest
            log.error(
                "%s: %s (see fleet rejected; later conflicts of this stream's %s are only counted)",
                c.gateway,
                c.describe(),
                "alarms" if c.alarm else "telemetry",
            )


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
        st = ingest.stats
        log.info(
            "ingest stopped: %d messages, %d readings stored, %d duplicates, %d alarm events, "
            "%d rejected, %d in conflict with what was stored",
            st.messages,
            st.readings_stored,
            st.duplicates,
            st.alarms_stored,
            st.rejected,
            st.conflicts,
        )
        try:
            store.close()
        except Exception as exc:  # the drivers' errors are not translated on close
            log.warning("closing the store failed: %s", exc)
    return 1 if failed else 0
