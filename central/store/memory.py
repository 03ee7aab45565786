"""A store held in memory, beside the real backends: the round's unit of work (``round()``,
``Round``) and the delivery questions (``sequence_keys``, ``count_readings``), with
the same guarantees (exactly-once by ``(gateway, stream, seq)``, a round committed whole
or not at all, a message's writes undone alone), and faults to order: ``inject`` makes a
chosen write fail with ``StoreUnavailable`` or ``MessageRejected``, as an engine would.

It is what the round logic (``central.rounds``) is tested against. Each unit of work works
on a copy of what is stored (a round on a copy of the store, a message on a copy of the
round's), which keeps it obviously right and makes it fit for tests, not for load.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from central.store.api import RoundCounts
from central.store.conflicts import Conflict, conflict, reading_key, same_event
from central.store.errors import StoreError, StoreUnavailable
from central.store.limits import (
    REJECTED_ERROR_MAX,
    REJECTED_HEAD_BYTES,
    REJECTED_KEEP,
    REJECTED_WHOLE_BYTES,
)
from edge_agent.contract import AlarmMessage, NamedRows, TelemetryBatch


@dataclass
class DeadLetter:
    gateway: str
    topic: str
    error: str
    head: bytes
    size: int
    rows: NamedRows | None
    times: int = 1


@dataclass
class Contents:
    """Everything the store holds."""

    readings: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict)
    alarm_events: dict[tuple[str, str, int], AlarmMessage] = field(default_factory=dict)
    alarms: dict[tuple[str, str], AlarmMessage] = field(default_factory=dict)
    """Each alarm's latest event, by (gateway, alarm id)."""
    dead_letters: dict[tuple[str, str], DeadLetter] = field(default_factory=dict)
    """By (gateway, digest), oldest first."""
    last_seen: dict[str, float] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    health: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Fault:
    """Make the matching write fail: every given field must match."""

    error: StoreError
    write: str | None = None
    """``insert_telemetry``, ``insert_alarm``, ``insert_rejected``, ``seen``,
    ``update_state``, ``update_health`` or ``commit``; None: any."""
    gateway: str | None = None
    seq: int | None = None
    """A seq the batch or alarm event holds."""
    times: int = 1
    """How many times it fires (then it is spent)."""

    def matches(self, write: str, gateway: str | None, seqs: range | None) -> bool:
        return (
            self.times > 0
            and self.write in (None, write)
            and self.gateway in (None, gateway)
            and (self.seq is None or (seqs is not None and self.seq in seqs))
        )


class MemoryStore:
    label = "memory"

    def __init__(self) -> None:
        self.contents = Contents()
        self.commits = 0
        self.faults: list[Fault] = []

    def inject(
        self,
        error: StoreError,
        *,
        write: str | None = None,
        gateway: str | None = None,
        seq: int | None = None,
        times: int = 1,
    ) -> Fault:
        fault = Fault(error, write, gateway, seq, times)
        self.faults.append(fault)
        return fault

    def fault(self, write: str, gateway: str | None = None, seqs: range | None = None) -> None:
        for f in self.faults:
            if f.matches(write, gateway, seqs):
                f.times -= 1
                raise f.error

    @contextmanager
    def round(self) -> Iterator[MemoryRound]:
        rnd = MemoryRound(self, copy.deepcopy(self.contents))
        yield rnd  # an exception out of the round leaves self.contents as it was
        if rnd.broken is not None:
            raise StoreUnavailable(f"the round was abandoned: {rnd.broken}")
        self.fault("commit")
        self.contents = rnd.contents
        self.commits += 1

    def sequence_keys(self, gateway: str) -> set[tuple[str, int]]:
        return {(stream, seq) for gw, stream, seq in self.contents.readings if gw == gateway}

    def count_readings(self) -> int:
        return len(self.contents.readings)

    def close(self) -> None:
        pass


class MemoryRound:
    def __init__(self, store: MemoryStore, contents: Contents) -> None:
        self._store = store
        self.contents = contents
        self.counts = RoundCounts()
        self.conflicts: list[Conflict] = []
        self.broken: StoreUnavailable | None = None

    @contextmanager
    def message(self) -> Iterator[None]:
        saved = copy.deepcopy(self.contents), copy.copy(self.counts), len(self.conflicts)
        try:
            yield
        except BaseException:
            self.contents, self.counts, n = saved
            del self.conflicts[n:]
            raise

    def _write(self, write: str, gateway: str | None, seqs: range | None = None) -> None:
        if self.broken is not None:
            raise self.broken
        try:
            self._store.fault(write, gateway, seqs)
        except StoreUnavailable as exc:
            self.broken = exc  # as an engine's: the transaction is gone
            raise

    def insert_telemetry(self, batch: TelemetryBatch) -> None:
        first = batch.seq_first
        self._write("insert_telemetry", batch.gw, range(first, batch.seq_last + 1))
        readings = self.contents.readings
        differ = []
        for i, reading in enumerate(batch.readings):
            key = (batch.gw, batch.stream, first + i)
            stored = readings.get(key)
            if stored is None:
                readings[key] = dict(reading)
                self.counts.readings_stored += 1
            elif reading_key(stored) == reading_key(reading):
                self.counts.duplicates += 1
            else:
                differ.append(first + i)
        found = conflict(batch.gw, batch.stream, False, differ, batch)
        if found is not None:
            self.conflicts.append(found)
            self.counts.conflicts += found.count

    def insert_alarm(self, message: AlarmMessage) -> None:
        self._write("insert_alarm", message.gw, range(message.seq, message.seq + 1))
        key = (message.gw, message.stream, message.seq)
        stored = self.contents.alarm_events.get(key)
        if stored is not None:
            if not same_event(stored.to_json(), message.to_json()):
                self.conflicts.append(
                    Conflict(message.gw, message.stream, True, ((message.seq,) * 2,), message)
                )
                self.counts.conflicts += 1
            return
        self.contents.alarm_events[key] = message
        self.contents.alarms[(message.gw, message.event.id)] = message
        self.counts.alarms_stored += 1

    def insert_rejected(
        self,
        gateway: str,
        topic: str,
        payload: bytes,
        error: str,
        rows: NamedRows | None,
        whole: bool = False,
    ) -> int:
        self._write("insert_rejected", gateway)
        letters = self.contents.dead_letters
        digest = hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()
        if whole:
            held = sum(len(d.head) for (gw, _), d in letters.items() if gw == gateway)
            whole = held + len(payload) <= REJECTED_WHOLE_BYTES
        old = letters.pop((gateway, digest), None)
        letter = DeadLetter(
            gateway,
            topic,
            error[:REJECTED_ERROR_MAX],
            payload if whole else payload[:REJECTED_HEAD_BYTES],
            len(payload),
            rows,
            1 if old is None else old.times + 1,
        )
        letters[(gateway, digest)] = letter  # the newest last
        own = [key for key in letters if key[0] == gateway]
        for key in own[: max(0, len(own) - REJECTED_KEEP)]:
            del letters[key]
        return max(0, len(own) - REJECTED_KEEP)

    def seen(self, gateways: Iterable[str], now: float | None = None) -> None:
        self._write("seen", None)
        now = time.time() if now is None else now
        for gw in gateways:
            self.contents.last_seen[gw] = now

    def update_state(self, gateway: str, state: dict[str, Any], now: float | None = None) -> None:
        self._write("update_state", gateway)
        self.contents.states[gateway] = dict(state)

    def update_health(self, gateway: str, health: dict[str, Any], now: float | None = None) -> None:
        self._write("update_health", gateway)
        self.contents.health[gateway] = dict(health)
