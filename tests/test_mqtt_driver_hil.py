"""Wireless sensors end to end, every part real: a paho client publishing as detectors do
-> Mosquitto -> edge-agent (MQTT driver) -> outbox -> Mosquitto -> fleet central."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.contract import Channel, Topics
from edge_agent.contract.schema import validate
from tests.rig import WireTap
from tests.support import Agent, Broker, Central, run_cli, wait_for

pytestmark = pytest.mark.hil
GW = "wireless-0001"


def readings(db: Path, device: str, point: str) -> list[dict[str, Any]]:
    out = run_cli(
        "fleet", "readings", "--db", str(db), "-d", device, "-p", point, "--limit", "5000", "--json"
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def last_health(tap: WireTap) -> dict[str, Any] | None:
    topic = Topics().gw(GW, Channel.HEALTH)
    payloads = [p for t, p in tap.snapshot() if t == topic]
    if not payloads:
        return None
    validate(Channel.HEALTH, payloads[-1])  # what the driver adds keeps the contract
    return dict(json.loads(payloads[-1]))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Detectors:
    """A bridge publishing detectors' uplinks on the local broker."""

    def __init__(self, broker: Broker) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def uplink(obscuration: float, battery_low: bool = False) -> bytes:
    return json.dumps(
        {
            "smoke": {"obscuration": obscuration},
            "temp": 22.5,
            "battery": {"voltage": 3.01},
            "flags": {"alarm": False, "battery_low": battery_low, "tamper": False, "dirty": False},
            "radio": {"rssi": -80},
        }
    ).encode()


