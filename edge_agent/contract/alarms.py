"""The alarm event: one type from the gateway's rule engine to the center's store.

The engine creates an ``AlarmEvent`` for each transition, the outbox keeps it (its
``body``, without the place in the lane), the sender publishes it as an ``AlarmMessage``
(the event and its ``gw``, ``stream``, ``seq``), and the center decodes that message
back into the same types. ``schemas/alarm.json`` describes the JSON for consumers
written by others.

The JSON is flat: every field of the event is a key of one object, and a field that is
``None`` is left out, except ``since``, which a rule's alarm event (one with an
``occurrence``) always carries, null before the alarm was ever raised. The gateway's own
events (``outbox.dropped``, ``outbox.corrupt``, ``alarm.flood``, a ``.chattering``
diagnostic) carry no occurrence.

Decoding is strict about the fields the contract requires (``decode_alarm`` refuses a
message without them) and tolerant about the others: a known optional field whose JSON
does not have the expected shape is kept, as it came, in ``extra`` with the fields this
version does not know, so that the center stores whatever a gateway sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeVar

from drivers.base import Value
from edge_agent.contract.limits import (
    MESSAGE_MAX_BYTES,
    REASON_MAX,
    VALUE_TEXT_MAX,
    latest_time,
    plausible_time,
)
from edge_agent.contract.payloads import (
    _SCALARS,
    JSON,
    SEQ_MAX,
    PayloadError,
    Raw,
    _field,
    _finite,
    _is_time,
    _stream_field,
    _time_field,
    dumps,
    loads,
    wire_value,
)

T = TypeVar("T")


class AlarmState(StrEnum):
    """The state an alarm enters with an event.

    An alarm instance is always in one of the first four: ``cleared`` is also the state
    of an alarm never raised (its rest state). ``shelved`` and ``unshelved`` are events
    about annunciation only; the alarm keeps its lifecycle state meanwhile (the
    ``current`` of an ``unshelved`` event)."""

    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"
    CLEARED_UNACKED = "cleared_unacked"
    SHELVED = "shelved"
    UNSHELVED = "unshelved"

    @classmethod
    def restored(cls, saved: object) -> AlarmState:
        """A lifecycle state read back from a gateway's outbox. Earlier agents wrote the
        rest state as ``normal``: read as ``cleared``, so a gateway upgraded in place
        keeps its alarms. Anything else that is not a lifecycle state (a damaged row)
        is read as ``cleared`` too: the alarm is raised again if its condition holds,
        rather than the gateway refusing to start."""
        if saved in _LIFECYCLE:
            return cls(str(saved))
        return cls.CLEARED


_LIFECYCLE = frozenset({"active", "acknowledged", "cleared", "cleared_unacked"})


class Severity(StrEnum):
    """From most to least severe (ThingsBoard-compatible names)."""

    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"


SEVERITIES = tuple(s.value for s in Severity)
ALARM_STATES = tuple(s.value for s in AlarmState)


# --- what some events carry -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActionWrite:
    """The write a local action makes: ``value`` to ``device``'s ``point``."""

    device: str
    point: str
    value: Value


@dataclass(frozen=True, slots=True)
class ActionResult:
    write: ActionWrite
    ok: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ActionReport:
    """The results of an alarm's local actions: recorded in its history as an event."""

    phase: str  # on_active | on_cleared
    results: tuple[ActionResult, ...]

    def to_json(self) -> JSON:
        return {
            "phase": self.phase,
            "results": [
                {
                    "write": {
                        "device": r.write.device,
                        "point": r.write.point,
                        "value": wire_value(r.write.value),
                    },
                    "ok": r.ok,
                    "error": r.error,
                }
                for r in self.results
            ],
        }

    @classmethod
    def from_json(cls, obj: object) -> ActionReport | None:
        if not isinstance(obj, dict) or set(obj) != {"phase", "results"}:
            return None
        phase, results = obj["phase"], obj["results"]
        if not isinstance(phase, str) or not isinstance(results, list):
            return None
        out: list[ActionResult] = []
        for r in results:
            if not isinstance(r, dict) or set(r) != {"write", "ok", "error"}:
                return None
            w = r["write"]
            if (
                not isinstance(w, dict)
                or set(w) != {"device", "point", "value"}
                or not isinstance(w["device"], str)
                or not isinstance(w["point"], str)
                or type(w["value"]) not in _SCALARS
                or type(r["ok"]) is not bool
                or not (r["error"] is None or isinstance(r["error"], str))
            ):
                return None
            write = ActionWrite(w["device"], w["point"], w["value"])
            out.append(ActionResult(write, r["ok"], r["error"]))
        return cls(phase, tuple(out))


