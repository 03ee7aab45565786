"""OPC-UA values and status codes to readings, and reading values to writable node values.

Pure functions, no asyncua: the driver hands in what asyncua decoded (Python scalars,
datetimes, lists, and objects with ``Text`` or ``Name`` such as LocalizedText and
QualifiedName) and the raw status code.

Values: numbers, booleans and strings pass through; DateTime becomes an ISO-8601 UTC string
(``2024-05-01T06:30:00.250000Z``); LocalizedText its text, QualifiedName ``ns:Name``, a GUID
its canonical text, a NodeId its string form. Arrays are refused (a ``bad`` reading that says
so) unless the point says ``array: flatten``: then each element is a reading of its own,
named ``<point>.<index>``. ByteString, structures and matrices are refused.

Status codes (severity in the top two bits): Good -> ``good``; Uncertain -> ``good`` with the
code name as reason (the value is kept: it is the server's best value), except the codes that
say the value is not a live measurement (last usable value, no communication, substitute,
initial, simulated, transducer in manual): those are ``stale``, value kept, so rules freeze
on them as on any other non-good reading (an offline level sensor must not clear a flood
alarm; docs/rules.md, "A bad reading decides nothing"); Bad -> ``bad`` with the code name
as reason and no value.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

from drivers.base import Quality, Value

from .config import ARRAY_MAX, OpcUaPoint

SEVERITY_GOOD, SEVERITY_UNCERTAIN = 0, 1
NOT_LIVE = frozenset(
    {
        0x408F,  # UncertainNoCommunicationLastUsableValue
        0x4090,  # UncertainLastUsableValue
        0x4091,  # UncertainSubstituteValue
        0x4092,  # UncertainInitialValue
        0x4208,  # UncertainTransducerInManual
        0x4209,  # UncertainSimulatedValue
    }
)
"""Uncertain codes (top 16 bits) whose value is not a live measurement of the process."""


def judge(code: int, name: str) -> tuple[Quality, str | None]:
    """Quality and reason for an OPC-UA status code whose name is ``name``."""
    severity = (code >> 30) & 0b11
    if severity == SEVERITY_GOOD:
        return Quality.GOOD, (None if code >> 16 == 0 else name)
    if severity == SEVERITY_UNCERTAIN:
        return (Quality.STALE if code >> 16 in NOT_LIVE else Quality.GOOD), name
    return Quality.BAD, name


def iso(ts: datetime) -> str:
    """ISO-8601 in UTC with a ``Z``; a naive datetime (as OPC-UA DateTime decodes) is UTC."""
    aware = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return aware.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def unix(ts: datetime) -> float:
    aware = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts
    return aware.timestamp()


def scalar(raw: Any) -> Value:
    """One OPC-UA scalar as a reading value; ValueError says why one cannot be."""
    if raw is None or isinstance(raw, bool | str):
        return raw
    if isinstance(raw, int):
        return int(raw)  # IntEnum (an enumeration node) travels as its number
    if isinstance(raw, float):
        return raw
    if isinstance(raw, datetime):
        return iso(raw)
    if isinstance(raw, uuid.UUID):
        return str(raw)
    if isinstance(raw, bytes | bytearray):
        raise ValueError(f"ByteString value not supported ({len(raw)} bytes)")
    if hasattr(raw, "Text") and hasattr(raw, "Locale"):  # LocalizedText
        text = raw.Text
        return text if text is None else str(text)
    if hasattr(raw, "Name") and hasattr(raw, "NamespaceIndex"):  # QualifiedName
        return f"{raw.NamespaceIndex}:{raw.Name}"
    if callable(getattr(raw, "to_string", None)):  # NodeId, ExpandedNodeId
        return str(raw.to_string())
    raise ValueError(f"{type(raw).__name__} value not supported")


def decode(point: OpcUaPoint, raw: Any) -> list[tuple[str, Value]]:
    """Readings (name, value) for one point's value; ValueError with the reason if none."""
    if not isinstance(raw, list | tuple):
        return [(point.name, scalar(raw))]
    if point.array != "flatten":
        kind = type(raw[0]).__name__ if raw else "empty"
        raise ValueError(
            f"array value not supported ({len(raw)} elements, {kind}); "
            "set array: flatten on the point for one reading per element"
        )
    if len(raw) > ARRAY_MAX:
        raise ValueError(f"array of {len(raw)} elements, more than {ARRAY_MAX} flattened")
    out: list[tuple[str, Value]] = []
    for i, element in enumerate(raw):
        if isinstance(element, list | tuple):
            raise ValueError("matrix value not supported (an array of arrays)")
        out.append((f"{point.name}.{i}", scalar(element)))
    return out


INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "SByte": (-(2**7), 2**7 - 1),
    "Byte": (0, 2**8 - 1),
    "Int16": (-(2**15), 2**15 - 1),
    "UInt16": (0, 2**16 - 1),
    "Int32": (-(2**31), 2**31 - 1),
    "UInt32": (0, 2**32 - 1),
    "Int64": (-(2**63), 2**63 - 1),
    "UInt64": (0, 2**64 - 1),
}
FLOATS = frozenset({"Float", "Double"})
WRITABLE_TYPES = frozenset({"Boolean", "String", "DateTime", *INTEGER_RANGES, *FLOATS})


def coerce(value: Value, type_name: str) -> Any:
    """``value`` as the Python value of a Variant of ``type_name`` (a VariantType name).

    Refuses (ValueError) what would change meaning: a fraction into an integer, an integer
    out of range, a number into a string. Booleans go into integers as 0 and 1, and 0 and 1
    into a Boolean.
    """
    if value is None:
        raise ValueError("cannot write null")
    if type_name not in WRITABLE_TYPES:
        raise ValueError(f"cannot write a {type_name} node")
    if type_name == "Boolean":
        if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
            return bool(value)
        raise ValueError(f"Boolean node takes true or false, not {value!r}")
    if type_name == "String":
        if isinstance(value, str):
            return value
        raise ValueError(f"String node takes text, not {value!r}")
    if type_name == "DateTime":
        return _datetime(value)
    if isinstance(value, str):
        raise ValueError(f"{type_name} node takes a number, not {value!r}")
    if type_name in FLOATS:
        number = float(value)
        if type_name == "Float" and math.isfinite(number) and abs(number) > 3.4028234663852886e38:
            raise ValueError(f"{value!r} is out of range for Float")
        return number
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{type_name} node takes a whole number, not {value!r}")
        value = int(value)
    low, high = INTEGER_RANGES[type_name]
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{value!r} is out of range for {type_name} ({low}..{high})")
    return number


def _datetime(value: Value) -> datetime:
    if isinstance(value, bool):
        raise ValueError(f"DateTime node takes ISO-8601 text or unix seconds, not {value!r}")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"DateTime node takes ISO-8601 text, not {value!r}") from None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    raise ValueError(f"DateTime node takes ISO-8601 text or unix seconds, not {value!r}")
