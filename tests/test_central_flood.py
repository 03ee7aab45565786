"""The central service under a QoS 0 flood: its memory stays bounded, another gateway's
alarm overtakes the backlog, and every QoS 1 reading is stored exactly once.

The real ``fleet central run`` and Mosquitto; the flood is ``bench.flood``'s publisher
in a process of its own. Nothing here depends on the machine's speed: the backlog is made
while the service is down (its persistent sessions hold it at the broker), so when it
starts, 60 telemetry batches are queued ahead of the alarm, far more than one round.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.flood import BROKER_CONF, Flood, alarm_payload, alarm_stored, flood_bodies
from bench.procs import status_kb
from edge_agent.contract import Channel, Topics
from edge_agent.contract.payloads import encode_telemetry_raw
from tests.support import Broker, Central, wait_for

pytestmark = pytest.mark.hil

TOPICS = Topics()
READINGS = 2000
BACKLOG = 60  # batches of gw-real queued before the alarm: many rounds' worth
FLOOD_S = 10  # the flood goes on this long after the center starts, then stops
REAL_ROWS = "SELECT count(*) FROM readings WHERE gateway = 'gw-real'"
GROWTH_LIMIT_MB = 150  # inbox 8 + 4 MiB, a round of 2 MiB decoded; measured: ~50-80 MB


def client(broker: Broker) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c


def count(db: sqlite3.Connection, sql: str, *args: Any) -> int:
    (n,) = db.execute(sql, args).fetchone()
    return int(n)


def subscribed(db_path: Path, pub: mqtt.Client) -> bool:
    """True once a health message published now has reached the store."""
    pub.publish(
        TOPICS.gw("probe", Channel.HEALTH), json.dumps({"gw": "probe", "ts": time.time()}), qos=1
    )
    time.sleep(0.2)
    db = sqlite3.connect(db_path)
    try:
        return count(db, "SELECT count(*) FROM gateways WHERE id = 'probe'") > 0
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


def test_a_qos0_flood_keeps_the_center_small_and_another_gateways_alarm_goes_first(
    tmp_path: Path,
) -> None:
    broker = Broker(tmp_path, extra_conf=BROKER_CONF).start()
    central = Central(tmp_path, broker.url).start()
    pub = client(broker)
    flood: Flood | None = None
    try:
        wait_for(lambda: subscribed(central.db, pub), 15, 0.1, "the center subscribed")
        assert central.proc is not None
        rss_before_kb = status_kb(central.proc.pid, "VmRSS") or 0
        assert central.stop() == 0  # its sessions persist: the broker keeps what comes now

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
        central.start()
        assert central.proc is not None
        pid = central.proc.pid
        db = sqlite3.connect(central.db, timeout=5)
        peak_kb = 0
        real_when_alarm: int | None = None
        total = BACKLOG * READINGS
        try:
            flood_ends = time.monotonic() + FLOOD_S
            while time.monotonic() < flood_ends:  # bounded: FLOOD_S, polls every 20 ms
                peak_kb = max(peak_kb, status_kb(pid, "VmRSS") or 0)
                if real_when_alarm is None and alarm_stored(db, "gw-alarm", 1):
                    real_when_alarm = count(db, REAL_ROWS)
                if (peak_kb - rss_before_kb) / 1024 > GROWTH_LIMIT_MB:
                    break  # already failed: do not let it take the machine's memory
                time.sleep(0.02)
            sent = flood.sent.value
            flood.stop()
            peak_kb = max(peak_kb, status_kb(pid, "VmHWM") or 0)
            if (peak_kb - rss_before_kb) / 1024 <= GROWTH_LIMIT_MB:
                wait_for(lambda: count(db, REAL_ROWS) >= total, 60, 0.1, "gw-real's backlog")
            seqs = db.execute(
                "SELECT count(*), min(seq), max(seq) FROM readings WHERE gateway = 'gw-real'"
            ).fetchone()
        finally:
            db.close()
        growth_mb = (peak_kb - rss_before_kb) / 1024
        assert growth_mb < GROWTH_LIMIT_MB, f"RSS grew {growth_mb:.0f} MB under the flood"
        assert real_when_alarm is not None, "the alarm was never stored"
        # the alarm came after all of gw-real's batches, and was stored before most of them
        assert real_when_alarm < total // 2, (real_when_alarm, total)
        assert tuple(seqs) == (total, 1, total)  # every QoS 1 reading, once
        assert sent > 300  # a flood: 150 batches of 2,000 readings a second asked for
        assert "Traceback" not in central.output()
    finally:
        if flood is not None:
            flood.stop()
        pub.loop_stop()
        pub.disconnect()
        central.stop()
        broker.stop()
