"""Typed rows the store gives back: what the CLI, the wall and the benches read. Every
backend returns these, never its driver's rows, so that a caller indexes fields, not
column names, and the two backends cannot drift apart unnoticed (mypy sees it).

``to_json()`` is each row as ``--json`` prints it: field names are part of the CLI's
contract (scripts read them), so they change only with a note in the README.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from central.store.conflicts import CONFLICT_PREFIX


def _json(row: Any) -> dict[str, Any]:
    return asdict(row)


@dataclass(frozen=True, slots=True)
class StoredReading:
    gateway: str
    device: str
    point: str
    value: Any
    unit: str | None
    quality: str
    reason: str | None
    ts: float
    stream: str
    seq: int

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, slots=True)
class ReadingBucket:
    """One point's readings in one time bucket (``start`` ≤ ts < ``start`` + bucket): from
    the 1-minute rollups, so also for times whose raw readings retention removed. Only
    numbers and booleans (as 0/1) are aggregated; ``count`` counts those."""

    gateway: str
    device: str
    point: str
    start: float
    count: int
    avg: float | None
    min: float | None
    max: float | None

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, slots=True)
class GatewayRow:
    """A gateway as the registry knows it: from its retained state (site, tags, version,
    online and since when), its health (backlog, drops) and ingest (last seen)."""

    id: str
    site: str | None
    tags: Any
    """As its last online state sent them: normally a mapping of text to text."""
    online: bool
    online_since: float | None
    """When it last went online or offline (the center's clock)."""
    agent_version: str | None
    config_rev: str | None
    desired_rev: str | None
    started: float | None
    stream: str | None
    last_seen: float | None
    outbox_depth: int | None
    outbox_oldest_age_s: float | None
    dropped_telemetry: int | None
    alarms_active: int = 0
    """Alarms on it in state active or acknowledged (the condition still there)."""

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A device of a gateway, from its health reports."""

    gateway: str
    device: str
    link: str | None
    """``up``, ``down``, … as the agent's health says; None if it never said."""
    last_good: float | None
    """The edge's time of its last good reading."""
    error: str | None
    updated: float
    """When the center last heard of it (its clock)."""

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, slots=True)
class AlarmRow:
    """An alarm's current state, as its latest transition left it."""

    gateway: str
    alarm_id: str
    rule: str
    device: str
    severity: str
    state: str
    value: Any
    since: float | None
    ts: float
    msg: str
    occurrence: Any
    acked_by: str | None
    shelved_until: float | None
    events: int

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, slots=True)
class LossRow:
    gateway: str
    stream: str
    first_seq: int
    last_seq: int
    count: int
    ts_first: float | None
    ts_last: float | None
    cause: str
    reported: float

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the center could not store: its head, size and digest."""

    gateway: str
    digest: str
    topic: str
    error: str
    payload: bytes
    size: int | None
    stream: str | None
    seq_first: int | None
    seq_last: int | None
    first_seen: float
    last_seen: float
    times: int

    @property
    def conflict(self) -> bool:
        """Kept because it resent seqs the store holds with other content
        (``central.store.conflicts``): kept whole, its rows acked; an operator should look."""
        return self.error.startswith(CONFLICT_PREFIX)

    def to_json(self) -> dict[str, Any]:
        """JSON has no bytes: the payload as text, undecodable bytes escaped."""
        out = _json(self)
        out["payload"] = self.payload.decode("utf-8", "backslashreplace")
        out["conflict"] = self.conflict
        del out["digest"]
        return out


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One command in the ledger: what was sent to whom, when, by whom, with what result."""

    id: str
    gateway: str
    cmd: str
    args: dict[str, Any]
    by: str | None
    sent: float
    result: str | None = None
    """None while no answer came; then ``ok``, ``refused``, ``timeout`` or ``failed``."""
    detail: Any = None
    """The reply's result or error, or why it failed."""
    replied: float | None = None

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, slots=True)
class Identity:
    """What a gateway proves itself with: a certificate the fleet's CA issued (``kind``
    ``certificate``, ``fingerprint`` the SHA-256 of its DER, hex) or a password. Never
    the secret itself."""

    gateway: str
    kind: str
    fingerprint: str
    issued: float
    expires: float | None = None
    revoked: float | None = None

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """``fleet status``'s one screen, counted in the store (never by listing gateways)."""

    gateways: int
    online: int
    offline: int
    alarms_by_severity: dict[str, int] = field(default_factory=dict)
    """Active alarms (active or acknowledged) per severity."""
    unacked: int = 0
    """Alarms not yet acknowledged (active or cleared_unacked)."""
    with_backlog: int = 0
    """Gateways whose outbox holds more than the backlog threshold."""
    with_losses: int = 0
    """Gateways that reported dropped readings."""
    versions: dict[str, int] = field(default_factory=dict)
    """Agent versions in the field, and how many gateways run each."""
    readings_last_minute: int = 0
    """Readings stored whose edge time is in the last minute: the ingest rate."""

    def to_json(self) -> dict[str, Any]:
        return _json(self)