def test_garbage_truncated_and_1mb_payloads_are_counted_and_good_ones_all_arrive(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    devices = (
        '  - id: "{id}"\n'
        "    profile: acme/ws-100@2.1\n"
        f"    mqtt: {{url: '{mqtt_broker.url}'}}\n"
        "    poll_s: 0.2\n"
        "    queue_max: 1000\n"
    )
    central = Central(tmp_path, mqtt_broker.url).start()
    tap = WireTap(mqtt_broker)
    agent = Agent.for_devices(tmp_path, mqtt_broker.url, devices, GW)
    bridge = Detectors(mqtt_broker)
    try:
        agent.start()
        assert agent.proc is not None
        wait_for(lambda: "subscribed to ws100/+/up" in agent.output(), 15, what="the subscription")
        good: dict[str, list[float]] = {"det-1": [], "det-2": []}

        def send_good(i: int) -> None:
            for n, dev in enumerate(good, start=1):
                value = round(n + i / 1000, 3)
                good[dev].append(value)
                bridge.send(f"ws100/{dev}/up", uplink(value))

        for i in range(5):  # warm up before measuring memory
            send_good(i)
        wait_for(lambda: len(readings(central.db, "det-2", "obscuration")) >= 5, 15, what="warm-up")
        before = rss_kb(agent.proc.pid)
        big = b'{"smoke": {"obscuration": 9.9}, "pad": "' + b"x" * (1024 * 1024) + b'"}'
        for i in range(5, 45):
            send_good(i)
            bridge.send("ws100/det-1/up", b"\x00\xffgarbage<html>")
            bridge.send("ws100/det-1/up", uplink(7.7)[:40])  # truncated JSON
            bridge.send("ws100/det-1/up", json.dumps({"smoke": {"obscuration": "n/a"}}).encode())
            bridge.send("ws100/det-1/up", big)  # 40 of them: 40 MiB through the agent

        def counted() -> dict[str, Any] | None:
            health = last_health(tap)
            dev = (health or {}).get("devices", {}).get("det-1")
            return dev if dev and dev["oversized"] == 40 else None

        det1 = wait_for(counted, 20, what="det-1's bad payloads counted in health data")
        assert (det1["malformed"], det1["oversized"], det1["unexpected"]) == (80, 40, 40)
        assert det1["dropped"] == 0 and det1["link"] == "up" and det1["broker"] == "up"
        health = last_health(tap)
        assert health is not None
        assert health["devices"]["det-2"]["malformed"] == 0
        assert health["devices"]["det-2"]["messages"] == 45

        # every good uplink arrived, for both detectors, and nothing from the bad ones
        for dev, sent in good.items():
            wait_for(
                lambda d=dev, s=sent: len(readings(central.db, d, "obscuration")) >= len(s),
                20,
                what=f"all good readings of {dev}",
            )
            rows = readings(central.db, dev, "obscuration")
            assert sorted(r["value"] for r in rows if r["quality"] == "good") == sorted(sent)
            assert {r["value"] for r in rows} & {9.9, 7.7} == set()
        bad = [r for r in readings(central.db, "det-1", "obscuration") if r["quality"] == "bad"]
        assert len(bad) == 40 and bad[0]["reason"] == "expected a number, got 'n/a'"

        after = rss_kb(agent.proc.pid)
        growth_mb = (after - before) / 1024
        # keeping what it was sent would cost 40 MiB; transient buffers cost a few
        assert growth_mb < 16, f"RSS grew {growth_mb:.1f} MiB over 40 MiB of oversized payloads"
        assert agent.running()
        log = agent.output()
        assert log.count("det-1: oversized payload") == 1  # logged once, counted after
        assert log.count("det-1: malformed payload") == 1
        assert "Traceback" not in log
    finally:
        bridge.close()
        agent.stop()
        central.stop()
        tap.close()


def test_a_silent_detector_goes_stale_then_comes_back_on_its_next_message(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    devices = (
        '  - id: "det-{id}"\n'
        f"    mqtt: {{url: '{mqtt_broker.url}', topic: 'lora/+/data', id_from: 1}}\n"
        "    heartbeat_s: 0.5\n"
        "    poll_s: 0.1\n"
        "    points:\n"
        "      - {name: level, unit: cm}\n"
    )
    central = Central(tmp_path, mqtt_broker.url).start()
    tap = WireTap(mqtt_broker)
    agent = Agent.for_devices(tmp_path, mqtt_broker.url, devices, GW)
    bridge = Detectors(mqtt_broker)
    try:
        agent.start()
        wait_for(lambda: "subscribed to lora/+/data" in agent.output(), 15, what="the subscription")
        for v in (1, 2, 3):
            bridge.send("lora/7/data", str(v).encode())  # plain-number payloads
        wait_for(
            lambda: len(readings(central.db, "det-7", "level")) >= 3, 15, what="det-7 readings"
        )

        def stale() -> dict[str, Any] | None:
            rows = readings(central.db, "det-7", "level")
            return next((r for r in rows if r["quality"] == "stale"), None)

        row = wait_for(stale, 10, what="a stale reading of det-7")
        good = [r for r in readings(central.db, "det-7", "level") if r["quality"] == "good"]
        assert sorted(r["value"] for r in good) == [1, 2, 3]
        # stale after two heartbeats (1 s) of silence since the last message; polled every 0.1 s
        silence = row["ts"] - max(r["ts"] for r in good)
        assert 1.0 <= silence <= 1.5, silence
        assert row["value"] is None and row["reason"].startswith("no message for 1 s")

        def link(state: str) -> dict[str, Any] | None:
            dev = ((last_health(tap) or {}).get("devices") or {}).get("det-7")
            return dev if dev and dev["link"] == state else None

        down = wait_for(lambda: link("down"), 10, what="det-7 down in health data")
        assert "no message" in down["reason"]
        assert (
            len([r for r in readings(central.db, "det-7", "level") if r["quality"] == "stale"]) == 1
        )

        t_back = time.time()
        bridge.send("lora/7/data", b"42.5")
        row = wait_for(
            lambda: next(
                (
                    r
                    for r in readings(central.db, "det-7", "level")
                    if r["quality"] == "good" and r["ts"] >= t_back
                ),
                None,
            ),
            10,
            what="det-7 back",
        )
        assert row["value"] == 42.5 and row["unit"] == "cm"
        wait_for(lambda: link("up"), 10, what="det-7 up in health data")
        assert "det-7 back after" in agent.output()
    finally:
        bridge.close()
        agent.stop()
        central.stop()
        tap.close()


def test_an_unpaired_surrogate_in_a_payload_reaches_the_center_as_valid_text(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    # {"label": "\ud800"} is valid JSON, but no UTF-8 encoder (SQLite's, the wire's) takes it
    devices = (
        "  - id: tag-1\n"
        f"    mqtt: {{url: '{mqtt_broker.url}', topic: 'sensors/tag-1/up'}}\n"
        "    poll_s: 0.2\n"
        "    points:\n"
        "      - {name: label, type: string, path: label}\n"
        "      - {name: level, unit: cm, path: level}\n"
    )
    central = Central(tmp_path, mqtt_broker.url).start()
    agent = Agent.for_devices(tmp_path, mqtt_broker.url, devices, GW)
    bridge = Detectors(mqtt_broker)
    try:
        agent.start()
        wait_for(lambda: "subscribed to sensors/tag-1/up" in agent.output(), 15, what="subscribed")
        bridge.send("sensors/tag-1/up", b'{"label": "\\ud800ok", "level": "\\udfff"}')
        bridge.send("sensors/tag-1/up", b'{"label": "after", "level": 4}')
        rows = wait_for(
            lambda: (r := readings(central.db, "tag-1", "label")) and len(r) >= 2 and r,
            15,
            what="both labels at the center",
        )
        assert sorted(r["value"] for r in rows) == ["?ok", "after"]
        levels = readings(central.db, "tag-1", "level")
        bad = [r for r in levels if r["quality"] == "bad"]
        assert len(bad) == 1 and bad[0]["reason"] == "expected a number, got '\\udfff'"
        assert [r["value"] for r in levels if r["quality"] == "good"] == [4]
        assert agent.running() and "Traceback" not in agent.output()
    finally:
        bridge.close()
        agent.stop()
        central.stop()
