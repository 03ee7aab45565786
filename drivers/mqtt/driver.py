"""The MQTT driver: subscribes to a local broker and turns what sensors push into readings.

The connection is an ``mqttlink.session.Session`` (TLS, credentials, the reconnect loop
with jittered backoff, so a restarted broker is not hit by every gateway process at once);
this module keeps only what is the driver's: each message is read on the session's
thread, at once, into a small per-device queue; ``read()`` hands over what arrived since
its previous call.

How MQTT fits the polling interface: the agent calls ``read()`` every ``poll_s`` of the
device entry; for MQTT that period is how often arrived readings are handed on and
liveness is checked, never a request to the device. A reading keeps the time its message
arrived, so ``poll_s`` costs latency, not accuracy.

One entry, many devices: with ``id: "{id}"`` and ``id_from`` every topic level that sends
a readable payload makes a device of its own (up to ``max_devices``), and every reading
carries that device's id. ``device_health()`` reports each of them for the agent's health
data. Garbage on a topic level no device has yet makes no device: it is counted for the
entry (``stats.stray``, totals by kind), so a fuzzer or a broken bridge cannot use up
``max_devices`` and lock out a real detector. A made id that another device configured
on the gateway already has (``tank-1`` from ``{id}``) is refused and counted
(``stats.collided``): readings of two devices must never mix under one id.

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
* the local broker unreachable or refusing, the connection or the subscription (a SUBACK
  with a failure code, e.g. an ACL): logged once, retried with backoff (a refused
  subscription by disconnecting, so the next connect subscribes again), shown as
  ``broker: down`` in each device's health; silence then makes devices stale as above.

Retained messages are not data: on every (re)connect a broker re-sends the last retained
uplink of every topic, hours old maybe, and taking it as "heard now" would keep a dead
detector alive for as long as the link keeps dropping. With MQTT v5 the broker is asked not
to send them (retain handling 2); a retained message that arrives all the same (MQTT
3.1.1) is ignored and counted (``stats.retained``). A bridge that publishes with the retain
flag set still works: a message that reaches an existing subscription arrives unflagged.

Memory is bounded: per device at most ``queue_max`` readings wait (the oldest go first,
counted as ``dropped``), at most ``max_devices`` devices per entry, and with MQTT v5 the
broker is told not to send packets over 16 × ``max_payload_bytes`` (+ 64 KiB for the
topic) at all; those never reach the gateway and cannot be counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from drivers.base import Quality, Reading, Value, WriteRefused
from mqttlink.backoff import Backoff
from mqttlink.session import (
    RETAIN_DO_NOT_SEND,
    RETAIN_SEND,
    Message,
    Session,
    SessionError,
    Subscription,
)

from .codec import Bad, Malformed, PayloadReader
from .config import MqttDevice

log = logging.getLogger(__name__)

COUNTERS = ("messages", "malformed", "oversized", "unexpected", "dropped")
UNREADABLE = ("malformed", "oversized", "unexpected")


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
    collided: int = 0  # made id of a device configured otherwise on the gateway
    retained: int = 0  # retained messages: old, not the device heard now
    stray: dict[str, int] = field(default_factory=lambda: dict.fromkeys(UNREADABLE, 0))
    """Unreadable payloads on topic levels that are no device (yet), by kind."""


class MqttDriver:
    """One device entry: one subscription, one or many devices; see the module docstring."""

    def __init__(
        self,
        device: MqttDevice,
        *,
        taken_ids: Collection[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``taken_ids``: ids of the gateway's other devices, which no topic may make."""
        self.device = device
        self._taken = frozenset(taken_ids) - {device.id}
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
        self._session: Session | None = None

    # --- the Driver interface ----------------------------------------------------------

    async def read(self) -> list[Reading]:
        """Readings that arrived since the previous call, and stale marks; never raises."""
        if self._session is None:
            try:
                self.start()
            except SessionError as exc:  # e.g. a TLS file missing: say so, try next poll
                self._down(str(exc))
                self._session = None
            except Exception as exc:
                self._down(f"cannot start: {type(exc).__name__}: {exc}")
                self._session = None
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
        if self._session is not None:
            await self._session.aclose()

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

    def receive(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        """Take one message: name its device, check and read it, queue the readings.
        ``retained``: the broker's stored copy, sent because we subscribed: ignored."""
        ts, now = time.time(), self._clock()
        if retained:
            with self._lock:
                self.stats.retained += 1
            self._log_entry_once(
                "retained",
                "retained message on %r ignored (an old uplink, not the device heard now); "
                "such messages are counted",
                topic,
            )
            return
        dev_id = self._name(topic)
        if dev_id is None:
            with self._lock:
                self.stats.unnamed += 1
            self._log_entry_once(
                "unnamed", "topic %r names no valid device id; such messages are counted", topic
            )
            return
        if dev_id in self._taken:
            with self._lock:
                self.stats.collided += 1
            self._log_entry_once(
                "collided",
                "topic %r makes the id %r, which another device on this gateway has; "
                "such messages are ignored and counted",
                topic,
                dev_id,
            )
            return
        values, problem = self._read(payload)
        back_after: float | None = None
        with self._lock:
            dev = self._devices.get(dev_id)
            if dev is None and not values:  # garbage makes no device
                assert problem is not None
                self.stats.stray[problem[0]] += 1
            elif dev is None and len(self._devices) >= self.device.max_devices:
                self.stats.refused += 1
            else:
                if dev is None:
                    dev = self._devices[dev_id] = self._new_device(dev_id)
                    log.info("mqtt device %s: first message on %s", dev_id, topic)
                dev.counts["messages"] += 1
                if problem is not None:
                    dev.counts[problem[0]] += 1
                if values:
                    self._queue(dev, values, ts)
                    back_after = self._heard(dev, now, ts)
        if dev is None:
            if problem is not None and not values:
                kind, detail = problem
                self._log_entry_once(
                    f"stray-{kind}",
                    "%s payload on %s, which is no device yet: %s; no device is made of "
                    "such messages, they are counted",
                    kind,
                    topic,
                    detail,
                )
            else:
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
            if kind not in dev.logged:
                dev.logged.add(kind)
                log.warning(
                    "mqtt device %s: %s payload on %s: %s; further ones are counted",
                    dev_id,
                    kind,
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

    def _queue(self, dev: _Device, values: dict[str, Value | Bad], ts: float) -> None:
        units = {p.name: p.unit for p in self.device.points}
        readings: list[Reading] = []
        for name, value in values.items():
            if isinstance(value, Bad):
                readings.append(Reading.bad(dev.id, name, units[name], ts, value.reason))
            else:
                readings.append(Reading(dev.id, name, value, units[name], Quality.GOOD, ts))
        overflow = len(dev.queue) + len(readings) - self.device.queue_max
        if overflow > 0:
            dev.counts["dropped"] += min(overflow, len(dev.queue) + len(readings))
        dev.queue.extend(readings)

    def _heard(self, dev: _Device, now: float, ts: float) -> float | None:
        """Note a readable message; how long the device was silent if it was stale."""
        back = None
        if dev.state == "stale":
            since = dev.last_heard if dev.last_heard is not None else self._started
            back = now - since
        dev.state, dev.last_heard, dev.last_seen_ts = "up", now, ts
        return back

    # --- no lock needed --------------------------------------------------------------------

    def _read(self, payload: bytes) -> tuple[dict[str, Value | Bad], tuple[str, str] | None]:
        """The values of one payload (none if it cannot be read) and the problem with it:
        ``(counter, detail)``, the counter one of ``UNREADABLE``."""
        limit = self.conn.max_payload_bytes
        if len(payload) > limit:
            return {}, ("oversized", f"{len(payload)} bytes, over max_payload_bytes {limit}")
        try:
            values = self._reader.read(payload)
        except Malformed as exc:
            return {}, ("malformed", str(exc))
        if not values:
            return {}, ("unexpected", "none of the configured points is in it")
        bad = [f"{name}: {v.reason}" for name, v in values.items() if isinstance(v, Bad)]
        if bad:
            more = f"; and {len(bad) - 2} more" if len(bad) > 2 else ""
            return values, ("unexpected", "; ".join(bad[:2]) + more)
        return values, None

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

    # --- the session (its callbacks run on its thread) ------------------------------------

    def start(self) -> None:
        """Start the session (``read()`` does on first call)."""
        if self._session is not None:
            return
        session = self._make_session()
        session.prepare()  # a file missing is said at once, and tried again next poll
        self._session = session
        session.start()

    def _make_session(self) -> Session:
        conn = self.conn
        v5 = conn.version == "5"
        session = Session(
            conn.broker,
            client_id=conn.client_id,
            name=f"mqtt:{self.name}",
            keepalive_s=conn.keepalive_s,
            protocol=conn.version,
            # the broker is told not to send what we would drop unread anyway
            max_packet_bytes=16 * conn.max_payload_bytes + 65536 if v5 else None,
            backoff=Backoff(first_s=0.5, cap_s=5.0),
        )
        # retained copies are old data: with v5 the broker is asked not to send them
        retain = RETAIN_DO_NOT_SEND if v5 else RETAIN_SEND
        session.subscribe(Subscription(conn.topic, qos=conn.qos, retain_handling=retain), self._got)
        session.on_up(self._connected)
        session.on_suback(self._subscribed)
        session.on_down(self._down)
        session.on_unreadable(self._unreadable)
        return session

    def _connected(self, session_present: bool) -> None:
        with self._lock:
            self.stats.connects += 1

    def _subscribed(self, topic: str, refusal: str | None) -> None:
        """The link is up once the broker has granted the subscription, not at CONNACK."""
        if refusal is not None:
            # logged once (the link stays down while refused); hang up so that the session
            # subscribes again after its backoff: an ACL may be fixed at any time
            assert self._session is not None
            self._session.reconnect(f"refused the subscription to {topic}: {refusal}")
            return
        with self._lock:
            was = self.stats.link
            self.stats.link, self.stats.reason = "up", None
        if was != "up":
            log.info("mqtt %s: subscribed to %s on %s", self.name, self.conn.topic, self.conn.url)

    def _got(self, msg: Message) -> None:
        try:
            self.receive(msg.topic, msg.payload, retained=msg.retain)
        except Exception:  # never let one message stop the session, and with it every device
            self._unreadable()

    def _unreadable(self) -> None:
        self._log_entry_once("receive", "a message could not be handled (counted)")
        with self._lock:
            self.stats.unnamed += 1

    def _down(self, reason: str) -> None:
        with self._lock:
            was, self.stats.link, self.stats.reason = self.stats.link, "down", reason
        if was != "down":
            log.warning("mqtt %s: local broker %s %s", self.name, self.conn.url, reason)
