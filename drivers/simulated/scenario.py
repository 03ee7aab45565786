"""Scenarios: events scripted over time for one simulated device, written in YAML.

A scenario is a list of events, each at a number of seconds after the scenario starts::

    name: fire
    title: Smoke rises to alarm, the heat element follows
    loop_s: 600                 # optional: start again (from rest values) every 600 s
    events:
      - {at: 10, ramp: {obscuration: 4.5}, over: 90}    # linear, to the target, in 90 s
      - {at: 60, set: {person_in_car: true}}            # jump
      - {at: 300, reset: [obscuration]}                 # back to the profile's rest value
      - {at: 30, silent: true}                          # stops answering / publishing
      - {at: 90, silent: false}
      - {at: 40, garbage: {kinds: [not_json, truncated, oversized], count: 2}}   # MQTT only

``ScenarioRun`` applies the events to a ``DeviceSim`` as simulated time passes, and hands
the runner what only the transport can do (going silent, publishing garbage) as effects.
Time is the simulation's, so a run is deterministic given the seed: the same events hit
the same ticks and the value draws stay in the same order. ``timeline()`` runs a device
without any server, for tests and for ``edge-agent sim timeline``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import Field, model_validator

from drivers.base import Frozen, Value

from .dynamics import DeviceSim

GarbageKind = Literal["not_json", "truncated", "oversized", "wrong_type", "empty", "binary"]


class Garbage(Frozen):
    kinds: list[GarbageKind] = Field(min_length=1)
    count: int = Field(default=1, ge=1, le=1000, description="of each kind")
    oversize_bytes: int = Field(default=1024 * 1024, ge=1, le=16 * 1024 * 1024)


class Event(Frozen):
    at: float = Field(ge=0, description="seconds after the scenario starts")
    set: dict[str, Value] | None = None
    ramp: dict[str, float] | None = None
    over: float | None = Field(default=None, ge=0, description="seconds a ramp takes")
    reset: list[str] | None = None
    silent: bool | None = None
    garbage: Garbage | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        actions = [
            k for k in ("set", "ramp", "reset", "silent", "garbage") if getattr(self, k) is not None
        ]
        if len(actions) != 1:
            raise ValueError(
                "an event does exactly one of set, ramp, reset, silent or garbage"
                + (f" (got {', '.join(actions)})" if actions else "")
            )
        if (self.ramp is None) != (self.over is None):
            raise ValueError("ramp and over go together: where to, and in how many seconds")
        return self

    @property
    def points(self) -> list[str]:
        return [*(self.set or {}), *(self.ramp or {}), *(self.reset or [])]


class Scenario(Frozen):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    title: str = Field(min_length=1)
    loop_s: float | None = Field(default=None, gt=0, description="start again every loop_s")
    events: list[Event] = Field(min_length=1)

    @model_validator(mode="after")
    def _fits_loop(self) -> Self:
        if self.loop_s is not None and any(e.at >= self.loop_s for e in self.events):
            raise ValueError("every event must come before loop_s")
        return self

    @property
    def points(self) -> set[str]:
        return {p for e in self.events for p in e.points}

    @property
    def transport_events(self) -> set[str]:
        """What the device's transport must support: ``silent``, ``garbage``."""
        return {k for e in self.events for k in ("silent", "garbage") if getattr(e, k) is not None}


SCENARIOS = Path(str(resources.files("drivers.simulated").joinpath("scenarios")))
"""The scenarios shipped with the simulators."""


def scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIOS.glob("*.yaml"))


def scenario_file(name: str) -> Path:
    """The file of a shipped scenario, or ``name`` itself if it is a path to a YAML file."""
    if name.endswith((".yaml", ".yml")):
        return Path(name)
    return SCENARIOS / f"{name}.yaml"


def load_scenario(name: str) -> Scenario:
    """A shipped scenario by name, or one from a file; pydantic errors name the field."""
    return Scenario.model_validate(yaml.safe_load(scenario_file(name).read_text()))


@dataclass(frozen=True, slots=True)
class Effect:
    """What the transport must do at a tick: go silent or speak again, or send garbage."""

    silent: bool | None = None
    garbage: Garbage | None = None


class ScenarioRun:
    """A scenario bound to one device, started ``start_s`` seconds into the simulation."""

    def __init__(self, scenario: Scenario, sim: DeviceSim, *, start_s: float = 0.0) -> None:
        self.scenario = scenario
        self.sim = sim
        self.start_s = start_s
        self._events = sorted(enumerate(scenario.events), key=lambda ie: (ie[1].at, ie[0]))
        self._next = 0
        self._round = 0
        self.silent = False

    def advance(self) -> list[Effect]:
        """Apply the events due by the sim's next tick; what the transport must do."""
        t = self.sim.t + self.sim.tick_s - self.start_s  # the tick about to be stepped
        if t < 0:
            return []
        effects: list[Effect] = []
        loop = self.scenario.loop_s
        if loop is not None and t >= (self._round + 1) * loop:
            self._round += 1
            self._next = 0
            for point in sorted(self.scenario.points):
                if point in self.sim.sims and self.sim.sims[point].expr is None:
                    self.sim.reset(point)
            if self.silent:
                self.silent = False
                effects.append(Effect(silent=False))
        local = t - (self._round * loop if loop is not None else 0.0)
        while self._next < len(self._events) and self._events[self._next][1].at <= local:
            event = self._events[self._next][1]
            self._next += 1
            effects += self._apply(event)
        return effects

    def _apply(self, event: Event) -> list[Effect]:
        sim = self.sim
        for point, value in (event.set or {}).items():
            sim.set(point, value)
        for point, target in (event.ramp or {}).items():
            sim.ramp(point, target, event.over or 0.0)
        for point in event.reset or []:
            sim.reset(point)
        if event.silent is not None:
            self.silent = event.silent
            return [Effect(silent=event.silent)]
        if event.garbage is not None:
            return [Effect(garbage=event.garbage)]
        return []


@dataclass(frozen=True, slots=True)
class Tick:
    t: float
    values: dict[str, Value]
    effects: tuple[Effect, ...]
    silent: bool


def timeline(sim: DeviceSim, run: ScenarioRun | None, ticks: int) -> Iterator[Tick]:
    """Step a device ``ticks`` times, with its scenario; no server, no clock."""
    for _ in range(ticks):
        effects = run.advance() if run is not None else []
        values = sim.step()
        yield Tick(sim.t, values, tuple(effects), run.silent if run is not None else False)
