"""The ``simulation:`` section of a device profile: how each point of a simulated device moves.

::

    obscuration: {value: 0.05, noise: 0.01, drift: 0.002, revert_s: 600, min: 0, max: 20, digits: 3}
    smoke_alarm: {expr: "obscuration >= 3.0"}
    model:       {value: "SD-2000"}

A schema only, with no simulator in it: the profile format (``edge_agent.config.profiles``)
validates profiles with it, and the simulators (``drivers.simulated.dynamics``) run what it
describes. It sits here, below both, because the drivers cannot import the agent and the
profile format must not import the simulators. ``FUNCTIONS`` is the one table of what a
derived point (``expr``) may call: the check at load and the evaluator both read it.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any, Self

from pydantic import Field, model_validator

from drivers.base import Frozen, Value

FUNCTIONS: dict[str, Any] = {
    "abs": abs,
    "min": min,
    "max": max,
    "round": round,
    "int": int,
    "float": float,
    "bool": bool,
}


class PointSim(Frozen):
    value: Value = Field(default=None, description="rest value, and the value at the start")
    noise: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="output noise, sd")
    drift: float = Field(
        default=0.0, ge=0, allow_inf_nan=False, description="random walk of the value, sd per s"
    )
    revert_s: float | None = Field(
        default=None, gt=0, description="time constant pulling the value back to rest"
    )
    min: float | None = None
    max: float | None = None
    digits: int | None = Field(default=None, ge=0, le=9, description="round the output")
    expr: str | None = Field(default=None, description="derived from other points' outputs")
    variant: str | None = Field(
        default=None, description="OPC-UA simulators: the variable's type (Double, Boolean...)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.expr is not None:
            if self.value is not None or self.noise or self.drift:
                raise ValueError("a derived point (expr) takes no value, noise or drift")
            names_in(self.expr)  # syntax checked at load
        elif self.value is None:
            raise ValueError("give value (the rest value) or expr (derived from other points)")
        numeric = isinstance(self.value, int | float) and not isinstance(self.value, bool)
        if not numeric and (self.noise or self.drift or self.revert_s):
            raise ValueError("noise, drift and revert_s apply to numbers")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is above max")
        return self


def names_in(expr: str) -> set[str]:
    """The point names an expression reads; ValueError on a syntax error."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"syntax error in {expr!r}: {exc.msg}") from None
    called = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    unknown_calls = called - FUNCTIONS.keys()
    if unknown_calls:
        raise ValueError(f"unknown function {sorted(unknown_calls)[0]!r} in {expr!r}")
    return names - called - {"True", "False"}


def check_simulation(sims: Mapping[str, PointSim], points: list[str]) -> list[tuple[str, str]]:
    """Problems of a simulation section against a device's point names: ``(key, message)``."""
    problems: list[tuple[str, str]] = []
    known = set(points)
    seen: set[str] = set()
    for name, spec in sims.items():
        if name not in known:
            problems.append((name, f"{name!r} is not a point of this device"))
        if spec.expr is not None:
            for used in sorted(names_in(spec.expr) - seen):
                if used in known and used not in sims:
                    message = f"{used!r} has no simulation, so {name} cannot be derived from it"
                elif used in known:
                    message = f"{used!r} is simulated below {name}; derived points come after"
                else:
                    message = f"{used!r} is not a point of this device"
                problems.append((name, message))
        seen.add(name)
    return problems
