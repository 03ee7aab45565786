"""The MQTT driver: subscribes to a local broker and turns what sensors push into readings.

This is the only module that imports paho for the southbound side. paho's network loop
runs on a thread of ours (connect, loop until the connection drops, wait, again: the
wait drawn from ``drivers.backoff`` so a restarted broker is not hit by every gateway
process at once). Each message is read on that thread, at once, into a small per-device
queue; ``read()`` hands over what arrived since its previous call.

How MQTT fits the polling interface: the agent calls ``read()`` every ``poll_s`` of the
device entry; for MQTT that period is how often arrived readings are handed on and
liveness is checked, never a request to the device. A reading keeps the time its message
arrived, so ``poll_s`` costs latency, not accuracy.

One entry, many devices: with ``id: "{id}"`` and ``id_from`` every topic level seen makes
a device of its own (up to ``max_devices``), and every reading carries that device's id.
``device_health()`` reports each of them for the agent's health data.

Never raising: ``read()`` does not raise for broker or payload problems (an entry may stand
for hundreds of devices; one bad one, or the broker, must not turn them all ``bad``).
Instead:

* a payload that cannot be read (over ``max_payload_bytes``, not UTF-8, not JSON) is
  dropped and counted per device (``oversized``, ``malformed``), the first of each kind
  logged once per device;
* a payload with none of the configured fields, or a field of the wrong kind, is counted as
  ``unexpected``; a field of the wrong kind also becomes a ``bad`` reading with the reason;
* a device without a readable message for ``missed_heartbeats × heartbeat_s`` gets one
  ``stale`` reading per point (value null, the silence as reason) and its link goes
  ``down``; its next readable message brings it back. A device that only sends garbage is
  not heard: liveness means data, not radio;
* the local broker unreachable or refusing: logged once, retried with backoff, shown as
  ``broker: down`` in each device's health; silence then makes devices stale as above.

Memory is bounded: per device at most ``queue_max`` readings wait (the oldest go first,
counted as ``dropped``), at most ``max_devices`` devices per entry, and with MQTT v5 the
broker is told not to send packets over 16 × ``max_payload_bytes`` (+ 64 KiB for the
topic) at all; those never reach the gateway and cannot be counted.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from drivers.backoff import Backoff, keep_connected
from drivers.base import Quality, Reading, Value, WriteRefused

from .codec import Bad, Malformed, PayloadReader
from .config import MqttDevice

log = logging.getLogger(__name__)

COUNTERS = ("messages", "malformed", "oversized", "unexpected", "dropped")


@dataclass(slots=True)
class _Device:
    """What the driver knows of one device behind the entry."""

    id: str
    queue: deque[Reading]
    state: str = "unknown"  # unknown | up | stale
    last_heard: float | None = None  # monotonic
    last_seen_ts: float | None = None  # wall clock, for health data
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    logged: set[str] = field(default_factory=set)


@dataclass(slots=True)
class MqttStats:
    """Counters of the entry itself, for messages no device can be named for."""

    link: str = "connecting"  # connecting | up | down
    reason: str | None = None
    connects: int = 0
    unnamed: int = 0  # topic level not a valid device id
    refused: int = 0  # new devices past max_devices


class MqttDriver:
    """One device entry: one subscription, one or many devices; see the module docstring."""

    def __init__(self, device: MqttDevice, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.conn = device.mqtt
        self.name = f"{device.id} on {device.mqtt.topic}" if device.templated else device.id
        """How logs name the entry: a template alone ("{id}") says little."""
        self.stats = MqttStats()
        self._clock = clock
        self._reader = PayloadReader(device.points)
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._entry_logged: set[str] = set()
        if not device.templated:
            self._devices[device.id] = self._new_device(device.id)
        self._started = clock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._backoff = Backoff(first_s=0.5, cap_s=5.0)

    # --- the Driver interface ----------------------------------------------------------

    async def read(self) -> list[Reading]:
        """Readings that arrived since the previous call, and stale marks; never raises."""
        if self._thread is None:
            try:
                self.start()
            except Exception as exc:  # e.g. a TLS file missing: say so, try again next poll
                self._down(f"cannot start: {type(exc).__name__}: {exc}")
                self._client = None
        try:
            return self.collect()
        except Exception:  # a bug here must not turn every device of the entry bad
            if "collect" not in self._entry_logged:
                self._entry_logged.add("collect")
                log.exception("mqtt %s: reading the queues failed", self.name)
            return []

    async def write(self, point: str, value: Value) -> None:
        raise WriteRefused(f"{self.device.id}: MQTT points are read-only (no command topic)")

    async def aclose(self) -> None:
        self._stopping.set()
        if self._client is not None:
            self._client.disconnect()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)

    # --- what the agent's health data shows ------------------------------------------------

    def device_health(self) -> dict[str, dict[str, object]]:
        """Per device: link from liveness, why it is down, last message, and the counters."""
        with self._lock:
            devices = list(self._devices.values())
            out: dict[str, dict[str, object]] = {}
            for dev in devices:
                link = {"up": "up", "stale": "down"}.get(dev.state, "unknown")
                out[dev.id] = {
                    "link": link,
                    "reason": self._silence(dev) if dev.state == "stale" else None,
                    "last_seen": dev.last_seen_ts,
                    "broker": "up" if self.stats.link == "up" else "down",
                    **dev.counts,
                }
            return out

    @property
    def devices(self) -> list[str]:
        """Ids of the devices seen (or configured) so far."""
        with self._lock:
            return list(self._devices)

    # --- messages (paho's thread, or a test calling receive directly) --------------------

    def receive(self, topic: str, payload: bytes) -> None:
        """Take one message: name its device, check and read it, queue the readings."""
        ts, now = time.time(), self._clock()
        dev_id = self._name(topic)
        if dev_id is None:
            with self._lock:
                self.stats.unnamed += 1
            self._log_entry_once(
                "unnamed", "topic %r names no valid device id; such messages are counted", topic
            )
            return
        problem: tuple[str, str] | None = None
        back_after: float | None = None
        with self._lock:
            dev = self._devices.get(dev_id)
            if dev is None:
                if len(self._devices) >= self.device.max_devices:
                    self.stats.refused += 1
                    dev = None
                else:
                    dev = self._devices[dev_id] = self._new_device(dev_id)
                    log.info("mqtt device %s: first message on %s", dev_id, topic)
            if dev is not None:
                dev.counts["messages"] += 1
                problem = self._take(dev, payload, ts)
                if problem is None or problem[0] == "unexpected-field":
                    back_after = self._heard(dev, now, ts)
        if dev is None:
            self._log_entry_once(
                "refused",
                "more than max_devices (%d) devices; new ones are ignored and counted",
                self.device.max_devices,
            )
            return
        if back_after is not None:
            log.info("mqtt device %s back after %.0f s", dev_id, back_after)
        if problem is not None:
            kind, detail = problem
            counter = "unexpected" if kind == "unexpected-field" else kind
            if counter not in dev.logged:
                dev.logged.add(counter)
                log.warning(
                    "mqtt device %s: %s payload on %s: %s; further ones are counted",
                    dev_id,
                    counter,
                    topic,
                    detail,
                )

    def collect(self) -> list[Reading]:
        """Drain the queues; mark devices silent past their heartbeat window ``stale``."""
        now, ts = self._clock(), time.time()
        window = self.device.stale_after_s
        out: list[Reading] = []
        went_stale: list[_Device] = []
        with self._lock:
            for dev in self._devices.values():
                out.extend(dev.queue)
                dev.queue.clear()
                if window is None or dev.state == "stale":
                    continue
                since = dev.last_heard if dev.last_heard is not None else self._started
                if now - since >= window:
                    dev.state = "stale"
                    reason = self._silence(dev)
                    out.extend(
                        Reading(dev.id, p.name, None, p.unit, Quality.STALE, ts, reason)
                        for p in self.device.points
                    )
                    went_stale.append(dev)
        for dev in went_stale:
            log.warning("mqtt device %s silent: %s", dev.id, self._silence(dev))
        return out

    # --- inside the lock ---------------------------------------------------------------

    def _new_device(self, dev_id: str) -> _Device:
        return _Device(dev_id, deque(maxlen=self.device.queue_max))

    def _take(self, dev: _Device, payload: bytes, ts: float) -> tuple[str, str] | None:
        """Queue the readings of one payload; the problem with it, if any."""
        limit = self.conn.max_payload_bytes
        if len(payload) > limit:
            dev.counts["oversized"] += 1
            return "oversized", f"{len(payload)} bytes, over max_payload_bytes {limit}"
        try:
            values = self._reader.read(payload)
        except Malformed as exc:
            dev.counts["malformed"] += 1
            return "malformed", str(exc)
        if not values:
            dev.counts["unexpected"] += 1
            return "unexpected", "none of the configured points is in it"
        units = {p.name: p.unit for p in self.device.points}
        readings: list[Reading] = []
        bad: list[str] = []
        for name, value in values.items():
            if isinstance(value, Bad):
                readings.append(Reading.bad(dev.id, name, units[name], ts, value.reason))
                bad.append(f"{name}: {value.reason}")
            else:
                readings.append(Reading(dev.id, name, value, units[name], Quality.GOOD, ts))
        overflow = len(dev.queue) + len(readings) - self.device.queue_max
        if overflow > 0:
            dev.counts["dropped"] += min(overflow, len(dev.queue) + len(readings))
        dev.queue.extend(readings)
        if bad:
            dev.counts["unexpected"] += 1
            more = f"; and {len(bad) - 2} more" if len(bad) > 2 else ""
            return "unexpected-field", "; ".join(bad[:2]) + more
        return None

    def _heard(self, dev: _Device, now: float, ts: float) -> float | None:
        """Note a readable message; how long the device was silent if it was stale."""
        back = None
        if dev.state == "stale":
            since = dev.last_heard if dev.last_heard is not None else self._started
            back = now - since
        dev.state, dev.last_heard, dev.last_seen_ts = "up", now, ts
        return back

    def _silence(self, dev: _Device) -> str:
        since = dev.last_heard if dev.last_heard is not None else self._started
        heard = "no message" if dev.last_heard is not None else "never heard"
        silent = self._clock() - since
        return f"{heard} for {silent:.0f} s (heartbeat {self.device.heartbeat_s:g} s)"

    def _name(self, topic: str) -> str | None:
        if not self.device.templated:
            return self.device.id
        levels = topic.split("/")
        index = self.conn.id_from
        if index is None or index >= len(levels):
            return None
        return self.device.device_id(levels[index])

    def _log_entry_once(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._entry_logged:
            self._entry_logged.add(kind)
            log.warning("mqtt %s: " + message, self.name, *args)

    # --- the network thread --------------------------------------------------------------

    def start(self) -> None:
        """Start the network thread (``read()`` does on first call)."""
        if self._thread is not None:
            return
        self._client = self._make_client()
        self._thread = threading.Thread(target=self._network, name=f"mqtt:{self.name}", daemon=True)
        self._thread.start()

    def _make_client(self) -> mqtt.Client:
        conn = self.conn
        v5 = conn.version == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=conn.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
            reconnect_on_failure=False,
        )
        if conn.tls:
            context = ssl.create_default_context(cafile=str(conn.ca_file) if conn.ca_file else None)
            if conn.cert_file is not None and conn.key_file is not None:
                context.load_cert_chain(str(conn.cert_file), str(conn.key_file))
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _network(self) -> None:
        assert self._client is not None
        client, conn = self._client, self.conn
        props: Properties | None = None
        if conn.version == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
            props.MaximumPacketSize = 16 * conn.max_payload_bytes + 65536

        def connect() -> None:
            if conn.username is not None:
                password = conn.password_file.read_text().strip() if conn.password_file else None
                client.username_pw_set(conn.username, password)
            client.connect(conn.host, conn.port, keepalive=conn.keepalive_s, properties=props)

        # loop_forever returns when the connection is gone
        keep_connected(connect, client.loop_forever, self._stopping, self._backoff, self._down)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._down(f"refused the connection: {reason}")
            return
        client.subscribe(self.conn.topic, qos=self.conn.qos)
        self._backoff.reset()
        with self._lock:
            self.stats.connects += 1
            was = self.stats.link
            self.stats.link, self.stats.reason = "up", None
        if was != "up":
            log.info("mqtt %s: subscribed to %s on %s", self.name, self.conn.topic, self.conn.url)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self._stopping.is_set():
            self._down(f"connection lost: {reason}")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self.receive(msg.topic, bytes(msg.payload))
        except Exception:  # never let one message stop paho's loop, and with it every device
            # msg.topic itself raises on a topic that is not UTF-8: do not touch it again
            self._log_entry_once("receive", "a message could not be handled (counted)")
            with self._lock:
                self.stats.unnamed += 1

    def _down(self, reason: str) -> None:
        with self._lock:
            was, self.stats.link, self.stats.reason = self.stats.link, "down", reason
        if was != "down":
            log.warning("mqtt %s: local broker %s %s", self.name, self.conn.url, reason)
