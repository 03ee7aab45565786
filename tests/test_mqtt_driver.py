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
from edge_agent.devices import open_driver
from mqttlink.session import Session
from tests.proxy import FaultProxy
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


def test_a_number_out_of_range_is_bad_and_spares_the_other_points_of_the_message() -> None:
    reader = PayloadReader(
        [
            MqttPoint(name="alarm", path="alarm", type="bool"),
            MqttPoint(name="t", path="t", type="float"),
            MqttPoint(name="scaled", path="scaled", scale=10),
            MqttPoint(name="wide", path="wide", type="int"),
            MqttPoint(name="huge", path="huge"),
            MqttPoint(name="text", path="text"),
            MqttPoint(name="flag", path="flag", type="bool"),
            MqttPoint(name="rssi", path="rssi", type="int"),
        ]
    )
    t, wide, huge, flag = "9" * 400, 2**63, "9" * 5000, "9" * 350
    payload = (
        f'{{"alarm": true, "t": {t}, "scaled": 1e308, "wide": {wide}, "huge": {huge},'
        f' "text": "1e999", "flag": {flag}, "rssi": -71}}'
    ).encode()
    got = reader.read(payload)
    out = Bad("number out of range")
    assert got == {
        "alarm": True,
        "rssi": -71,
        "t": out,  # too big for a float
        "scaled": out,  # scaled past the float range
        "wide": out,  # no 64-bit integer: no outbox could store it
        "huge": out,  # a literal too long to convert at all
        "text": out,
        "flag": Bad("expected a boolean, got a number out of range"),
    }
    assert reader.read(b'{"wide": %d}' % (2**63 - 1)) == {"wide": 2**63 - 1}


def test_text_from_payloads_is_valid_utf8_even_with_unpaired_surrogates() -> None:
    reader = PayloadReader(
        [MqttPoint(name="label", path="label", type="string"), MqttPoint(name="n", path="n")]
    )
    got = reader.read(b'{"label": "\\ud800ok", "n": "\\udfff"}')
    label, bad = got["label"], got["n"]
    assert label == "?ok"
    assert isinstance(bad, Bad) and bad.reason.startswith("expected a number, got")
    bad.reason.encode("utf-8")  # no UnicodeEncodeError: SQLite and JSON take it


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
    drv.receive("sensors/det-1/up", msg(obscuration=0.05))  # garbage counts for known devices
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
    assert det1["messages"] == 18 and det1["link"] == "up"
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


def test_garbage_on_new_topic_levels_makes_no_device_and_leaves_room_for_real_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="drivers.mqtt.driver")
    mqtt_section = {**device().mqtt.model_dump(), "max_payload_bytes": 64}
    drv = MqttDriver(device(max_devices=3, mqtt=mqtt_section))
    for i in range(100):  # a fuzzer or a broken bridge, on ever new topic levels
        drv.receive(f"sensors/junk{i}/up", b"\xff\xfe garbage")
        drv.receive(f"sensors/junk{i}/up", msg(hello=i))
        drv.receive(f"sensors/junk{i}/up", b"x" * 100)
    drv.receive("sensors/det-7/up", msg(obscuration=9.5))  # a real detector, first message
    assert drv.devices == ["det-7"] and drv.stats.refused == 0
    assert drv.stats.stray == {"malformed": 100, "unexpected": 100, "oversized": 100}
    assert values(drv.collect()) == {("det-7", "smoke"): 9.5}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all("no device is made" in line for line in lines), lines


def test_a_retained_message_is_not_the_device_heard_now() -> None:
    clock = Clock()
    drv = MqttDriver(device(heartbeat_s=10), clock=clock)
    drv.receive("sensors/det-1/up", msg(obscuration=0.2))
    drv.collect()
    clock.t += 15
    drv.receive("sensors/det-1/up", msg(obscuration=0.2), retained=True)  # resent on reconnect
    drv.receive("sensors/det-2/up", msg(obscuration=0.3), retained=True)
    clock.t += 6
    readings = drv.collect()
    assert {(r.device, r.quality) for r in readings} == {("det-1", Quality.STALE)}
    assert drv.devices == ["det-1"] and drv.stats.retained == 2


def test_an_id_made_from_a_topic_that_another_device_has_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="drivers.mqtt.driver")
    drv = open_driver(device(), gateway_ids=["tank-1", "{id}", "lift-7"])
    assert isinstance(drv, MqttDriver)
    for _ in range(3):
        drv.receive("sensors/tank-1/up", msg(obscuration=5.0))  # the Modbus tank's id
    drv.receive("sensors/det-1/up", msg(obscuration=0.1))
    assert values(drv.collect()) == {("det-1", "smoke"): 0.1}
    assert drv.devices == ["det-1"] and drv.stats.collided == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "'tank-1', which another device on this gateway has" in lines[0]
    # a fixed id is the entry's own, never a collision with itself
    fixed = MqttDriver(
        device(id="det-7", mqtt={"url": "mqtt://127.0.0.1:1", "topic": "site/det-7"}),
        taken_ids={"det-7", "tank-1"},
    )
    fixed.receive("site/det-7", msg(obscuration=0.3))
    assert values(fixed.collect()) == {("det-7", "smoke"): 0.3}


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


