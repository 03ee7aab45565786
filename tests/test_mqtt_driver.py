"""The MQTT driver: config checks, payload reading, per-device liveness and counters, with
messages handed to ``receive()`` and a clock we control; then against a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from drivers.base import Quality, Reading, WriteRefused
from drivers.mqtt.codec import Bad, PayloadReader, convert
from drivers.mqtt.config import MqttDevice, MqttPoint
from drivers.mqtt.driver import MqttDriver
from tests.support import Broker

POINTS = [
    {"name": "smoke", "path": "obscuration", "unit": "%/m"},
    {"name": "battery_low", "path": "flags.battery_low", "type": "bool"},
    {"name": "rssi", "path": "radio.rssi", "type": "int", "unit": "dBm"},
]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def device(**overrides: Any) -> MqttDevice:
    fields: dict[str, Any] = {
        "id": "{id}",
        "mqtt": {"url": "mqtt://127.0.0.1:1", "topic": "sensors/+/up", "id_from": 1},
        "heartbeat_s": 10,
        "points": POINTS,
    }
    fields.update(overrides)
    return MqttDevice.model_validate(fields)


def msg(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def values(readings: list[Reading]) -> dict[tuple[str, str], Any]:
    return {(r.device, r.point): r.value for r in readings if r.quality is Quality.GOOD}


# --- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        ({"mqtt": {"url": "mqtt://h", "topic": "s/+/up"}}, ("id",), "needs mqtt.id_from"),
        (
            {"id": "det-1", "mqtt": {"url": "mqtt://h", "topic": "s/+/up", "id_from": 1}},
            ("mqtt", "id_from"),
            "template",
        ),
        (
            {"mqtt": {"url": "mqtt://h", "topic": "s/x/up", "id_from": 1}},
            ("mqtt", "id_from"),
            "not a + wildcard",
        ),
        ({"mqtt": {"url": "http://h", "topic": "s/+", "id_from": 1}}, ("mqtt", "url"), "mqtt://"),
        ({"mqtt": {"url": "mqtt://h", "topic": "s/#/x", "id_from": 1}}, ("mqtt", "topic"), "#"),
        ({"mqtt": {"url": "mqtt://h", "topic": "s/a+/x", "id_from": 1}}, ("mqtt", "topic"), "+"),
        (
            {"mqtt": {"url": "mqtt://h", "topic": "s/+", "id_from": 1, "ca_file": "ca.pem"}},
            ("mqtt", "ca_file"),
            "mqtts://",
        ),
        ({"id": "a b"}, ("id",), "template"),
        ({"points": [{"name": "x", "path": "a..b"}]}, ("points", 0, "path"), "bad JMESPath"),
        (
            {"points": [{"name": "x", "type": "bool", "scale": 2}]},
            ("points", 0, "scale"),
            "numbers",
        ),
        (
            {"points": [{"name": "x", "true_words": ["up"]}]},
            ("points", 0, "true_words"),
            "type bool",
        ),
        (
            {"points": [{"name": "x", "path": "a"}, {"name": "x", "path": "b"}]},
            ("points", 1, "name"),
            "duplicate",
        ),
    ],
)
def test_config_problems_are_reported_at_their_field(
    change: dict[str, Any], where: tuple[Any, ...], says: str
) -> None:
    with pytest.raises(ValidationError) as info:
        device(**change)
    errors = {tuple(e["loc"]): e["msg"] for e in info.value.errors()}
    assert where in errors, errors
    assert says in errors[where]


def test_a_template_with_a_prefix_and_a_filter_ending_in_hash() -> None:
    dev = device(id="leak-{id}", mqtt={"url": "mqtts://h", "topic": "lora/#", "id_from": 1})
    assert dev.templated and dev.mqtt.tls and dev.mqtt.port == 8883
    assert dev.device_id("0042") == "leak-0042"
    assert dev.device_id("a b") is None


# --- payloads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "raw", "expected"),
    [
        ({"type": "number"}, 21.5, 21.5),
        ({"type": "number"}, "21.5", 21.5),
        ({"type": "number"}, 7, 7),
        ({"type": "number", "scale": 0.1}, 215, 21.5),
        ({"type": "int"}, "12", 12),
        ({"type": "int"}, 12.0, 12),
        ({"type": "float"}, 3, 3.0),
        ({"type": "bool"}, True, True),
        ({"type": "bool"}, 0, False),
        ({"type": "bool"}, "ALARM", True),
        ({"type": "bool"}, " normal ", False),
        ({"type": "bool"}, "On", True),
        ({"type": "bool", "true_words": ["open"], "false_words": ["closed"]}, "OPEN", True),
        ({"type": "string"}, 42, "42"),
    ],
)
def test_values_convert_to_the_point_type(
    point: dict[str, Any], raw: object, expected: object
) -> None:
    got = convert(MqttPoint.model_validate({"name": "p", **point}), raw)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("point", "raw", "reason"),
    [
        ({"type": "number"}, "lots", "expected a number, got 'lots'"),
        ({"type": "number"}, True, "expected a number, got a boolean"),
        ({"type": "number"}, {"a": 1}, "expected a number, got an object"),
        ({"type": "int"}, 1.5, "expected an integer"),
        ({"type": "bool"}, "maybe", "expected a boolean word, got 'maybe'"),
        ({"type": "bool"}, 2, "expected a boolean, got the number 2"),
        ({"type": "bool", "true_words": ["open"]}, "on", "expected a boolean word"),
        ({"type": "string"}, [1], "expected a string, got a list"),
    ],
)
def test_wrong_values_are_bad_with_a_reason(
    point: dict[str, Any], raw: object, reason: str
) -> None:
    got = convert(MqttPoint.model_validate({"name": "p", **point}), raw)
    assert isinstance(got, Bad) and got.reason.startswith(reason), got


def test_plain_payloads_and_deep_nesting() -> None:
    plain = PayloadReader([MqttPoint(name="level", unit="cm")])
    assert plain.read(b" 23.5\n") == {"level": 23.5}
    assert plain.read(b'"7"') == {"level": 7}
    assert plain.read(b"") == {}
    nested = PayloadReader([MqttPoint(name="x", path="a.b")])
    assert nested.read(b'{"a": {"b": 1}}') == {"x": 1}
    with pytest.raises(ValueError, match="nested too deeply"):
        nested.read(b"[" * 100_000)


# --- the driver, message by message --------------------------------------------------------


def test_each_topic_level_is_a_device_and_readings_carry_its_id() -> None:
    clock = Clock()
    drv = MqttDriver(device(), clock=clock)
    drv.receive("sensors/det-1/up", msg(obscuration=0.8, flags={"battery_low": "on"}))
    drv.receive("sensors/det-2/up", msg(obscuration=1.2, radio={"rssi": -90}))
    readings = drv.collect()
    assert values(readings) == {
        ("det-1", "smoke"): 0.8,
        ("det-1", "battery_low"): True,
        ("det-2", "smoke"): 1.2,
        ("det-2", "rssi"): -90,
    }
    assert {r.unit for r in readings if r.point == "smoke"} == {"%/m"}
    assert drv.devices == ["det-1", "det-2"]
    assert drv.collect() == []  # handed over once


def test_bad_payloads_are_counted_per_device_logged_once_and_spare_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    drv = MqttDriver(device(mqtt={**device().mqtt.model_dump(), "max_payload_bytes": 1024}))
    caplog.set_level(logging.WARNING, logger="drivers.mqtt.driver")
    for _ in range(3):
        drv.receive("sensors/det-1/up", b"<html>502</html>")
        drv.receive("sensors/det-1/up", b'{"obscuration": 0.')
        drv.receive("sensors/det-1/up", b"\xff\xfe")
        drv.receive("sensors/det-1/up", b'{"obscuration": "' + b"x" * 2000 + b'"}')
        drv.receive("sensors/det-1/up", msg(hello=1))
        drv.receive("sensors/det-2/up", msg(obscuration=0.5))
    drv.receive("sensors/det-1/up", msg(obscuration="lots", radio={"rssi": -70}))
    drv.receive("sensors/det-1/up", msg(obscuration=0.1))
    health = drv.device_health()
    det1 = health["det-1"]
    assert (det1["malformed"], det1["oversized"], det1["unexpected"]) == (9, 3, 4)
    assert det1["messages"] == 17 and det1["link"] == "up"
    assert health["det-2"]["malformed"] == 0 and health["det-2"]["messages"] == 3
    readings = drv.collect()
    assert [r.value for r in readings if r.device == "det-2"] == [0.5, 0.5, 0.5]
    bad = [r for r in readings if r.quality is Quality.BAD]
    assert [(r.device, r.point) for r in bad] == [("det-1", "smoke")]
    assert bad[0].reason == "expected a number, got 'lots'" and bad[0].value is None
    assert values(readings)[("det-1", "rssi")] == -70
    assert values(readings)[("det-1", "smoke")] == 0.1
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 3, logged  # one line per kind for det-1, none for det-2
    assert all("det-1" in line and "further ones are counted" in line for line in logged)


def test_silence_past_the_heartbeat_window_is_stale_once_and_the_next_message_heals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="drivers.mqtt.driver")
    clock = Clock()
    drv = MqttDriver(device(heartbeat_s=10, missed_heartbeats=2), clock=clock)
    drv.receive("sensors/det-1/up", msg(obscuration=0.2))
    drv.receive("sensors/det-2/up", msg(obscuration=0.3))
    drv.collect()
    clock.t += 15
    drv.receive("sensors/det-2/up", msg(obscuration=0.3))
    assert [r.device for r in drv.collect()] == ["det-2"]
    clock.t += 6  # det-1 silent for 21 s > 2 x 10 s
    stale = [r for r in drv.collect() if r.quality is Quality.STALE]
    assert {(r.device, r.point) for r in stale} == {("det-1", p["name"]) for p in POINTS}
    assert all(
        r.value is None and r.reason == "no message for 21 s (heartbeat 10 s)" for r in stale
    )
    health = drv.device_health()
    assert health["det-1"]["link"] == "down" and "no message" in str(health["det-1"]["reason"])
    assert health["det-2"]["link"] == "up"
    clock.t += 100
    assert [r for r in drv.collect() if r.device == "det-1"] == []  # marked once, not every poll
    drv.receive("sensors/det-1/up", msg(obscuration=0.4))
    assert values(drv.collect())[("det-1", "smoke")] == 0.4
    assert drv.device_health()["det-1"]["link"] == "up"
    lines = [r.getMessage() for r in caplog.records]
    assert any("det-1 silent: no message for 21 s" in line for line in lines)
    assert any("det-1 back after 121 s" in line for line in lines)


def test_a_fixed_device_never_heard_goes_stale_after_its_window() -> None:
    clock = Clock()
    mqtt_section = {"url": "mqtt://127.0.0.1:1", "topic": "site/det-7"}
    drv = MqttDriver(device(id="det-7", mqtt=mqtt_section, heartbeat_s=5), clock=clock)
    assert drv.device_health()["det-7"]["link"] == "unknown"
    clock.t += 9
    assert drv.collect() == []
    clock.t += 1
    stale = drv.collect()
    assert {r.quality for r in stale} == {Quality.STALE} and len(stale) == len(POINTS)
    assert stale[0].reason == "never heard for 10 s (heartbeat 5 s)"


def test_memory_is_bounded_per_device_and_in_devices() -> None:
    drv = MqttDriver(device(queue_max=4, max_devices=2, points=POINTS[:1]))
    for i in range(10):
        drv.receive("sensors/det-1/up", msg(obscuration=i))
    drv.receive("sensors/det-2/up", msg(obscuration=1))
    drv.receive("sensors/det-3/up", msg(obscuration=1))  # one device too many
    drv.receive("sensors/a b/up", msg(obscuration=1))  # no valid device id
    assert [r.value for r in drv.collect() if r.device == "det-1"] == [6, 7, 8, 9]
    assert drv.device_health()["det-1"]["dropped"] == 6
    assert drv.devices == ["det-1", "det-2"]
    assert (drv.stats.refused, drv.stats.unnamed) == (1, 1)


async def test_read_never_raises_and_writes_are_refused() -> None:
    drv = MqttDriver(device(mqtt={"url": "mqtt://127.0.0.1:9", "topic": "s/+", "id_from": 1}))
    try:
        assert await drv.read() == []  # no broker there: still no exception
        with pytest.raises(WriteRefused):
            await drv.write("smoke", 1)
    finally:
        await drv.aclose()


async def test_a_driver_that_cannot_start_says_why_and_keeps_trying(tmp_path: Path) -> None:
    section = {"url": "mqtts://127.0.0.1:9", "topic": "s/+", "id_from": 1}
    drv = MqttDriver(device(mqtt={**section, "ca_file": str(tmp_path / "missing-ca.pem")}))
    try:
        assert await drv.read() == [] and await drv.read() == []
        assert drv.stats.link == "down" and "cannot start" in str(drv.stats.reason)
    finally:
        await drv.aclose()


# --- against a real broker ------------------------------------------------------------------


def publisher(broker: Broker) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


async def read_until(drv: MqttDriver, want: int, within_s: float = 10) -> list[Reading]:
    got: list[Reading] = []
    deadline = time.monotonic() + within_s
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} readings: {got}"
        got += await drv.read()
        await asyncio.sleep(0.05)
    return got


async def test_subscribes_on_a_real_broker_and_survives_its_restart(mqtt_broker: Broker) -> None:
    dev = device(
        mqtt={"url": mqtt_broker.url, "topic": "sensors/+/up", "id_from": 1},
        heartbeat_s=0.3,
        points=POINTS[:1],
    )
    drv = MqttDriver(dev)
    pub = publisher(mqtt_broker)
    try:
        await drv.read()
        deadline = time.monotonic() + 10
        while drv.stats.link != "up":
            assert time.monotonic() < deadline, "the driver never subscribed"
            await asyncio.sleep(0.05)
        pub.publish("sensors/det-1/up", msg(obscuration=1.5), qos=1).wait_for_publish(5)
        pub.publish("sensors/det-2/up", msg(obscuration=2.5), qos=1).wait_for_publish(5)
        got = await read_until(drv, 2)
        assert values(got) == {("det-1", "smoke"): 1.5, ("det-2", "smoke"): 2.5}

        # silence: stale after 2 x 0.3 s, then the next message brings it back
        stale = await read_until(drv, 2)
        assert {(r.device, r.quality) for r in stale} == {
            ("det-1", Quality.STALE),
            ("det-2", Quality.STALE),
        }
        pub.publish("sensors/det-1/up", msg(obscuration=1.6), qos=1).wait_for_publish(5)
        back = await read_until(drv, 1)
        assert values(back) == {("det-1", "smoke"): 1.6}

        # the local broker restarts: the driver resubscribes by itself
        pub.loop_stop()
        mqtt_broker.stop()
        mqtt_broker.start()
        pub = publisher(mqtt_broker)
        deadline = time.monotonic() + 15
        got = []
        while not got:
            assert time.monotonic() < deadline, "no reading after the broker restarted"
            pub.publish("sensors/det-2/up", msg(obscuration=3.5), qos=1)
            await asyncio.sleep(0.3)
            got = [r for r in await drv.read() if r.quality is Quality.GOOD]
        assert values(got)[("det-2", "smoke")] == 3.5
        assert drv.stats.connects >= 2
    finally:
        pub.loop_stop()
        pub.disconnect()
        await drv.aclose()
