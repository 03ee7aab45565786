"""The gateway's MQTT v5 session with the central broker, on the agent's event loop.

A thin adapter over ``mqttlink.session.Session``, which owns the connection (TLS,
credentials, the reconnect loop with jitter, paho's thread): handlers run on the agent's
event loop, so nothing else in the agent touches paho or threads. The retained ``state``
topic carries a Last Will that flips the gateway to offline when the session dies without
a goodbye.

Each session starts empty (Clean Start, no session kept at the broker, and paho's copies
of messages in flight on a dead connection dropped): the sender resends what was not
acked itself, in lane order, alarms first. Reconnects come after 0.25-0.5 s, doubling to
``reconnect_max_s`` (2 s by default), so the first publish after the broker returns comes
within about two seconds and a city's gateways do not arrive in lockstep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.contract.payloads import ACK_BYTES_MAX
from mqttlink.backoff import Backoff
from mqttlink.session import Message, Session, Subscription, Will
from mqttlink.url import Broker

log = logging.getLogger(__name__)

MAX_INFLIGHT = 1000
"""QoS 1 messages on the wire unacked; the sender's window bounds them first."""

INBOUND_PACKET_MAX = ACK_BYTES_MAX + 65_536
"""The largest MQTT packet the gateway takes from the broker: the longest ack, and room
for its topic and v5 properties (response topic, correlation data, user properties)."""


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
        broker: Broker,
        keepalive_s: int,
        will: tuple[str, bytes],
        reconnect_max_s: float = 2.0,
    ) -> None:
        self._broker = broker
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._on_up: list[Callable[[], None]] = []
        self._on_down: list[Callable[[], None]] = []
        self._was_up = False
        self._stopping = False
        self._unreachable_logged = False
        self._session = Session(
            broker,
            client_id=client_id,
            name="uplink",
            keepalive_s=keepalive_s,
            clean_start=True,
            session_expiry_s=0,
            will=Will(will[0], will[1], qos=1, retain=True),
            max_inflight=MAX_INFLIGHT,
            # no message past the longest ack is delivered: a client that may publish on
            # the gateway's topics cannot make it read and parse 200 MB (MQTT v5 Maximum
            # Packet Size; the broker drops what is larger, for this client only)
            max_packet_bytes=INBOUND_PACKET_MAX,
            start_empty=True,
            backoff=Backoff(first_s=0.5, cap_s=max(0.5, reconnect_max_s)),
            loop=loop,
        )
        self._session.on_up(self._up)
        self._session.on_down(self._down)
        self._session.on_suback(self._suback)

    def on_up(self, fn: Callable[[], None]) -> None:
        self._on_up.append(fn)

    def on_down(self, fn: Callable[[], None]) -> None:
        self._on_down.append(fn)

    def subscribe(self, topic: str, handler: Callable[[Inbound], None]) -> None:
        """Deliver messages on ``topic`` to ``handler`` on the event loop, after every connect."""

        def deliver(msg: Message) -> None:
            handler(Inbound(msg.payload, msg.response_topic, msg.correlation))

        self._session.subscribe(Subscription(topic, qos=1), deliver)

    def start(self) -> None:
        self._session.start()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Hand a message to the session; False when there is no connection to send it on."""
        delivery = self._session.publish(topic, payload, qos=qos, retain=retain)
        return delivery is not None and delivery.accepted

    def reply(self, request: Inbound, payload: bytes) -> bool:
        """Answer a request on its v5 response topic, with its correlation data."""
        if request.response_topic is None:
            return False
        delivery = self._session.publish(
            request.response_topic, payload, qos=1, correlation=request.correlation
        )
        return delivery is not None and delivery.accepted

    async def stop(self, last_words: tuple[str, bytes] | None = None) -> None:
        """Say goodbye (a retained offline state instead of the Will), then disconnect."""
        self._stopping = True
        goodbye = None if last_words is None else Will(last_words[0], last_words[1])
        await self._session.aclose(goodbye)
        self.connected.clear()  # the session reports no loss it was asked for: say it here
        for fn in self._on_down:
            fn()

    # --- event loop (handed over by the session) ----------------------------------------

    def _up(self, session_present: bool) -> None:
        if self._was_up:
            self.reconnects += 1
        log.info("connected to %s", self._broker)
        self._was_up = True
        self._unreachable_logged = False
        self.connected.set()
        for fn in self._on_up:
            fn()

    def _down(self, reason: str) -> None:
        if self.connected.is_set():
            if not self._stopping:
                log.warning("lost the broker %s: %s", self._broker, reason)
        elif not self._unreachable_logged:
            log.warning("broker %s %s; retrying", self._broker, reason)
            self._unreachable_logged = True
        self.connected.clear()
        for fn in self._on_down:
            fn()

    def _suback(self, topic: str, refusal: str | None) -> None:
        if refusal is not None:
            log.warning(
                "broker %s refused the subscription to %s: %s", self._broker, topic, refusal
            )
