"""What a central store is, whatever engine holds it: one small interface, two backends
(``central.store.sqlite``, embedded, the default; ``central.store.postgres``, a server for
a city). Ingest, the registry, the CLI and the wall see only this.

Writes come in units of work, one per ingest round::

    with store.round() as rnd:           # a transaction
        for msg in messages:
            try:
                with rnd.message():      # one message: on an error its writes alone go
                    rnd.insert_telemetry(batch)
            except MessageRejected: ...  # keep it as a dead letter, go on
        rnd.seen(gateways)
    # here the round is committed, durably: only now may anything be acked
    rnd.counts.readings_stored

Leaving the ``with`` by an exception rolls the whole round back. Every error of the engine
comes out as one of ``central.store.errors``: ``StoreUnavailable`` (try the round again
later; nothing was kept) or ``MessageRejected`` (out of ``rnd.message()`` only).

Exactly-once: a reading is the gateway's ``(gateway, stream, seq)``; storing a batch whose
readings are (partly) stored already keeps each reading once, and counts the rest as
duplicates. Every backend keeps that true with several writers at once.

A resent seq is a duplicate only if its content is the stored one
(``central.store.conflicts``); one that differs is not stored again either (the stored row
stays) but counted in ``counts.conflicts`` and listed in ``rnd.conflicts``, complete once
the round has committed, for the round logic to keep the message and flag it.

Queries return typed rows (``central.store.rows``); the long ones are iterators that
stream from the engine (a month of one point never sits in memory): consume them before
the next call on the same store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from central.store.conflicts import Conflict
from central.store.rows import (
    AlarmRow,
    CommandRecord,
    DeadLetter,
    DeviceRow,
    FleetStatus,
    GatewayRow,
    Identity,
    LossRow,
    ReadingBucket,
    StoredReading,
)
from edge_agent.contract import AlarmMessage, NamedRows, TelemetryBatch

Backend = Literal["sqlite", "postgresql"]

BACKLOG_AT = 1000
"""Outbox rows waiting on a gateway from which ``fleet status`` counts it as backlogged."""


@dataclass(frozen=True, slots=True)
class GatewayFilter:
    """Which gateways (``--where site=…,tag.district=…,state=offline,version=…``): every
    given field must match; tags all of them. Applied in the store, in SQL."""

    ids: tuple[str, ...] = ()
    site: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    online: bool | None = None
    version: str | None = None

    @property
    def everything(self) -> bool:
        return self == ALL_GATEWAYS


ALL_GATEWAYS = GatewayFilter()


@dataclass(frozen=True, slots=True)
class ReadingQuery:
    """Readings of a time range ``[since, until)`` (edge times), filtered by gateway,
    device and point; newest first unless ``oldest_first``; at most ``limit`` (None: all)."""

    gateway: str | None = None
    device: str | None = None
    point: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int | None = 100
    oldest_first: bool = False
    where: GatewayFilter = field(default_factory=GatewayFilter)


@dataclass(frozen=True, slots=True)
class AlarmQuery:
    gateway: str | None = None
    states: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    where: GatewayFilter = field(default_factory=GatewayFilter)


ALL_ALARMS = AlarmQuery()


@dataclass(frozen=True, slots=True)
class Retention:
    """How long the store keeps what (seconds): raw readings, and their 1-minute rollups,
    which are kept longer. None: for ever."""

    raw_s: float | None = 30 * 86_400
    rollups_s: float | None = 400 * 86_400


@dataclass(frozen=True, slots=True)
class Maintenance:
    """What one ``maintain()`` did."""

    partitions_created: int = 0
    partitions_dropped: int = 0
    readings_deleted: int = 0
    rollups_deleted: int = 0


@dataclass(slots=True)
class RoundCounts:
    """What a round stored; complete once the round has committed."""

    readings_stored: int = 0
    duplicates: int = 0
    """Seqs resent with the content stored (the lost-ack case): not stored again."""
    alarms_stored: int = 0
    conflicts: int = 0
    """Seqs resent with content other than the stored (``central.store.conflicts``)."""


class Round(Protocol):
    """One ingest round's unit of work (see the module's docstring)."""

    counts: RoundCounts
    conflicts: list[Conflict]
    """Seqs resent with other content than stored (complete once the round committed; a
    message undone takes its own out)."""

    def message(self) -> AbstractContextManager[None]:
        """One message's writes: if anything in it fails because of the message, its writes
        alone are undone and ``MessageRejected`` comes out; a fault of the store comes out
        as ``StoreUnavailable`` (and the round must be abandoned)."""
        ...

    def insert_telemetry(self, batch: TelemetryBatch) -> None:
        """Store a batch's readings once each (and their 1-minute rollups); a seq stored
        already is a duplicate, or a conflict if its content differs."""
        ...

    def insert_alarm(self, message: AlarmMessage) -> None:
        """Store an alarm event once, and the alarm's current state it implies (and a loss
        an ``outbox.dropped`` event reports); one whose seq is stored with other fields is
        a conflict, and changes nothing."""
        ...

    def insert_rejected(
        self,
        gateway: str,
        topic: str,
        payload: bytes,
        error: str,
        rows: NamedRows | None,
        whole: bool = False,
    ) -> int:
        """Keep a dead letter (its head, size, digest; the same message again counts
        ``times``); ``whole``: all of its payload, not only its head (a conflict's: what
        it holds may be the real readings), while the gateway's dead letters hold less than
        ``REJECTED_WHOLE_BYTES``. Return how many older dead letters made room (caps per
        gateway and in all)."""
        ...

    def seen(self, gateways: Iterable[str], now: float | None = None) -> None:
        """These gateways sent something now: the registry's ``last_seen``."""
        ...

    def update_state(self, gateway: str, state: dict[str, Any], now: float | None = None) -> None:
        """A gateway's retained state (or its Last Will): online, site, tags, version…;
        ``online_since`` changes when ``online`` does."""
        ...

    def update_health(self, gateway: str, health: dict[str, Any], now: float | None = None) -> None:
        """A gateway's health report: backlog, drops, and each device's link."""
        ...


