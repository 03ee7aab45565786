"""What the OPC-UA driver tests share, against our simulated stations and against an
independent stack: a factory of drivers closed after the test, and bounded waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from drivers.base import Quality, Reading
from drivers.opcua import OpcUaDevice
from drivers.opcua.driver import OpcUaDriver

MakeDriver = Callable[..., OpcUaDriver]
FAST = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "timeout_s": 2.0, "keepalive_s": 2.0}
"""Short timeouts and backoff, so that outages in tests stay short."""


@asynccontextmanager
async def driver_factory(
    device_id: str, default_points: list[dict[str, Any]] | None = None
) -> AsyncIterator[MakeDriver]:
    """Builds drivers for an endpoint and points; all closed at the end."""
    made: list[OpcUaDriver] = []

    def make(
        endpoint: str,
        points: list[dict[str, Any]] | None = None,
        poll_s: float = 0.2,
        **opcua: Any,
    ) -> OpcUaDriver:
        device = OpcUaDevice.model_validate(
            {
                "id": device_id,
                "poll_s": poll_s,
                "opcua": {"endpoint": endpoint, **FAST, **opcua},
                "points": default_points if points is None else points,
            }
        )
        made.append(OpcUaDriver(device))
        return made[-1]

    try:
        yield make
    finally:
        for d in made:
            await d.aclose()


async def read_until(
    driver: OpcUaDriver,
    done: Callable[[list[Reading]], bool],
    within: float = 5.0,
    every: float = 0.02,
) -> list[Reading]:
    """Call read() every ``every`` s, keeping all readings, until ``done(all)``; bounded."""
    seen: list[Reading] = []
    deadline = time.monotonic() + within
    for _ in range(int(within / every) + 1):
        seen.extend(await driver.read())
        if done(seen):
            return seen
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(every)
    raise AssertionError(f"not done after {within} s; last readings: {seen[-5:]}")


def has(point: str, value: Any = None, quality: Quality = Quality.GOOD) -> Callable[..., bool]:
    def check(seen: list[Reading]) -> bool:
        return any(
            r.point == point and r.quality is quality and (value is None or r.value == value)
            for r in seen
        )

    return check


def all_of(*checks: Callable[[list[Reading]], bool]) -> Callable[[list[Reading]], bool]:
    return lambda seen: all(check(seen) for check in checks)


def latest(seen: list[Reading]) -> dict[str, Reading]:
    return {r.point: r for r in seen}
