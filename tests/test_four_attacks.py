"""Issue 14's four attacks, run against a real Mosquitto on the config ``fleet
broker-config`` writes for a CA made by ``fleet ca init`` and gateways made by ``fleet
provision``. Gateway B is a real ``edge-agent run`` reading a simulated Modbus device; the
center is the real ``fleet central run`` on the center's listener, signing its acks
(``--key``). The attacker holds gateway A's certificate and key (a box someone opened) and
uses stock MQTT v5 clients: paho, and ``mosquitto_pub -V mqttv5``, which prints the
PUBACK's reason code.

1. telemetry and an alarm event under B's topics with the seqs B is about to send;
2. the center's client id (to wipe its session), then a forged ack;
3. a retained ``state`` of ``online: false`` for B, which is live;
4. a signed command captured on A's own ``cmd`` topic, published again to B's.

Each is refused by the broker (PUBACK 0x87; for 2, A gets its own client id) and its
consequence does not happen: every reading B produced reaches the center (every seq, no
gap, nothing in ``fleet losses``), B's real alarm is stored, B stays online, and the
replayed command, delivered to B another way (the center's own rights standing in for a
lax broker), is refused by B: its signature covers the gateway id. Where the broker is lax
the center's own checks stand behind it: a forged ack is refused by the gateway here, and
a forgery stored ahead of the real seqs is kept apart and flagged CONFLICT
(``tests/test_forged_seqs.py``).

The fixture is the module's (one broker, one center, one agent for the four), so the
tests run in this order and each checks at its end that nothing B sent was lost.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.modbus.config import ModbusPoint
from edge_agent.contract.acks import sign_ack
from edge_agent.contract.alarms import AlarmEvent, AlarmState, Severity
from edge_agent.contract.payloads import Ack
from edge_agent.contract.topics import Channel, Topics
from tests.pki import CENTRAL, Issued
from tests.rig import POINTS, devices_yaml
from tests.support import (
    Agent,
    Broker,
    Central,
    ThreadedDevice,
    free_port,
    port_open,
    produced_keys,
    run_cli,
    wait_for,
)
from tests.test_broker_config import NOT_AUTHORIZED, Client

pytestmark = pytest.mark.hil

TOPICS = Topics()
A, B = "gw-a", "gw-b"
ALARM = "tank-1/smoke.alarm"
TAKEOVER = "already connected, closing old connection"
"""What Mosquitto logs when a connection takes a connected client's id."""
REFUSED_ACKS = (
    "ignoring an ack that is not the center's for this gateway: unsigned ack",
    "ignoring an ack that is not the center's for this gateway: bad signature",
)
"""What the agent logs, once of each kind, for an ack that deletes nothing."""


