"""The central service under a QoS 0 flood: how long an alarm takes to reach the store
with the flood and without it (goal: within 2x), and how big the service grows.

    .venv/bin/python -m bench.flood [--quick] [--seconds 60] [--alarms 20] [--gateways 40]

A publisher process floods the broker with valid telemetry batches of ``--readings``
readings at QoS 0, as fast as the broker takes them (at most ``--rate`` a second), half of
them under one noisy gateway id, the rest spread over ``--gateways`` ids. Meanwhile
another gateway publishes ``--alarms`` alarms at QoS 1, one every 0.25 s; each one's
latency is from its publish to its row in ``central.db`` (polled every 2 ms). The same
alarms are measured first without the flood. ``fleet central run`` is the real console
script; its RSS is sampled every 0.1 s, and its peak (``VmHWM``) reported next to its
RSS before the flood.

Settings it relies on (change them and the figures change):

- central.ingest: ``INBOX_MAX_BYTES`` (8 MiB) bounds the telemetry lane; QoS 0
  telemetry is shed above ``SHED_TELEMETRY_AT`` (half of it); ``ROUND_MAX_BYTES``
  (2 MiB) bounds a round; alarms come on their own session and lane, and cut a round in
  progress short at its next message (so an alarm waits for the one batch being stored
  and one commit: with ``--readings 2000``, tens of ms on a 2-core machine);
- Mosquitto as started by ``tests.support.Broker``, with ``max_queued_messages 10000``;
  QoS 0 messages that Mosquitto cannot queue for the center are dropped by it, not by us
  (both are "shed"; the central log counts its own);
- a fresh store (``synchronous=FULL``: every commit is two fsyncs, the floor of the
  latency without the flood).

``--quick``: a smoke run of a few seconds (fewer alarms, a shorter flood); it completes
and prints its figures, nothing is asserted, and ``results.json`` is left alone (a smoke
run's figures would replace a real run's). Key ``flood`` (``--no-save`` leaves it alone).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sqlite3
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.procs import status_kb
from bench.results import machine, merge, timestamp
from drivers.base import Quality, Reading
from edge_agent.contract import Channel, ReadingEncoder, Topics
from edge_agent.contract.payloads import encode_telemetry_raw
from tests.support import Broker, Central, wait_for

TOPICS = Topics()
NOISY = "flood-noisy"
BROKER_CONF = "max_queued_messages 10000\n"


def flood_bodies(readings: int) -> list[str]:
    """One batch's readings, encoded once: every flood message reuses them."""
    encoder = ReadingEncoder()
    return [
        encoder.encode(Reading("dev", f"p{i % 50}", float(i), "u", Quality.GOOD, 1.7e9 + i))
        for i in range(readings)
    ]