async def wait_until(what: str, ok: Any, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not ok():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_retained_uplinks_resent_at_each_reconnect_do_not_keep_a_dead_detector_alive(
    mqtt_broker: Broker, version: str
) -> None:
    # the bridge retains every uplink; det-8 died long before the gateway started
    pub = publisher(mqtt_broker)
    pub.publish("sensors/det-8/up", msg(obscuration=8.0), qos=1, retain=True).wait_for_publish(5)
    proxy = FaultProxy(mqtt_broker.port)  # the local broker link, which we cut
    section = {"url": proxy.url, "topic": "sensors/+/up", "id_from": 1, "version": version}
    drv = MqttDriver(device(mqtt=section, heartbeat_s=0.5, points=POINTS[:1]))
    try:
        await drv.read()
        await wait_until("the driver never subscribed", lambda: drv.stats.link == "up")
        # det-7's last uplink, live (it reaches the subscription unflagged), then it dies
        pub.publish("sensors/det-7/up", msg(obscuration=0.5), qos=1, retain=True)
        first: list[Reading] = []
        while ("det-7", "smoke") not in values(first):
            first += await read_until(drv, 1)

        # the link drops again and again, each time within det-7's 1 s window; each
        # reconnect would bring the retained uplink back with the time of the reconnect
        got: list[Reading] = []
        deadline = time.monotonic() + 10
        while not any(r.quality is Quality.STALE for r in got):
            assert time.monotonic() < deadline, f"det-7 never went stale: {got}"
            connects = drv.stats.connects
            proxy.cut()
            await wait_until("no reconnect", lambda c=connects: drv.stats.connects > c)
            await wait_until("no resubscribe", lambda: drv.stats.link == "up")
            await asyncio.sleep(0.2)
            got += await drv.read()
        assert [(r.device, r.quality) for r in got] == [("det-7", Quality.STALE)]
        assert values(first) == {("det-7", "smoke"): 0.5}
        assert drv.devices == ["det-7"]  # the retained det-8 made no device
        # MQTT 5: the broker was asked not to send them; 3.1.1: they came and were ignored
        assert (drv.stats.retained > 0) == (version == "3.1.1")
    finally:
        pub.publish("sensors/det-8/up", b"", retain=True).wait_for_publish(5)  # clear it
        pub.loop_stop()
        pub.disconnect()
        await drv.aclose()
        proxy.close()


class RefusingBroker:
    """Just enough of an MQTT 5 broker to refuse subscriptions the way an ACL does (SUBACK
    0x87 Not authorized). Mosquitto 2.0 cannot be made to: its acl_file grants every
    SUBSCRIBE and only filters at delivery."""

    def __init__(self) -> None:
        self.refuse = True
        self.subscribes = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"mqtt://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                kind = (await reader.readexactly(1))[0] >> 4
                length, shift, more = 0, 0, True
                while more:
                    byte = (await reader.readexactly(1))[0]
                    length, shift, more = length | (byte & 0x7F) << shift, shift + 7, byte > 127
                body = await reader.readexactly(length)
                if kind == 1:  # CONNECT: CONNACK, success, no properties
                    writer.write(b"\x20\x03\x00\x00\x00")
                elif kind == 8:  # SUBSCRIBE: SUBACK for its packet id, one reason code
                    self.subscribes += 1
                    writer.write(
                        b"\x90\x04" + body[:2] + b"\x00" + (b"\x87" if self.refuse else b"\x01")
                    )
                elif kind == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_refused_subscription_is_logged_once_shown_down_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="drivers.mqtt.driver")
    broker = RefusingBroker()
    url = await broker.start()
    drv = MqttDriver(device(id="det-7", mqtt={"url": url, "topic": "site/det-7"}))
    try:
        await drv.read()
        await wait_until("fewer than 3 subscriptions tried", lambda: broker.subscribes >= 3)
        assert drv.stats.link == "down"
        assert drv.stats.reason == "refused the subscription to site/det-7: Not authorized"
        assert drv.device_health()["det-7"]["broker"] == "down"
        lines = [r.getMessage() for r in caplog.records]
        assert sum("refused the subscription" in line for line in lines) == 1, lines
        assert not any("subscribed" in line for line in lines), lines

        broker.refuse = False  # the ACL is fixed: the next retry gets through
        await wait_until("never subscribed", lambda: drv.stats.link == "up")
        assert drv.device_health()["det-7"]["broker"] == "up"
        assert any("subscribed to site/det-7" in r.getMessage() for r in caplog.records)
    finally:
        await drv.aclose()
        broker.close()


async def test_aclose_while_connecting_ends_the_network_thread(mqtt_broker: Broker) -> None:
    drv = MqttDriver(device(mqtt={"url": mqtt_broker.url, "topic": "s/+", "id_from": 1}))
    make_session = drv._make_session

    def session_that_is_closed_while_connecting() -> Session:
        session = make_session()
        client = session._client
        connect = client.connect

        def aclose_lands_inside_connect(*args: Any, **kwargs: Any) -> Any:
            session._stopping.set()  # what aclose() does while the thread is in here
            client.disconnect()
            return connect(*args, **kwargs)

        client.connect = aclose_lands_inside_connect  # type: ignore[method-assign]
        return session

    drv._make_session = session_that_is_closed_while_connecting  # type: ignore[method-assign]
    drv.start()
    assert drv._session is not None
    thread = drv._session._thread
    assert thread is not None
    await asyncio.to_thread(thread.join, 5)
    assert not thread.is_alive(), "loop_forever kept running after aclose()"
    assert drv.stats.connects == 0  # it never subscribed either
