"""Payloads of the wire contract: encode on one side, decode (and validate) on the other.

Every payload is a UTF-8 JSON object; the JSON Schemas beside this module
(``schemas/*.json``) describe the same shapes for central systems written by others,
and the tests validate what travels against them, so the two cannot drift.

Telemetry readings in a batch are numbered implicitly: the i-th reading has
``seq_first + i``, so ``len(readings) == seq_last - seq_first + 1`` always holds.

What JSON cannot hold never travels and is never taken (``limits.py`` has the bounds):
a payload over ``MESSAGE_MAX_BYTES`` is refused before it is parsed; the literals ``NaN``,
``Infinity`` and ``-Infinity`` (which Python's ``json`` reads by default) are refused; a
non-finite value the agent reads from a device travels as null, its quality kept; and a
timestamp outside ``TS_MIN`` .. now + ``TS_AHEAD_S`` is refused wherever the contract
has one (readings, alarms, health, state).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from drivers.base import UNIT_MAX, Quality, Reading, Value
from edge_agent.contract.limits import (
    ID_MAX,
    MESSAGE_MAX_BYTES,
    REASON_MAX,
    VALUE_TEXT_MAX,
    latest_time,
    non_finite_at,
    plausible_time,
)

JSON = dict[str, Any]
SeqRange = tuple[int, int]
Raw = bytes | bytearray

_QUALITIES = frozenset(q.value for q in Quality)
# What JSON decodes a scalar ``v`` (or an alarm's ``value``) to; exact types, for speed.
_SCALARS = frozenset({type(None), bool, int, float, str})
# Sequence numbers are SQLite INTEGERs at both ends: signed 64 bits, and at least 1.
SEQ_MAX = 2**63 - 1
# An outbox names its stream with 16 hex digits; the contract allows any id of up to 128
# of these characters, so that a stream id is always safe to log, store and compare.
STREAM_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Ranges per lane in one ack. The center acks what it committed in one round, at most
# every batch in flight (``outbox.window`` <= 10 000, plus the backlog's quarter), so an
# ack with more is not one the center sent; the bound keeps one message from holding the
# outbox thread for long.
ACK_RANGES_MAX = 16_384
# The longest ack the center can send: both lanes full of the longest ranges, a stream id
# of 128 characters. Commands are far shorter (``commands.py``), so this bounds what a
# gateway receives at all.
ACK_BYTES_MAX = 2 * ACK_RANGES_MAX * len(f"[{SEQ_MAX},{SEQ_MAX}],") + 256


class PayloadError(ValueError):
    """A payload that does not follow the contract; the message says which field."""


def dumps(obj: JSON) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _no_constant(literal: str) -> Any:
    raise PayloadError(f"not JSON: {literal} is not a JSON number")


def loads(
    payload: Raw | str, *, constants: bool = False, max_bytes: int | None = MESSAGE_MAX_BYTES
) -> JSON:
    """A JSON object from a payload of at most ``max_bytes``, checked before it is parsed,
    so that a huge message costs neither time nor memory (None: the agent's own outbox
    row, which may be bigger until it is sent). ``NaN``, ``Infinity`` and ``-Infinity``
    are refused unless ``constants`` (to read what a refused message names, never to take
    its values)."""
    if max_bytes is not None:
        size = len(payload.encode() if isinstance(payload, str) else payload)
        if size > max_bytes:
            raise PayloadError(f"message of {size} bytes, more than the {max_bytes} allowed")
    try:
        obj = json.loads(payload, parse_constant=None if constants else _no_constant)
    except PayloadError:
        raise
    except (ValueError, RecursionError) as exc:
        # ValueError: not UTF-8, not JSON, or an integer past Python's digit limit
        raise PayloadError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PayloadError("payload must be a JSON object")
    return obj


def _stream_field(obj: JSON) -> str:
    """The ``stream`` of a batch, an alarm event or an ack: an id of the contract's form
    (one the center could not ack back, or could not safely log, is refused)."""
    stream: str = _field(obj, "stream", str)
    if not STREAM_ID.fullmatch(stream):
        raise PayloadError("field 'stream' must be 1 to 128 of A-Z a-z 0-9 . _ -")
    return stream


def _field(obj: JSON, name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(name)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise PayloadError(f"field {name!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


def wire_value(value: Value) -> Value:
    """JSON has no NaN or infinity: such floats travel as null (the quality stays)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_INT_BOUND = 2**64  # a reading's integer: 64 bits, signed or not (what devices have)


