"""A publish from another thread than the session's (the agent's event loop) leaves at
once: it wakes paho's select rather than wait for its timeout."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import mqttlink.session as session_module
from mqttlink.session import Message, Session
from mqttlink.url import Broker as BrokerSettings
from tests.support import Broker


def test_a_publish_from_another_thread_does_not_wait_for_the_select_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With paho's select waiting 30 s for lack of traffic, a publish made from this
    thread must still reach a subscriber within a few seconds. Under loop_forever(),
    which makes no wake-up socket pair, it waited for the 30 s (alarms were up to 1 s
    late with the real timeout)."""
    monkeypatch.setattr(session_module, "LOOP_TIMEOUT_S", 30.0)
    d = tmp_path / "broker"
    d.mkdir()
    broker = Broker(d).start()
    settings = BrokerSettings.plain(broker.url)
    got = threading.Event()

    def take(msg: Message) -> None:
        got.set()

    receiver = Session(settings, client_id="receiver", name="receiver", keepalive_s=60)
    receiver.subscribe("t/alarm", take)
    sender = Session(settings, client_id="sender", name="sender", keepalive_s=60)
    try:
        receiver.open()
        sender.open()
        time.sleep(0.5)  # the connect's packets are done: the sender's select now waits
        sender.publish("t/alarm", b"fire", qos=1)
        assert got.wait(5), "the publish waited for paho's select timeout"
    finally:
        sender.close()
        receiver.close()
        broker.stop()
