"""One ingest round as plain code: messages in, the store's unit of work, and what to do
once it has committed out. No MQTT and no thread here: ``central.ingest`` takes the
messages from its inbox, calls ``store_round``, and after it returns (committed) sends
the PUBACKs and acks it lists, logs the rejections, and puts the rest back.

Per message (``Round.message()``: its writes alone are undone if it fails):

- a message the store cannot take (``MessageRejected``, or a payload that breaks the
  contract, or names another gateway than its topic's): rejected alone; kept as a dead
  letter; PUBACKed (the broker would redeliver it for ever); acked when it names its outbox
  rows beyond doubt and they are its own gateway's, so that the gateway does not resend
  it either. The rest of the round commits;
- the store itself failing (``StoreUnavailable``): raised, the whole round rolled back by
  the store, nothing PUBACKed or acked; the caller tries the round again later;
- a message that resends seqs the store holds with other content (a ``Conflict``,
  ``central.store.conflicts``: a forgery stored first, or a gateway reusing its seqs): the
  stored rows stay, its other readings are stored; once the round has committed, a second
  unit of work keeps the message whole as a dead letter flagged as a conflict, and only
  then is anything PUBACKed or acked (it is acked: sent again, it would conflict again;
  but not if its dead letter could not be kept, as it may hold the only copy).
  If that fails, nothing is acked and the round, tried again, finds the conflict again;
- a telemetry round is cut short by alarms: before each of its messages it asks for the
  alarms waiting (``alarms_now``); if some are, they are stored in its transaction, and
  committed with what it stored so far; the messages not begun come back in ``rest``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from central.feed import AlarmCommitted, Committed, GatewayCommitted
from central.inbox import Lane
from central.store.api import Round, RoundCounts
from central.store.conflicts import Conflict
from central.store.errors import MessageRejected, StoreUnavailable
from edge_agent.contract import (
    Ack,
    AlarmMessage,
    Channel,
    PayloadError,
    TelemetryBatch,
    Topics,
    decode_alarm,
    decode_health,
    decode_state,
    decode_telemetry,
    merge_ranges,
    named_rows,
)
from mqttlink.session import Message

log = logging.getLogger(__name__)

STORED = frozenset({Channel.TELEMETRY, Channel.ALARMS, Channel.STATE, Channel.HEALTH})
"""The channels the center stores; a message on any other topic is PUBACKed and dropped."""


class RoundStore(Protocol):
    """What a round needs of a store (``central.store.api.Store`` has it)."""

    def round(self) -> AbstractContextManager[Round]: ...


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message the store could not take: kept as a dead letter, PUBACKed."""

    gateway: str
    channel: Channel
    why: str


@dataclass(frozen=True, slots=True)
class Source:
    """What a message was decoded to, as given to the store (a ``Conflict`` names it by
    identity, and the round finds the message by it)."""

    decoded: object


@dataclass(slots=True)
class RoundResult:
    """What to do now that the round has committed."""

    puback: list[tuple[Lane, Message]] = field(default_factory=list)
    """Every message of the round that is done with, on the lane (session) it came on."""
    acks: list[tuple[str, Ack]] = field(default_factory=list)
    """Per (gateway, stream) the seq ranges committed (merged): to publish on its ack
    topic (an ack with alarm ranges goes on the alarm session)."""
    rejected: list[Rejection] = field(default_factory=list)
    rest: list[Message] = field(default_factory=list)
    """The messages not begun (cut short by alarms): for the inbox's ``put_back``."""
    counts: RoundCounts = field(default_factory=RoundCounts)
    pruned: dict[str, int] = field(default_factory=dict)
    """Gateways whose older dead letters made room for new ones, and how many went."""
    conflicts: list[Conflict] = field(default_factory=list)
    """Messages that resent seqs with other content than stored: kept whole as dead
    letters (``fleet rejected``), acked."""
    alarms: list[AlarmCommitted] = field(default_factory=list)
    """The alarm events stored (not those the store had already), in the order they came."""
    gateways: list[GatewayCommitted] = field(default_factory=list)
    """The state messages stored."""

    @property
    def messages(self) -> int:
        return len(self.puback)

    def committed(self) -> Committed:
        """What the round committed, for the feed (``central.feed``)."""
        c = self.counts
        return Committed(c.readings_stored, c.duplicates, self.alarms, self.gateways)


def no_alarms() -> Sequence[Message]:
    return ()