def bounded(r: Reading) -> Reading:
    """``r`` within the contract's bounds, so that no reading outgrows a message: a text
    value past ``VALUE_TEXT_MAX`` characters (or an integer past 64 bits) becomes a ``bad``
    reading that says so, and a reason past ``REASON_MAX`` is cut, marked with ``…``."""
    v, reason = r.value, r.reason
    if type(v) is str and len(v) > VALUE_TEXT_MAX:
        why = f"text value of {len(v)} characters, more than {VALUE_TEXT_MAX}"
        return r._replace(value=None, quality=Quality.BAD, reason=why)
    if type(v) is int and not -_INT_BOUND < v < _INT_BOUND:
        return r._replace(value=None, quality=Quality.BAD, reason="integer beyond 64 bits")
    if reason is not None and len(reason) > REASON_MAX:
        return r._replace(reason=reason[: REASON_MAX - 1] + "…")
    return r


def _unbounded(r: Reading) -> bool:
    v, reason = r.value, r.reason
    kind = type(v)
    return (
        (kind is str and len(v) > VALUE_TEXT_MAX)  # type: ignore[arg-type]
        or (kind is int and not -_INT_BOUND < v < _INT_BOUND)  # type: ignore[operator]
        or (reason is not None and len(reason) > REASON_MAX)
    )


def reading_dict(r: Reading) -> JSON:
    r = bounded(r)
    d: JSON = {
        "dev": r.device,
        "pt": r.point,
        "v": wire_value(r.value),
        "u": r.unit,
        "q": r.quality.value,
        "ts": r.ts,
    }
    if r.reason is not None:
        d["r"] = r.reason
    return d


# --- telemetry ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TelemetryBatch:
    gw: str
    stream: str
    seq_first: int
    seq_last: int
    readings: list[JSON]


def encode_telemetry(gw: str, stream: str, seq_first: int, readings: Sequence[JSON]) -> bytes:
    if not readings:
        raise ValueError("a telemetry batch carries at least one reading")
    return dumps(
        {
            "gw": gw,
            "stream": stream,
            "seq_first": seq_first,
            "seq_last": seq_first + len(readings) - 1,
            "readings": list(readings),
        }
    )


def _is_time(ts: object) -> bool:
    """A finite number of seconds (an integer only as far as SQLite's 64 bits reach)."""
    if type(ts) is float:
        return math.isfinite(ts)
    return type(ts) is int and -SEQ_MAX <= ts <= SEQ_MAX


def _finite(obj: JSON) -> JSON:
    """``obj`` if it holds no NaN or infinity (``1e400`` decodes to one), else PayloadError."""
    try:
        where = non_finite_at(obj)
    except RecursionError:
        raise PayloadError("nested too deep") from None
    if where is not None:
        raise PayloadError(f"{where} is not a finite number")
    return obj


def _time_field(obj: JSON, name: str, latest: float, *, optional: bool = False) -> None:
    value = obj.get(name)
    if optional and value is None:
        return
    if not plausible_time(value, latest):
        raise PayloadError(f"field {name!r} must be a time from 2000-01-01 to a day from now")


def decode_telemetry(payload: Raw, now: float | None = None) -> TelemetryBatch:
    """Validate a batch down to every field the center stores, so that nothing in it can
    make the store fail or a query of it lie: ``v`` a finite scalar (any integer, also past
    64 bits: a uint64 point), ``u`` and ``r`` strings or null, ``ts`` a plausible time
    (``limits``: 2000-01-01 to a day past ``now``), seqs within 1..2**63-1."""
    obj = loads(payload)
    latest = latest_time(time.time() if now is None else now)
    gw = _field(obj, "gw", str)
    stream = _stream_field(obj)
    first = _field(obj, "seq_first", int)
    last = _field(obj, "seq_last", int)
    readings = _field(obj, "readings", list)
    if first < 1 or not readings or last - first + 1 != len(readings):
        raise PayloadError("seq_first..seq_last must number the readings exactly")
    if last > SEQ_MAX:
        raise PayloadError(f"seq_last must be at most {SEQ_MAX}")
    scalars, qualities = _SCALARS, _QUALITIES
    for i, r in enumerate(readings):
        if (
            type(r) is not dict
            or type(r.get("dev")) is not str
            or type(r.get("pt")) is not str
            or r.get("q") not in qualities
        ):
            raise PayloadError(f"readings[{i}] needs dev, pt (strings), q (good|bad|stale)")
        if not plausible_time(r.get("ts"), latest):
            raise PayloadError(f"readings[{i}].ts must be a time from 2000-01-01 to a day from now")
        v = r.get("v")
        if type(v) not in scalars or (type(v) is float and not math.isfinite(v)):
            raise PayloadError(f"readings[{i}].v must be a finite number, boolean, string or null")
        u, reason = r.get("u"), r.get("r")
        if (u is not None and type(u) is not str) or (
            reason is not None and type(reason) is not str
        ):
            raise PayloadError(f"readings[{i}]: u and r must be strings or null")
    return TelemetryBatch(gw, stream, first, last, readings)


