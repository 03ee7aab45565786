"""ping, read, write and restart against a real agent and a simulated Modbus device,
signed as the center signs them; refusals answered with a clear error."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from central.commands import send_command
from drivers.modbus.config import ModbusPoint
from edge_agent.contract import Channel, Topics
from edge_agent.contract.commands import decode_reply, load_private_key, new_command, sign
from edge_agent.contract.gateway_commands import RESTART_EXIT_CODE
from mqttlink.session import Session, Subscription
from mqttlink.url import Broker as BrokerSettings
from tests.support import Agent, Broker, ThreadedDevice, run_cli, wait_for

GW = "gw-cmd-1"
POINTS = [
    {"name": "smoke", "table": "input", "address": 0, "type": "float32", "unit": "%/m"},
    {"name": "siren", "table": "coil", "address": 0, "type": "bool"},
]


@pytest.fixture
def detector() -> Iterator[ThreadedDevice]:
    device = ThreadedDevice([ModbusPoint.model_validate(p) for p in POINTS]).start()
    device.set("smoke", 0.5)
    yield device
    device.close()


def config(tmp: Path, broker_url: str, port: int, key: Path) -> str:
    points = "\n".join(f"      - {json.dumps(p)}" for p in POINTS)
    return f"""\
gateway: {{id: {GW}}}
central: {{url: '{broker_url}', keepalive_s: 2, command_key: '{key}'}}
outbox: {{path: '{tmp / "outbox.db"}', ack_timeout_s: 2}}
health: {{interval_s: 1}}
devices:
  - id: det-3
    modbus: {{host: 127.0.0.1, port: {port}, timeout_s: 0.5}}
    poll_s: 0.2
    points:
{points}
"""


def test_ping_read_write_and_restart(
    tmp_path: Path, mqtt_broker: Broker, detector: ThreadedDevice
) -> None:
    key = tmp_path / "keys" / "center.key"
    assert run_cli("fleet", "keys", "init", "--key", str(key)).returncode == 0
    agent = Agent(
        tmp_path, config(tmp_path, mqtt_broker.url, detector.port, key.with_suffix(".pub"))
    )
    broker = BrokerSettings.plain(mqtt_broker.url)

    def cmd(name: str, args: dict[str, Any]) -> dict[str, Any]:
        return send_command(broker, Topics(), GW, name, args, key, timeout_s=10)

    agent.start()
    try:
        pong = wait_for(lambda: _ok(cmd, "ping", {}), 20, what="a ping answered")
        assert set(pong["result"]) == {"agent_version", "uptime_s", "outbox_depth", "ts"}
        assert pong["result"]["uptime_s"] >= 0 and pong["result"]["outbox_depth"] >= 0

        detector.set("smoke", 1.25)
        read = cmd("read", {"device": "det-3", "point": "smoke"})
        assert read["ok"] is True, read
        assert read["result"]["value"] == pytest.approx(1.25)
        assert (read["result"]["unit"], read["result"]["quality"]) == ("%/m", "good")

        wrote = cmd("write", {"device": "det-3", "point": "siren", "value": True, "by": "li"})
        assert wrote["ok"] is True, wrote
        assert detector.get("siren") is True
        assert "asked by 'li' done" in agent.output()

        refusals = [
            ("write", {"device": "det-3", "point": "smoke", "value": 3.0}, "read-only"),
            ("write", {"device": "det-3", "point": "siren", "value": [1]}, "value must be"),
            ("write", {"device": "det-3", "point": "siren", "valu": 1}, "unknown argument"),
            ("read", {"device": "nope", "point": "smoke"}, "no device 'nope'"),
            ("read", {"device": "det-3", "point": "x" * 500}, "at most 64"),
            ("read", {"device": "det-3", "point": "nope"}, "no point 'nope'"),
            ("ping", {"x": 1}, "unknown argument"),
            ("frobnicate", {}, "unknown command 'frobnicate'"),
        ]
        for name, args, error in refusals:
            reply = cmd(name, args)
            assert reply["ok"] is False and error in reply["error"], (name, args, reply)
        assert detector.get("siren") is True  # nothing refused was written

        # a command signed for another gateway, published on this one's topic: refused
        replayed = _signed_for_another(broker, key)
        assert replayed["ok"] is False, replayed
        assert "signed for another gateway" in replayed["error"]
        assert detector.get("siren") is True

        detector.stop()
        down = cmd("read", {"device": "det-3", "point": "smoke"})
        assert down["ok"] is False and "unavailable" in down["error"], down

        restart = cmd("restart", {"by": "li"})
        assert restart["ok"] is True
        assert restart["result"] == {"restarting": True, "exit_code": RESTART_EXIT_CODE}
        proc = agent.proc
        assert proc is not None
        code = wait_for(proc.poll, 20, what="the agent to exit")
        assert code == RESTART_EXIT_CODE != 2
        assert "stopped" in agent.output()
    finally:
        agent.stop()


def _ok(cmd: Any, name: str, args: dict[str, Any]) -> dict[str, Any] | None:
    try:
        reply: dict[str, Any] = cmd(name, args)
    except Exception:
        return None
    return reply if reply.get("ok") else None


def _signed_for_another(broker: BrokerSettings, key: Path) -> dict[str, Any]:
    """What a gateway (or anyone who read its topic) could try: republish on GW's topic
    a command the center signed for gw-other."""
    topics = Topics()
    command = new_command(
        "gw-other", "write", {"device": "det-3", "point": "siren", "value": False}
    )
    got: list[dict[str, Any]] = []
    correlation = uuid.uuid4().bytes
    reply_topic = f"{topics.root}/center/reply/{uuid.uuid4().hex}"
    session = Session(broker, name="replayer")
    session.subscribe(
        Subscription(reply_topic, qos=1), lambda m: got.append(decode_reply(m.payload))
    )
    session.open(timeout_s=5)
    try:
        session.publish(
            topics.gw(GW, Channel.CMD),
            sign(command, load_private_key(key)),
            qos=1,
            response_topic=reply_topic,
            correlation=correlation,
        )
        wait_for(lambda: bool(got), 10, what="the gateway's reply")
    finally:
        session.close()
    return got[0]