@dataclass
class _Acked:
    """Seq ranges to ack, per (gateway, stream), in the order they came."""

    telemetry: dict[tuple[str, str], list[tuple[int, int]]] = field(default_factory=dict)
    alarms: dict[tuple[str, str], list[tuple[int, int]]] = field(default_factory=dict)

    def add(self, alarm: bool, gateway: str, stream: str, first: int, last: int) -> None:
        ranges = self.alarms if alarm else self.telemetry
        ranges.setdefault((gateway, stream), []).append((first, last))

    def drop(self, alarm: bool, gateway: str, stream: str, first: int, last: int) -> None:
        """Take back a range ``add`` gave (once)."""
        ranges = (self.alarms if alarm else self.telemetry).get((gateway, stream), [])
        if (first, last) in ranges:
            ranges.remove((first, last))

    def acks(self) -> list[tuple[str, Ack]]:
        keys = dict.fromkeys([*self.telemetry, *self.alarms])
        return [
            (
                gw,
                Ack(
                    stream,
                    telemetry=merge_ranges(self.telemetry.get((gw, stream), [])),
                    alarms=merge_ranges(self.alarms.get((gw, stream), [])),
                ),
            )
            for gw, stream in keys
        ]


def store_round(
    store: RoundStore,
    topics: Topics,
    msgs: Sequence[Message],
    lane: Lane = Lane.DATA,
    alarms_now: Callable[[], Sequence[Message]] = no_alarms,
    revoked: Container[str] = frozenset(),
) -> RoundResult:
    """Store ``msgs`` (come on ``lane``) in one unit of work and commit it; return what to
    acknowledge. ``alarms_now`` gives the alarms waiting now (taken from wherever they
    wait: the caller puts them back if this raises); a telemetry round asks before each
    message. What a gateway in ``revoked`` sends is a dead letter, acked to no one.
    Raises ``StoreUnavailable`` (nothing kept, nothing to ack)."""
    out = RoundResult()
    acked = _Acked()
    seen: dict[str, None] = {}
    sources: dict[int, tuple[object, Message]] = {}
    done: Sequence[Message] = msgs
    alarms: Sequence[Message] = ()
    with store.round() as rnd:
        for i, msg in enumerate(msgs):
            if lane is Lane.DATA:
                alarms = alarms_now()
                if alarms:
                    for alarm in alarms:
                        _store_one(rnd, topics, alarm, acked, seen, sources, out, revoked)
                    done = msgs[:i]
                    break
            _store_one(rnd, topics, msg, acked, seen, sources, out, revoked)
        if seen:
            rnd.seen(seen)
    out.counts = rnd.counts
    if rnd.conflicts:
        _keep_conflicts(store, rnd.conflicts, sources, acked, out)
    out.puback = [(lane, msg) for msg in done] + [(Lane.ALARMS, a) for a in alarms]
    out.acks = acked.acks()
    out.rest = list(msgs[len(done) :])
    return out


def _store_one(
    rnd: Round,
    topics: Topics,
    msg: Message,
    acked: _Acked,
    seen: dict[str, None],
    sources: dict[int, tuple[object, Message]],
    out: RoundResult,
    revoked: Container[str],
) -> None:
    parsed = topics.parse(msg.topic)
    if parsed is None or parsed[1] not in STORED:
        return
    gw, channel = parsed
    if gw in revoked:  # defence in depth: the broker should have refused it already
        why = f"gateway {gw} is revoked (fleet revoke): nothing it sends is stored"
        out.rejected.append(Rejection(gw, channel, why))
        _dead_letter(rnd, gw, channel, msg, why, None, out)
        return
    noted: list[AlarmCommitted | GatewayCommitted | Source] = []
    try:
        with rnd.message():
            ranges = _store_message(rnd, gw, channel, msg.payload, noted)
    except StoreUnavailable:
        raise
    except Exception as exc:  # the message's fault: its writes were undone
        why = _why(exc)
        out.rejected.append(Rejection(gw, channel, why))
        _dead_letter(rnd, gw, channel, msg, why, acked, out)
        return
    if ranges is not None:
        acked.add(*ranges)
    for note in noted:  # only now: a message rejected after all is in no one's feed
        if isinstance(note, AlarmCommitted):
            out.alarms.append(note)
        elif isinstance(note, Source):
            # by identity: the store names a conflict by the object it was given
            sources[id(note.decoded)] = (note.decoded, msg)
        else:
            out.gateways.append(note)
    seen[gw] = None


