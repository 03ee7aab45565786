"""The agent, for real, against peers that lie: a client publishing acks that break the
contract on the gateway's ``ack`` topic (real Mosquitto), a client forging acks of the
right shape on a broker that lets anyone publish anywhere (unsigned, signed with another
key, signed for another gateway), and a Modbus TCP device that answers every request with
an MBAP length of 2. The first and last were reproduced on a real agent: an
``OverflowError`` traceback per ack; a traceback from asyncio per poll (164 in 90 s).

What must hold: the log stays quiet (one warning per cause, no traceback), the bad input
is counted in the health report, and nothing leaves the outbox. Every wait is bounded.
"""

from __future__ import annotations

import json
import socket
import socketserver
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.contract import Ack, Channel, Topics, encode_ack
from edge_agent.contract.acks import sign_ack
from edge_agent.contract.commands import generate_keys, load_private_key
from edge_agent.contract.payloads import SEQ_MAX
from tests.rig import GW, devices_yaml
from tests.support import (
    Agent,
    Broker,
    Central,
    ThreadedDevice,
    agent_config,
    stored_readings,
    wait_for,
)

pytestmark = pytest.mark.hil
TOPICS = Topics()


class Peer:
    """A stock MQTT v5 client: publishes as anyone may, keeps the gateway's health reports."""

    def __init__(self, broker: Broker) -> None:
        self.health: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(TOPICS.gw(GW, Channel.HEALTH), qos=0)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.health.append(json.loads(msg.payload))

    def last_health(self) -> dict[str, Any] | None:
        with self._lock:
            return self.health[-1] if self.health else None

    def publish_ack(self, payload: bytes) -> None:
        self.client.publish(TOPICS.gw(GW, Channel.ACK), payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path).start()
    yield b
    b.stop()


def outbox_span(path: Path) -> tuple[int | None, int]:
    """(lowest seq, number of telemetry rows) in the agent's outbox, read beside it."""
    db = sqlite3.connect(path, timeout=5)
    try:
        low, count = db.execute("SELECT min(seq), count(*) FROM telemetry").fetchone()
        return low, int(count)
    finally:
        db.close()


