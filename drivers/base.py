"""What every protocol driver shares: the reading it produces, its config base, its errors.

A driver is three coroutines: ``read()`` returns one reading per configured point,
``write(point, value)`` sets one point, ``aclose()`` releases the connection. Everything
above the drivers sees only this module; no library exception crosses it.

Exception tree::

    DriverError                 anything a driver raises
    ├── DeviceUnavailable       the device cannot be reached at all (connect refused,
    │                           timeout, serial port gone); every point of it goes ``bad``
    └── WriteRefused            the device answered a write with an error

A point the device refuses while others read fine is not an exception: it comes back
as a ``bad`` reading whose ``reason`` says why (``exception 2: illegal data address``).
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Value = float | int | bool | str | None

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Ids travel in payloads and topic-like contexts: no spaces, slashes or wildcards.
Used as a pydantic pattern (Rust regex, where ``$`` is the end of the text)."""

UNIT_MAX = 32
"""Characters of a point's unit: every reading carries it, so it bounds the size of one
(``edge_agent.contract.limits``)."""


class Quality(StrEnum):
    GOOD = "good"
    BAD = "bad"
    STALE = "stale"


class Reading(NamedTuple):
    """One value of one point at one instant, stamped at the edge when the device answered.

    A named tuple, not a frozen dataclass: immutable all the same, and three times cheaper
    to create, which counts at tens of thousands of readings a second."""

    device: str
    point: str
    value: Value
    unit: str | None
    quality: Quality
    ts: float
    reason: str | None = None

    @staticmethod
    def bad(device: str, point: str, unit: str | None, ts: float, reason: str) -> Reading:
        return Reading(device, point, None, unit, Quality.BAD, ts, reason)


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity; such a value travels as null with quality kept."""
    return value if math.isfinite(value) else None


class DriverError(Exception):
    """Base of everything a driver raises."""


class DeviceUnavailable(DriverError):
    """The device could not be reached; ``reason`` is short and fit for a reading."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WriteRefused(DriverError):
    """The device answered a write with an error."""


Violation = tuple[tuple[str | int, ...], str, object]
"""A check a model's values fail: where in the model (a loc), what is wrong there, and the
offending value. ``reject`` raises them as pydantic errors; the config loader then reports
each as a ``Problem`` (``edge_agent.config.problems``) at its line in the file."""


def reject(model: str, problems: list[Violation], kind: str = "config") -> None:
    """Raise every violation at once, each at its own field, so the config loader can name
    the line of each. For validators that check several fields together."""
    if problems:
        raise ValidationError.from_exception_data(
            model,
            [
                InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)
                for loc, message, value in problems
            ],
        )


class Frozen(BaseModel):
    """Config models: unknown keys are errors, and nothing changes after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PointBase(Frozen):
    name: str = Field(pattern=DEVICE_ID.pattern, description="point id, unique within its device")
    unit: str | None = Field(default=None, max_length=UNIT_MAX)


class DeviceBase(Frozen):
    id: str = Field(pattern=DEVICE_ID.pattern, description="device id, unique within the gateway")
    poll_s: float = Field(default=1.0, gt=0, le=86_400, description="poll period in seconds")

    def host_problems(self) -> list[Violation]:
        """What is wrong on this host with the files and ports the device names (a serial
        port, a password file, certificates), at their loc in the device: the host pass of
        config checking. The schema pass (validation) does not touch the host."""
        return []


class Driver(Protocol):
    async def read(self) -> list[Reading]:
        """Read every configured point once; raise DeviceUnavailable if the device is gone."""
        ...

    async def write(self, point: str, value: Value) -> None: ...

    async def aclose(self) -> None: ...