def _keep_conflicts(
    store: RoundStore,
    conflicts: Sequence[Conflict],
    sources: dict[int, tuple[object, Message]],
    acked: _Acked,
    out: RoundResult,
) -> None:
    """Keep each message in conflict whole, as a dead letter flagged so, in a unit of work
    of its own (the round has committed: a PostgreSQL round finds its telemetry's conflicts
    only then). Raises ``StoreUnavailable``: then nothing is acked, and the round tried
    again finds the same conflicts (the stored rows are still there). A message whose dead
    letter cannot be kept is not acked: the gateway keeps what may be its only copy."""
    with store.round() as rnd:
        for c in conflicts:
            decoded, msg = sources[id(c.source)]
            try:
                with rnd.message():
                    pruned = rnd.insert_rejected(
                        c.gateway,
                        msg.topic,
                        bytes(msg.payload),
                        c.describe(),
                        named_rows(msg.payload, alarm=c.alarm),
                        whole=True,
                    )
            except StoreUnavailable:
                raise
            except Exception as err:
                log.warning(
                    "could not keep a conflicting message from %s (not acked): %s",
                    c.gateway,
                    _why(err),
                )
                if isinstance(decoded, TelemetryBatch):
                    acked.drop(False, c.gateway, c.stream, decoded.seq_first, decoded.seq_last)
                elif isinstance(decoded, AlarmMessage):
                    acked.drop(True, c.gateway, c.stream, decoded.seq, decoded.seq)
                continue
            if pruned:
                out.pruned[c.gateway] = out.pruned.get(c.gateway, 0) + pruned
    out.conflicts = list(conflicts)


def _store_message(
    rnd: Round,
    gw: str,
    channel: Channel,
    payload: bytes,
    noted: list[AlarmCommitted | GatewayCommitted | Source],
) -> tuple[bool, str, str, int, int] | None:
    """Decode and store one message; the range it stored, to ack once it is all stored.
    What the feed tells of it goes into ``noted``, and what it was decoded to (a conflict
    names it)."""
    if channel is Channel.TELEMETRY:
        batch = decode_telemetry(payload)
        _same_gateway(gw, batch.gw)
        noted.append(Source(batch))
        rnd.insert_telemetry(batch)
        return (False, gw, batch.stream, batch.seq_first, batch.seq_last)
    if channel is Channel.ALARMS:
        event = decode_alarm(payload)
        _same_gateway(gw, event.gw)
        noted.append(Source(event))
        before = rnd.counts.alarms_stored
        rnd.insert_alarm(event)
        if rnd.counts.alarms_stored > before:  # new, not one the store had already
            e = event.event
            noted.append(AlarmCommitted(gw, e.id, str(e.severity), str(e.state)))
        return (True, gw, event.stream, event.seq, event.seq)
    if channel is Channel.STATE:
        if payload:  # an empty retained message clears a decommissioned gateway
            state = decode_state(payload)
            rnd.update_state(gw, state)
            online = state.get("online")
            noted.append(GatewayCommitted(gw, online if isinstance(online, bool) else None))
    else:
        rnd.update_health(gw, decode_health(payload))
    return None


def _dead_letter(
    rnd: Round,
    gw: str,
    channel: Channel,
    msg: Message,
    why: str,
    acked: _Acked | None,
    out: RoundResult,
) -> None:
    """Keep a rejected message (its head) in the store and, when it names the outbox rows
    it was sent for, ack them (unless ``acked`` is None): the gateway would otherwise send
    it, and everything behind it, again at every ack timeout until its outbox drops it."""
    rows = None
    if acked is not None and channel in (Channel.TELEMETRY, Channel.ALARMS):
        rows = named_rows(msg.payload, alarm=channel is Channel.ALARMS)
        if rows is not None and rows.gw != gw:
            rows = None  # another gateway's rows are not this one's to ack
    try:
        with rnd.message():
            pruned = rnd.insert_rejected(gw, msg.topic, bytes(msg.payload), why, rows)
    except StoreUnavailable:
        raise
    except Exception as err:
        log.warning("could not keep a rejected message from %s: %s", gw, _why(err))
        return
    if pruned:
        out.pruned[gw] = out.pruned.get(gw, 0) + pruned
    if rows is not None and acked is not None:
        acked.add(channel is Channel.ALARMS, gw, rows.stream, rows.first, rows.last)


def _same_gateway(topic_gw: str, payload_gw: str) -> None:
    if topic_gw != payload_gw:
        raise PayloadError(f"payload says gateway {payload_gw!r} on gateway {topic_gw!r}'s topic")


def _why(exc: Exception) -> str:
    """What was wrong, for the dead letter and the log: the store's own error already
    says it (``OverflowError: …``), the contract's too."""
    if isinstance(exc, PayloadError | MessageRejected):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
