"""One MQTT session: the only module that imports paho, for every client in the product.

The gateway's uplink to the center, the MQTT driver on a local broker, central ingest,
``fleet`` commands and the simulated sensors all connect through ``Session``. It owns:
connect (``Broker``: TLS with the server-name check, client certificate, username and a
password read from its file at each connect), MQTT v5 (3.1.1 only where asked for, for
sensors' local brokers), the CONNECT properties (session expiry, maximum packet size), the
Last Will, clean start or a persistent session, the reconnect loop with jittered backoff,
subscriptions re-made after every connect with their options, publishing with v5
request/response properties, replies, manual acks, the in-flight limit, a goodbye before
disconnecting, and the hand-over of paho's callbacks to the caller.

Threads: paho's network loop runs on a thread of the session (connect, run until the
connection drops, wait, again). Handlers either run on that thread (no ``loop``: the
driver's queues and ingest's inbox take their own locks) or, given an event loop, are
handed to it with ``call_soon_threadsafe`` (the agent), so nothing else touches threads.
A handler that raises on paho's thread is logged once and counted; it never ends the loop.

paho's results are translated here, once, into reasons (``on_down``) and, where a caller
waits for a connection (``open()``), into exceptions::

    SessionError                  every failure of the session; str() is the reason
    ├── SetupFailed               "cannot start: ...": a file of the Broker settings
    │                             (CA, certificate, key, password) unreadable or unusable
    ├── Unreachable               "unreachable: ...": no TCP connection, TLS handshake
    │                             refused (bad CA, wrong server name), no CONNACK in time
    ├── Refused                   "refused the connection: <reason code>" (bad username
    │                             or password, not authorized), or "refused the
    │                             subscription to <filter>: <reason code>" (an ACL)
    └── Lost                      "connection lost: <reason code>": the connection
                                  dropped (a broker that refuses our client certificate
                                  drops it after the handshake; a broker restart)

Reconnecting is ours, not paho's: paho waits whole seconds, doubling, without jitter. The
wait is drawn from ``Backoff`` (the upper half of each step, doubling to its cap), so a
city's gateways do not come back in lockstep; it is reset once a connection is
established: CONNACK accepted and every subscription granted, so that a broker refusing a
subscription is not asked again at the first step's rate forever.

"Start each session empty" (``start_empty``): paho 2.x keeps the QoS 1 messages that were
in flight when a connection died and sends them again right after the next CONNACK,
before anything the caller chooses. For the agent's sender that is wrong twice: Clean
Start says the client must discard that state [MQTT-3.1.2-4], and old telemetry would
overtake the alarms the sender puts first when it resends everything unacked itself, in
lane order. Before each connect the session drops them with paho's
``drop_out_messages()`` (public since paho 2.2, hence the floor in pyproject; the
reconnect that follows resets paho's in-flight count from the emptied queue). Nothing
here reaches into paho's private fields.

Why not aiomqtt: it wraps this same paho client for asyncio, and for a plain asyncio
subscriber it would do. It does not fit ours: (1) manual acks, which ingest needs in order
to PUBACK a message only after the store has committed it, do not exist there (aiomqtt
issue #345, PR #346 still open; the workaround reaches into its private ``_client``);
(2) the clean-start fix above needs paho's own client, which aiomqtt hides, as it hides
paho's in-flight queue: its ``publish`` awaits each PUBACK, where the sender keeps a
window of unacked batches and needs publish to hand over at once; (3) ingest and the
driver run on threads of their own (ingest's owns the store), where an event loop per
client would only add a hop. Using it for some clients and not others would make two
session modules again; one module on paho serves all five.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from .ackorder import ArrivalOrder
from .backoff import Backoff
from .url import Broker, BrokerFileError

log = logging.getLogger(__name__)

LOOP_TIMEOUT_S = 1.0
"""How long paho's select waits with nothing to read or write: keep-alive pings and the
check that the connection is still wanted run at least this often. A publish from
another thread does not wait for it (it wakes the select)."""

Protocol = Literal["5", "3.1.1"]
RETAIN_SEND, RETAIN_SEND_IF_NEW, RETAIN_DO_NOT_SEND = 0, 1, 2
"""MQTT v5 retain handling of a subscription [MQTT-3.8.3.1]."""


class SessionError(Exception):
    """A failure of the session; ``str()`` is the reason, fit for a log line."""


class SetupFailed(SessionError):
    """A file of the broker settings cannot be read or used."""


class Unreachable(SessionError):
    """No connection: network, TLS handshake, or no answer in time."""


class Refused(SessionError):
    """The broker answered no: to the CONNECT, or to a SUBSCRIBE."""


class Lost(SessionError):
    """The connection dropped."""


@dataclass(frozen=True, slots=True)
class Will:
    """The Last Will: published by the broker when the session dies without a goodbye."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Message:
    """A message received, with its v5 request/response properties."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    response_topic: str | None = None
    correlation: bytes | None = None
    mid: int = field(default=0, compare=False)
    """paho's packet id, for ``Session.ack``."""
    epoch: int = field(default=0, compare=False)
    """Which broker session it came in: an ack is only good in the session it belongs to."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic filter with its options, subscribed again after every connect."""

    topic: str
    qos: int = 1
    retain_handling: int = RETAIN_SEND
    """v5 only; ``RETAIN_DO_NOT_SEND`` keeps retained (old) messages away."""
    no_local: bool = False
    """v5 only: do not send us what we publish ourselves."""

    @property
    def filter(self) -> str:
        """The filter messages match: without a shared subscription's ``$share/group/``."""
        if self.topic.startswith("$share/"):
            return self.topic.split("/", 2)[2]
        return self.topic