# --- the rows a message names ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NamedRows:
    """The outbox rows a message was sent for: gateway, stream and seq range."""

    gw: str
    stream: str
    first: int
    last: int


def named_rows(payload: Raw, *, alarm: bool) -> NamedRows | None:
    """The outbox rows a telemetry batch (or, with ``alarm``, an alarm event) names, read
    from a payload that may break the contract elsewhere; None unless it names them beyond
    doubt: a JSON object with string ``gw`` and ``stream`` and, for a batch, seqs in range
    that number its ``readings`` list exactly (a garbled count acks nothing).

    The center keeps a message it cannot store as a dead letter and acks these rows, so
    that the gateway stops sending it (and everything behind it) again."""
    try:
        obj = loads(payload, constants=True)  # a NaN elsewhere does not blur the rows named
        gw, stream = _field(obj, "gw", str), _stream_field(obj)
        if alarm:
            first = last = _field(obj, "seq", int)
        else:
            first, last = _field(obj, "seq_first", int), _field(obj, "seq_last", int)
            if last - first + 1 != len(_field(obj, "readings", list)):
                return None
    except Exception:  # whatever it is, it names nothing beyond doubt
        return None
    if not (gw and stream and 1 <= first <= last <= SEQ_MAX):
        return None
    try:
        gw.encode(), stream.encode()  # a lone surrogate names nothing one could store
    except UnicodeEncodeError:
        return None
    return NamedRows(gw, stream, first, last)


# --- state (retained) and health ---------------------------------------------------------


def encode_state(gw: str, online: bool, **fields: Any) -> bytes:
    return dumps({"gw": gw, "online": online, **fields})


def decode_state(payload: Raw, now: float | None = None) -> JSON:
    """A retained state: ``online`` a boolean, ``started`` and ``stopped`` (when there)
    plausible times, and no NaN or infinity anywhere."""
    obj = _finite(loads(payload))
    _field(obj, "online", bool)
    latest = latest_time(time.time() if now is None else now)
    _time_field(obj, "started", latest, optional=True)
    _time_field(obj, "stopped", latest, optional=True)
    return obj


def encode_health(gw: str, ts: float, **fields: Any) -> bytes:
    return dumps({"gw": gw, "ts": ts, **fields})


def decode_health(payload: Raw, now: float | None = None) -> JSON:
    """A health report: ``ts`` a plausible time, and no NaN or infinity anywhere."""
    obj = _finite(loads(payload))
    _field(obj, "ts", (int, float))
    _time_field(obj, "ts", latest_time(time.time() if now is None else now))
    return obj


# --- ack (center -> gateway) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """Ranges of one stream the center has committed, per lane; inclusive on both ends."""

    stream: str
    telemetry: tuple[SeqRange, ...] = ()
    alarms: tuple[SeqRange, ...] = ()


def merge_ranges(seqs: Iterable[SeqRange]) -> tuple[SeqRange, ...]:
    merged: list[list[int]] = []
    for a, b in sorted(seqs):
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return tuple((a, b) for a, b in merged)


def encode_ack(ack: Ack) -> bytes:
    return dumps(
        {
            "stream": ack.stream,
            "telemetry": [list(r) for r in ack.telemetry],
            "alarms": [list(r) for r in ack.alarms],
        }
    )


def _ranges(obj: JSON, name: str) -> tuple[SeqRange, ...]:
    raw = obj.get(name, [])
    if not isinstance(raw, list):
        raise PayloadError(f"field {name!r} must be a list of [first, last] pairs")
    if len(raw) > ACK_RANGES_MAX:
        raise PayloadError(f"field {name!r} has {len(raw)} ranges, more than {ACK_RANGES_MAX}")
    out: list[SeqRange] = []
    for pair in raw:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
            or not 1 <= pair[0] <= pair[1] <= SEQ_MAX
        ):
            raise PayloadError(
                f"field {name!r} must be a list of [first, last] pairs, "
                f"1 <= first <= last <= {SEQ_MAX}"
            )
        out.append((pair[0], pair[1]))
    return tuple(out)


def decode_ack(payload: Raw) -> Ack:
    """Validate an ack before it can delete anything: a stream id of the contract's form,
    and per lane at most ``ACK_RANGES_MAX`` ranges of seqs an outbox can hold (SQLite's
    signed 64 bits, from 1), each with first <= last. Its signature, if any, is not
    checked here (``acks.verify_ack`` does)."""
    return ack_from(loads(payload))