@dataclass(frozen=True, slots=True)
class DroppedRows:
    """Telemetry the outbox had to give up (cap, age, disk full): seq ``first..last``,
    ``count`` readings taken from ``ts_first`` to ``ts_last``."""

    first: int
    last: int
    count: int
    ts_first: float | None = None
    ts_last: float | None = None
    cause: str | None = None  # cap | age | disk full
    lane: str = "telemetry"

    def to_json(self) -> JSON:
        out: JSON = {"lane": self.lane, "first": self.first, "last": self.last}
        out["count"] = self.count
        for name in ("ts_first", "ts_last", "cause"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, obj: object) -> DroppedRows | None:
        if not isinstance(obj, dict) or not set(obj) <= {
            "lane",
            "first",
            "last",
            "count",
            "ts_first",
            "ts_last",
            "cause",
        }:
            return None
        if not all(type(obj.get(k)) is int for k in ("first", "last", "count")):
            return None
        ts_first, ts_last, cause = obj.get("ts_first"), obj.get("ts_last"), obj.get("cause")
        lane = obj.get("lane", "telemetry")
        if not (
            _number_or_none(ts_first)
            and _number_or_none(ts_last)
            and (cause is None or isinstance(cause, str))
            and isinstance(lane, str)
        ):
            return None
        return cls(obj["first"], obj["last"], obj["count"], ts_first, ts_last, cause, lane)


@dataclass(frozen=True, slots=True)
class CorruptOutbox:
    """The gateway's outbox file was corrupt and set aside: what it held is lost."""

    old_stream: str | None
    kept_as: str
    problem: str

    def to_json(self) -> JSON:
        return {"old_stream": self.old_stream, "kept_as": self.kept_as, "problem": self.problem}

    @classmethod
    def from_json(cls, obj: object) -> CorruptOutbox | None:
        if (
            isinstance(obj, dict)
            and set(obj) == {"old_stream", "kept_as", "problem"}
            and (obj["old_stream"] is None or isinstance(obj["old_stream"], str))
            and isinstance(obj["kept_as"], str)
            and isinstance(obj["problem"], str)
        ):
            return cls(obj["old_stream"], obj["kept_as"], obj["problem"])
        return None


def _number_or_none(x: object) -> bool:
    return x is None or (type(x) in (int, float))


