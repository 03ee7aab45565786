"""The gateway's MQTT v5 session with the central broker (paho-mqtt, its own thread).

paho's network loop runs on a thread of ours; this class turns its callbacks into calls
on the agent's event loop, so nothing else in the agent touches paho or threads. The
retained ``state`` topic carries a Last Will that flips the gateway to offline when the
session dies without a goodbye.

Reconnecting is ours, not paho's: paho waits whole seconds, doubling, without jitter.
We retry after 0.25-0.5 s, doubling to ``reconnect_max_s`` (2 s by default), each wait
drawn at random from the upper half of its step, so the first publish after the broker
returns comes within about two seconds and a city's gateways do not arrive in lockstep.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from drivers.backoff import Backoff, keep_connected
from edge_agent.config.models import BrokerUrl

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message from the center, with the MQTT v5 request/response properties."""

    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None


class Uplink:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        client_id: str,
        broker: BrokerUrl,
        keepalive_s: int,
        will: tuple[str, bytes],
        username: str | None = None,
        password_file: Path | None = None,
        reconnect_max_s: float = 2.0,
    ) -> None:
        self._loop = loop
        self._broker = broker
        self._keepalive = keepalive_s
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._subscriptions: dict[str, Callable[[Inbound], None]] = {}
        self._on_up: list[Callable[[], None]] = []
        self._on_down: list[Callable[[], None]] = []
        self._was_up = False
        self._stopping = threading.Event()
        self._backoff = Backoff(first_s=0.5, cap_s=max(0.5, reconnect_max_s))
        self._thread: threading.Thread | None = None
        self._unreachable_logged = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.will_set(will[0], will[1], qos=1, retain=True)
        if username is not None:
            password = password_file.read_text().strip() if password_file else None
            client.username_pw_set(username, password)
        if broker.scheme == "mqtts":
            client.tls_set_context(ssl.create_default_context())
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    def on_up(self, fn: Callable[[], None]) -> None:
        self._on_up.append(fn)

    def on_down(self, fn: Callable[[], None]) -> None:
        self._on_down.append(fn)

    def subscribe(self, topic: str, handler: Callable[[Inbound], None]) -> None:
        """Deliver messages on ``topic`` to ``handler`` on the event loop, after every connect."""
        self._subscriptions[topic] = handler

    def start(self) -> None:
        self._thread = threading.Thread(target=self._network, name="uplink", daemon=True)
        self._thread.start()

    def _network(self) -> None:
        """Connect, run paho's loop until the connection drops, wait, and again."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0

        def connect() -> None:
            self._forget_unsent()
            self._client.connect(
                self._broker.host,
                self._broker.port,
                keepalive=self._keepalive,
                clean_start=True,
                properties=props,
            )

        def failed(reason: str) -> None:
            if not self._unreachable_logged:
                log.warning("broker %s %s; retrying", self._broker, reason)
                self._unreachable_logged = True

        # loop_forever returns when the connection is gone
        keep_connected(connect, self._client.loop_forever, self._stopping, self._backoff, failed)

    def _forget_unsent(self) -> None:
        """Start each session empty, as Clean Start says the client must [MQTT-3.1.2-4].

        paho 2.x keeps the QoS 1 messages that were in flight when a connection died and
        sends them again right after the next CONNACK, before anything the sender chooses:
        old telemetry would overtake the alarms the sender puts first. The sender resends
        everything unacked itself, in lane order, so paho's copies are only out-of-order
        duplicates. paho has no public call for this; its attributes are pinned by <3.
        """
        client = self._client
        with client._out_message_mutex:
            client._out_messages.clear()
            client._inflight_messages = 0

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Hand a message to the session; False when there is no connection to send it on."""
        if not self._client.is_connected():
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def reply(self, request: Inbound, payload: bytes) -> bool:
        """Answer a request on its v5 response topic, with its correlation data."""
        if request.response_topic is None or not self._client.is_connected():
            return False
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if request.correlation is not None:
            props.CorrelationData = request.correlation
        info = self._client.publish(request.response_topic, payload, qos=1, properties=props)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    async def stop(self, last_words: tuple[str, bytes] | None = None) -> None:
        """Say goodbye (a retained offline state instead of the Will), then disconnect."""
        self._stopping.set()
        if last_words is not None and self._client.is_connected():
            info = self._client.publish(last_words[0], last_words[1], qos=1, retain=True)
            for _ in range(20):
                try:
                    if info.is_published():
                        break
                except RuntimeError:  # the broker went first; the Will says the same
                    log.info("uplink: broker gone before the goodbye was delivered")
                    break
                await asyncio.sleep(0.05)
        self._client.disconnect()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)

    # --- paho thread -------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning("broker %s refused the connection: %s", self._broker, reason)
            return
        self._backoff.reset()
        self._unreachable_logged = False
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self._loop.call_soon_threadsafe(self._up)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._loop.call_soon_threadsafe(self._down, str(reason))

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        handler = self._subscriptions.get(msg.topic)
        if handler is None:
            return
        props = msg.properties
        inbound = Inbound(
            bytes(msg.payload),
            getattr(props, "ResponseTopic", None),
            getattr(props, "CorrelationData", None),
        )
        self._loop.call_soon_threadsafe(handler, inbound)

    # --- event loop --------------------------------------------------------------------

    def _up(self) -> None:
        if self._was_up:
            self.reconnects += 1
        log.info("connected to %s", self._broker)
        self._was_up = True
        self.connected.set()
        for fn in self._on_up:
            fn()

    def _down(self, reason: str) -> None:
        if self.connected.is_set() and not self._stopping.is_set():
            log.warning("lost the broker %s: %s", self._broker, reason)
        self.connected.clear()
        for fn in self._on_down:
            fn()
