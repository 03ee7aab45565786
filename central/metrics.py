"""The center's Prometheus metrics (``fleet central run --metrics-port``).

Ingest already counts most of what matters (``IngestStats``, the inbox's ``LaneStats``):
a custom collector reads those at each scrape instead of a second set of counters kept
beside them. What ingest does not keep, per round (messages per channel, acks sent, the
time a round took to store and commit), comes from one hook, ``Ingest.round_observers``,
and is counted here.

Every series carries ``worker``: the id of the ingest worker it is from ("0" for the one
worker of today's ``central run``), so that workers sharing the fleet's subscriptions can
each be told apart in one process or in several. The numbers are read from the ingest
thread's counters without a lock (int reads): a scrape may see one round half counted,
never a torn number.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from central.inbox import Lane
from central.ingest import Ingest
from central.rounds import RoundResult
from edge_agent.contract import Channel
from edge_agent.metrics_http import MetricsServer

PREFIX = "edgefleet_central"
COMMIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds of the round commit time histogram: a round stays well under a second."""


@dataclass
class _RoundCounts:
    """What one worker's rounds did, as the hook saw them (the ingest thread writes, a
    scrape reads a copy: its rounds, buckets and sum agree)."""

    by_channel: dict[str, int] = field(default_factory=dict)
    acks: int = 0
    rounds: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(COMMIT_BUCKETS_S) + 1))
    seconds: float = 0.0


class _Worker:
    def __init__(self, worker: str, ingest: Ingest) -> None:
        self.worker = worker
        self.ingest = ingest
        self.counts = _RoundCounts()
        self._lock = threading.Lock()
        ingest.round_observers.append(self.round_done)

    def round_done(self, result: RoundResult, seconds: float) -> None:
        counts = self.counts
        by_channel: dict[str, int] = {}
        for _, msg in result.puback:
            parsed = self.ingest.topics.parse(msg.topic)
            channel = "other" if parsed is None else parsed[1].value
            by_channel[channel] = by_channel.get(channel, 0) + 1
        slot = bisect.bisect_left(COMMIT_BUCKETS_S, seconds)  # the first le >= seconds
        with self._lock:
            for channel, n in by_channel.items():
                counts.by_channel[channel] = counts.by_channel.get(channel, 0) + n
            counts.acks += len(result.acks)
            counts.rounds += 1
            counts.buckets[slot] += 1
            counts.seconds += seconds

    def snapshot(self) -> _RoundCounts:
        with self._lock:
            c = self.counts
            return _RoundCounts(dict(c.by_channel), c.acks, c.rounds, list(c.buckets), c.seconds)


def _cumulative(counts: _RoundCounts) -> list[tuple[str, float]]:
    """The histogram's buckets as Prometheus has them: (``le``, count up to it), ending
    with ``+Inf``."""
    out: list[tuple[str, float]] = []
    running = 0
    for le, n in zip([*map(str, COMMIT_BUCKETS_S), "+Inf"], counts.buckets, strict=True):
        running += n
        out.append((le, running))
    return out


class CentralCollector(Collector):
    """The figures of every ingest worker added (``add_worker``), at each scrape."""

    def __init__(self) -> None:
        self._workers: list[_Worker] = []

    def add_worker(self, ingest: Ingest, worker: str = "0") -> None:
        """Expose ``ingest``'s figures labelled ``worker`` (from now on: the per-round
        counts start at this call)."""
        if any(w.worker == worker for w in self._workers):
            raise ValueError(f"worker {worker!r} is already exposed")
        self._workers.append(_Worker(worker, ingest))

    def describe(self) -> Iterator[Metric]:
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        return self._families(list(self._workers))

    def _families(self, workers: Sequence[_Worker]) -> Iterator[Metric]:
        def counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["worker", *labels])

        def gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["worker", *labels])

        messages = counter(
            "messages",
            "Messages taken from the broker and committed (stored, or rejected), by channel",
            "channel",
        )
        readings = counter("readings_stored", "Readings stored")
        duplicates = counter(
            "duplicates", "Readings already stored (a resend), dropped by the store's key"
        )
        alarms = counter("alarms_stored", "Alarm events stored")
        rejected = counter(
            "messages_rejected", "Messages the store could not take (kept as dead letters)"
        )
        conflicts = counter(
            "messages_in_conflict",
            "Messages that resent seqs stored with other content (kept whole as dead letters, "
            "flagged, acked)",
        )
        acks = counter("acks_sent", "Acks published to gateways (one per gateway and stream)")
        rounds = counter("rounds", "Rounds stored and committed")
        failures = counter("store_failures", "Rounds the store failed (rolled back, retried)")
        commit = HistogramMetricFamily(
            f"{PREFIX}_commit_seconds",
            "Time to store and commit one round",
            labels=["worker"],
        )
        depth = gauge("inbox_messages", "Messages waiting in the inbox", "lane")
        size = gauge("inbox_bytes", "Bytes waiting in the inbox (payload and overhead)", "lane")
        shed = counter("inbox_shed", "QoS 0 messages dropped because the inbox was full", "lane")
        waits = counter("inbox_waits", "Messages that waited for room in the inbox", "lane")
        lag = gauge(
            "inbox_oldest_age_seconds",
            "How long the oldest message waiting in the inbox has waited (0: none waits)",
            "lane",
        )
        connected = gauge("connected", "1 while both broker sessions are connected")
        for w in workers:
            ing, st, label = w.ingest, w.ingest.stats, [w.worker]
            rc = w.snapshot()
            channels = rc.by_channel
            for channel in Channel:
                if channel in (Channel.ACK, Channel.CMD):
                    continue  # the center sends these, it does not ingest them
                messages.add_metric([*label, channel.value], channels.pop(channel.value, 0))
            for other, n in channels.items():  # a topic no channel of the contract
                messages.add_metric([*label, other], n)
            readings.add_metric(label, st.readings_stored)
            duplicates.add_metric(label, st.duplicates)
            alarms.add_metric(label, st.alarms_stored)
            rejected.add_metric(label, st.rejected)
            conflicts.add_metric(label, st.conflicts)
            acks.add_metric(label, rc.acks)
            rounds.add_metric(label, rc.rounds)
            failures.add_metric(label, st.store_failures)
            commit.add_metric(label, _cumulative(rc), rc.seconds)
            for lane in Lane:
                count, nbytes, age = ing.inbox.waiting(lane)
                lane_stats = ing.inbox.stats(lane)
                depth.add_metric([*label, lane.value], count)
                size.add_metric([*label, lane.value], nbytes)
                shed.add_metric([*label, lane.value], lane_stats.shed)
                waits.add_metric([*label, lane.value], lane_stats.waits)
                lag.add_metric([*label, lane.value], age or 0.0)
            connected.add_metric(label, 1 if ing.connected.is_set() else 0)
        yield from (messages, readings, duplicates, alarms, rejected, conflicts, acks, rounds)
        yield failures
        yield from (commit, depth, size, shed, waits, lag, connected)


class CentralMetrics:
    """The center's endpoint: a ``CentralCollector`` in a dedicated registry, served."""

    def __init__(self, host: str, port: int) -> None:
        """Raises ``MetricsUnavailable`` (port in use, not an address of this host)."""
        self._server = MetricsServer(host, port)
        self.port = self._server.port
        self.collector = CentralCollector()
        self._server.registry.register(self.collector)

    def add_worker(self, ingest: Ingest, worker: str = "0") -> None:
        self.collector.add_worker(ingest, worker)

    def close(self) -> None:
        self._server.close()
