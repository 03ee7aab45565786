"""From one MQTT payload to the values of a device's points, with no broker involved.

A payload is read once per message: as JSON when any point has a ``path`` (a JMESPath
such as ``flags.battery_low``), else as a plain value (``21.5``, ``on``, ``ALARM``).
Three things can be wrong, and each is told apart because health data counts them apart:

* ``Malformed``: not UTF-8, not JSON (garbage, truncated), or nested beyond reason;
* a point whose field is there but holds the wrong kind of value (``"smoke": "lots"``):
  that point gets ``Bad(reason)``, the others of the message still count;
* nothing in the payload for any point (``{"hello": 1}``): the caller sees no values.

Numbers are scaled as ``value * scale + offset``; an unscaled ``int`` stays an ``int``.
Each point is converted on its own: a number too big for a float or for a 64-bit integer
(what the outbox and the central store can hold) makes that point ``Bad("number out of
range")``, never the message. Text taken from a payload (``string`` points, and the
values quoted in reasons) is made valid UTF-8: JSON may carry unpaired surrogates
(``"\\ud800"``), which no UTF-8 encoder downstream accepts; each becomes ``?``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

from drivers.base import Value

from .config import MqttPoint

MISSING = object()

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
"""Integers a reading may carry: SQLite's INTEGER, in the outbox and the central store."""

MAX_INT_DIGITS = 400
"""A JSON integer literal longer than this is not converted at all (no sensor sends one;
converting long ones costs quadratic time, and Python refuses past 4300 digits)."""


class _OutOfRange:
    """A JSON integer literal too long to be worth converting."""

    def __repr__(self) -> str:
        return "<number out of range>"


OUT_OF_RANGE = _OutOfRange()


class Malformed(ValueError):
    """The payload could not be read at all; the message says why, briefly."""


@dataclass(frozen=True, slots=True)
class Bad:
    """A point's field was present but unusable."""

    reason: str


class PayloadReader:
    """Reads the configured points out of payloads; built once per device entry."""

    def __init__(self, points: Sequence[MqttPoint]) -> None:
        self.points = list(points)
        self._paths = {p.name: jmespath.compile(p.path) for p in self.points if p.path is not None}
        self.json = bool(self._paths)

    def read(self, payload: bytes) -> dict[str, Value | Bad]:
        """Values by point name, for the points the payload carries."""
        document = self._parse(payload)
        out: dict[str, Value | Bad] = {}
        for point in self.points:  # each on its own: one bad field never costs the others
            compiled = self._paths.get(point.name)
            try:
                raw = document if compiled is None else compiled.search(document)
            except JMESPathError as exc:  # a function applied to the wrong kind of value
                out[point.name] = Bad(f"path {point.path}: {_text(str(exc))[:80]}")
                continue
            if raw is None or raw is MISSING:
                continue
            try:
                out[point.name] = convert(point, raw)
            except OverflowError:
                out[point.name] = Bad("number out of range")
            except (ArithmeticError, ValueError, TypeError) as exc:
                out[point.name] = Bad(f"unreadable value ({type(exc).__name__})")
        return out

    def _parse(self, payload: bytes) -> Any:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("not UTF-8 text") from None
        if not self.json:
            stripped = text.strip()
            if stripped.startswith('"'):
                try:
                    return json.loads(stripped)
                except ValueError:
                    raise Malformed("unterminated quoted value") from None
            return stripped or MISSING
        try:
            return json.loads(text, parse_int=_parse_int)
        except ValueError as exc:
            raise Malformed(f"not JSON: {exc}") from None
        except RecursionError:
            raise Malformed("not JSON: nested too deeply") from None


def _parse_int(literal: str) -> int | _OutOfRange:
    return int(literal) if len(literal) <= MAX_INT_DIGITS else OUT_OF_RANGE


def convert(point: MqttPoint, raw: object) -> Value | Bad:
    """``raw`` (a JSON value, or the text of a plain payload) as the point's type."""
    if raw is OUT_OF_RANGE:
        return Bad("number out of range")
    match point.type:
        case "bool":
            return _bool(point, raw)
        case "string":
            if isinstance(raw, str):
                return _text(raw)
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                return str(raw)
            if isinstance(raw, bool):
                return "true" if raw else "false"
            return Bad(f"expected a string, got {_kind(raw)}")
        case _:
            return _number(point, raw)


def _bool(point: MqttPoint, raw: object) -> bool | Bad:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | float) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        true, false = point.words
        word = raw.strip().lower()
        if word in true:
            return True
        if word in false:
            return False
        return Bad(f"expected a boolean word, got {_show(raw)}")
    return Bad(f"expected a boolean, got {_kind(raw)}")


def _number(point: MqttPoint, raw: object) -> int | float | Bad:
    value: int | float
    if isinstance(raw, bool):
        return Bad(f"expected a number, got {_kind(raw)}")
    if isinstance(raw, int | float):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip()
        if len(text) > MAX_INT_DIGITS:
            return Bad(f"expected a number, got {_show(raw)}")
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return Bad(f"expected a number, got {_show(raw)}")
            if math.isinf(value) and "inf" not in text.lower():
                return Bad("number out of range")  # "1e999"
    else:
        return Bad(f"expected a number, got {_kind(raw)}")
    if isinstance(value, float) and not math.isfinite(value):
        return Bad(f"expected a finite number, got {value}")
    try:
        if point.scale != 1 or point.offset != 0:
            value = value * point.scale + point.offset
        if point.type == "float":
            value = float(value)
        elif point.type == "int":
            if isinstance(value, float) and not value.is_integer():
                return Bad(f"expected an integer, got {value}")
            value = int(value)
    except OverflowError:  # an int too big for a float
        return Bad("number out of range")
    if isinstance(value, float) and not math.isfinite(value):  # scaled past the float range
        return Bad("number out of range")
    if isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        return Bad("number out of range")
    return value


def _kind(raw: object) -> str:
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, dict):
        return "an object"
    if isinstance(raw, list):
        return "a list"
    if isinstance(raw, str):
        return f"the text {_show(raw)}"
    if isinstance(raw, int | float):
        try:
            return f"the number {raw:g}"
        except OverflowError:
            return "a number out of range"
    return type(raw).__name__


def _text(text: str) -> str:
    """``text`` as valid UTF-8: an unpaired surrogate (valid JSON) becomes ``?``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _show(text: str, limit: int = 24) -> str:
    """Quote a value for a reason, short: reasons travel in every reading."""
    return _text(repr(text if len(text) <= limit else text[:limit] + "…"))
