"""``fleet revoke`` against a real Mosquitto on the config ``fleet broker-config`` wrote,
for a CA made by ``fleet ca init`` and gateways by ``fleet provision``: the revoked
gateway's live session can do nothing once the broker reloads, it cannot connect again,
the other gateway goes on, and the center refuses what the revoked one sends."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from central.rounds import store_round
from central.store.sqlite import SqliteStore
from edge_agent.contract.topics import Channel, Topics
from mqttlink.session import Message
from tests.support import Broker, asked_id, free_port, port_open, run_cli, stored_readings, wait_for

pytestmark = pytest.mark.hil

TOPICS = Topics()
A, B = "gw-a", "gw-b"
NOT_AUTHORIZED = 0x87


@dataclass
class Setup:
    ca: Path
    db: Path
    acl: Path
    pid_file: Path
    broker: Broker
    certs: dict[str, tuple[Path, Path]]


def fleet(*args: str) -> tuple[int, str]:
    out = run_cli("fleet", *args)
    return out.returncode, out.stdout + out.stderr


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    ca, db = tmp_path / "ca", tmp_path / "central.db"
    assert fleet("ca", "init", "--dir", str(ca))[0] == 0
    conf, data = tmp_path / "broker-config", tmp_path / "broker-data"
    data.mkdir()
    port, center_port = free_port(), free_port()
    rc, out = fleet(
        "broker-config", "--out", str(conf), "--ca-dir", str(ca), "--port", str(port),
        "--center-port", str(center_port), "--data-dir", str(data),
    )  # fmt: skip
    assert rc == 0, out
    certs = {}
    for gw in (A, B):
        bundle = tmp_path / f"{gw}.bundle"
        rc, out = fleet(
            "provision", gw, "--ca-dir", str(ca), "--db", str(db), "--out", str(bundle),
            "--broker", f"mqtts://127.0.0.1:{port}",
        )  # fmt: skip
        assert rc == 0, out
        files = json.loads(bundle.read_text())["files"]
        cert, key = tmp_path / f"{gw}.crt", tmp_path / f"{gw}.key"
        cert.write_text(files["gateway.crt"])
        key.write_text(files["gateway.key"])
        key.chmod(0o600)
        certs[gw] = (cert, key)
    run = tmp_path / "broker"
    run.mkdir()
    broker = Broker(run, port, config=conf / "mosquitto.conf").start()
    wait_for(lambda: port_open(center_port), 10, what="the center's listener")
    assert broker.proc is not None
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{broker.proc.pid}\n")
    yield Setup(ca, db, conf / "edgefleet.acl", pid_file, broker, certs)
    broker.stop()


class Gateway:
    """A paho MQTT v5 client with a gateway's certificate, keeping each PUBACK's code."""

    def __init__(self, setup: Setup, gw: str) -> None:
        cert, key = setup.certs[gw]
        self.port = setup.broker.port
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=asked_id(gw), protocol=mqtt.MQTTv5
        )
        self.paho.tls_set(ca_certs=str(setup.ca / "ca.crt"), certfile=str(cert), keyfile=str(key))
        self.connected = threading.Event()
        self.acked: dict[int, int] = {}
        self.got: list[str] = []
        self.paho.on_connect = self._on_connect
        self.paho.on_publish = lambda _c, _u, mid, rc, _p: self.acked.__setitem__(mid, rc.value)
        self.paho.on_message = lambda _c, _u, msg: self.got.append(msg.topic)

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        if rc.value == 0:
            self.connected.set()

    def connect(self, timeout: float = 5) -> bool:
        try:
            self.paho.connect("127.0.0.1", self.port, keepalive=10)
        except (OSError, ssl.SSLError):
            return False
        self.paho.loop_start()
        return self.connected.wait(timeout)

    def publish(self, topic: str) -> int:
        info = self.paho.publish(topic, b"x", qos=1)
        return wait_for(lambda: self.acked.get(info.mid), 10, what=f"PUBACK of {topic}") or 0

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def revoke(setup: Setup, gw: str, *args: str) -> tuple[int, str]:
    return fleet(
        "revoke", gw, "--ca-dir", str(setup.ca), "--db", str(setup.db),
        "--acl", str(setup.acl), "--broker-pid-file", str(setup.pid_file), *args,
    )  # fmt: skip


def test_a_revoked_gateway_is_cut_off_live_and_cannot_connect_again(setup: Setup) -> None:
    a, b = Gateway(setup, A), Gateway(setup, B)
    try:
        assert a.connect() and b.connect()
        for gw, client in ((A, a), (B, b)):
            assert client.publish(TOPICS.gw(gw, Channel.HEALTH)) in (0, 0x10)
        rc, out = revoke(setup, A)
        assert rc == 0, out
        assert "on the CRL" in out and "told to reload" in out, out
        # the live session: from the reload on, its publishes are refused (it stays
        # connected; it can do nothing)
        wait_for(
            lambda: a.publish(TOPICS.gw(A, Channel.HEALTH)) == NOT_AUTHORIZED,
            10,
            what="the revoked gateway's live session refused",
        )
        assert b.publish(TOPICS.gw(B, Channel.HEALTH)) in (0, 0x10)
    finally:
        a.close()
        b.close()
    # a new connection fails at the handshake: the reloaded CRL has its certificate
    again = Gateway(setup, A)
    try:
        assert not again.connect(), "a revoked certificate connected"
    finally:
        again.close()
    other = Gateway(setup, B)
    try:
        assert other.connect(), "the gateway not revoked could not connect again"
    finally:
        other.close()
    crl = x509.load_pem_x509_crl((setup.ca / "crl.pem").read_bytes())
    assert len(list(crl)) == 1
    store = SqliteStore(setup.db)
    try:
        assert store.revoked_gateways() == {A}
        assert all(i.revoked is not None for i in store.identities(A))
        assert all(i.revoked is None for i in store.identities(B))
    finally:
        store.close()
    # revoking again changes nothing more, and says so
    rc, out = revoke(setup, A)
    assert rc == 0 and "not already revoked" in out, out
    assert len(list(x509.load_pem_x509_crl((setup.ca / "crl.pem").read_bytes()))) == 1


def test_a_config_made_again_keeps_the_revoked_denied(setup: Setup, tmp_path: Path) -> None:
    assert revoke(setup, A)[0] == 0
    again = tmp_path / "again"
    rc, out = fleet(
        "broker-config", "--out", str(again), "--ca-dir", str(setup.ca),
        "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert rc == 0, out
    acl = (again / "edgefleet.acl").read_text()
    assert acl.endswith(f"user {A}\ntopic deny #\n"), acl
    assert acl == setup.acl.read_text().replace(str(setup.acl.parent), str(again))


def test_provisioning_a_revoked_gateway_again_lets_it_back_in(setup: Setup) -> None:
    assert revoke(setup, A)[0] == 0
    rc, out = fleet(
        "provision", A, "--ca-dir", str(setup.ca), "--db", str(setup.db), "--force",
        "--out", str(setup.db.parent / "again.bundle"),
    )  # fmt: skip
    assert rc == 0, out
    # the ACL the broker has still denies it: provision says so, and what to do
    assert "user gw-a" in setup.acl.read_text()
    assert "still denies it" in out and "fleet broker-config --force" in out, out
    assert "user gw-a" not in fleet_acl_after_revoking(setup, B)
    store = SqliteStore(setup.db)
    try:
        assert store.revoked_gateways() == {B}
    finally:
        store.close()


def fleet_acl_after_revoking(setup: Setup, gw: str) -> str:
    rc, out = revoke(setup, gw)
    assert rc == 0, out
    return setup.acl.read_text()


def test_revoke_refuses_a_gateway_never_provisioned_and_changes_nothing(setup: Setup) -> None:
    crl, acl = (setup.ca / "crl.pem").read_bytes(), setup.acl.read_text()
    rc, out = revoke(setup, "gw-unknown")
    assert rc == 1 and "no identity of gw-unknown" in out, out
    assert (setup.ca / "crl.pem").read_bytes() == crl
    assert setup.acl.read_text() == acl
    rc, out = fleet("revoke", A, "--db", str(setup.db.parent / "nothing.db"))
    assert rc == 1 and "Traceback" not in out, out


def test_the_center_refuses_what_a_revoked_gateway_sends(setup: Setup) -> None:
    """Defence in depth: a message of a revoked gateway that got past the broker is a
    dead letter, stored as nothing and acked to no one."""
    assert revoke(setup, A)[0] == 0
    store = SqliteStore(setup.db)
    try:
        now = time.time()

        def batch(gw: str) -> Message:
            reading = {"dev": "m-1", "pt": "p", "v": 1.5, "u": None, "q": "good", "ts": now}
            body = {"gw": gw, "stream": f"s-{gw}", "seq_first": 1, "seq_last": 1}
            payload = json.dumps(body | {"readings": [reading]}).encode()
            return Message(TOPICS.gw(gw, Channel.TELEMETRY), payload, qos=1)

        result = store_round(store, TOPICS, [batch(A), batch(B)], revoked=store.revoked_gateways())
        assert [(r.gateway, r.seq) for r in stored_readings(store)] == [(B, 1)]
        assert [gw for gw, _ in result.acks] == [B]
        (dead,) = store.rejected(A)
        assert "revoked" in dead.error
    finally:
        store.close()
