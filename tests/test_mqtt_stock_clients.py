"""The MQTT contract as a central system built by others sees it: the agent runs for real,
and the only central is Debian's stock command-line clients (`mosquitto_sub` and
`mosquitto_pub` from mosquitto-clients, MQTT v5), driven from the README alone.

Every payload the stock subscriber prints is validated against the JSON Schemas in
``edge_agent/contract/schemas``; QoS and retain are read from what it prints too."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.contract import Channel, Topics
from edge_agent.contract.commands import load_private_key, new_command, sign
from edge_agent.contract.schema import CMD_REPLY, validate
from tests.rig import GW, devices_yaml
from tests.support import Agent, Broker, ThreadedDevice, run_cli, terminate

pytestmark = pytest.mark.hil

KEEPALIVE_S = 2
# Mosquitto 2.0.11 (Debian 12) sweeps for expired keep-alives only when more than 5 s
# have passed since its last sweep, on whole seconds: a silent client is cut up to 6 s
# after 1.5 x its keep-alive ran out (newer releases sweep every second).
KEEPALIVE_SWEEP_S = 6
HEALTH_S = 0.5
ALARM = "tank-1/smoke.alarm"
TOPICS = Topics()


def stock(name: str, broker: Broker) -> list[str]:
    """The command line of a stock client, MQTT v5, to the test's broker."""
    exe = shutil.which(name)
    if exe is None:
        raise RuntimeError(f"{name} is not installed: run scripts/setup (mosquitto-clients)")
    return [exe, "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(broker.port)]


@dataclass(frozen=True)
class Message:
    """One line of ``mosquitto_sub -F %j``: topic, QoS, retain, v5 properties, payload."""

    topic: str
    qos: int
    retain: bool
    properties: dict[str, Any]
    payload: bytes
    at: float  # time.monotonic() when the line was printed

    @property
    def channel(self) -> Channel | None:
        parsed = TOPICS.parse(self.topic)
        return parsed[1] if parsed else None

    def json(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.payload)
        return obj

    @classmethod
    def parse(cls, line: str) -> Message:
        obj = json.loads(line)
        return cls(
            topic=obj["topic"],
            qos=obj["qos"],
            retain=bool(obj["retain"]),
            properties=obj.get("properties", {}),
            payload=obj["payload"].encode(),
            at=time.monotonic(),
        )


class StockSub:
    """``mosquitto_sub -V mqttv5 -q 1 -F %j -C count -W timeout``, read line by line.

    It also subscribes to a probe topic holding a retained message: the broker sends that
    once the subscription stands, so its line tells the test the subscriber is ready."""

    def __init__(self, broker: Broker, *topics: str, count: int = 5000, wait_s: int = 25):
        self.probe = f"probe/{uuid.uuid4().hex}"
        stock_pub(broker, self.probe, b"ready", retain=True)
        args = stock("mosquitto_sub", broker)
        args += ["-q", "1", "-F", "%j", "-C", str(count + 1), "-W", str(wait_s)]
        for topic in (self.probe, *topics):
            args += ["-t", topic]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._ready = threading.Event()
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(5):
            self.close()
            raise AssertionError("mosquitto_sub was not subscribed within 5 s")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            msg = Message.parse(line)
            if msg.topic == self.probe:
                self._ready.set()
            else:
                with self._lock:
                    self.messages.append(msg)

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def wait(
        self, predicate: Callable[[Message], bool], timeout: float, what: str, after: float = 0
    ) -> Message:
        """The first message (printed after ``after``) that matches; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.snapshot():
                if msg.at >= after and predicate(msg):
                    return msg
            if time.monotonic() > deadline:
                raise AssertionError(f"mosquitto_sub saw no {what} within {timeout} s")
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"mosquitto_sub exited ({self.proc.returncode}) before {what}")
            time.sleep(0.05)

    def close(self) -> None:
        terminate(self.proc)
        self._reader.join(5)


def stock_sub_once(broker: Broker, topic: str) -> Message:
    """A fresh ``mosquitto_sub -C 1 -W 5``: what a consumer subscribing now gets first."""
    out = subprocess.run(
        [*stock("mosquitto_sub", broker), "-q", "1", "-F", "%j", "-C", "1", "-W", "5", "-t", topic],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert out.returncode == 0, f"mosquitto_sub got nothing on {topic}: {out.stderr}"
    return Message.parse(out.stdout)


def stock_pub(
    broker: Broker, topic: str, payload: bytes, *props: str, retain: bool = False
) -> None:
    """``mosquitto_pub -V mqttv5 -q 1``; ``props`` are v5 property names and values, each
    pair given as ``-D publish NAME VALUE``."""
    args = stock("mosquitto_pub", broker)
    args += ["-q", "1", "-t", topic, "-m", payload.decode(), *(["-r"] if retain else [])]
    for name, value in zip(props[::2], props[1::2], strict=True):
        args += ["-D", "publish", name, value]
    out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    assert out.returncode == 0, out.stderr


def config(tmp: Path, broker: Broker, port: int, *, poll_s: float, ack_timeout_s: float = 2) -> str:
    """The agent's config: a short keep-alive and ack timeout, one alarm rule, and the
    center's command key (made with ``fleet keys init``)."""
    key = tmp / "keys" / "center.key"
    if not key.exists():
        made = run_cli("fleet", "keys", "init", "--key", str(key))
        assert made.returncode == 0, made.stderr
    return (
        f"gateway: {{id: {GW}, site: test bench, tags: {{district: jingan}}}}\n"
        f"central: {{url: '{broker.url}', keepalive_s: {KEEPALIVE_S}, "
        f"command_key: '{key.with_suffix('.pub')}'}}\n"
        f"outbox: {{path: '{tmp / 'outbox.db'}', ack_timeout_s: {ack_timeout_s}}}\n"
        f"health: {{interval_s: {HEALTH_S}}}\n"
        f"devices:\n{devices_yaml(port, poll_s)}"
        "rules:\n"
        "  - {id: smoke.alarm, device: tank-1, when: smoke_alarm, severity: major,"
        ' message: "Smoke alarm at {device}"}\n'
    )


def valid(msg: Message) -> dict[str, Any]:
    """The payload, after checking it against its channel's JSON Schema."""
    channel = msg.channel
    assert channel is not None, f"{msg.topic} is not a contract topic"
    validate(channel, msg.payload)
    return msg.json()


def on(channel: Channel) -> Callable[[Message], bool]:
    return lambda m: m.topic == TOPICS.gw(GW, channel)


@pytest.fixture
def agent_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "agent"
    d.mkdir()
    yield d


def test_a_stock_subscriber_sees_every_channel_and_the_last_will(
    agent_dir: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice
) -> None:
    modbus_server.set("smoke_alarm", False)
    sub = StockSub(mqtt_broker, f"{TOPICS.root}/#")
    agent = Agent(agent_dir, config(agent_dir, mqtt_broker, modbus_server.port, poll_s=0.2))
    try:
        agent.start()
        online = sub.wait(on(Channel.STATE), 15, "the state")
        tel = sub.wait(on(Channel.TELEMETRY), 10, "telemetry")
        health = sub.wait(
            lambda m: on(Channel.HEALTH)(m) and m.json()["devices"]["tank-1"]["link"] == "up",
            10,
            "health with the device up",
        )
        modbus_server.set("smoke_alarm", True)
        alarm = sub.wait(on(Channel.ALARMS), 10, "an alarm event")

        state = valid(online)
        assert state["online"] is True and state["gw"] == GW and state["site"] == "test bench"
        assert online.qos == 1
        batch = valid(tel)
        assert tel.qos == 1 and batch["gw"] == GW
        assert batch["seq_last"] - batch["seq_first"] + 1 == len(batch["readings"])
        assert {r["pt"] for r in batch["readings"]} >= {"level", "pressure", "smoke_alarm"}
        report = valid(health)
        assert health.qos == 0 and report["devices"]["tank-1"]["link"] == "up"
        event = valid(alarm)
        assert alarm.qos == 1
        assert (event["id"], event["state"], event["dev"]) == (ALARM, "active", "tank-1")
        assert event["value"] is True and event["msg"] == "Smoke alarm at tank-1"

        # a consumer subscribing now gets the retained state at once
        retained = stock_sub_once(mqtt_broker, TOPICS.gw(GW, Channel.STATE))
        assert retained.retain and valid(retained)["online"] is True

        # the gateway dies without a goodbye: the broker publishes its Last Will
        killed = time.monotonic()
        agent.kill()
        will = sub.wait(
            lambda m: on(Channel.STATE)(m) and m.json()["online"] is False,
            1.5 * KEEPALIVE_S + 2,
            "the Last Will",
            after=killed,
        )
        assert will.at - killed <= 1.5 * KEEPALIVE_S + 1
        assert valid(will) == {"gw": GW, "online": False} and will.qos == 1
        retained = stock_sub_once(mqtt_broker, TOPICS.gw(GW, Channel.STATE))
        assert retained.retain and valid(retained) == {"gw": GW, "online": False}
    finally:
        agent.kill()
        sub.close()

    # everything the stock subscriber printed follows the published contract
    seen = sub.snapshot()
    for msg in seen:
        valid(msg)
    assert {m.channel for m in seen} == {
        Channel.STATE,
        Channel.TELEMETRY,
        Channel.HEALTH,
        Channel.ALARMS,
    }


def test_a_frozen_gateway_goes_offline_after_one_and_a_half_keepalives(
    agent_dir: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice
) -> None:
    """No FIN, no goodbye (a gateway that lost power or its link): only the keep-alive
    tells the broker, and the Last Will follows 1.5 x ``central.keepalive_s`` after the
    gateway's last packet (health goes every 0.5 s here)."""
    sub = StockSub(mqtt_broker, TOPICS.gw(GW, Channel.STATE))
    agent = Agent(agent_dir, config(agent_dir, mqtt_broker, modbus_server.port, poll_s=1))
    try:
        agent.start()
        sub.wait(lambda m: m.json()["online"] is True, 15, "the online state")
        time.sleep(0.5)
        assert agent.proc is not None
        frozen = time.monotonic()
        agent.proc.send_signal(signal.SIGSTOP)
        will = sub.wait(
            lambda m: m.json()["online"] is False,
            1.5 * KEEPALIVE_S + KEEPALIVE_SWEEP_S + 2,
            "the Last Will",
            frozen,
        )
        assert (
            1.5 * KEEPALIVE_S - 1 <= will.at - frozen <= 1.5 * KEEPALIVE_S + KEEPALIVE_SWEEP_S + 1.5
        )
        assert valid(will) == {"gw": GW, "online": False}
    finally:
        agent.kill()  # SIGKILL ends a stopped process too
        sub.close()


def test_a_stock_consumer_acks_from_the_readme_and_the_agent_forgets_what_it_acked(
    agent_dir: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice
) -> None:
    """One poll (the next is an hour away) and one alarm: the agent resends them until a
    stock consumer acks them, then deletes them and sends them no more."""
    ack_timeout_s = 1.0
    modbus_server.set("smoke_alarm", True)
    sub = StockSub(
        mqtt_broker,
        TOPICS.pattern(Channel.TELEMETRY),
        TOPICS.pattern(Channel.ALARMS),
        TOPICS.pattern(Channel.HEALTH),
    )
    text = config(agent_dir, mqtt_broker, modbus_server.port, poll_s=3600, ack_timeout_s=1)
    agent = Agent(agent_dir, text)
    try:
        agent.start()
        first = sub.wait(on(Channel.TELEMETRY), 15, "the first batch")
        batch = valid(first)
        key = (batch["stream"], batch["seq_first"], batch["seq_last"])
        event = valid(sub.wait(on(Channel.ALARMS), 10, "the alarm event"))
        assert event["stream"] == batch["stream"] and event["state"] == "active"

        # nobody acked: the same batch comes again after the ack timeout
        again = sub.wait(
            lambda m: (
                on(Channel.TELEMETRY)(m)
                and (m.json()["stream"], m.json()["seq_first"], m.json()["seq_last"]) == key
            ),
            5 * ack_timeout_s,
            "the batch resent",
            after=first.at + 0.01,
        )
        assert again.at - first.at >= 0.9 * ack_timeout_s
        assert valid(again)["readings"] == batch["readings"]
        held = sub.wait(
            lambda m: on(Channel.HEALTH)(m) and m.json()["outbox"]["alarms_depth"] == 1,
            5,
            "health with the rows held",
            after=again.at,  # a report from between the alarm's commit and the batch's has 0
        )
        assert valid(held)["outbox"]["depth"] == len(batch["readings"])

        # the ack exactly as the README shows it, built from what mosquitto_sub printed
        got = [m.json() for m in sub.snapshot() if m.channel in (Channel.TELEMETRY, Channel.ALARMS)]
        telemetry = sorted({(b["seq_first"], b["seq_last"]) for b in got if "seq_first" in b})
        alarms = sorted({(e["seq"], e["seq"]) for e in got if "seq" in e})
        assert {b["stream"] for b in got} == {batch["stream"]}
        body = {
            "gw": GW,
            "stream": batch["stream"],
            "telemetry": [list(r) for r in telemetry],
            "alarms": [list(r) for r in alarms],
        }
        # the gateway has the center's key: an unsigned ack deletes nothing
        unsigned = json.dumps({k: v for k, v in body.items() if k != "gw"}).encode()
        validate(Channel.ACK, unsigned)
        stock_pub(mqtt_broker, TOPICS.gw(GW, Channel.ACK), unsigned)
        refused = sub.wait(
            lambda m: on(Channel.HEALTH)(m) and m.json()["uplink"].get("rejected_acks") == 1,
            5,
            "health counting the unsigned ack",
        )
        assert valid(refused)["outbox"]["alarms_depth"] == 1
        ack = readme_signed(body, agent_dir / "keys" / "center.key", ACK_SIGNED)
        validate(Channel.ACK, ack)
        acked = time.monotonic()
        stock_pub(mqtt_broker, TOPICS.gw(GW, Channel.ACK), ack)

        emptied = sub.wait(
            lambda m: (
                on(Channel.HEALTH)(m)
                and m.json()["outbox"]["depth"] == 0
                and m.json()["outbox"]["alarms_depth"] == 0
            ),
            5,
            "health with an empty outbox",
            after=acked,
        )
        report = valid(emptied)
        assert report["outbox"]["oldest_age_s"] is None
        db = sqlite3.connect(agent_dir / "outbox.db")
        try:
            assert db.execute("SELECT count(*) FROM telemetry").fetchone() == (0,)
            assert db.execute("SELECT count(*) FROM alarms").fetchone() == (0,)
        finally:
            db.close()

        # and nothing is resent any more (a resend already on its way may still land)
        time.sleep(3 * ack_timeout_s + 0.5)
        late = [
            m
            for m in sub.snapshot()
            if m.at > acked + 0.5 and m.channel in (Channel.TELEMETRY, Channel.ALARMS)
        ]
        assert late == []
        assert valid(sub.snapshot()[-1])  # health still flows
    finally:
        agent.stop()
        sub.close()


CMD_SIGNED = ("id", "gw", "cmd", "args", "expires")
ACK_SIGNED = ("gw", "stream", "telemetry", "alarms")


def readme_signed(
    message: dict[str, Any], key_file: Path, fields: tuple[str, ...] = CMD_SIGNED
) -> bytes:
    """Sign as the README says: Ed25519 over the canonical JSON of the signed fields (a
    command's id, gw, cmd, args and expires; an ack's gw, stream, telemetry and alarms),
    keys sorted, no whitespace, UTF-8, base64 in ``sig``."""
    body = {k: message[k] for k in fields}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    sig = load_private_key(key_file).sign(canonical.encode())
    return json.dumps({**body, "sig": base64.b64encode(sig).decode()}).encode()


def test_a_stock_client_commands_over_v5_request_response(
    agent_dir: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice
) -> None:
    key_file = agent_dir / "keys" / "center.key"
    modbus_server.set("smoke_alarm", True)
    alarms = StockSub(mqtt_broker, TOPICS.gw(GW, Channel.ALARMS))
    reply_topic = f"{TOPICS.root}/center/reply/{uuid.uuid4().hex}"
    replies = StockSub(mqtt_broker, reply_topic, count=3)
    agent = Agent(agent_dir, config(agent_dir, mqtt_broker, modbus_server.port, poll_s=0.2))
    try:
        agent.start()
        alarms.wait(lambda m: valid(m)["state"] == "active", 15, "the active alarm")
        command = new_command(GW, "alarm.ack", {"alarm": ALARM, "by": "li.wei"}, ttl_s=60)
        signed = readme_signed(command, key_file)
        # the README's recipe is what the project's own signer does
        assert json.loads(signed) == json.loads(sign(command, load_private_key(key_file)))
        validate(Channel.CMD, signed)
        cmd_topic = TOPICS.gw(GW, Channel.CMD)

        def ask(payload: bytes, correlation: str) -> dict[str, Any]:
            sent = time.monotonic()
            stock_pub(
                mqtt_broker,
                cmd_topic,
                payload,
                "response-topic",
                reply_topic,
                "correlation-data",
                correlation,
            )
            reply = replies.wait(
                lambda m: m.properties.get("correlation-data") == correlation,
                10,
                f"the reply correlated {correlation}",
                after=sent,
            )
            assert reply.qos == 1 and not reply.retain
            validate(CMD_REPLY, reply.payload)
            return reply.json()

        done = ask(signed, "req-1")
        assert done == {
            "id": command["id"],
            "ok": True,
            "result": {"alarm": ALARM, "state": "acknowledged"},
            "error": None,
        }
        acked = alarms.wait(lambda m: valid(m)["state"] == "acknowledged", 10, "the ack event")
        assert acked.json()["id"] == ALARM

        # rejected commands are answered too, on the same response topic, correlated
        replayed = ask(signed, "req-2")
        assert replayed["ok"] is False and "replayed" in replayed["error"]
        unsigned = {k: v for k, v in json.loads(signed).items() if k != "sig"}
        refused = ask(json.dumps(unsigned).encode(), "req-3")
        assert refused == {"id": "?", "ok": False, "result": None, "error": "unsigned command"}
    finally:
        agent.stop()
        alarms.close()
        replies.close()