class Store(Protocol):
    backend: ClassVar[Backend]
    label: str
    """Where it is, for messages (a path, or a URL without its password)."""

    def round(self) -> AbstractContextManager[Round]: ...

    def maintain(self, retention: Retention, now: float | None = None) -> Maintenance:
        """Housekeeping the service runs now and then: partitions made ahead (PostgreSQL),
        raw readings and rollups past their retention removed."""
        ...

    # --- the registry ------------------------------------------------------------------

    def gateways(
        self,
        where: GatewayFilter = ALL_GATEWAYS,
        after: str | None = None,
        limit: int | None = None,
    ) -> Iterator[GatewayRow]:
        """Gateways by id, from the first id greater than ``after``, at most ``limit``."""
        ...

    def gateway(self, gateway: str) -> GatewayRow | None: ...

    def devices(
        self, gateway: str | None = None, where: GatewayFilter = ALL_GATEWAYS
    ) -> Iterator[DeviceRow]: ...

    def status(self, now: float | None = None) -> FleetStatus: ...

    # --- data --------------------------------------------------------------------------

    def readings(self, query: ReadingQuery) -> Iterator[StoredReading]: ...

    def buckets(self, query: ReadingQuery, bucket_s: int) -> Iterator[ReadingBucket]:
        """Aggregates per point per bucket (a multiple of 60 s) from the rollups, oldest
        first, ``query.limit`` ignored."""
        ...

    def alarms(self, query: AlarmQuery = ALL_ALARMS) -> list[AlarmRow]:
        """Current alarms, newest transition first."""
        ...

    def alarm(self, gateway: str, alarm_id: str) -> AlarmRow | None: ...

    def alarm_history(self, gateway: str, alarm_id: str) -> list[dict[str, Any]]:
        """Every event of one alarm (the wire's JSON), in the gateway's order."""
        ...

    def losses(self, gateway: str | None = None) -> list[LossRow]: ...

    def rejected(self, gateway: str | None = None, limit: int = 100) -> list[DeadLetter]: ...

    def sequence_keys(self, gateway: str) -> set[tuple[str, int]]:
        """Every ``(stream, seq)`` of a gateway's stored readings (delivery tests)."""
        ...

    def count_readings(self) -> int: ...

    # --- the command ledger ------------------------------------------------------------

    def record_command(self, record: CommandRecord) -> None:
        """A command about to be sent (``result`` None)."""
        ...

    def command_result(
        self, command_id: str, result: str, detail: Any, replied: float | None = None
    ) -> None: ...

    def commands(self, gateway: str | None = None, limit: int = 100) -> list[CommandRecord]:
        """The ledger, newest first."""
        ...

    # --- identities --------------------------------------------------------------------

    def add_identity(
        self, identity: Identity, site: str | None = None, tags: dict[str, str] | None = None
    ) -> None:
        """Register a gateway's new identity (``fleet provision``); a gateway the registry
        does not know yet is added, offline, with ``site`` and ``tags`` (given ones replace
        what it had; its own online state replaces them again)."""
        ...

    def identities(self, gateway: str | None = None) -> list[Identity]:
        """The identities issued (of one gateway), oldest first."""
        ...

    def revoke_identities(self, gateway: str, when: float) -> int:
        """Mark every identity of ``gateway`` not revoked yet revoked at ``when`` (``fleet
        revoke``); how many were."""
        ...

    def revoked_gateways(self) -> frozenset[str]:
        """The gateways whose every identity is revoked: ingest refuses what they send."""
        ...

    def expiring(self, before: float) -> list[Identity]:
        """Per gateway not revoked, its newest live identity if it expires before
        ``before``, soonest first: the certificates to renew (``fleet status``)."""
        ...

    def close(self) -> None: ...