def publish_flood(
    port: int,
    gateways: int,
    readings: int,
    rate: float,
    seconds: float,
    sent: Synchronized[int],
    stop: Any,
) -> None:
    """The flood (a child process): valid batches at QoS 0, every other one from the noisy
    id, until ``stop`` is set or ``seconds`` have passed. Every 20 messages it waits for
    paho to have written them, so that its own memory stays bounded."""
    bodies = flood_bodies(readings)
    ids = [f"flood-{g:03d}" for g in range(gateways)]
    seqs: dict[str, int] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        started = time.monotonic()
        n = 0
        while not stop.is_set() and time.monotonic() - started < seconds:
            gw = NOISY if n % 2 == 0 else ids[(n // 2) % len(ids)]
            first = seqs.get(gw, 1)
            seqs[gw] = first + readings
            payload = encode_telemetry_raw(gw, f"s-{gw}", first, bodies)
            info = client.publish(TOPICS.gw(gw, Channel.TELEMETRY), payload, qos=0)
            n += 1
            if n % 20 == 0:
                info.wait_for_publish(5)
            sent.value = n
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    finally:
        client.loop_stop()
        client.disconnect()


class Flood:
    """``publish_flood`` in a process of its own (fork: it shares nothing it can block)."""

    def __init__(
        self, port: int, *, gateways: int, readings: int, rate: float, seconds: float
    ) -> None:
        ctx = multiprocessing.get_context("fork")
        self.sent: Synchronized[int] = ctx.Value("q", 0)
        self._stop = ctx.Event()
        self._proc = ctx.Process(
            target=publish_flood,
            args=(port, gateways, readings, rate, seconds, self.sent, self._stop),
            daemon=True,
        )

    def start(self) -> Flood:
        self._proc.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


def alarm_payload(gw: str, seq: int) -> bytes:
    return json.dumps(
        {
            "gw": gw,
            "stream": f"s-{gw}",
            "seq": seq,
            "id": "smoke-1/smoke",
            "rule": "smoke",
            "dev": "smoke-1",
            "severity": "critical",
            "state": "active",
            "value": True,
            "ts": time.time(),
            "msg": "smoke detected",
        }
    ).encode()


def alarm_stored(db: sqlite3.Connection, gw: str, seq: int) -> bool:
    row = db.execute(
        "SELECT 1 FROM alarm_events WHERE gateway = ? AND seq = ?", (gw, seq)
    ).fetchone()
    return row is not None


class RssSampler:
    """A process's RSS every 0.1 s on a thread, until ``stop()``: the peak and the last."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            kb = status_kb(self.pid, "VmRSS")
            if kb is not None:
                self.peak_kb = max(self.peak_kb, kb)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@dataclass
class Alarms:
    """A stock MQTT v5 client publishing one gateway's alarms at QoS 1."""

    port: int
    gw: str = "alarm-gw"

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self.seq = 0

    def latencies(self, db: sqlite3.Connection, count: int, timeout_s: float) -> list[float]:
        """Publish ``count`` alarms, 0.25 s apart; seconds from each publish to its row."""
        out = []
        for _ in range(count):
            self.seq += 1
            t0 = time.monotonic()
            self.client.publish(
                TOPICS.gw(self.gw, Channel.ALARMS), alarm_payload(self.gw, self.seq), qos=1
            )
            wait_for(partial(alarm_stored, db, self.gw, self.seq), timeout_s, 0.002, "alarm")
            out.append(time.monotonic() - t0)
            time.sleep(0.25)
        return out

    def warm_up(self, db: sqlite3.Connection, timeout_s: float) -> None:
        """Until an alarm is stored: the service subscribes some time after its store is
        made, and an alarm published before that goes to no one (its sessions are new)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.seq += 1
            self.client.publish(
                TOPICS.gw(self.gw, Channel.ALARMS), alarm_payload(self.gw, self.seq), qos=1
            )
            try:
                wait_for(partial(alarm_stored, db, self.gw, self.seq), 1.0, 0.01, "alarm")
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_s": round(statistics.median(ordered), 4),
        "p99_s": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 4),
        "max_s": round(ordered[-1], 4),
    }


def run(
    *, alarms: int, seconds: float, gateways: int, readings: int, rate: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        broker = Broker(tmp, extra_conf=BROKER_CONF).start()
        central = Central(tmp, broker.url).start()
        alarm_gw = Alarms(broker.port)
        flood: Flood | None = None
        sampler: RssSampler | None = None
        db = sqlite3.connect(central.db, timeout=5)
        try:
            assert central.proc is not None
            pid = central.proc.pid
            alarm_gw.warm_up(db, 15)  # the service is subscribed and warm
            quiet = alarm_gw.latencies(db, alarms, 15)
            rss_before = status_kb(pid, "VmRSS") or 0
            sampler = RssSampler(pid).start()
            flood = Flood(
                broker.port, gateways=gateways, readings=readings, rate=rate, seconds=seconds
            ).start()
            wait_for(lambda: flood is not None and flood.sent.value >= 20, 15, 0.01, "flood")
            flooded = alarm_gw.latencies(db, alarms, 30)
            sent = flood.sent.value
            flood.stop()
            sampler.stop()
            peak = max(sampler.peak_kb, status_kb(pid, "VmHWM") or 0)
            (flood_rows,) = db.execute(
                "SELECT count(*) FROM readings WHERE gateway LIKE 'flood-%'"
            ).fetchone()
            shed_lines = [line for line in central.output().splitlines() if " shed " in line]
        finally:
            db.close()
            if flood is not None:
                flood.stop()
            if sampler is not None:
                sampler.stop()
            alarm_gw.close()
            central.stop()
            broker.stop()
    q, f = summary(quiet), summary(flooded)
    return {
        "alarms": alarms,
        "flood": {
            "gateways": gateways + 1,
            "readings_per_batch": readings,
            "rate_asked_per_s": rate,
            "batches_sent": sent,
            "readings_stored": flood_rows,
            "shed_log_lines": len(shed_lines),
            "last_shed_log": shed_lines[-1].split(": ", 1)[-1] if shed_lines else None,
        },
        "alarm_latency_quiet": q,
        "alarm_latency_flooded": f,
        "p50_ratio": round(f["p50_s"] / max(q["p50_s"], 1e-6), 2),
        "max_ratio": round(f["max_s"] / max(q["max_s"], 1e-6), 2),
        "goal_ratio": 2.0,
        "central_rss_mb_before": round(rss_before / 1024, 1),
        "central_rss_mb_peak": round(peak / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: a few seconds")
    ap.add_argument("--alarms", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0, help="the flood's longest run")
    ap.add_argument("--gateways", type=int, default=40)
    ap.add_argument("--readings", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=150.0, help="flood batches/s at most")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.alarms, args.seconds = 4, 15.0
    r = run(
        alarms=args.alarms,
        seconds=args.seconds,
        gateways=args.gateways,
        readings=args.readings,
        rate=args.rate,
    )
    q, f = r["alarm_latency_quiet"], r["alarm_latency_flooded"]
    print(
        f"alarm to store: p50 {q['p50_s'] * 1000:.1f} ms quiet, {f['p50_s'] * 1000:.1f} ms "
        f"flooded ({r['p50_ratio']}x; max {q['max_s'] * 1000:.1f} / {f['max_s'] * 1000:.1f} "
        f"ms, {r['max_ratio']}x; goal within {r['goal_ratio']}x)"
    )
    fl = r["flood"]
    print(
        f"flood: {fl['batches_sent']} batches of {fl['readings_per_batch']} at QoS 0 from "
        f"{fl['gateways']} ids, {fl['readings_stored']} readings stored, "
        f"central logged shedding {fl['shed_log_lines']} time(s)"
    )
    print(
        f"central RSS: {r['central_rss_mb_before']} MB before the flood, "
        f"peak {r['central_rss_mb_peak']} MB"
    )
    print(json.dumps(r, indent=2))
    if not args.no_save and not args.quick:
        merge({"flood": {"at": timestamp(), "machine": machine(), **r}})


if __name__ == "__main__":
    main()
