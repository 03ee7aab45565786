"""Periodic health report: outbox depth and age, losses, per-device link status, resources."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from edge_agent.contract import Channel, Topics, encode_health
from edge_agent.outbox import OutboxGauge, OutboxStats
from edge_agent.polling import DevicePoller
from edge_agent.sender import Sender

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 1e6
    except OSError:
        return 0.0


class CpuMeter:
    def __init__(self) -> None:
        self._wall = time.monotonic()
        t = os.times()
        self._cpu = t.user + t.system

    def percent(self) -> float:
        t = os.times()
        wall, cpu = time.monotonic(), t.user + t.system
        pct = 100.0 * (cpu - self._cpu) / max(wall - self._wall, 1e-6)
        self._wall, self._cpu = wall, cpu
        return round(pct, 1)


class HealthSource(Protocol):
    """A part of the agent that adds its own counters to the report (top-level keys)."""

    def health(self) -> dict[str, object]: ...


class HealthUplink(Protocol):
    """What the health report needs of the MQTT session."""

    @property
    def connected(self) -> asyncio.Event: ...

    @property
    def reconnects(self) -> int: ...

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> bool: ...


@runtime_checkable
class ReportsDevices(Protocol):
    """A driver behind which one config entry stands for several devices (an MQTT topic
    filter with ``{id}``): it reports each device's link and counters itself."""

    def device_health(self) -> dict[str, dict[str, object]]: ...


def device_report(pollers: Sequence[DevicePoller]) -> dict[str, object]:
    """Per device id: the poller's counters, and what a multi-device driver adds."""
    out: dict[str, object] = {}
    for p in pollers:
        base = p.health.as_json()
        if isinstance(p.driver, ReportsDevices):
            for dev, fields in p.driver.device_health().items():
                out[dev] = {**base, **fields}
        else:
            out[p.device.id] = base
    return out


class HealthReporter:
    def __init__(
        self,
        *,
        gateway: str,
        topics: Topics,
        outbox: OutboxGauge,
        uplink: HealthUplink,
        sender: Sender,
        pollers: list[DevicePoller],
        interval_s: float,
        sources: Sequence[HealthSource] = (),
    ) -> None:
        self._gw = gateway
        self._topic = topics.gw(gateway, Channel.HEALTH)
        self._outbox = outbox
        self._uplink = uplink
        self._sender = sender
        self._pollers = pollers
        self._interval = interval_s
        self._cpu = CpuMeter()
        self._sources = list(sources)

    async def report(self) -> dict[str, object]:
        stats: OutboxStats = await self._outbox.stats()
        now = time.time()
        try:
            disk_free = shutil.disk_usage(self._outbox.folder).free / 1e6
        except OSError:
            disk_free = -1.0
        body: dict[str, object] = {
            "outbox": {
                "depth": stats.depth,
                "alarms_depth": stats.alarms_depth,
                "oldest_age_s": None
                if stats.oldest_ts is None
                else round(now - stats.oldest_ts, 3),
                "bytes": stats.bytes,
            },
            "dropped": {"telemetry": stats.dropped_telemetry},
            "devices": device_report(self._pollers),
            "uplink": {
                "connected": self._uplink.connected.is_set(),
                "reconnects": self._uplink.reconnects,
                "inflight_batches": self._sender.inflight,
                "resends": self._sender.resends,
                "bad_acks": self._sender.bad_acks,
            },
            "cpu_percent": self._cpu.percent(),
            "mem_rss_mb": round(rss_mb(), 1),
            "disk_free_mb": round(disk_free, 1),
        }
        for source in self._sources:
            body.update(source.health())
        self._uplink.publish(self._topic, encode_health(self._gw, now, **body), qos=0)
        return body

    async def run(self) -> None:
        while True:
            await self._uplink.connected.wait()
            await self.report()
            await asyncio.sleep(self._interval)