@dataclass
class Rig:
    ca: Path
    broker: Broker
    center_port: int
    central: Central
    agent: Agent
    outbox: Path
    device: ThreadedDevice
    certs: dict[str, Issued]

    @property
    def ca_file(self) -> Path:
        return self.ca / "ca.crt"

    @property
    def center_env(self) -> dict[str, str]:
        return {
            "EDGEFLEET_BROKER_CA_FILE": str(self.ca_file),
            "EDGEFLEET_BROKER_CERT_FILE": str(self.certs[CENTRAL].cert),
            "EDGEFLEET_BROKER_KEY_FILE": str(self.certs[CENTRAL].key),
        }

    def client(self, who: str, client_id: str, port: int | None = None) -> Client:
        """A connected paho v5 client with ``who``'s certificate: on the gateways'
        listener, unless ``port`` says otherwise."""
        c = Client(self.ca_file, self.certs[who], client_id, port or self.broker.port)
        assert c.connect(), f"{who} ({client_id}) could not connect"
        return c

    def connects_on_center_listener(self, who: str, client_id: str) -> bool:
        """Whether ``who``'s certificate gets a CONNACK on the center's listener (no: it
        trusts the center's own CA alone)."""
        c = Client(self.ca_file, self.certs[who], client_id, self.center_port)
        try:
            return c.connect(3)
        finally:
            c.close()

    def center_client(self, client_id: str) -> Client:
        return self.client(CENTRAL, client_id, self.center_port)

    def mosquitto_pub(self, who: str, topic: str, payload: bytes, *flags: str) -> str:
        """A stock ``mosquitto_pub -V mqttv5 -d`` with ``who``'s certificate, QoS 1: what it
        printed (2.0.11 exits 0 for a refused publish; the PUBACK's RC tells)."""
        pub = shutil.which("mosquitto_pub")
        assert pub is not None, "mosquitto_pub is missing (apt-get install mosquitto-clients)"
        cert = self.certs[who]
        done = subprocess.run(
            [
                pub, "-V", "mqttv5", "-d", "-h", "127.0.0.1", "-p", str(self.broker.port),
                "--cafile", str(self.ca_file), "--cert", str(cert.cert), "--key", str(cert.key),
                "-q", "1", "-i", "edgefleet-stock", "-t", topic, "-m", payload.decode(), *flags,
            ],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        return done.stdout + done.stderr

    def broker_log(self) -> str:
        return self.broker.log.read_text(errors="replace")

    def fleet(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("fleet", *args, "--db", str(self.central.db), env=self.center_env)


def fleet_ok(*args: str) -> str:
    done = run_cli("fleet", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("attacks")
    ca, center = tmp / "ca", tmp / "center"
    center.mkdir()
    db = center / "central.db"
    fleet_ok("ca", "init", "--dir", str(ca))
    conf, data, run = tmp / "broker-config", tmp / "broker-data", tmp / "broker"
    data.mkdir()
    run.mkdir()
    port, center_port = free_port(), free_port()
    fleet_ok(
        "broker-config", "--out", str(conf), "--ca-dir", str(ca), "--port", str(port),
        "--center-port", str(center_port), "--data-dir", str(data),
    )  # fmt: skip
    certs = {CENTRAL: Issued(ca / "central.crt", ca / "central.key")}
    for gw in (A, B):
        bundle = tmp / f"{gw}.bundle"
        fleet_ok(
            "provision", gw, "--ca-dir", str(ca), "--db", str(db), "--out", str(bundle),
            "--site", "test bench", "--broker", f"mqtts://127.0.0.1:{port}",
        )  # fmt: skip
        files = json.loads(bundle.read_text())["files"]
        certs[gw] = Issued(tmp / f"{gw}.crt", tmp / f"{gw}.key")
        certs[gw].cert.write_text(files["gateway.crt"])
        certs[gw].key.write_text(files["gateway.key"])
        certs[gw].key.chmod(0o600)

    device = ThreadedDevice([ModbusPoint.model_validate(p) for p in POINTS]).start()
    broker = Broker(run, port, config=conf / "mosquitto.conf")
    central = Central(center, f"mqtts://127.0.0.1:{center_port}", key=ca / "command.key")
    central.args += [
        "--ca-file", str(ca / "ca.crt"),
        "--cert-file", str(certs[CENTRAL].cert), "--key-file", str(certs[CENTRAL].key),
    ]  # fmt: skip
    gw_dir = tmp / B
    gw_dir.mkdir()
    outbox = gw_dir / "outbox.db"
    tls = f"ca_file: '{ca / 'ca.crt'}', cert_file: '{certs[B].cert}', key_file: '{certs[B].key}'"
    agent = Agent(
        gw_dir,
        f"gateway: {{id: {B}, site: test bench}}\n"
        f"central: {{url: 'mqtts://127.0.0.1:{port}', keepalive_s: 2, {tls}, "
        f"command_key: '{ca / 'command.pub'}'}}\n"
        f"outbox: {{path: '{outbox}', ack_timeout_s: 2}}\n"
        "health: {interval_s: 1}\n"
        f"devices:\n{devices_yaml(device.port, 0.5)}"
        "rules:\n"
        "  - id: smoke.alarm\n"
        "    device: tank-1\n"
        '    when: "smoke_alarm"\n'
        "    severity: critical\n"
        '    message: "smoke at {device}"\n',
    )
    checked = run_cli("edge-agent", "check", "-c", str(agent.config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rig = Rig(ca, broker, center_port, central, agent, outbox, device, certs)
    try:
        broker.start()
        wait_for(lambda: port_open(center_port), 10, what="the center's listener")
        central.start()
        wait_for(lambda: "connected to" in central.output(), 15, what="the center connected")
        agent.start()
        wait_for(lambda: online(rig) is True, 30, what="B online in the registry")
        yield rig
    finally:
        agent.stop()
        central.stop()
        broker.stop()
        device.close()
    for proc in (agent, central):
        assert "Traceback" not in proc.output(), proc.output()[-3000:]


def online(rig: Rig) -> bool | None:
    """B's ``online`` as ``fleet gateways show B --json`` shows it (None: not known)."""
    shown = run_cli("fleet", "gateways", "show", B, "--db", str(rig.central.db), "--json")
    return json.loads(shown.stdout)["online"] if shown.returncode == 0 else None


def position(outbox: Path, lane: str) -> tuple[str, int]:
    """B's stream and the last seq it committed in ``lane``."""
    db = sqlite3.connect(outbox)
    try:
        (stream,) = db.execute("SELECT value FROM meta WHERE key='stream_id'").fetchone()
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name=?", (lane,)).fetchone()
    finally:
        db.close()
    return stream, row[0] if row else 0


def rows_in_outbox(outbox: Path) -> int:
    db = sqlite3.connect(outbox)
    try:
        return int(db.execute("SELECT count(*) FROM telemetry").fetchone()[0])
    finally:
        db.close()


def nothing_lost(rig: Rig) -> None:
    """Every reading B has produced so far reaches the center: every seq of its one
    stream from 1, no gap, no loss reported, nothing dead-lettered."""
    produced = produced_keys(rig.outbox)
    assert len(produced) > 10, "B produced almost nothing: the test shows nothing"

    def stored() -> set[tuple[str, int]] | None:
        store = rig.central.store()
        try:
            keys = store.sequence_keys(B)
        finally:
            store.close()
        return keys if produced <= keys else None

    keys = wait_for(stored, 20, interval=0.3, what="everything B produced at the center")
    assert keys is not None
    assert {stream for stream, _ in keys} == {next(iter(produced))[0]}
    assert sorted(seq for _, seq in keys) == list(range(1, len(keys) + 1))
    losses = rig.fleet("losses", "-g", B, "--json")
    assert losses.returncode == 0 and json.loads(losses.stdout) == [], losses
    store = rig.central.store()
    try:
        assert store.rejected() == []
    finally:
        store.close()


def test_1_telemetry_and_an_alarm_under_bs_topics_with_its_next_seqs_are_refused(
    rig: Rig,
) -> None:
    """Stored first, these would make B's real readings and its real critical alarm look
    like duplicates: acked, deleted at the gateway, never stored."""
    stream, last = position(rig.outbox, "telemetry")
    _, last_alarm = position(rig.outbox, "alarms")
    now = time.time()
    ahead = range(last + 1, last + 201)  # what B sends in the next seconds
    fake = {"dev": "tank-1", "pt": "level", "v": 0.0, "u": "m", "q": "good", "ts": now}
    batch = {"gw": B, "stream": stream, "seq_first": ahead[0], "seq_last": ahead[-1]}
    batch["readings"] = [fake] * len(ahead)
    cleared = AlarmEvent(
        id=ALARM, rule="smoke.alarm", dev="tank-1", severity=Severity.CRITICAL,
        state=AlarmState.CLEARED, value=False, ts=now, msg="all clear", occurrence=1,
    ).to_json() | {"gw": B, "stream": stream, "seq": last_alarm + 1}  # fmt: skip
    forged = [
        (TOPICS.gw(B, Channel.TELEMETRY), json.dumps(batch).encode()),
        (TOPICS.gw(B, Channel.ALARMS), json.dumps(cleared).encode()),
    ]
    a = rig.client(A, "a-forger")
    try:
        for topic, payload in forged:
            assert a.publish(topic, payload) == NOT_AUTHORIZED, topic
    finally:
        a.close()
    for topic, payload in forged:
        said = rig.mosquitto_pub(A, topic, payload)
        assert "received PUBACK" in said and "RC:135" in said, said

    # B's real critical alarm, under the very seq the forgery claimed, is stored
    rig.device.set("smoke_alarm", True)

    def active() -> bool:
        store = rig.central.store()
        try:
            row = store.alarm(B, ALARM)
            return row is not None and row.state == "active"
        finally:
            store.close()

    wait_for(active, 15, what="B's real smoke alarm at the center")
    store = rig.central.store()
    try:
        history = store.alarm_history(B, ALARM)
    finally:
        store.close()
    assert [(e["seq"], e["state"], e["msg"]) for e in history] == [
        (last_alarm + 1, "active", "smoke at tank-1")
    ]
    rig.device.set("smoke_alarm", False)
    wait_for(lambda: position(rig.outbox, "telemetry")[1] > ahead[-1], 30, what="B past the seqs")
    nothing_lost(rig)


def test_2_the_centers_client_id_takes_no_session_and_a_forged_ack_deletes_nothing(
    rig: Rig,
) -> None:
    sessions = rig.central.output().count(" connected to ")
    seen = len(rig.broker_log())
    # on the gateways' listener A asks for the center's id, clean start: it gets its own
    intruder = rig.client(A, CENTRAL)
    try:
        stream, last = position(rig.outbox, "telemetry")
        ack = Ack(stream=stream, telemetry=((1, last + 10**6),), alarms=((1, 10**6),))
        unsigned = json.dumps(
            {"stream": stream, "telemetry": [[1, last + 10**6]], "alarms": [[1, 10**6]]}
        ).encode()
        assert intruder.publish(TOPICS.gw(B, Channel.ACK), unsigned) == NOT_AUTHORIZED
        time.sleep(1)
        log = rig.broker_log()[seen:]
        assert f"as {A} (p5, c1" in log and f"as {CENTRAL} (" not in log, log
        assert TAKEOVER not in log, log
    finally:
        intruder.close()
    said = rig.mosquitto_pub(A, TOPICS.gw(B, Channel.ACK), unsigned)
    assert "received PUBACK" in said and "RC:135" in said, said

    # on the center's listener, A's certificate does not get in: it trusts the center's CA
    assert not rig.connects_on_center_listener(A, "a-on-center")
    assert rig.central.output().count(" connected to ") == sessions
    assert TAKEOVER not in rig.broker_log()

    # the center down, its session at the broker keeps what B sends meanwhile: A, asking
    # for its id with a clean start, wipes nothing
    rig.central.stop()
    said_before = len(rig.central.output())
    try:
        before = rows_in_outbox(rig.outbox)
        wiper = rig.client(A, CENTRAL)
        wiper.close()
        wait_for(lambda: rows_in_outbox(rig.outbox) > before + 10, 15, what="B's backlog")
        # and were the broker lax (here: the center's own rights carry the forgery), B
        # takes no ack but the center's signed one for B: it keeps every row
        lax = rig.center_client("lax-broker")
        try:
            other_key = Ed25519PrivateKey.generate()
            kept = rows_in_outbox(rig.outbox)
            for payload in (unsigned, sign_ack(ack, B, other_key)):
                lax.publish_ok(TOPICS.gw(B, Channel.ACK), payload)
            wait_for(
                lambda: all(why in rig.agent.output() for why in REFUSED_ACKS),
                10,
                what="B refusing both forged acks",
            )
            assert rows_in_outbox(rig.outbox) >= kept
        finally:
            lax.close()
    finally:
        rig.central.start()
    back = wait_for(
        lambda: re.findall(r" connected to .*", rig.central.output()[said_before:]),
        15,
        what="the center connected again",
    )
    assert all("(session present: True)" in line for line in back), back
    assert TAKEOVER not in rig.broker_log()
    nothing_lost(rig)


def test_3_a_retained_offline_state_for_a_live_gateway_is_refused(rig: Rig) -> None:
    offline = json.dumps({"online": False}).encode()
    state = TOPICS.gw(B, Channel.STATE)
    a = rig.client(A, "a-state")
    try:
        assert a.publish(state, offline, retain=True) == NOT_AUTHORIZED
    finally:
        a.close()
    said = rig.mosquitto_pub(A, state, offline, "-r")
    assert "received PUBACK" in said and "RC:135" in said, said
    time.sleep(1)
    assert online(rig) is True
    # the retained state anyone subscribing now gets is still B's own
    reader = rig.center_client("state-reader")
    try:
        assert reader.subscribe(state) == [1]
        (retained,) = wait_for(lambda: reader.payloads(state), 5, what="B's retained state")
    finally:
        reader.close()
    assert json.loads(retained)["online"] is True
    nothing_lost(rig)


def test_4_a_command_captured_on_a_and_replayed_to_b_is_refused_by_broker_and_gateway(
    rig: Rig,
) -> None:
    a = rig.client(A, "a-listener")
    try:
        assert a.subscribe(TOPICS.gw(A, Channel.CMD)) == [1]
        # the operator pings A (which answers nothing here: the box is the attacker's)
        sent = rig.fleet("cmd", A, "ping", "--timeout", "1", "--broker", center_url(rig),
                         "--key", str(rig.ca / "command.key"), "--json")  # fmt: skip
        assert sent.returncode == 1, sent
        (captured,) = wait_for(
            lambda: a.payloads(TOPICS.gw(A, Channel.CMD)), 5, what="the command on A's topic"
        )
        assert json.loads(captured)["gw"] == A
        assert a.publish(TOPICS.gw(B, Channel.CMD), captured) == NOT_AUTHORIZED
    finally:
        a.close()
    said = rig.mosquitto_pub(A, TOPICS.gw(B, Channel.CMD), captured)
    assert "received PUBACK" in said and "RC:135" in said, said

    # delivered to B another way (the center's rights standing in for a lax broker), B
    # refuses it: the signature covers the gateway it is for
    lax = rig.center_client("lax-cmd")
    try:
        replies = f"{TOPICS.root}/center/reply/{uuid.uuid4().hex}"
        assert lax.subscribe(replies) == [1]
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = replies
        props.CorrelationData = b"replayed"
        lax.paho.publish(TOPICS.gw(B, Channel.CMD), captured, qos=1, properties=props)
        (reply,) = wait_for(lambda: lax.payloads(replies), 10, what="B's answer to the replay")
    finally:
        lax.close()
    answer = json.loads(reply)
    assert answer["ok"] is False and "signed for another gateway" in answer["error"], answer
    # the same channel carries a command signed for B
    genuine = rig.fleet("cmd", B, "ping", "--timeout", "10", "--broker", center_url(rig),
                        "--key", str(rig.ca / "command.key"), "--json")  # fmt: skip
    assert genuine.returncode == 0, genuine
    nothing_lost(rig)


def center_url(rig: Rig) -> str:
    return f"mqtts://127.0.0.1:{rig.center_port}"


def test_5_a_gateways_certificate_on_the_centers_listener_takes_no_session(rig: Rig) -> None:
    """The center's listener trusts the center's own CA alone: A's certificate there,
    asking for the center's id, is refused at the handshake, and the center's session
    goes on."""
    seen = len(rig.broker_log())
    assert not rig.connects_on_center_listener(A, CENTRAL)
    log = rig.broker_log()[seen:]
    nothing_lost(rig)
    assert TAKEOVER not in log, log
