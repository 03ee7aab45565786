"""Sending a signed command to one gateway and waiting for its reply (MQTT v5
request/response: a response topic of our own and correlation data)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

from edge_agent.contract import Channel, PayloadError, Topics
from edge_agent.contract.commands import decode_reply, load_private_key, new_command, sign
from mqttlink.session import Message, Session, SessionError, Subscription
from mqttlink.url import Broker


class CommandFailed(Exception):
    """No reply in time, or the broker would not take the command."""


def send_command(
    broker: Broker,
    topics: Topics,
    gateway: str,
    cmd: str,
    args: dict[str, Any],
    key_path: Path,
    timeout_s: float = 10,
    ttl_s: float = 60,
) -> dict[str, Any]:
    """Sign ``cmd`` with the center's key, send it, return the gateway's reply."""
    try:
        key = load_private_key(key_path)
    except ValueError as exc:  # not readable, not a key, not Ed25519: says which
        raise CommandFailed(str(exc)) from None
    command = new_command(cmd, args, ttl_s)
    correlation = uuid.uuid4().bytes
    reply_topic = f"{topics.root}/center/reply/{uuid.uuid4().hex}"
    got: dict[str, Any] = {}
    done = threading.Event()

    def on_reply(msg: Message) -> None:
        if msg.correlation != correlation:
            return
        try:
            got.update(decode_reply(msg.payload))
        except PayloadError as exc:
            got.update(id=command["id"], ok=False, error=f"unreadable reply: {exc}")
        done.set()

    session = Session(broker, name="fleet", keepalive_s=10)
    session.subscribe(Subscription(reply_topic, qos=1), on_reply)
    try:
        session.open(timeout_s=5)  # connected, and the reply subscription granted
    except SessionError as exc:
        raise CommandFailed(f"broker {broker}: {exc}") from None
    try:
        delivery = session.publish(
            topics.gw(gateway, Channel.CMD),
            sign(command, key),
            qos=1,
            response_topic=reply_topic,
            correlation=correlation,
        )
        if delivery is None or not delivery.accepted:
            raise CommandFailed(f"broker {broker}: the connection dropped before the command")
        if not done.wait(timeout_s):
            raise CommandFailed(
                f"no reply from {gateway} within {timeout_s:g} s "
                "(offline, or no command key configured there?)"
            )
    finally:
        session.close()
    return got
