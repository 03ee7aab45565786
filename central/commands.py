"""Sending a signed command to one gateway and waiting for its reply (MQTT v5
request/response: a response topic of our own and correlation data)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config.models import BrokerUrl
from edge_agent.contract import Channel, PayloadError, Topics
from edge_agent.contract.commands import decode_reply, load_private_key, new_command, sign


class CommandFailed(Exception):
    """No reply in time, or the broker would not take the command."""


def send_command(
    broker: BrokerUrl,
    topics: Topics,
    gateway: str,
    cmd: str,
    args: dict[str, Any],
    key_path: Path,
    timeout_s: float = 10,
    ttl_s: float = 60,
) -> dict[str, Any]:
    """Sign ``cmd`` with the center's key, send it, return the gateway's reply."""
    key = load_private_key(key_path)
    command = new_command(cmd, args, ttl_s)
    correlation = uuid.uuid4().bytes
    reply_topic = f"{topics.root}/center/reply/{uuid.uuid4().hex}"
    got: dict[str, Any] = {}
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if getattr(msg.properties, "CorrelationData", None) != correlation:
            return
        try:
            got.update(decode_reply(msg.payload))
        except PayloadError as exc:
            got.update(id=command["id"], ok=False, error=f"unreadable reply: {exc}")
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    try:
        client.connect(broker.host, broker.port, keepalive=10)
    except OSError as exc:
        raise CommandFailed(f"cannot reach the broker {broker}: {exc}") from None
    client.loop_start()
    try:
        client.subscribe(reply_topic, qos=1)
        if not subscribed.wait(5):
            raise CommandFailed("the broker did not confirm the reply subscription")
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_topic
        props.CorrelationData = correlation
        client.publish(topics.gw(gateway, Channel.CMD), sign(command, key), qos=1, properties=props)
        if not done.wait(timeout_s):
            raise CommandFailed(
                f"no reply from {gateway} within {timeout_s:g} s "
                "(offline, or no command key configured there?)"
            )
    finally:
        client.disconnect()
        client.loop_stop()
    return got
