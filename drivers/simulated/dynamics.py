"""How a simulated device's values move: rest values, noise, slow drift, derived flags.

A device profile's ``simulation:`` section gives each point a ``PointSim`` (the schema,
in ``drivers.simulation``). ``DeviceSim`` steps all of a device's points once per tick of
simulated time. Every random draw comes from the device's own ``random.Random`` seeded
from ``(seed, device id)`` in a fixed order, so a run is the same sequence of values on
every machine given the seed; scenarios (``scenario.py``) change the underlying values at
given ticks, never the draws' order. Nothing here does I/O or reads a clock: the runner
maps ticks to wall time.

Each numeric point has an underlying process value and an output: the process value
drifts (a random walk of ``drift`` per second, pulled back toward its rest value with the
time constant ``revert_s``) and is moved by scenario ramps; the output adds measurement
``noise`` and is clamped to ``[min, max]`` and rounded to ``digits``. Derived points
(``expr``) are computed from the outputs of the points above them, so a device's alarm flag
is consistent with the value it reports.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from simpleeval import SimpleEval

from drivers.base import Value
from drivers.simulation import FUNCTIONS, PointSim


@dataclass(slots=True)
class _Ramp:
    start_t: float
    start: float
    end_t: float
    end: float


class DeviceSim:
    """The values of one device, stepped tick by tick; deterministic given the seed."""

    def __init__(
        self, device: str, sims: Mapping[str, PointSim], *, seed: int = 0, tick_s: float = 1.0
    ) -> None:
        self.device = device
        self.sims = dict(sims)
        self.tick_s = tick_s
        self.t = 0.0
        # str seeds are hashed with SHA-512 by random.Random: the same on every machine
        self._rng = random.Random(f"{seed}:{device}")
        self._rest: dict[str, Value] = {}
        self._value: dict[str, Value] = {}
        self._ramps: dict[str, _Ramp] = {}
        self._derived: dict[str, Any] = {}
        self._eval = SimpleEval(functions=dict(FUNCTIONS))
        for name, spec in self.sims.items():
            if spec.expr is None:
                self._rest[name] = self._value[name] = spec.value
            else:
                self._derived[name] = self._eval.parse(spec.expr)
        self.outputs: dict[str, Value] = {}

    def set(self, point: str, value: Value) -> None:
        """Jump the point's process value (and its rest value) to ``value`` now."""
        self._check(point)
        self._ramps.pop(point, None)
        self._rest[point] = self._value[point] = value

    def ramp(self, point: str, target: float, over_s: float) -> None:
        """Move the point's process value linearly to ``target`` in ``over_s`` seconds."""
        self._check(point)
        current = self._value[point]
        if not isinstance(current, int | float) or isinstance(current, bool):
            raise ValueError(f"{self.device}.{point}: only numbers ramp, not {current!r}")
        if over_s <= 0:
            self.set(point, target)
            return
        self._ramps[point] = _Ramp(self.t, float(current), self.t + over_s, float(target))
        self._rest[point] = target

    def reset(self, point: str) -> None:
        """Back to the profile's rest value, at once."""
        self.set(point, self.sims[point].value)

    def step(self) -> dict[str, Value]:
        """Advance one tick; the outputs by point name (also kept in ``outputs``)."""
        self.t += self.tick_s
        out: dict[str, Value] = {}
        for name, spec in self.sims.items():
            if spec.expr is not None:
                self._eval.names = out
                try:
                    out[name] = self._eval.eval(spec.expr, previously_parsed=self._derived[name])
                except Exception as exc:  # a bad expression is a profile bug: say which
                    raise ValueError(f"{self.device}.{name}: {spec.expr!r}: {exc}") from None
                continue
            value = self._value[name]
            if not isinstance(value, int | float) or isinstance(value, bool):
                out[name] = value
                continue
            value = self._advance(name, spec, float(value))
            self._value[name] = value
            if spec.noise:
                value += self._rng.gauss(0.0, spec.noise)
            out[name] = self._shape(spec, value, integer=isinstance(spec.value, int))
        self.outputs = out
        return out

    def _advance(self, name: str, spec: PointSim, value: float) -> float:
        ramp = self._ramps.get(name)
        if ramp is not None:
            if self.t >= ramp.end_t:
                del self._ramps[name]
                value = ramp.end
            else:
                share = (self.t - ramp.start_t) / (ramp.end_t - ramp.start_t)
                value = ramp.start + share * (ramp.end - ramp.start)
        else:
            if spec.drift:
                value += self._rng.gauss(0.0, spec.drift * math.sqrt(self.tick_s))
            rest = self._rest[name]
            if spec.revert_s and isinstance(rest, int | float):
                value += (float(rest) - value) * min(1.0, self.tick_s / spec.revert_s)
        return _clamp(spec, value)

    @staticmethod
    def _shape(spec: PointSim, value: float, *, integer: bool) -> Value:
        value = _clamp(spec, value)
        if integer and spec.digits in (None, 0):
            return round(value)
        if spec.digits is not None:
            return round(value, spec.digits)
        return value

    def _check(self, point: str) -> None:
        if point not in self._value:
            what = "is derived" if point in self._derived else "has no simulation"
            raise ValueError(f"{self.device}.{point} {what}; a scenario cannot set it")


def _clamp(spec: PointSim, value: float) -> float:
    if spec.min is not None:
        value = max(spec.min, value)
    if spec.max is not None:
        value = min(spec.max, value)
    return value