def stream_of(path: Path) -> str | None:
    if not path.exists():
        return None
    db = sqlite3.connect(path, timeout=5)
    try:
        row = db.execute("SELECT value FROM meta WHERE key='stream_id'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return None if row is None else str(row[0])


def test_acks_that_break_the_contract_are_counted_and_delete_nothing(
    tmp_path: Path, broker: Broker, modbus_server: ThreadedDevice
) -> None:
    outbox = tmp_path / "outbox.db"
    agent = Agent.for_devices(tmp_path, broker.url, devices_yaml(modbus_server.port), GW, outbox)
    agent.start()
    peer = Peer(broker)
    try:
        stream = str(wait_for(lambda: stream_of(outbox), 20, what="the agent's outbox"))
        wait_for(lambda: outbox_span(outbox)[1] >= 5, 20, what="readings in the outbox")
        hostile = [
            {"stream": stream, "telemetry": [[1, 2**63]]},
            {"stream": stream, "telemetry": [[1, 2**64 + 5]], "alarms": [[1, 1]]},
            {"stream": stream, "telemetry": [[0, 2**63 - 1]]},
            {"stream": stream, "telemetry": [[50, 1]]},
            {"stream": stream, "telemetry": [[1, 1]] * 20_000},
            {"stream": stream + "/../x", "telemetry": [[1, 2**63 - 1]]},
        ]
        for _ in range(3):
            for ack in hostile:
                peer.publish_ack(json.dumps(ack).encode())
        counted = len(hostile) * 3

        def bad_acks() -> bool:
            health = peer.last_health()
            return health is not None and health["uplink"].get("bad_acks") == counted

        wait_for(bad_acks, 20, what=f"uplink.bad_acks == {counted} in a health report")
        assert agent.running()
        low, count = outbox_span(outbox)
        assert low == 1 and count >= 5, "a bad ack deleted readings"
    finally:
        peer.close()
        agent.stop()
    log = agent.output()
    assert "Traceback" not in log and "OverflowError" not in log, log[-3000:]
    assert log.count("ignoring an ack that breaks the contract") == 1, log[-3000:]


def outbox_rows(path: Path, upto: int) -> list[tuple[int, float]]:
    """(seq, edge time) of the outbox's first telemetry rows, up to seq ``upto``."""
    db = sqlite3.connect(path, timeout=5)
    try:
        rows = db.execute("SELECT seq, body FROM telemetry WHERE seq <= ? ORDER BY seq", (upto,))
        return [(int(seq), float(json.loads(body)["ts"])) for seq, body in rows]
    finally:
        db.close()


def test_forged_acks_on_a_lax_broker_delete_nothing_and_the_centers_signed_acks_do(
    tmp_path: Path, broker: Broker, modbus_server: ThreadedDevice
) -> None:
    """The broker lets anyone publish anywhere (anonymous, no ACL); the gateway has the
    center's key. A stock client publishes acks of the right shape covering every seq the
    outbox can hold: unsigned, signed with another key, signed by the center's key for
    another gateway, and the center's own for this gateway with its ranges widened after
    signing. None deletes a row; each is counted; the log says each kind once. Then the
    real center, started with the key, stores the readings and its acks empty the outbox."""
    center_key = tmp_path / "keys" / "center.key"
    center_pub = generate_keys(center_key)
    other_key = tmp_path / "other" / "center.key"
    generate_keys(other_key)
    outbox = tmp_path / "outbox.db"
    text = agent_config(
        gateway=GW,
        broker_url=broker.url,
        outbox=outbox,
        devices_yaml=devices_yaml(modbus_server.port),
        ack_timeout_s=1,
    )
    agent = Agent(tmp_path, text.replace("central: {", f"central: {{command_key: '{center_pub}', "))
    agent.start()
    peer = Peer(broker)
    central = Central(tmp_path, broker.url, key=center_key)
    try:
        stream = str(wait_for(lambda: stream_of(outbox), 20, what="the agent's outbox"))
        wait_for(lambda: outbox_span(outbox)[1] >= 5, 20, what="readings in the outbox")
        first = outbox_rows(outbox, 5)
        everything = Ack(stream, telemetry=((1, SEQ_MAX),), alarms=((1, SEQ_MAX),))
        widened = json.loads(
            sign_ack(Ack(stream, telemetry=((1, 1),)), GW, load_private_key(center_key))
        )
        widened["telemetry"] = [[1, SEQ_MAX]]
        forged = [
            encode_ack(everything),  # unsigned
            sign_ack(everything, GW, load_private_key(other_key)),  # another key
            sign_ack(everything, "gw-other", load_private_key(center_key)),  # another gateway
            json.dumps(widened).encode(),  # the center's, altered
        ]
        rounds = 3
        for _ in range(rounds):
            for payload in forged:
                peer.publish_ack(payload)
        counted = len(forged) * rounds

        def rejected() -> bool:
            health = peer.last_health()
            return health is not None and health["uplink"].get("rejected_acks") == counted

        wait_for(rejected, 20, what=f"uplink.rejected_acks == {counted} in a health report")
        low, count = outbox_span(outbox)
        assert low == 1 and count >= 5, "a forged ack deleted readings"
        assert outbox_rows(outbox, 5) == first
        health = peer.last_health()
        assert health is not None and health["uplink"]["bad_acks"] == 0

        # the real center: stores what the gateway kept, and its signed acks delete it
        central.start()
        wait_for(
            lambda: (outbox_span(outbox)[0] or 0) > first[-1][0],
            30,
            what="the center's signed acks deleting the first rows",
        )
        store = central.store()
        try:
            stored = {
                (r.seq, r.ts)
                for r in stored_readings(store, GW, limit=None)
                if r.stream == stream and r.seq <= first[-1][0]
            }
        finally:
            store.close()
        assert stored == set(first), "the readings kept through the forged acks never arrived"
        assert agent.running()
    finally:
        peer.close()
        agent.stop()
        central.stop()
    log = agent.output()
    assert "Traceback" not in log, log[-3000:]
    warned = [line for line in log.splitlines() if "not the center's for this gateway" in line]
    # each kind once (unsigned, bad signature, another gateway's), the rest only counted
    assert len(warned) == 3, warned
    assert any("unsigned ack" in w for w in warned), warned
    assert any("bad signature" in w for w in warned), warned
    assert any("signed for gateway 'gw-other'" in w for w in warned), warned


class LengthTwoHandler(socketserver.BaseRequestHandler):
    """Answers each Modbus TCP request with an MBAP length of 2: unit id, function code."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        server = self.server
        assert isinstance(server, LyingDevice)
        sock.settimeout(30)
        try:
            while True:
                head = _read_exactly(sock, 7)
                tid, _, length, unit = struct.unpack(">HHHB", head)
                request = _read_exactly(sock, length - 1)
                server.requests += 1
                sock.sendall(struct.pack(">HHHB", tid, 0, 2, unit) + request[:1])
        except (ConnectionError, TimeoutError, OSError):
            pass


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class LyingDevice(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    requests = 0


@pytest.fixture
def lying_device() -> Iterator[LyingDevice]:
    server = LyingDevice(("127.0.0.1", 0), LengthTwoHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_a_device_answering_mbap_length_2_is_logged_once_without_tracebacks(
    tmp_path: Path, broker: Broker, lying_device: LyingDevice
) -> None:
    port = lying_device.server_address[1]
    agent = Agent.for_devices(tmp_path, broker.url, devices_yaml(port, poll_s=0.1), GW)
    agent.start()
    peer = Peer(broker)
    seconds = 8.0
    try:
        wait_for(lambda: lying_device.requests >= 1, 20, what="a request to the device")
        start = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - start

        def errors_counted() -> dict[str, Any] | None:
            health = peer.last_health()
            device = health and health["devices"].get("tank-1")
            return device if device and device.get("errors", 0) >= 2 else None

        device = wait_for(errors_counted, 10, what="the device's errors in a health report")
        assert device is not None  # wait_for returns only what is truthy
        assert agent.running()
    finally:
        peer.close()
        agent.stop()
    log = agent.output()
    print(
        f"MBAP length 2 for {elapsed:.1f} s: {lying_device.requests} requests, "
        f"{len(log.encode())} bytes of agent log, {log.count('Traceback')} tracebacks, "
        f"health {device}"
    )
    assert "Traceback" not in log and "Fatal error" not in log, log[-3000:]
    # once with the device's state, once for the unit on its bus: not once per poll
    assert log.count("device tank-1 unavailable: timeout") == 1, log[-3000:]
    assert log.count(f"unit 1 on 127.0.0.1:{port} unavailable: timeout") == 1, log[-3000:]
    assert log.count(" WARNING ") + log.count(" ERROR ") == 2, log[-3000:]
    assert device["link"] != "up"


def test_a_message_longer_than_the_longest_ack_never_reaches_the_agent(
    tmp_path: Path, broker: Broker, modbus_server: ThreadedDevice
) -> None:
    """A 180 MB ack from any client took a gateway's agent from 46 MB to 839 MB while it
    read and parsed it. The agent's CONNECT says how long a packet it takes (the longest
    ack the center can send, and room for its properties), and the broker holds to it."""
    outbox = tmp_path / "outbox.db"
    agent = Agent.for_devices(tmp_path, broker.url, devices_yaml(modbus_server.port), GW, outbox)
    agent.start()
    peer = Peer(broker)
    try:
        stream = str(wait_for(lambda: stream_of(outbox), 20, what="the agent's outbox"))
        wait_for(lambda: peer.last_health() is not None, 20, what="a health report")
        too_long = [[1, 2]] * 800_000  # 4.8 MB: past any ack, and past ACK_RANGES_MAX
        peer.publish_ack(json.dumps({"stream": stream, "telemetry": too_long}).encode())
        # the longest ack there can be, in bytes; its last range backwards, so it is
        # counted as breaking the contract: proof that it was delivered
        top = 2**63 - 1
        longest = {
            "stream": "s" * 128,
            "telemetry": [[top, top]] * 16_384,
            "alarms": [[top, top]] * 16_383 + [[top, top - 1]],
        }
        payload = json.dumps(longest, separators=(",", ":")).encode()
        assert len(payload) > 1_370_000
        peer.publish_ack(payload)

        def counted() -> int | None:
            health = peer.last_health()
            return None if health is None else health["uplink"].get("bad_acks")

        wait_for(lambda: counted() == 1, 20, what="the longest ack counted as bad")
        time.sleep(2)  # a health report or two later: still only that one
        assert counted() == 1
        assert agent.running()
    finally:
        peer.close()
        agent.stop()
    log = agent.output()
    assert "Traceback" not in log, log[-3000:]
