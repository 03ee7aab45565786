"""How values are kept in SQLite cells: exactly as they came (see ``writes``)."""

from __future__ import annotations

import json
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
VALUE_BOOL, VALUE_BIG_INT = 1, 2  # readings.is_bool


def cell(value: Any) -> Any:
    """``value`` as SQLite can bind it: an integer beyond 64 bits as its exact decimal text,
    a list or object (an unexpected extra field of an alarm event) as JSON text."""
    kind = type(value)
    if kind is int:
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    if value is None or kind is bool or kind is float or kind is str:
        return value
    return json.dumps(value)


def value_of(value: Any, tag: int) -> Any:
    """A stored reading's value as it went in."""
    if tag == VALUE_BOOL and value is not None:
        return bool(value)
    if tag == VALUE_BIG_INT and isinstance(value, str):
        return int(value)
    return value


def inexact(fields: dict[str, Any]) -> str | None:
    """The fields an SQLite column would not give back as they came (a boolean, an integer
    beyond 64 bits), as JSON for the row's ``exact`` column; None if there are none."""
    kept = {
        k: v
        for k, v in fields.items()
        if v.__class__ is bool or (v.__class__ is int and not INT64_MIN <= v <= INT64_MAX)
    }
    return json.dumps(kept) if kept else None


def exact(row: dict[str, Any], kept: str | None) -> dict[str, Any]:
    """``row`` with the fields ``inexact`` kept put back."""
    return {**row, **json.loads(kept)} if kept else row
