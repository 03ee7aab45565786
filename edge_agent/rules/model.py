"""Rule definitions as they appear in YAML: inline in the agent config, in a device
profile, or in a named pack. The vocabulary is ISA-18.2 / OPC UA Part 9's: on-delay,
off-delay, deadband, latch, severity.

A rule is one of:

* a **condition** (``when``) over points of one device, with an optional clear
  condition (``clear_when``) or a ``deadband`` applied on the return side;
* **staleness** (``stale_s``): no good reading of any referenced point for that long;
* a **stuck value** (``stuck_s`` on ``point``): unchanged for that long where it should move;
* a **rate of change** (``rate`` on ``point``): faster than ``per_s`` or ``per_min``;
* **device offline** (``offline: true``): the device does not answer.

Conditions are compiled once at load by a safe expression evaluator; a syntax error or
a name that is not a point of the device is a config error with its line number.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from drivers.base import DEVICE_ID, Frozen, Value

Severity = Literal["critical", "major", "minor", "warning"]
RULE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
DIAGNOSTIC_SUFFIX = ".chattering"
"""An alarm id plus this names the gateway's chattering diagnostic about that alarm."""


class WriteAction(Frozen):
    device: str = Field(pattern=DEVICE_ID.pattern)
    point: str = Field(pattern=DEVICE_ID.pattern)
    value: Value


class Action(Frozen):
    write: WriteAction


class Actions(Frozen):
    on_active: list[Action] = Field(default_factory=list)
    on_cleared: list[Action] = Field(default_factory=list)
    min_interval_s: float = Field(
        default=10, ge=0, description="flapping guard: no action repeats sooner than this"
    )


class Rate(Frozen):
    per_s: float | None = Field(default=None, gt=0)
    per_min: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> Rate:
        if (self.per_s is None) == (self.per_min is None):
            raise ValueError("give exactly one of per_s or per_min")
        return self

    @property
    def limit_per_s(self) -> float:
        return self.per_s if self.per_s is not None else (self.per_min or 0) / 60


class Rule(Frozen):
    id: str = Field(pattern=RULE_ID)
    device: str | None = Field(
        default=None,
        pattern=DEVICE_ID.pattern,
        description="the device; omitted in packs and profiles: every device with the points",
    )
    severity: Severity = "major"
    message: str | None = Field(default=None, description="template: {point}, {device}, {value}")
    when: str | None = None
    clear_when: str | None = None
    deadband: float | None = Field(default=None, ge=0)
    on_delay_s: float = Field(default=0, ge=0, description="the condition must hold this long")
    off_delay_s: float = Field(default=0, ge=0, description="the clear must hold this long")
    latch: bool = Field(default=False, description="stays active until reset from the center")
    stale_s: float | None = Field(default=None, gt=0)
    stuck_s: float | None = Field(default=None, gt=0)
    rate: Rate | None = None
    point: str | None = Field(default=None, pattern=DEVICE_ID.pattern)
    offline: bool = False
    unless_device_has: list[Annotated[str, Field(pattern=DEVICE_ID.pattern)]] = Field(
        default_factory=list,
        description="packs and profiles: not for a device with any of these points "
        "(a detector's own alarm flag decides, so a level rule must not raise a second alarm)",
    )
    actions: Actions = Actions()

    @model_validator(mode="after")
    def _one_kind(self) -> Rule:
        kinds = [
            k
            for k, on in (
                ("when", self.when is not None),
                ("stale_s", self.stale_s is not None),
                ("stuck_s", self.stuck_s is not None),
                ("rate", self.rate is not None),
                ("offline", self.offline),
            )
            if on
        ]
        if len(kinds) != 1:
            raise ValueError(
                "a rule needs exactly one of when, stale_s, stuck_s, rate or offline"
                + (f" (got {', '.join(kinds)})" if kinds else "")
            )
        if kinds[0] in ("stuck_s", "rate") and self.point is None:
            raise ValueError(f"{kinds[0]} needs point: the point to watch")
        if self.clear_when is not None and self.deadband is not None:
            raise ValueError("give clear_when or deadband, not both")
        if (self.clear_when is not None or self.deadband is not None) and self.when is None:
            raise ValueError("clear_when and deadband go with when")
        if self.id.endswith(DIAGNOSTIC_SUFFIX):
            raise ValueError(
                f"rule ids ending in {DIAGNOSTIC_SUFFIX} are the gateway's own diagnostics"
            )
        return self

    @property
    def kind(self) -> str:
        if self.when is not None:
            return "condition"
        if self.stale_s is not None:
            return "stale"
        if self.stuck_s is not None:
            return "stuck"
        if self.rate is not None:
            return "rate"
        return "offline"


RuleList = Annotated[list[Rule], Field(default_factory=list)]