class Delivery:
    """A message handed to the session: whether it went out, and whether it arrived."""

    def __init__(self, info: mqtt.MQTTMessageInfo) -> None:
        self._info = info

    @property
    def accepted(self) -> bool:
        """Handed to the connection (False: no connection, or paho's queue is full)."""
        return self._info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def delivered(self) -> bool | None:
        """True once acknowledged (QoS 1); None if it never can be (the link is gone)."""
        try:
            return self._info.is_published()
        except (RuntimeError, ValueError):
            return None


Handler = Callable[[Message], None]


class Session:
    """One client's MQTT session with one broker; see the module docstring.

    Register subscriptions and callbacks, then ``start()`` (keep connected until
    ``close()``) or ``open(timeout_s)`` (start, and wait until connected or raise)."""

    def __init__(
        self,
        broker: Broker,
        *,
        client_id: str = "",
        name: str = "mqtt",
        keepalive_s: int = 30,
        protocol: Protocol = "5",
        clean_start: bool = True,
        session_expiry_s: int = 0,
        max_packet_bytes: int | None = None,
        will: Will | None = None,
        manual_ack: bool = False,
        max_inflight: int | None = None,
        start_empty: bool = False,
        backoff: Backoff | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        mount_point: str = "",
    ) -> None:
        """``name`` is how log lines name this session. ``loop``: run handlers there
        instead of on paho's thread. ``max_inflight``: QoS 1 messages sent and not yet
        acknowledged (paho's default, 20, when None). ``mount_point``: the listener's
        (Mosquitto's ``mount_point``), taken off the topics of messages that come with
        it: Mosquitto 2.0.11 sends them so, though the client subscribed without it."""
        self.broker = broker
        self.name = name
        self._keepalive = keepalive_s
        self._v5 = protocol == "5"
        self._clean_start = clean_start
        self._session_expiry = session_expiry_s
        self._max_packet = max_packet_bytes
        self._manual_ack = manual_ack
        self._start_empty = start_empty
        self._backoff = backoff or Backoff(first_s=0.5, cap_s=2.0)
        self._loop = loop
        self._mount = mount_point
        self._subs: list[tuple[Subscription, Handler]] = []
        self._forget: list[tuple[str, Handler | None]] = []
        self._pending: dict[int, Subscription] = {}  # SUBSCRIBE packet id -> subscription
        self._on_up: list[Callable[[bool], None]] = []
        self._on_down: list[Callable[[str], None]] = []
        self._on_suback: list[Callable[[str, str | None], None]] = []
        self._on_unreadable: list[Callable[[], None]] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._tls_ready = False
        self._epoch = 0
        self._arrivals = ArrivalOrder()  # manual acks go out in the order messages came
        self._attempt_over = False  # this connection's failure is reported: no second one
        self._opened = threading.Event()
        self._open_error: SessionError | None = None
        self._patient = False
        self._logged: set[str] = set()
        self.handler_errors = 0
        """Handlers that raised on paho's thread (the first is logged)."""
        self.client_id = broker.client_id(client_id)
        """What the broker is asked to call this session (``Broker.client_id``)."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else clean_start,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        if max_inflight is not None:
            client.max_inflight_messages_set(max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        # Every write on the network thread. Our loop is loop_forever on a thread of ours, so
        # paho's _thread stays None, and then a publish from another thread (the agent's
        # event loop) writes to the socket itself, while the network thread reads it: an
        # SSL socket does not survive that (the broker sees "closed its connection" within
        # a second of a TLS connect). With a write-registration callback set, paho only
        # queues the packet and wakes its loop (through the socket pair ``loop()`` makes:
        # see ``_serve``), which writes it.
        client.on_socket_register_write = _written_by_the_network_thread
        self._client = client

    # --- set up, before start() ----------------------------------------------------------

    def subscribe(self, subscription: Subscription | str, handler: Handler) -> None:
        """Deliver messages matching ``subscription`` to ``handler``, after every connect."""
        sub = Subscription(subscription) if isinstance(subscription, str) else subscription
        self._subs.append((sub, handler))

    def forget(self, topic: str, handler: Handler | None = None) -> None:
        """Unsubscribe ``topic`` after every connect: a subscription that an older version
        of the caller left in its persistent session. What the broker still holds for it
        (or sends before the UNSUBSCRIBE) goes to ``handler``; without one, the session
        PUBACKs and drops it, like any message no handler wants."""
        self._forget.append((topic, handler))

    def on_up(self, fn: Callable[[bool], None]) -> None:
        """``fn(session_present)`` at every accepted CONNACK (subscriptions are on their way)."""
        self._on_up.append(fn)

    def on_down(self, fn: Callable[[str], None]) -> None:
        """``fn(reason)`` for every failed attempt and every connection lost."""
        self._on_down.append(fn)

    def on_suback(self, fn: Callable[[str, str | None], None]) -> None:
        """``fn(topic, refusal)`` per SUBACK: refusal None when granted, else the reason."""
        self._on_suback.append(fn)

    def on_unreadable(self, fn: Callable[[], None]) -> None:
        """``fn()`` for a message paho cannot hand over (a topic that is not UTF-8)."""
        self._on_unreadable.append(fn)

    # --- running -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def start(self) -> None:
        """Keep connected, on a thread of the session, until ``close()``."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._network, name=self.name, daemon=True)
        self._thread.start()

    def open(self, timeout_s: float = 10.0, *, patient: bool = False) -> None:
        """``start()`` and wait until connected with every subscription granted; on the
        first failure (or none of that within ``timeout_s``) close and raise it.
        ``patient``: failures within ``timeout_s`` are retried (a broker still starting);
        the last one is raised at the end."""
        self._patient = patient
        self.start()
        if not self._opened.wait(timeout_s):
            self.close()
            last = self._open_error
            if last is not None:
                raise type(last)(f"{last} (for {timeout_s:g} s)")
            raise Unreachable(f"unreachable: no answer from {self.broker} within {timeout_s:g} s")
        if self._open_error is not None:
            self.close()
            raise self._open_error

    def prepare(self) -> None:
        """Read the broker settings' files now (TLS context, password): ``SetupFailed`` if
        one cannot be used. Every connect does this anyway; a caller that wants to know
        before it starts calls it first."""
        try:
            if not self._tls_ready:  # paho takes one TLS context per client, for good
                context = self.broker.ssl_context()
                if context is not None:
                    self._client.tls_set_context(context)
                self._tls_ready = True
            if self.broker.username is not None:
                self._client.username_pw_set(self.broker.username, self.broker.password())
        except BrokerFileError as exc:
            raise SetupFailed(f"cannot start: {exc}") from None

    def reconnect(self, reason: str) -> None:
        """Hang up now (``reason`` goes to ``on_down``); the loop connects again after its
        backoff. For a caller that wants a refused subscription tried again later."""
        self._fail(SessionError(reason))
        self._client.disconnect()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        queue_offline: bool = False,
    ) -> Delivery | None:
        """Hand a message to the connection; None when there is none to send it on.
        ``queue_offline``: give it to paho all the same, to go out after the next connect
        (QoS 1; dropped by a ``start_empty`` session)."""
        if not queue_offline and not self._client.is_connected():
            return None
        props = None
        if self._v5 and (response_topic is not None or correlation is not None):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        return Delivery(info)

    def reply(self, request: Message, payload: bytes) -> bool:
        """Answer a request on its v5 response topic, with its correlation data."""
        if request.response_topic is None:
            return False
        delivery = self.publish(
            request.response_topic, payload, qos=1, correlation=request.correlation
        )
        return delivery is not None and delivery.accepted

    def ack(self, message: Message) -> None:
        """PUBACK a message of a ``manual_ack`` session, once the caller has it safe. A
        message from a broker session that is gone is not acked: its packet id may now
        belong to another message."""
        if self._manual_ack and message.qos > 0 and message.epoch == self._epoch:
            self._release(message.mid)

    def _release(self, mid: int) -> None:
        """Done with ``mid``: PUBACK it and whatever came after it and was waiting on it."""
        for ready, qos in self._arrivals.done(mid):
            self._client.ack(ready, qos)

    def close(self, goodbye: Will | None = None, wait_s: float = 1.0) -> None:
        """Stop: publish ``goodbye`` first if connected (waiting up to ``wait_s`` for the
        broker to have it: a retained offline state instead of the Will), then disconnect
        and end the network thread."""
        self._stopping.set()
        self._opened.set()
        if goodbye is not None and self._client.is_connected():
            delivery = self.publish(goodbye.topic, goodbye.payload, qos=1, retain=goodbye.retain)
            deadline = time.monotonic() + wait_s
            while delivery is not None and time.monotonic() < deadline:
                done = delivery.delivered()
                if done is None:  # the broker went first; the Will says the same
                    log.info("%s: broker gone before the goodbye was delivered", self.name)
                    break
                if done:
                    break
                time.sleep(0.05)
        self._client.disconnect()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    async def aclose(self, goodbye: Will | None = None, wait_s: float = 1.0) -> None:
        """``close()`` without blocking the event loop."""
        await asyncio.to_thread(self.close, goodbye, wait_s)

    # --- the network thread --------------------------------------------------------------

    def _network(self) -> None:
        """Connect, run paho's loop until the connection drops, wait, and again."""
        while not self._stopping.is_set():
            self._attempt_over = False
            try:
                self._connect()
            except SessionError as exc:
                self._fail(exc)
            except Exception as exc:  # nothing may end the thread: say so and retry
                self._fail(SessionError(f"failed: {type(exc).__name__}: {exc}"))
            else:
                try:
                    self._serve()
                except Exception as exc:
                    self._fail(SessionError(f"failed: {type(exc).__name__}: {exc}"))
            if self._stopping.wait(self._backoff.next()):
                break

    def _serve(self) -> None:
        """paho's loop for one connection, until it is gone. ``loop()``, not
        ``loop_forever()``: ``loop()`` makes the socket pair through which a publish from
        another thread (the agent's event loop) wakes the select, and with every write left
        to this thread (``on_socket_register_write``) ``loop_forever()`` alone let such a
        publish wait for the select's timeout: an alarm went out up to a second late."""
        while self._client.loop(timeout=LOOP_TIMEOUT_S) == MQTTErrorCode.MQTT_ERR_SUCCESS:
            pass

    def _connect(self) -> None:
        self.prepare()
        if self._start_empty:
            self._client.drop_out_messages()
        url = self.broker.url
        try:
            if self._v5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = self._session_expiry
                if self._max_packet is not None:
                    props.MaximumPacketSize = self._max_packet
                self._client.connect(
                    url.host,
                    url.port,
                    keepalive=self._keepalive,
                    clean_start=self._clean_start,
                    properties=props,
                )
            else:
                self._client.connect(url.host, url.port, keepalive=self._keepalive)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise Unreachable(f"unreachable: {exc or type(exc).__name__}") from None

    def _fail(self, error: SessionError) -> None:
        """Report this attempt's failure, once."""
        if self._attempt_over:
            return
        self._attempt_over = True
        if not self._opened.is_set():
            self._open_error = error
            if not self._patient:
                self._opened.set()
        if not self._stopping.is_set():
            self._deliver_all(self._on_down, str(error))

    # --- paho's callbacks (its thread) ---------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._stopping.is_set():  # close() ran while we were connecting
            client.disconnect()
            return
        if reason.is_failure:
            self._fail(Refused(f"refused the connection: {reason}"))
            return
        if not flags.session_present:
            self._epoch += 1
        self._arrivals.restart()
        self._pending.clear()
        for sub, _ in self._subs:
            if self._v5:
                options = SubscribeOptions(
                    qos=sub.qos, noLocal=sub.no_local, retainHandling=sub.retain_handling
                )
                _, mid = client.subscribe(sub.topic, options=options)
            else:
                _, mid = client.subscribe(sub.topic, qos=sub.qos)
            if mid is not None:
                self._pending[mid] = sub
        for topic, _ in self._forget:
            client.unsubscribe(topic)
        self._deliver_all(self._on_up, flags.session_present)
        if not self._subs:
            self._established()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        sub = self._pending.pop(mid, None)
        if sub is None:
            return
        refused = next((r for r in reasons if r.is_failure), None)
        refusal = None if refused is None else str(refused)
        if refusal is not None and not self._opened.is_set():
            self._open_error = Refused(f"refused the subscription to {sub.topic}: {refusal}")
            self._opened.set()
        self._deliver_all(self._on_suback, sub.topic, refusal)
        if refusal is None and not self._pending:
            self._established()

    def _established(self) -> None:
        self._backoff.reset()
        self._open_error = None
        self._opened.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._fail(Lost(f"connection lost: {reason}"))

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic  # paho decodes it here, and raises on a topic not UTF-8
        except UnicodeDecodeError:
            if self._manual_ack and msg.qos > 0:
                self._arrivals.arrived(msg.mid, msg.qos)
                self._release(msg.mid)  # nobody can take it: do not let it block
            self._deliver_all(self._on_unreadable)
            return
        if self._manual_ack and msg.qos > 0:
            self._arrivals.arrived(msg.mid, msg.qos)
        if self._mount and topic.startswith(self._mount):
            topic = topic[len(self._mount) :]
        props = msg.properties
        message = Message(
            topic,
            bytes(msg.payload),
            msg.qos,
            bool(msg.retain),
            getattr(props, "ResponseTopic", None),
            getattr(props, "CorrelationData", None),
            mid=msg.mid,
            epoch=self._epoch,
        )
        for sub, handler in self._subs:
            if mqtt.topic_matches_sub(sub.filter, topic):
                self._deliver_message(handler, message)
                return
        for gone, late in self._forget:
            if late is not None and mqtt.topic_matches_sub(gone, topic):
                self._deliver_message(late, message)
                return
        if self._manual_ack and msg.qos > 0:
            self._release(msg.mid)  # no handler (a subscription of a previous run)

    # --- the hand-over -------------------------------------------------------------------

    def _deliver_all(self, fns: list[Callable[..., None]], *args: Any) -> None:
        for fn in fns:
            self._deliver(fn, *args)

    def _deliver_message(self, handler: Handler, message: Message) -> None:
        if not self._deliver(handler, message) and self._manual_ack and message.qos > 0:
            # not taken, so not acknowledged (the broker sends it again next connection),
            # and not holding back the acks of what came after it
            for ready, qos in self._arrivals.skip(message.mid):
                self._client.ack(ready, qos)

    def _deliver(self, fn: Callable[..., None], *args: Any) -> bool:
        """Run or hand over ``fn``; False when it ran here and raised."""
        if self._loop is not None:
            # a closed loop: the process is shutting down, nobody is left to tell
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(fn, *args)
            return True
        try:
            fn(*args)
        except Exception:  # a handler's bug must not end paho's loop, and the connection
            self.handler_errors += 1
            if "handler" not in self._logged:
                self._logged.add("handler")
                log.exception("%s: a handler failed (later failures are counted)", self.name)
            return False
        return True


def _written_by_the_network_thread(client: mqtt.Client, userdata: object, sock: object) -> None:
    """paho's "socket wants writing" notice: nothing to do, our loop selects for writes."""
