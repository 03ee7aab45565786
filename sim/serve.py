"""Serving a sim plan: every simulated device over its real protocol until told to stop,
with the agent configs for them written once their ports are known."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from drivers.simulated.fleet import SimFleet
from sim.configs import write_agent_configs
from sim.plan import SimPlan


class SimStartError(Exception):
    """A simulator could not start (a port in use, a serial line that refuses its settings)."""


async def serve(
    plan: SimPlan,
    stop: asyncio.Event,
    *,
    write_configs: Path | None = None,
    duration_s: float | None = None,
    announce: Callable[[str], object] = print,
) -> SimFleet:
    """Run every simulated device until ``stop`` (or ``duration_s``); configs first."""
    fleet = plan.fleet()
    try:
        await fleet.start()
    except Exception as exc:  # pymodbus, asyncua, paho and termios each raise their own
        await fleet.stop()
        raise SimStartError(f"cannot start the simulators: {type(exc).__name__}: {exc}") from exc
    try:
        if write_configs is not None:
            paths = write_agent_configs(plan, fleet, write_configs)
            (write_configs / "endpoints.json").write_text(
                json.dumps({d.spec.id: fleet.endpoint(d.spec.id) for d in plan.devices}, indent=2)
            )
            announce(f"sim: agent configs in {', '.join(str(p) for p in paths)}")
        gateways = len(plan.file.gateways)
        announce(
            f"sim: {len(plan.devices)} device(s) of {gateways} gateway(s) running "
            f"(seed {plan.file.seed}, speed {plan.file.speed:g}); Ctrl-C stops"
        )
        ticks = None
        if duration_s is not None:
            ticks = max(1, round(duration_s * plan.file.speed / plan.file.tick_s))
        await fleet.run(stop, ticks=ticks)
    finally:
        await fleet.stop()
    return fleet
