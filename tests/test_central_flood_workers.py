"""The flood of ``test_central_flood`` against two ingest workers on PostgreSQL: each
worker's memory stays bounded, another gateway's alarm overtakes a backlog queued ahead
of it, and every QoS 1 reading is stored exactly once.

The real ``fleet central run --workers 2`` (a supervisor and two worker processes on MQTT
v5 shared subscriptions), Mosquitto, a real PostgreSQL server; the flood is
``bench.flood``'s publisher in a process of its own. As there, the backlog is made while
the service is down (the workers' persistent sessions hold their shares at the broker), so
the alarm has many rounds' worth of telemetry ahead of it when the workers start.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from bench.flood import BROKER_CONF, Flood, alarm_payload, flood_bodies
from bench.procs import status_kb
from edge_agent.contract import Channel, Topics
from edge_agent.contract.payloads import encode_telemetry_raw
from tests.support import Broker, PgCentral, wait_for
from tests.test_central_flood import GROWTH_LIMIT_MB, READINGS, client

pytestmark = pytest.mark.hil

TOPICS = Topics()
BACKLOG = 60
FLOOD_S = 10
WORKERS = 2


def one(conn: psycopg.Connection[tuple[int, ...]], sql: str) -> tuple[int, ...]:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return tuple(row)


def rss_kb(central: PgCentral, key: str = "VmRSS") -> int:
    return sum(status_kb(pid, key) or 0 for pid in central.worker_pids().values())


def test_a_flood_on_two_workers_keeps_them_small_and_an_alarm_goes_first(
    tmp_path: Path, pg_url: str
) -> None:
    broker = Broker(tmp_path, extra_conf=BROKER_CONF).start()
    central = PgCentral(tmp_path, broker.url, pg_url, "--workers", str(WORKERS))
    central.start(sessions=2 * WORKERS)
    pub = client(broker)
    flood: Flood | None = None
    conn = psycopg.connect(pg_url, autocommit=True)
    try:
        rss_before_kb = rss_kb(central)
        assert central.stop() == 0  # the sessions persist: the broker keeps each share

        bodies = flood_bodies(READINGS)
        topic = TOPICS.gw("gw-real", Channel.TELEMETRY)
        for b in range(BACKLOG):
            payload = encode_telemetry_raw("gw-real", "s-real", 1 + b * READINGS, bodies)
            pub.publish(topic, payload, qos=1).wait_for_publish(10)
        alarm = pub.publish(
            TOPICS.gw("gw-alarm", Channel.ALARMS), alarm_payload("gw-alarm", 1), qos=1
        )
        alarm.wait_for_publish(10)

        flood = Flood(broker.port, gateways=40, readings=READINGS, rate=150, seconds=60).start()
        wait_for(lambda: flood is not None and flood.sent.value >= 30, 15, 0.01, "the flood")
        central.start(sessions=2 * WORKERS)
        real = "SELECT count(*) FROM readings WHERE gateway = 'gw-real'"
        stored = "SELECT count(*) FROM alarm_events WHERE gateway = 'gw-alarm' AND seq = 1"
        peak_kb = 0
        real_when_alarm: int | None = None
        total = BACKLOG * READINGS
        flood_ends = time.monotonic() + FLOOD_S
        while time.monotonic() < flood_ends:  # bounded: FLOOD_S, polls every 20 ms
            peak_kb = max(peak_kb, rss_kb(central))
            if real_when_alarm is None and one(conn, stored) == (1,):
                (real_when_alarm,) = one(conn, real)
            if (peak_kb - rss_before_kb) / 1024 > WORKERS * GROWTH_LIMIT_MB:
                break  # already failed: do not let it take the machine's memory
            time.sleep(0.02)
        sent = flood.sent.value
        flood.stop()
        peak_kb = max(peak_kb, rss_kb(central, "VmHWM"))
        growth_mb = (peak_kb - rss_before_kb) / 1024
        if growth_mb <= WORKERS * GROWTH_LIMIT_MB:
            wait_for(lambda: one(conn, real)[0] >= total, 90, 0.2, "gw-real's backlog")
        seqs = one(
            conn,
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM readings "
            "WHERE gateway = 'gw-real'",
        )
        assert growth_mb < WORKERS * GROWTH_LIMIT_MB, f"RSS grew {growth_mb:.0f} MB"
        assert real_when_alarm is not None, "the alarm was never stored"
        assert real_when_alarm < total // 2, (real_when_alarm, total)
        assert seqs == (total, total, 1, total)  # every QoS 1 reading, once
        assert sent > 300
        assert "Traceback" not in central.output()
    finally:
        conn.close()
        if flood is not None:
            flood.stop()
        pub.loop_stop()
        pub.disconnect()
        central.stop()
        broker.stop()
