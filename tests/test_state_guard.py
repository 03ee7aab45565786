"""A forged retained ``state`` (``online: false`` for a running gateway, published by
anyone a lax broker lets publish there) does not stick: the agent sees that the retained
copy is not its own and publishes its own again, at most once every few seconds however
many forgeries come. A real agent, a real Mosquitto, a stock paho client as the forger."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.contract import Channel, Topics
from edge_agent.runtime import Presence
from tests.rig import GW, devices_yaml
from tests.support import Agent, Broker, ThreadedDevice, wait_for

pytestmark = pytest.mark.hil

TOPIC = Topics().gw(GW, Channel.STATE)


class StateTap:
    """Every state message on the gateway's topic, retained copies included."""

    def __init__(self, broker: Broker) -> None:
        self.seen: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(TOPIC, qos=1)
        self.client.loop_start()

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.seen.append(json.loads(msg.payload))

    def last(self) -> dict[str, object] | None:
        with self._lock:
            return self.seen[-1] if self.seen else None

    def online_count(self) -> int:
        with self._lock:
            return sum(1 for s in self.seen if s.get("online") is True)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained(broker: Broker) -> dict[str, object] | None:
    """What a newcomer subscribing now is given: the broker's retained copy."""
    got: list[dict[str, object]] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        got.append(json.loads(msg.payload))
        done.set()

    c.on_message = on_message
    c.connect("127.0.0.1", broker.port)
    c.subscribe(TOPIC, qos=1)
    c.loop_start()
    done.wait(3)
    c.loop_stop()
    c.disconnect()
    return got[0] if got else None


def test_a_forged_offline_state_is_put_right_and_a_flood_is_not_echoed(
    tmp_path: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice
) -> None:
    agent = Agent.for_devices(tmp_path, mqtt_broker.url, devices_yaml(modbus_server.port), GW)
    tap = StateTap(mqtt_broker)
    forger = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    forger.connect("127.0.0.1", mqtt_broker.port)
    forger.loop_start()
    try:
        agent.start()
        wait_for(lambda: (tap.last() or {}).get("online") is True, 15, what="the agent online")
        forged = json.dumps({"gw": GW, "online": False}).encode()
        forger.publish(TOPIC, forged, qos=1, retain=True).wait_for_publish(5)
        wait_for(
            lambda: (retained(mqtt_broker) or {}).get("online") is True,
            15,
            what="the agent's own state retained again",
        )
        assert "was not its own" in agent.output()

        # a flood of forgeries: answered at most once per CORRECT_EVERY_S, plus one
        before = tap.online_count()
        started = time.monotonic()
        for _ in range(50):
            forger.publish(TOPIC, forged, qos=1, retain=True)
            time.sleep(0.04)
        time.sleep(Presence.CORRECT_EVERY_S + 1)
        took = time.monotonic() - started
        answers = tap.online_count() - before
        assert 1 <= answers <= took / Presence.CORRECT_EVERY_S + 2, answers
        wait_for(
            lambda: (retained(mqtt_broker) or {}).get("online") is True,
            15,
            what="the agent's own state after the flood",
        )
        # a clean stop's goodbye is its own last word: not put right
        assert agent.stop() == 0
        time.sleep(1)
        assert (retained(mqtt_broker) or {}).get("online") is False
    finally:
        forger.loop_stop()
        forger.disconnect()
        tap.close()
        agent.stop()
