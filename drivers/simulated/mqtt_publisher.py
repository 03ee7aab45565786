"""Simulated wireless sensors: devices that publish JSON (or plain values) to an MQTT broker.

Each ``SimulatedMqttDevice`` builds its payload from the same ``MqttPoint`` list the
agent's driver is configured with, inverting each point's ``path`` (dotted names only:
``flags.battery_low`` becomes ``{"flags": {"battery_low": ...}}``); a device whose one
point has no ``path`` publishes the bare value. It publishes every ``publish_s`` (its
heartbeat) and at once when a boolean flag changes, as battery sensors do to save power.

For fault tests it can go silent, and publish garbage of several kinds among the good
messages (``not_json``, ``truncated``, ``oversized``, ``wrong_type``, ``empty``,
``binary``). Garbage is built from the current good payload, without randomness, so a run
stays deterministic. Many devices share one ``MqttPublisher`` (one ``mqttlink`` session).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from drivers.base import Value
from drivers.mqtt.config import MqttPoint
from mqttlink.session import Session, SessionError
from mqttlink.url import Broker

from .scenario import Effect, Garbage

DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


def publishable(points: Sequence[MqttPoint]) -> str | None:
    """Why a simulator cannot build payloads for these points, or None if it can."""
    bare = [p.name for p in points if p.path is None]
    if bare and len(points) > 1:
        return f"point {bare[0]} has no path, and a plain payload carries one value only"
    for p in points:
        if p.path is not None and not DOTTED.match(p.path):
            return f"point {p.name}: the simulator builds payloads for dotted paths only"
    return None


class MqttPublisher:
    """One connection to a broker, shared by the simulated devices publishing there."""

    def __init__(self, url: str | Broker, client_id: str = "") -> None:
        self.broker = url if isinstance(url, Broker) else Broker.plain(url)
        self.url = str(self.broker)
        self._session = Session(self.broker, client_id=client_id, name="sim-publisher")
        self.published = 0

    @property
    def connected(self) -> bool:
        return self._session.connected

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect (and stay connected); ``ConnectionError`` if the broker is not there."""
        try:
            self._session.open(timeout_s, patient=True)
        except SessionError as exc:
            raise ConnectionError(f"no connection to {self.url}: {exc}") from None

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        # as a sensor does: what it sends while the broker is away is queued, not kept back
        self._session.publish(topic, payload, qos=1, retain=retain, queue_offline=True)
        self.published += 1

    def stop(self) -> None:
        self._session.close()


class SimulatedMqttDevice:
    """One wireless sensor: its payload, its heartbeat, its faults."""

    def __init__(
        self,
        device_id: str,
        points: Sequence[MqttPoint],
        topic: str,
        publisher: MqttPublisher,
        *,
        publish_s: float = 5.0,
    ) -> None:
        problem = publishable(points)
        if problem is not None:
            raise ValueError(f"{device_id}: {problem}")
        self.id = device_id
        self.points = list(points)
        self.topic = topic
        self.publisher = publisher
        self.publish_s = publish_s
        self.silent = False
        self.sent = 0
        self.garbage_sent = 0
        self._last_publish: float | None = None
        self._flags: dict[str, Value] = {}

    def payload(self, values: dict[str, Value]) -> bytes:
        """The message a device with these values sends."""
        if len(self.points) == 1 and self.points[0].path is None:
            value = values.get(self.points[0].name)
            return json.dumps(value).encode() if not isinstance(value, str) else value.encode()
        doc: dict[str, Any] = {}
        for point in self.points:
            if point.name not in values or point.path is None:
                continue
            *parents, leaf = point.path.split(".")
            node = doc
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = values[point.name]
        return json.dumps(doc, separators=(",", ":")).encode()

    def apply(self, t: float, values: dict[str, Value], effects: Sequence[Effect]) -> None:
        """One tick at simulated time ``t``: faults first, then a message if one is due."""
        for effect in effects:
            if effect.silent is not None:
                self.silent = effect.silent
            if effect.garbage is not None and not self.silent:
                self._garbage(effect.garbage, values)
        if self.silent:
            return
        flags = {p.name: values.get(p.name) for p in self.points if p.type == "bool"}
        due = self._last_publish is None or t - self._last_publish >= self.publish_s
        if due or flags != self._flags:
            self.publisher.publish(self.topic, self.payload(values))
            self.sent += 1
            self._last_publish, self._flags = t, flags

    def _garbage(self, garbage: Garbage, values: dict[str, Value]) -> None:
        good = self.payload(values)
        for kind in garbage.kinds:
            for _ in range(garbage.count):
                self.publisher.publish(self.topic, garbage_payload(kind, good, garbage))
                self.garbage_sent += 1


def garbage_payload(kind: str, good: bytes, garbage: Garbage) -> bytes:
    """A bad payload of the given kind, made from a good one."""
    match kind:
        case "not_json":
            return b"<html>502 Bad Gateway</html>"
        case "truncated":
            return good[: max(1, len(good) // 2)]
        case "oversized":
            filler = b"x" * max(0, garbage.oversize_bytes - 12)
            return b'{"pad":"' + filler + b'"}'
        case "wrong_type":
            doc = json.loads(good) if good.startswith(b"{") else {}
            return json.dumps(_spoil(doc)).encode() if doc else b'"n/a"'
        case "empty":
            return b""
        case _:  # binary
            return bytes(range(128, 256))


def _spoil(doc: dict[str, Any]) -> dict[str, Any]:
    """The same document with every value turned into a word no point type accepts."""
    return {k: _spoil(v) if isinstance(v, dict) else "n/a" for k, v in doc.items()}
