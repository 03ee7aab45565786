"""A full inbox holds the socket, not the service: QoS 1 waits at the broker while the
session's thread waits for room, PUBACKs and acks still go out (every socket write is on
that thread, which the ingest thread never waits for), nothing is lost or stored twice,
and the service stops promptly even with the session's thread waiting.

And the alarm subscription an older central left in its main persistent session is
dropped, so alarms come on the alarm session alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import central.ingest as ingest_module
from bench.flood import alarm_payload, flood_bodies
from central.inbox import Lane
from central.ingest import Ingest, run_central
from central.store.sqlite import SqliteStore
from edge_agent.contract import Channel, Topics
from edge_agent.contract.payloads import encode_telemetry_raw
from mqttlink.url import Broker as BrokerSettings
from tests.support import Broker, wait_for
from tests.test_central_robust import Gateways

pytestmark = pytest.mark.hil

TOPICS = Topics()


def test_a_full_inbox_holds_qos1_at_the_broker_and_loses_nothing(
    tmp_path: Path, mqtt_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_module, "INBOX_MAX_BYTES", 64 * 1024)  # room for ~2 batches
    gws = Gateways(mqtt_broker)
    settings = BrokerSettings.plain(mqtt_broker.url)
    db = tmp_path / "central.db"
    bodies = flood_bodies(300)  # ~27 kB a batch
    try:
        # 1. nobody takes from the inbox: it fills, and the session's thread waits in put()
        store = SqliteStore(db)
        first = Ingest(store, settings, TOPICS, client_id="bp")
        first.start()
        wait_for(first.connected.is_set, 10, what="ingest connected")
        for b in range(40):
            gws.client.publish(
                TOPICS.gw("gw-a", Channel.TELEMETRY),
                encode_telemetry_raw("gw-a", "s", 1 + b * 300, bodies),
                qos=1,
            )
        wait_for(lambda: first.inbox.stats(Lane.DATA).waits > 0, 10, what="a full inbox")
        assert first.inbox.stats(Lane.DATA).peak_bytes <= 64 * 1024
        started = time.monotonic()
        first.stop()  # must not hang on the thread waiting for room
        assert time.monotonic() - started < 3
        store.close()

        # 2. the next run gets everything from the broker, through the same small inbox
        store = SqliteStore(db)
        second = Ingest(store, settings, TOPICS, client_id="bp")
        stop = threading.Event()
        result: list[int] = []
        runner = threading.Thread(target=lambda: result.append(run_central(store, second, stop)))
        runner.start()
        try:
            wait_for(
                lambda: (
                    {s for a, z in gws.telemetry_acked("gw-a") for s in range(a, z + 1)}
                    == set(range(1, 12_001))
                ),
                60,
                what="all 40 batches acked",
            )
            stats = second.inbox.stats(Lane.DATA)
            assert stats.peak_bytes <= 64 * 1024 and stats.shed == 0
        finally:
            stop.set()
            runner.join(15)
        assert result == [0]
        check = SqliteStore(db)
        try:
            (row,) = check.conn.execute(
                "SELECT count(*), min(seq), max(seq) FROM readings WHERE gateway = 'gw-a'"
            ).fetchall()
        finally:
            check.close()
        assert row == (12_000, 1, 12_000)
    finally:
        gws.close()


def test_the_alarm_subscription_of_an_older_central_is_dropped_and_what_it_held_kept(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    old = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="upgraded", protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    old.connect("127.0.0.1", mqtt_broker.port, clean_start=False, properties=props)
    old.loop_start()
    subscribed = threading.Event()
    old.on_subscribe = lambda *_: subscribed.set()
    old.subscribe(TOPICS.pattern(Channel.ALARMS), qos=1)  # as centrals before this one did
    assert subscribed.wait(5)
    old.disconnect()
    old.loop_stop()

    gws = Gateways(mqtt_broker)
    gws.publish("gw-a", Channel.ALARMS, alarm_payload("gw-a", 1))  # held for the old session
    store = SqliteStore(tmp_path / "central.db")
    ingest = Ingest(store, BrokerSettings.plain(mqtt_broker.url), TOPICS, client_id="upgraded")
    ingest.start()  # sessions only: nothing takes from the inbox, so it shows what came
    try:
        wait_for(ingest.connected.is_set, 10, what="ingest connected")
        # what the old subscription held comes in on the main session, not dropped
        wait_for(lambda: ingest.inbox.pending(Lane.DATA) == 1, 5, what="the held alarm")
        time.sleep(0.3)  # the UNSUBSCRIBE sent at the connect has been handled
        gws.publish("gw-a", Channel.ALARMS, alarm_payload("gw-a", 2))
        wait_for(lambda: ingest.inbox.pending(Lane.ALARMS) == 1, 5, what="the new alarm")
        time.sleep(0.3)
        assert ingest.inbox.pending(Lane.DATA) == 1  # no second copy on the main session
        (held,) = ingest.inbox.take_now(Lane.DATA, 10, 10**6)
        assert held.topic == TOPICS.gw("gw-a", Channel.ALARMS) and b'"seq": 1' in held.payload
    finally:
        ingest.stop()
        store.close()
        gws.close()