# --- the event ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmEvent:
    """One transition of one alarm instance (or one of the gateway's own events)."""

    id: str
    rule: str
    dev: str
    severity: Severity
    state: AlarmState
    value: Value
    ts: float
    msg: str
    # a rule's alarm: its occurrence, and what the rule read
    occurrence: int | None = None
    since: float | None = None
    values: Mapping[str, Value] | None = None
    latched: bool | None = None
    retriggers: int | None = None
    # what kind of transition it was
    retrigger: bool | None = None  # the condition came back while cleared_unacked
    reannounced: int | None = None  # the n-th reminder of an unacknowledged critical alarm
    acknowledged: bool | None = None  # cleared by an ack of a cleared_unacked alarm
    shelved_until: float | None = None
    reason: str | None = None  # of a shelving, or why it ended
    shelved_by: str | None = None
    current: AlarmState | None = None  # with unshelved: the alarm's lifecycle state
    acked_by: str | None = None
    # the gateway's own events
    diagnostic: str | None = None  # "chattering"
    of: str | None = None  # with diagnostic: the alarm it is about
    suppressed: Mapping[str, int] | None = None  # alarm.flood: rule -> alarms summarised
    action: ActionReport | None = None
    dropped: DroppedRows | None = None
    corrupt: CorruptOutbox | None = None
    extra: JSON = field(default_factory=dict)
    """Fields this version does not know (or known ones in a shape it does not know)."""

    def to_json(self) -> JSON:
        out: JSON = {
            "id": self.id,
            "rule": self.rule,
            "dev": self.dev,
            "severity": self.severity.value,
            "state": self.state.value,
            "value": wire_value(self.value),
            "ts": self.ts,
            "msg": self.msg,
        }
        if self.occurrence is not None:
            out["occurrence"] = self.occurrence
            out["since"] = wire_value(self.since)
        elif self.since is not None:
            out["since"] = wire_value(self.since)
        if self.values is not None:
            out["values"] = {k: wire_value(v) for k, v in self.values.items()}
        for name in _PLAIN:
            value = getattr(self, name)
            if value is not None:
                out[name] = value.value if isinstance(value, StrEnum) else wire_value(value)
        if self.suppressed is not None:
            out["suppressed"] = dict(self.suppressed)
        for name in ("action", "dropped", "corrupt"):
            part = getattr(self, name)
            if part is not None:
                out[name] = part.to_json()
        for key, value in self.extra.items():
            out.setdefault(key, value)  # a known field is never overridden
        return out

    @classmethod
    def from_json(cls, obj: JSON) -> AlarmEvent:
        """Raises ``PayloadError`` naming the first required field that is missing or wrong."""
        severity = _field(obj, "severity", str)
        state = _field(obj, "state", str)
        if severity not in SEVERITIES:
            raise PayloadError(f"severity must be one of {', '.join(SEVERITIES)}")
        if state not in ALARM_STATES:
            raise PayloadError(f"state must be one of {', '.join(ALARM_STATES)}")
        value = obj.get("value")
        if type(value) not in _SCALARS:
            raise PayloadError("field 'value' must be a number, boolean, string or null")
        ts = _field(obj, "ts", (int, float))
        if not _is_time(ts):
            raise PayloadError("field 'ts' must be a finite number")
        rest = {k: v for k, v in obj.items() if k not in _ENVELOPE}
        typed: dict[str, Any] = {}
        for name, parse in _OPTIONAL.items():
            if name in rest:
                parsed = parse(rest[name])
                if parsed is not None:
                    typed[name] = parsed
                    del rest[name]
        if "since" in rest and rest["since"] is None:
            del rest["since"]  # the null ``since`` of an alarm never raised
        return cls(
            id=_field(obj, "id", str),
            rule=_field(obj, "rule", str),
            dev=_field(obj, "dev", str),
            severity=Severity(severity),
            state=AlarmState(state),
            value=value,
            ts=float(ts),
            msg=_field(obj, "msg", str),
            extra=rest,
            **typed,
        )


_PLAIN = (
    "latched",
    "retriggers",
    "retrigger",
    "reannounced",
    "acknowledged",
    "shelved_until",
    "reason",
    "shelved_by",
    "current",
    "acked_by",
    "diagnostic",
    "of",
)
_REQUIRED = ("id", "rule", "dev", "severity", "state", "value", "ts", "msg")
_ENVELOPE = frozenset({"gw", "stream", "seq", *_REQUIRED})


def _exact(kind: type[T]) -> Callable[[object], T | None]:
    return lambda x: x if type(x) is kind else None


def _number(x: object) -> float | None:
    return x if type(x) in (int, float) else None  # type: ignore[return-value]


def _state(x: object) -> AlarmState | None:
    return AlarmState(x) if isinstance(x, str) and x in ALARM_STATES else None


def _values(x: object) -> Mapping[str, Value] | None:
    if isinstance(x, dict) and all(type(v) in _SCALARS for v in x.values()):
        return x
    return None


def _counts(x: object) -> Mapping[str, int] | None:
    if isinstance(x, dict) and all(type(v) is int for v in x.values()):
        return x
    return None