def ack_from(obj: JSON) -> Ack:
    """The ack an object decoded from the wire holds (``decode_ack``'s checks)."""
    stream = _stream_field(obj)
    return Ack(stream, _ranges(obj, "telemetry"), _ranges(obj, "alarms"))


class ReadingEncoder:
    """Encodes readings to their wire JSON fast: the per-point part is built once.

    Device and point ids are restricted to ``[A-Za-z0-9._-]`` by config validation, so
    only units, string values and reasons need escaping. The output is exactly what
    ``reading_dict`` would serialise to.
    """

    def __init__(self) -> None:
        self._prefix: dict[tuple[str, str, str | None], str] = {}

    def encode(self, r: Reading) -> str:
        if _unbounded(r):
            r = bounded(r)
        key = (r.device, r.point, r.unit)
        prefix = self._prefix.get(key)
        if prefix is None:
            prefix = (
                f'{{"dev":{json.dumps(r.device)},"pt":{json.dumps(r.point)},'
                f'"u":{json.dumps(r.unit, ensure_ascii=False)},"v":'
            )
            self._prefix[key] = prefix
        v = r.value
        if v is None or v is True or v is False:
            text = "null" if v is None else ("true" if v else "false")
        elif isinstance(v, int):
            text = str(v)
        elif isinstance(v, float):
            text = repr(v) if math.isfinite(v) else "null"
        else:
            text = json.dumps(v, ensure_ascii=False)
        tail = f',"q":"{r.quality.value}","ts":{r.ts!r}'
        if r.reason is not None:
            tail += f',"r":{json.dumps(r.reason, ensure_ascii=False)}'
        return f"{prefix}{text}{tail}}}"


def encode_telemetry_raw(gw: str, stream: str, seq_first: int, bodies: Sequence[str]) -> bytes:
    """A telemetry batch from readings already encoded by ``ReadingEncoder``."""
    head = _batch_head(gw, stream, seq_first, len(bodies))
    return (head + ",".join(bodies) + "]}").encode()


def _batch_head(gw: str, stream: str, seq_first: int, count: int) -> str:
    return (
        f'{{"gw":{json.dumps(gw)},"stream":{json.dumps(stream)},'
        f'"seq_first":{seq_first},"seq_last":{seq_first + count - 1},"readings":['
    )


def encode_telemetry_within(
    gw: str, stream: str, seq_first: int, bodies: Sequence[str], max_bytes: int = MESSAGE_MAX_BYTES
) -> tuple[bytes, int]:
    """The longest batch of the first ``bodies`` whose payload fits in ``max_bytes``: the
    payload and how many readings it carries (at least one: a reading encoded by
    ``ReadingEncoder`` always fits, ``limits.READING_MAX_BYTES``).

    The center refuses a bigger message, and the agent would send it again for ever."""
    payload = encode_telemetry_raw(gw, stream, seq_first, bodies)
    if len(payload) <= max_bytes:
        return payload, len(bodies)
    # the seqs in the head only get shorter as the batch does: this head is the longest
    room = max_bytes - len(_batch_head(gw, stream, seq_first, len(bodies)).encode()) - 2
    count, used = 0, 0
    for body in bodies:
        used += len(body.encode()) + (1 if count else 0)
        if used > room:
            break
        count += 1
    if count == 0:  # a row an agent wrote before readings were bounded: bound it now
        return encode_telemetry_raw(gw, stream, seq_first, [rebounded(bodies[0])]), 1
    return encode_telemetry_raw(gw, stream, seq_first, bodies[:count]), count


def rebounded(body: str) -> str:
    """An encoded reading within today's bounds (``bounded``), for an outbox row written
    before readings were bounded; a row that is no reading becomes a ``bad`` one saying so,
    so that it is delivered, seen and acked rather than refused and sent again for ever."""
    try:
        obj = json.loads(body)
        unit = obj.get("u")
        reading = Reading(
            str(obj["dev"])[:ID_MAX],
            str(obj["pt"])[:ID_MAX],
            obj.get("v"),
            None if unit is None else str(unit)[:UNIT_MAX],
            Quality(obj["q"]),
            float(obj["ts"]),
            None if obj.get("r") is None else str(obj["r"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        why = f"outbox row of {len(body)} characters is not a reading: {exc}"[:REASON_MAX]
        reading = Reading("agent", "outbox", None, None, Quality.BAD, time.time(), why)
    return ReadingEncoder().encode(reading)
