"""From one MQTT payload to the values of a device's points, with no broker involved.

A payload is read once per message: as JSON when any point has a ``path`` (a JMESPath
such as ``flags.battery_low``), else as a plain value (``21.5``, ``on``, ``ALARM``).
Three things can be wrong, and each is told apart because health data counts them apart:

* ``Malformed``: not UTF-8, not JSON (garbage, truncated), or nested beyond reason;
* a point whose field is there but holds the wrong kind of value (``"smoke": "lots"``):
  that point gets ``Bad(reason)``, the others of the message still count;
* nothing in the payload for any point (``{"hello": 1}``): the caller sees no values.

Numbers are scaled as ``value * scale + offset``; an unscaled ``int`` stays an ``int``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jmespath

from drivers.base import Value

from .config import MqttPoint

MISSING = object()


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
        for point in self.points:
            compiled = self._paths.get(point.name)
            raw = document if compiled is None else compiled.search(document)
            if raw is None or raw is MISSING:
                continue
            out[point.name] = convert(point, raw)
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
            return json.loads(text)
        except ValueError as exc:
            raise Malformed(f"not JSON: {exc}") from None
        except RecursionError:
            raise Malformed("not JSON: nested too deeply") from None


def convert(point: MqttPoint, raw: object) -> Value | Bad:
    """``raw`` (a JSON value, or the text of a plain payload) as the point's type."""
    match point.type:
        case "bool":
            return _bool(point, raw)
        case "string":
            if isinstance(raw, str | int | float) and not isinstance(raw, bool):
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
        try:
            value = int(raw.strip())
        except ValueError:
            try:
                value = float(raw.strip())
            except ValueError:
                return Bad(f"expected a number, got {_show(raw)}")
    else:
        return Bad(f"expected a number, got {_kind(raw)}")
    if isinstance(value, float) and not math.isfinite(value):
        return Bad(f"expected a finite number, got {value}")
    if point.scale != 1 or point.offset != 0:
        value = value * point.scale + point.offset
    if point.type == "float":
        return float(value)
    if point.type == "int":
        if isinstance(value, float) and not value.is_integer():
            return Bad(f"expected an integer, got {value}")
        return int(value)
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
        return f"the number {raw:g}"
    return type(raw).__name__


def _show(text: str, limit: int = 24) -> str:
    """Quote a value for a reason, short: reasons travel in every reading."""
    return repr(text if len(text) <= limit else text[:limit] + "…")
