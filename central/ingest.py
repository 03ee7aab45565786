"""Central ingest: subscribe to the fleet, store, commit, then acknowledge.

Order matters for the delivery guarantee. For each round of messages:

1. store everything in one transaction and commit it;
2. only then send the MQTT PUBACKs (paho's manual ack: an uncommitted message stays
   the broker's to redeliver), and publish on each gateway's ``ack`` topic the seq
   ranges now committed, so the gateway may delete them from its outbox.

The session is persistent (clean start off, long session expiry), so messages that
arrive while the central service is down wait at the broker; what the broker could not
keep, the gateways resend when our acks do not come.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from central.store import Store
from edge_agent.config.models import BrokerUrl
from edge_agent.contract import (
    Ack,
    Channel,
    PayloadError,
    Topics,
    decode_alarm,
    decode_health,
    decode_state,
    decode_telemetry,
    encode_ack,
    merge_ranges,
)

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
ROUND_MAX_MESSAGES = 500
GATHER_S = 0.02


@dataclass
class IngestStats:
    messages: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    alarms_stored: int = 0
    rejected: int = 0
    rejected_by_gateway: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass
class _Round:
    telemetry: dict[tuple[str, str], list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    alarms: dict[tuple[str, str], list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    seen: set[str] = field(default_factory=set)


class Ingest:
    def __init__(
        self,
        store: Store,
        broker: BrokerUrl,
        topics: Topics,
        client_id: str = "edgefleet-central",
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.store = store
        self.topics = topics
        self.stats = IngestStats()
        self.connected = threading.Event()
        self._broker = broker
        self._inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._stop = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if username is not None:
            client.username_pw_set(username, password)
        client.reconnect_delay_set(min_delay=1, max_delay=4)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

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
            log.warning("broker %s refused central: %s", self._broker, reason)
            return
        log.info(
            "central connected to %s (session present: %s)", self._broker, flags.session_present
        )
        client.subscribe(
            [
                (self.topics.pattern(ch), 1)
                for ch in (Channel.ALARMS, Channel.TELEMETRY, Channel.STATE, Channel.HEALTH)
            ]
        )
        self.connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self.connected.is_set():
            log.warning("central lost the broker %s: %s", self._broker, reason)
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put(msg)

    # --- ingest thread -----------------------------------------------------------------

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(
            self._broker.host,
            self._broker.port,
            keepalive=10,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def run(self) -> None:
        """Ingest until ``stop()``; call from the thread that owns the store."""
        while not self._stop.is_set():
            try:
                first = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            self.ingest_round(self._gather(first))

    def _gather(self, first: mqtt.MQTTMessage) -> list[mqtt.MQTTMessage]:
        """Take what arrives within ``GATHER_S`` of the first message into one round: one
        commit (two fsyncs) for many batches. An alarm ends the wait at once."""
        msgs = [first]
        deadline = time.monotonic() + GATHER_S
        urgent = first.topic.endswith("/alarms")
        while len(msgs) < ROUND_MAX_MESSAGES:
            wait = 0.0 if urgent else deadline - time.monotonic()
            try:
                msg = self._inbox.get(timeout=wait) if wait > 0 else self._inbox.get_nowait()
            except queue.Empty:
                break
            msgs.append(msg)
            urgent = urgent or msg.topic.endswith("/alarms")
        return msgs

    def stop(self) -> None:
        self._stop.set()
        self.connected.clear()  # a disconnect we asked for is not worth a warning
        self._client.disconnect()
        self._client.loop_stop()

    def ingest_round(self, msgs: list[mqtt.MQTTMessage]) -> None:
        rnd = _Round()
        for msg in msgs:
            self._store_one(msg, rnd)
        if rnd.seen:
            self.store.seen(rnd.seen)
        self.store.commit()
        for msg in msgs:
            if msg.qos > 0:
                self._client.ack(msg.mid, msg.qos)
        self.stats.messages += len(msgs)
        for gw, stream in set(rnd.telemetry) | set(rnd.alarms):
            ack = Ack(
                stream,
                telemetry=merge_ranges(rnd.telemetry.get((gw, stream), [])),
                alarms=merge_ranges(rnd.alarms.get((gw, stream), [])),
            )
            self._client.publish(self.topics.gw(gw, Channel.ACK), encode_ack(ack), qos=1)

    def _store_one(self, msg: mqtt.MQTTMessage, rnd: _Round) -> None:
        parsed = self.topics.parse(msg.topic)
        if parsed is None:
            return
        gw, channel = parsed
        try:
            if channel is Channel.TELEMETRY:
                batch = decode_telemetry(msg.payload)
                self._same_gateway(gw, batch.gw)
                stored = self.store.insert_telemetry(batch)
                self.stats.readings_stored += stored
                self.stats.duplicates += len(batch.readings) - stored
                rnd.telemetry[(gw, batch.stream)].append((batch.seq_first, batch.seq_last))
            elif channel is Channel.ALARMS:
                event = decode_alarm(msg.payload)
                self._same_gateway(gw, event.gw)
                self.stats.alarms_stored += self.store.insert_alarm(event)
                rnd.alarms[(gw, event.stream)].append((event.seq, event.seq))
            elif channel is Channel.STATE:
                if msg.payload:  # an empty retained message clears a decommissioned gateway
                    self.store.update_state(gw, decode_state(msg.payload))
            elif channel is Channel.HEALTH:
                self.store.update_health(gw, decode_health(msg.payload))
            else:
                return
        except PayloadError as exc:
            self._reject(gw, channel, exc)
            return
        rnd.seen.add(gw)

    def _same_gateway(self, topic_gw: str, payload_gw: str) -> None:
        if topic_gw != payload_gw:
            raise PayloadError(
                f"payload says gateway {payload_gw!r} on gateway {topic_gw!r}'s topic"
            )

    def _reject(self, gw: str, channel: Channel, exc: PayloadError) -> None:
        self.stats.rejected += 1
        count = self.stats.rejected_by_gateway[gw] = self.stats.rejected_by_gateway[gw] + 1
        if count == 1:  # log once per gateway, count the rest
            log.warning("rejected a %s message from %s: %s", channel.value, gw, exc)


def run_central(store: Store, ingest: Ingest, stop: threading.Event) -> None:
    ingest.start()
    worker = threading.Thread(target=ingest.run, name="ingest", daemon=True)
    worker.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        ingest.stop()
        worker.join(timeout=5)
        store.close()