_OPTIONAL: dict[str, Callable[[object], Any]] = {
    "occurrence": _exact(int),
    "since": _number,
    "values": _values,
    "latched": _exact(bool),
    "retriggers": _exact(int),
    "retrigger": _exact(bool),
    "reannounced": _exact(int),
    "acknowledged": _exact(bool),
    "shelved_until": _number,
    "reason": _exact(str),
    "shelved_by": _exact(str),
    "current": _state,
    "acked_by": _exact(str),
    "diagnostic": _exact(str),
    "of": _exact(str),
    "suppressed": _counts,
    "action": ActionReport.from_json,
    "dropped": DroppedRows.from_json,
    "corrupt": CorruptOutbox.from_json,
}


# --- the message: the event and its place in the gateway's alarm lane -----------------


@dataclass(frozen=True, slots=True)
class AlarmMessage:
    """What travels on ``…/gw/{gw}/alarms``: ``(gw, stream, seq)`` is its idempotency key."""

    gw: str
    stream: str
    seq: int
    event: AlarmEvent

    def to_json(self) -> JSON:
        out = self.event.to_json()
        out.update(gw=self.gw, stream=self.stream, seq=self.seq)
        return out


def encode_alarm_body(event: AlarmEvent) -> str:
    """The event as the outbox keeps it (no place in the lane yet)."""
    return dumps(event.to_json()).decode()


def decode_alarm_body(body: str | Raw) -> AlarmEvent:
    """An event as the outbox keeps it: of any size (``encode_alarm_within`` cuts it to
    fit a message when it is sent)."""
    return AlarmEvent.from_json(loads(body, max_bytes=None))


def encode_alarm(message: AlarmMessage) -> bytes:
    return dumps(message.to_json())


def encode_alarm_within(message: AlarmMessage, max_bytes: int = MESSAGE_MAX_BYTES) -> bytes:
    """``encode_alarm``, or, when that would outgrow a message (a rule over many points of
    long texts, a shelving reason pasted whole), the event without what makes it big: no
    ``values``, texts cut to ``REASON_MAX``, a long text ``value`` as null; its ``msg`` says
    so. The broker drops a bigger message and disconnects the gateway (Mosquitto 2.0),
    which would send it again at once: the alarm lane, and the uplink with it, would stop."""
    payload = encode_alarm(message)
    if len(payload) <= max_bytes:
        return payload
    e = message.event
    long_text = isinstance(e.value, str) and len(e.value) > VALUE_TEXT_MAX
    slim = replace(
        e,
        value=None if long_text else e.value,
        values=None,
        extra={},
        msg=_cut(e.msg) + f" [cut to fit a message: the event was {len(payload)} bytes]",
        reason=None if e.reason is None else _cut(e.reason),
        shelved_by=None if e.shelved_by is None else _cut(e.shelved_by),
        acked_by=None if e.acked_by is None else _cut(e.acked_by),
    )
    return encode_alarm(AlarmMessage(message.gw, message.stream, message.seq, slim))


def _cut(text: str) -> str:
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 1] + "…"


def decode_alarm(payload: Raw, now: float | None = None) -> AlarmMessage:
    """An alarm message as the center takes it: what ``AlarmEvent.from_json`` requires, no
    NaN or infinity anywhere, and plausible times (``limits``): ``ts``, ``since``, and the
    ``ts_first``/``ts_last`` of the readings an ``outbox.dropped`` event reports.

    The times are checked here, not in ``from_json``: the agent reads its own outbox with
    that, and an event its clock stamped badly must still be sent (and refused, visibly)."""
    obj = _finite(loads(payload))
    event = AlarmEvent.from_json(obj)
    latest = latest_time(time.time() if now is None else now)
    _time_field(obj, "ts", latest)
    _time_field(obj, "since", latest, optional=True)
    if event.dropped is not None:
        for name in ("ts_first", "ts_last"):
            value = getattr(event.dropped, name)
            if value is not None and not plausible_time(value, latest):
                raise PayloadError(f"field 'dropped.{name}' must be a time from 2000-01-01 on")
    seq = _field(obj, "seq", int)
    if not 1 <= seq <= SEQ_MAX:
        raise PayloadError(f"field 'seq' must be within 1..{SEQ_MAX}")
    return AlarmMessage(_field(obj, "gw", str), _stream_field(obj), seq, event)
