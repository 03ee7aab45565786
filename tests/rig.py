"""The test rig shared by the hardware-in-the-loop tests: a register map every Modbus
type shows up in, the device list for it, and a stock MQTT client tapping the wire."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support import Broker, run_cli

GW = "jingan-0001"

POINTS = [
    {
        "name": "level",
        "table": "holding",
        "address": 103,
        "type": "uint16",
        "scale": 0.001,
        "unit": "m",
    },
    {"name": "temp", "table": "holding", "address": 104, "type": "int16", "unit": "°C"},
    {"name": "count", "table": "holding", "address": 105, "type": "uint32"},
    {"name": "delta", "table": "holding", "address": 107, "type": "int32", "order": "CDAB"},
    {
        "name": "pressure",
        "table": "input",
        "address": 0,
        "type": "float32",
        "order": "CDAB",
        "unit": "MPa",
    },
    {"name": "flow", "table": "input", "address": 2, "type": "float32"},
    {"name": "smoke_alarm", "table": "holding", "address": 110, "type": "bit", "bit": 0},
    {"name": "fault", "table": "holding", "address": 110, "type": "bit", "bit": 3},
    {"name": "door_closed", "table": "discrete", "address": 0, "type": "bool"},
    {"name": "siren", "table": "coil", "address": 0, "type": "bool"},
]


def devices_yaml(port: int, poll_s: float = 0.2, dev: str = "tank-1") -> str:
    points = "\n".join(f"      - {json.dumps(p, ensure_ascii=False)}" for p in POINTS)
    return (
        f"  - id: {dev}\n"
        f"    modbus: {{host: 127.0.0.1, port: {port}, unit: 1, timeout_s: 0.5}}\n"
        f"    poll_s: {poll_s}\n"
        f"    points:\n{points}\n"
    )


class WireTap:
    """A stock MQTT client on the fleet's topics, as a central system would subscribe."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[tuple[str, bytes, float]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe("edgefleet/v1/#", qos=1)
        self.client.loop_start()
        # a tap that is not listening yet would miss what a test then makes happen
        if not subscribed.wait(10):
            self.close()
            raise AssertionError("the wire tap's subscription was not granted within 10 s")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), time.time()))

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(topic, payload) for topic, payload, _ in self.messages]

    def timed(self) -> list[tuple[str, bytes, float]]:
        """Messages with the time each arrived here."""
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def latest(db: Path, point: str) -> dict[str, Any] | None:
    result = run_cli(
        "fleet",
        "readings",
        "--db",
        str(db),
        "--gateway",
        GW,
        "--point",
        point,
        "--limit",
        "1",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    return rows[0] if rows else None


def value_is(db: Path, point: str, expected: Any, after: float) -> dict[str, Any] | None:
    row = latest(db, point)
    if row is None or row["ts"] < after or row["quality"] != "good":
        return None
    v = row["value"]
    if isinstance(expected, float):
        return row if isinstance(v, float) and math.isclose(v, expected, rel_tol=1e-6) else None
    return row if v == expected and type(v) is type(expected) else None
