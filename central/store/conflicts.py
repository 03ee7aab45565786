"""What "the same content" means when a gateway sends a seq the store has already, and what
a store reports when it is not the same (a ``Conflict``).

A resent seq is a plain duplicate (acked, stored once, nothing flagged) only if what it
holds is what is stored under that ``(gateway, stream, seq)``:

- a reading: the same ``dev``, ``pt``, ``u``, ``q``, ``r`` (the reason of a bad reading)
  and ``ts`` (as floats, exactly), and the same value of the same JSON type (``1``,
  ``1.0`` and ``true`` are three different values);
- an alarm event: the same fields, all of them (``id``, ``rule``, ``dev``, ``severity``,
  ``state``, ``value``, ``ts``, ``msg`` and any other the gateway sent), compared as JSON
  values: a number the same number (``3`` and ``3.0`` alike, as a store may give a whole
  float back either way), a boolean not a number, an object whatever its keys' order.

Otherwise the seq is in conflict: the stored content stays (the store cannot tell which of
the two is the real one), the resent message is kept whole as a dead letter (while its
gateway's dead letters hold under ``REJECTED_WHOLE_BYTES``; beyond, by its head, as any
other), flagged for an operator (``fleet rejected``), and acked, so that the gateway does
not send it for ever.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from central.store.limits import REJECTED_WHOLE_BYTES
from edge_agent.contract import merge_ranges

CONFLICT_PREFIX = "CONFLICT: "
"""How a dead letter kept for a conflict begins its error (``DeadLetter.conflict``)."""
RANGES_SHOWN = 20
"""Seq ranges an error text lists (then "and N more"), within ``REJECTED_ERROR_MAX``."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """Seqs a message resent that the store holds with other content: they were not stored
    again (the stored rows stay) and are not duplicates either."""

    gateway: str
    stream: str
    alarm: bool
    seqs: tuple[tuple[int, int], ...]
    """The seqs in conflict, as merged ranges."""
    source: object
    """The ``TelemetryBatch`` or ``AlarmMessage`` given to the store (by identity: the
    round logic finds its message by it)."""

    @property
    def count(self) -> int:
        return sum(b - a + 1 for a, b in self.seqs)

    def describe(self) -> str:
        """The dead letter's error: which seqs, and what was done."""
        what = "alarm event seq" if self.alarm else "telemetry seqs"
        whole_mib = REJECTED_WHOLE_BYTES >> 20
        kept = "alarm event" if self.alarm else "readings"
        return (
            f"{CONFLICT_PREFIX}{what} {show_ranges(self.seqs)} of stream {self.stream!r} were "
            f"stored before with other content: the stored {kept} stay, this message is kept "
            f"here (whole while the gateway's dead letters hold under {whole_mib} MiB) and was "
            "acked (a forgery, or a gateway that reused its seqs; compare with what is stored)"
        )


def show_ranges(ranges: Iterable[tuple[int, int]]) -> str:
    """``1..3, 7, 9..12`` (at most ``RANGES_SHOWN``, then how many more)."""
    rs = list(ranges)
    shown = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in rs[:RANGES_SHOWN])
    return shown + (f" and {len(rs) - RANGES_SHOWN} more ranges" if len(rs) > RANGES_SHOWN else "")


def conflict(
    gateway: str, stream: str, alarm: bool, seqs: Iterable[int], source: object
) -> Conflict | None:
    """A ``Conflict`` of these seqs, or None if there are none."""
    ranges = merge_ranges((s, s) for s in seqs)
    return Conflict(gateway, stream, alarm, ranges, source) if ranges else None


def reading_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """What a reading's sameness compares (the module's docstring)."""
    return (r["dev"], r["pt"], json_key(r.get("v")), r.get("u"), r["q"], r.get("r"), r["ts"])


def json_key(v: Any) -> Any:
    """A JSON value as something ``==`` compares exactly: a boolean is not the number 1,
    an integer not the float beside it, a mapping compared whatever its keys' order."""
    kind = v.__class__
    if kind is bool or kind is int or kind is float:
        return (kind.__name__, v)
    if kind is dict:
        return ("object", frozenset((k, json_key(x)) for k, x in v.items()))
    if kind is list or kind is tuple:
        return ("array", tuple(json_key(x) for x in v))
    return v


def same_event(stored: dict[str, Any], resent: dict[str, Any]) -> bool:
    """Whether two alarm events (their JSON, ``AlarmMessage.to_json()``) are the same.
    A whole-number float that a store gave back as an integer (PostgreSQL's jsonb keeps
    ``3.0`` as ``3.0``, but not every float's spelling) is the same number."""
    return bool(_loose(stored) == _loose(resent))


def _loose(v: Any) -> Any:
    kind = v.__class__
    if kind is bool:
        return ("bool", v)
    if kind is int or kind is float:
        return ("number", v)  # 3 == 3.0: stores may spell a number their own way
    if kind is dict:
        return ("object", frozenset((k, _loose(x)) for k, x in v.items()))
    if kind is list or kind is tuple:
        return ("array", tuple(_loose(x) for x in v))
    return v
