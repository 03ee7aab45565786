"""One poll loop per device: read, hand the readings on, wait for the next period.

A poll never starts while the device's previous one is still running: a period that
passes during a slow read is skipped and counted as an overrun, so a slow or dead
device costs its own loop time, never memory, and never another device's rate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from drivers.base import DeviceBase, DeviceUnavailable, Driver, Quality, Reading

log = logging.getLogger(__name__)

Sink = Callable[[list[Reading]], Awaitable[None]]


@dataclass(slots=True)
class DeviceHealth:
    link: str = "unknown"  # up | down | unknown
    reason: str | None = None
    polls: int = 0
    overruns: int = 0
    errors: int = 0
    bad_points: int = 0
    last_good: float | None = None
    """The edge time of the newest good reading: the center's ``fleet devices list``."""
    down_since: float | None = field(default=None, repr=False)
    driver: Callable[[], dict[str, object]] | None = field(default=None, repr=False)
    """The driver's own counters (requests, timeouts, backoffs …), if it keeps any."""

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "link": self.link,
            "reason": self.reason,
            "polls": self.polls,
            "overruns": self.overruns,
            "errors": self.errors,
            "bad_points": self.bad_points,
            "last_good": self.last_good,
        }
        if self.driver is not None:
            body["driver"] = self.driver()
        return body


class DevicePoller:
    def __init__(
        self, device: DeviceBase, points: list[tuple[str, str | None]], driver: Driver, sink: Sink
    ) -> None:
        self.device = device
        self._points = points
        self.driver = driver
        self._sink = sink
        counters = getattr(driver, "health", None)  # optional: not part of the Driver protocol
        self.health = DeviceHealth(driver=counters if callable(counters) else None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.device.poll_s
        next_at = loop.time()
        while True:
            readings = await self._poll_once()
            await self._sink(readings)
            next_at += period
            now = loop.time()
            if now > next_at:
                missed = int((now - next_at) // period) + 1
                self.health.overruns += missed
                next_at += missed * period
            await asyncio.sleep(next_at - now)

    async def _poll_once(self) -> list[Reading]:
        self.health.polls += 1
        try:
            readings = await self.driver.read()
        except DeviceUnavailable as exc:
            return self._all_bad(exc.reason)
        except Exception as exc:  # a driver bug must not stop this loop or any other
            if self.health.reason != f"internal error: {exc!r}":
                log.exception("device %s: driver failed", self.device.id)
            return self._all_bad(f"internal error: {exc!r}")
        bad = sum(1 for r in readings if r.quality is not Quality.GOOD)
        good = [r.ts for r in readings if r.quality is Quality.GOOD]
        if good:
            self.health.last_good = max(good)
        if readings and all(r.quality is Quality.STALE for r in readings):
            # a driver that keeps its own session (OPC-UA, MQTT) says "down" this way
            self._link_down(readings[0].reason or "stale")
        else:
            self._link_up()
        self.health.bad_points = bad
        return readings

    def _all_bad(self, reason: str) -> list[Reading]:
        self.health.errors += 1
        self.health.bad_points = len(self._points)
        self._link_down(reason)
        ts = time.time()
        return [Reading.bad(self.device.id, name, unit, ts, reason) for name, unit in self._points]

    def _link_down(self, reason: str) -> None:
        h = self.health
        if h.link != "down" or h.reason != reason:
            log.warning("device %s unavailable: %s", self.device.id, reason)
            if h.link != "down":
                h.down_since = time.monotonic()
        h.link, h.reason = "down", reason

    def _link_up(self) -> None:
        h = self.health
        if h.link == "down" and h.down_since is not None:
            log.info("device %s back after %.0f s", self.device.id, time.monotonic() - h.down_since)
        elif h.link == "unknown":
            log.info("device %s up", self.device.id)
        h.link, h.reason, h.down_since = "up", None, None
