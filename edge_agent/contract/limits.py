"""The bounds of the wire contract: how big a message may be, which times are believable,
and how long a reading's texts may grow. Both sides read them from here.

- ``MESSAGE_MAX_BYTES``: the center refuses a bigger message before decoding it (a dead
  letter, kept only as a head), the broker config (``fleet broker-config``,
  ``message_size_limit``, from ``packaging/mosquitto.conf``) refuses it before that, and
  the agent never builds one: it cuts a telemetry batch in bytes as well as in readings.
  A refused batch would otherwise be resent at every ack timeout for ever.
- Timestamps: edge clocks are UTC seconds; anything before ``TS_MIN`` (2000-01-01) or more
  than ``TS_AHEAD_S`` (a day) ahead of the receiver's clock is not a time but a broken clock
  or a hostile sender, and would make every time-ordered query of the fleet misbehave (a
  ``ts`` of 1e308 sorts newest and cannot be shown as a date).
- A reading's texts are bounded (``VALUE_TEXT_MAX``, ``REASON_MAX``; ids and units by
  config validation), so that one reading, encoded, never exceeds ``READING_MAX_BYTES``,
  and a batch of one always fits in a message (checked below, at import).
"""

from __future__ import annotations

import math
from typing import Final

from drivers.base import UNIT_MAX

MESSAGE_MAX_BYTES: Final = 1_048_576
"""The largest payload (bytes) either side sends or takes, and the broker passes."""

TS_MIN: Final = 946_684_800.0
"""2000-01-01T00:00:00Z: no gateway stamps a reading before it."""

TS_AHEAD_S: Final = 86_400.0
"""How far ahead of the receiver's clock a timestamp may be (clocks drift; not by a day)."""

VALUE_TEXT_MAX: Final = 4096
"""Characters of a text value a reading may carry; a longer one travels as a ``bad``
reading that says how long it was (an OPC-UA String or an MQTT payload may be any size)."""

REASON_MAX: Final = 512
"""Characters of a reading's reason (a device's error text); longer ones are cut, marked."""

ID_MAX: Final = 64  # device and point ids: drivers.base.DEVICE_ID

OPERATOR_MAX: Final = 64
"""Characters of who gave a command (``by``), kept in each alarm event it causes."""

COMMAND_REASON_MAX: Final = 512
"""Characters of a shelving's reason, kept in the alarm's history."""
INT_DIGITS_MAX: Final = 21  # a reading's integer is within 64 bits, signed or not

# Each character a reading's text may hold costs at most 6 bytes encoded (``\\u001f``);
# ``READING_OVERHEAD`` covers keys, quotes, a float or 64-bit integer, quality and ``ts``.
_ESCAPED_MAX: Final = 6
READING_OVERHEAD: Final = 200
READING_MAX_BYTES: Final = READING_OVERHEAD + _ESCAPED_MAX * (
    2 * ID_MAX + UNIT_MAX + VALUE_TEXT_MAX + REASON_MAX
)
"""No reading the agent encodes is longer than this (``tests/test_limits.py`` proves it)."""

BATCH_HEAD_MAX: Final = 512
"""The envelope of a telemetry batch: gateway and stream ids, two seqs, brackets."""

if READING_MAX_BYTES + BATCH_HEAD_MAX > MESSAGE_MAX_BYTES:  # pragma: no cover - a build error
    raise ImportError("one reading must always fit in a telemetry batch")


def latest_time(now: float) -> float:
    """The latest timestamp believed when the receiver's clock says ``now``."""
    return now + TS_AHEAD_S


def plausible_time(ts: object, latest: float) -> bool:
    """A number of seconds from ``TS_MIN`` to ``latest`` (never a bool, NaN or infinity)."""
    kind = type(ts)
    return (kind is float or kind is int) and TS_MIN <= ts <= latest  # type: ignore[operator]


def non_finite_at(obj: object, path: str = "$") -> str | None:
    """The JSON path of the first float in ``obj`` that is NaN or infinite, else None.

    A JSON decoder turns ``1e400`` into infinity without any literal to refuse; such a
    value cannot be written back as JSON, so a message that holds one breaks the contract."""
    if type(obj) is float:
        return None if math.isfinite(obj) else path
    if type(obj) is dict:
        for key, value in obj.items():
            found = non_finite_at(value, f"{path}.{key}")
            if found is not None:
                return found
    elif type(obj) is list:
        for i, value in enumerate(obj):
            found = non_finite_at(value, f"{path}[{i}]")
            if found is not None:
                return found
    return None
