"""The agent's Prometheus endpoint (``health.metrics_port``): the health report's figures
(``HealthReporter.figures``), taken at each scrape and shown as metrics.

The endpoint's thread (prometheus_client's HTTP server) does not read the agent's parts
itself: they belong to the event loop, so a scrape asks the loop for the figures
(``run_coroutine_threadsafe``) and waits at most ``SCRAPE_TIMEOUT_S``; a loop that does not
answer in that time gets the scrape an HTTP 500, not a hang.

Imported only when ``health.metrics_port`` is set: prometheus_client costs memory that a
gateway without a Prometheus has no use for.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent.health import HealthFigures
from edge_agent.metrics_http import MetricsServer

PREFIX = "edgefleet_agent"
SCRAPE_TIMEOUT_S = 5.0


class AgentCollector(Collector):
    def __init__(
        self, loop: asyncio.AbstractEventLoop, figures: Callable[[], Awaitable[HealthFigures]]
    ) -> None:
        self._loop = loop
        self._figures = figures
        self._lock = threading.Lock()
        self._taking: Future[HealthFigures] | None = None

    def describe(self) -> Iterator[Metric]:
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        async def take() -> HealthFigures:
            return await self._figures()

        # scrapes that come while the figures are being taken wait for those: each taking
        # counts the outbox on its thread, ahead of the appends, and the HTTP server gives
        # every connection a thread of its own (a burst of scrapes is a burst of counts)
        with self._lock:
            future = self._taking
            if future is None or future.done():
                future = self._taking = asyncio.run_coroutine_threadsafe(take(), self._loop)
        try:
            figures = future.result(SCRAPE_TIMEOUT_S)
        except TimeoutError:
            future.cancel()  # the scrape fails (HTTP 500); nothing is left running for it
            raise
        return self._families(figures)

    def _families(self, fig: HealthFigures | None) -> Iterator[Metric]:
        def counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))

        def gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))

        depth = gauge("outbox_depth", "Rows in the outbox the center has not acked", "lane")
        size = gauge("outbox_bytes", "Size of the outbox file")
        oldest = gauge(
            "outbox_oldest_age_seconds",
            "Age of the oldest telemetry reading not acked (0: the outbox is empty)",
        )
        dropped = counter(
            "dropped",
            "Given up: telemetry past the outbox's size or age bound (counted since the outbox "
            "file was made), readings and alarm events a full disk could not take",
            "lane",
            "cause",
        )
        link = gauge("device_up", "1 if the last poll reached the device, else 0", "device")
        last_good = gauge(
            "device_last_good_timestamp_seconds",
            "Edge time (UTC) of the newest good reading from the device; absent before the first",
            "device",
        )
        polls = counter("device_polls", "Polls of the device", "device")
        errors = counter("device_errors", "Polls that failed (device unreachable)", "device")
        overruns = counter("device_overruns", "Polls skipped: the previous was running", "device")
        produced = counter("readings_produced", "Readings the pollers produced")
        sent = counter("readings_published", "Readings published to the center, resends included")
        acked = counter("rows_acked", "Outbox rows (readings, alarm events) the center acked")
        connected = gauge("uplink_connected", "1 while connected to the central broker")
        reconnects = counter("uplink_reconnects", "Reconnections to the central broker")
        inflight = gauge("uplink_inflight_batches", "Batches published and not acked yet")
        resends = counter("uplink_resends", "Times unacked batches were sent again")
        rejected_acks = counter(
            "uplink_rejected_acks",
            "Acks not signed by the center's key for this gateway, which deleted nothing",
        )
        if fig is not None:
            stats = fig.outbox
            depth.add_metric(["telemetry"], stats.depth)
            depth.add_metric(["alarms"], stats.alarms_depth)
            size.add_metric([], stats.bytes)
            oldest.add_metric([], fig.oldest_age_s or 0.0)
            dropped.add_metric(["telemetry", "outbox_bound"], stats.dropped_telemetry)
            dropped.add_metric(["telemetry", "disk_full"], fig.lost_disk_full)
            dropped.add_metric(["alarms", "disk_full"], fig.alarm_events_lost_disk_full)
            for device, entry in fig.devices.items():
                link.add_metric([device], 1 if entry.get("link") == "up" else 0)
                # a device behind a multi-device driver (MQTT, one per topic): its own
                # last message; a polled device: its poller's last good reading
                when = entry.get("last_seen", entry.get("last_good"))
                if isinstance(when, int | float):
                    last_good.add_metric([device], when)
                for family, key in ((polls, "polls"), (errors, "errors"), (overruns, "overruns")):
                    value = entry.get(key)
                    if isinstance(value, int):
                        family.add_metric([device], value)
            produced.add_metric([], fig.readings_produced)
            sent.add_metric([], fig.readings_sent)
            acked.add_metric([], fig.rows_acked)
            connected.add_metric([], 1 if fig.connected else 0)
            reconnects.add_metric([], fig.reconnects)
            inflight.add_metric([], fig.inflight_batches)
            resends.add_metric([], fig.resends)
            rejected_acks.add_metric([], fig.rejected_acks)
        yield from (depth, size, oldest, dropped, link, last_good, polls, errors, overruns)
        yield from (produced, sent, acked, connected, reconnects, inflight, resends, rejected_acks)


class AgentMetrics:
    """The endpoint: bound first (``MetricsUnavailable`` before anything is opened), fed
    once the health reporter is wired (``expose``)."""

    def __init__(self, host: str, port: int) -> None:
        self._server = MetricsServer(host, port)
        self.port = self._server.port

    def expose(
        self, loop: asyncio.AbstractEventLoop, figures: Callable[[], Awaitable[HealthFigures]]
    ) -> None:
        self._server.registry.register(AgentCollector(loop, figures))

    async def aclose(self) -> None:
        # off the loop: a scrape in progress waits for the loop, and close waits for it
        await asyncio.to_thread(self._server.close)
