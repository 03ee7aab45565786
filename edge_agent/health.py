"""Periodic health report: outbox depth and age, losses, per-device link status, resources.

The figures are taken in one place (``HealthReporter.figures``) and shown two ways: the
health message on the wire, and, when ``health.metrics_port`` is set, the Prometheus
endpoint (``edge_agent.metrics``), so that both tell the same numbers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
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


def device_report(pollers: Sequence[DevicePoller]) -> dict[str, dict[str, object]]:
    """Per device id: the poller's counters, and what a multi-device driver adds."""
    out: dict[str, dict[str, object]] = {}
    for p in pollers:
        base = p.health.as_json()
        if isinstance(p.driver, ReportsDevices):
            for dev, fields in p.driver.device_health().items():
                out[dev] = {**base, **fields}
        else:
            out[p.device.id] = base
    return out


@dataclass(frozen=True, slots=True)
class HealthFigures:
    """The agent's figures at one moment: what a health message and a scrape show."""

    ts: float
    outbox: OutboxStats
    devices: dict[str, dict[str, object]]
    """Per device, as the health message carries it (``device_report``)."""
    connected: bool
    reconnects: int
    inflight_batches: int
    resends: int
    bad_acks: int
    rejected_acks: int
    readings_produced: int
    readings_sent: int
    rows_acked: int
    lost_disk_full: int
    """Readings the committer could not keep on a full disk."""
    alarm_events_lost_disk_full: int

    @property
    def oldest_age_s(self) -> float | None:
        return None if self.outbox.oldest_ts is None else max(0.0, self.ts - self.outbox.oldest_ts)


class HealthCounts(Protocol):
    """What the alarm service counts: events lost to a full disk."""

    @property
    def lost_disk_full(self) -> int: ...


class HealthProduced(HealthCounts, Protocol):
    """What the committer counts: readings handed over, and lost to a full disk."""

    @property
    def produced(self) -> int: ...


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
        produced: HealthProduced | None = None,
        alarm_losses: HealthCounts | None = None,
    ) -> None:
        """``produced``: the committer (readings produced, lost to a full disk);
        ``alarm_losses``: the alarm service (events lost to a full disk)."""
        self._gw = gateway
        self._topic = topics.gw(gateway, Channel.HEALTH)
        self._outbox = outbox
        self._uplink = uplink
        self._sender = sender
        self._pollers = pollers
        self._interval = interval_s
        self._cpu = CpuMeter()
        self._sources = list(sources)
        self._produced = produced
        self._alarm_losses = alarm_losses

    async def figures(self) -> HealthFigures:
        """The figures now; on the event loop (the parts' counters are the loop's)."""
        stats: OutboxStats = await self._outbox.stats()
        produced = self._produced
        return HealthFigures(
            ts=time.time(),
            outbox=stats,
            devices=device_report(self._pollers),
            connected=self._uplink.connected.is_set(),
            reconnects=self._uplink.reconnects,
            inflight_batches=self._sender.inflight,
            resends=self._sender.resends,
            bad_acks=self._sender.bad_acks,
            rejected_acks=self._sender.rejected_acks,
            readings_produced=0 if produced is None else produced.produced,
            readings_sent=self._sender.readings_sent,
            rows_acked=self._sender.acked,
            lost_disk_full=0 if produced is None else produced.lost_disk_full,
            alarm_events_lost_disk_full=0
            if self._alarm_losses is None
            else self._alarm_losses.lost_disk_full,
        )

    async def report(self) -> dict[str, object]:
        fig = await self.figures()
        stats, now = fig.outbox, fig.ts
        try:
            disk_free = shutil.disk_usage(self._outbox.folder).free / 1e6
        except OSError:
            disk_free = -1.0
        body: dict[str, object] = {
            "outbox": {
                "depth": stats.depth,
                "alarms_depth": stats.alarms_depth,
                "oldest_age_s": None if fig.oldest_age_s is None else round(fig.oldest_age_s, 3),
                "bytes": stats.bytes,
            },
            "dropped": {"telemetry": stats.dropped_telemetry},
            "devices": fig.devices,
            "uplink": {
                "connected": fig.connected,
                "reconnects": fig.reconnects,
                "inflight_batches": fig.inflight_batches,
                "resends": fig.resends,
                "bad_acks": fig.bad_acks,
                "rejected_acks": fig.rejected_acks,
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
