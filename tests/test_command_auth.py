"""Issue 14's acceptance for commands, against a real agent: a command signed with the
wrong key, an expired one, a replay of a valid one, and a valid one addressed to another
gateway are each refused with a clear error; a valid one is executed once. The commands
are published as an attacker on a lax broker would, raw, with a stock-shaped request."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.contract import Channel, Topics
from edge_agent.contract.commands import decode_reply, load_private_key, new_command, sign
from mqttlink.session import Session, Subscription
from mqttlink.url import Broker as BrokerSettings
from tests.support import Agent, Broker, ThreadedDevice, run_cli, wait_for
from tests.test_gateway_commands import GW, config, detector  # noqa: F401 (a fixture)

pytestmark = pytest.mark.hil
TOPICS = Topics()


class Requester:
    """One session that publishes signed commands to GW and collects the replies."""

    def __init__(self, broker: BrokerSettings) -> None:
        self.replies: dict[bytes, dict[str, Any]] = {}
        self.topic = f"{TOPICS.root}/center/reply/{uuid.uuid4().hex}"
        self.session = Session(broker, name="requester")
        self.session.subscribe(Subscription(self.topic, qos=1), self._got)
        self.session.open(timeout_s=5)

    def _got(self, msg: Any) -> None:
        if msg.correlation is not None:
            self.replies[msg.correlation] = decode_reply(msg.payload)

    def answered(self, payload: bytes) -> bool:
        """Whether the gateway answers ``payload`` within 2 s (it may not be subscribed yet)."""
        correlation = uuid.uuid4().bytes
        self.session.publish(
            TOPICS.gw(GW, Channel.CMD), payload, qos=1, response_topic=self.topic,
            correlation=correlation,
        )  # fmt: skip
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and correlation not in self.replies:
            time.sleep(0.05)
        return correlation in self.replies

    def send(self, payload: bytes) -> dict[str, Any]:
        correlation = uuid.uuid4().bytes
        self.session.publish(
            TOPICS.gw(GW, Channel.CMD),
            payload,
            qos=1,
            response_topic=self.topic,
            correlation=correlation,
        )
        wait_for(lambda: correlation in self.replies, 10, what="the gateway's reply")
        return self.replies[correlation]

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def requester(mqtt_broker: Broker) -> Iterator[Requester]:
    r = Requester(BrokerSettings.plain(mqtt_broker.url))
    yield r
    r.close()


def test_only_a_valid_command_for_this_gateway_runs_and_only_once(
    tmp_path: Path,
    mqtt_broker: Broker,
    detector: ThreadedDevice,  # noqa: F811
    requester: Requester,
) -> None:
    key, other = tmp_path / "keys" / "center.key", tmp_path / "other" / "center.key"
    for k in (key, other):
        assert run_cli("fleet", "keys", "init", "--key", str(k)).returncode == 0
    agent = Agent(
        tmp_path, config(tmp_path, mqtt_broker.url, detector.port, key.with_suffix(".pub"))
    ).start()
    center, stranger = load_private_key(key), load_private_key(other)
    siren = {"device": "det-3", "point": "siren", "value": True}
    try:
        wait_for(
            lambda: requester.answered(sign(new_command(GW, "ping", {}), center)),
            30,
            what="the agent answering",
        )
        # the wrong key
        reply = requester.send(sign(new_command(GW, "write", siren), stranger))
        assert (reply["ok"], reply["error"]) == (False, "bad signature"), reply
        # expired (signed as valid for a second, sent after it)
        stale = new_command(GW, "write", siren, ttl_s=1)
        stale_payload = sign(stale, center)
        time.sleep(1.5)
        reply = requester.send(stale_payload)
        assert reply["ok"] is False and "expired" in reply["error"], reply
        # for another gateway, on this one's topic
        reply = requester.send(sign(new_command("gw-other", "write", siren), center))
        assert reply["ok"] is False and "another gateway" in reply["error"], reply
        assert detector.get("siren") is False  # none of them wrote anything
        # a valid one runs; the same one again is a replay: refused, not run twice
        valid = sign(new_command(GW, "write", siren), center)
        assert requester.send(valid)["ok"] is True
        assert detector.get("siren") is True
        detector.set("siren", False)
        reply = requester.send(valid)
        assert reply["ok"] is False and "replay" in reply["error"].lower(), reply
        assert detector.get("siren") is False
        assert "Traceback" not in agent.output()
    finally:
        agent.stop()
