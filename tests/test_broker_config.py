"""``fleet broker-config`` against a real Mosquitto started with the config it writes, for a
CA folder laid out as ``fleet ca init`` makes it (``tests.pki.fleet_ca``): who may connect,
publish and read what. Every client is MQTT v5 (paho, and a stock ``mosquitto_pub``), so a
denied publish is seen as PUBACK 0x87; with Mosquitto's ACL file a denied subscription is
granted and delivers nothing, which is what is checked."""

from __future__ import annotations

import json
import shutil
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from central.broker_config import BrokerConfig
from edge_agent.contract.limits import MESSAGE_MAX_BYTES
from edge_agent.contract.topics import Channel, Topics
from tests.pki import CENTRAL, Authority, FleetCa, Issued, fleet_ca
from tests.rig import GW, devices_yaml
from tests.support import (
    Agent,
    Broker,
    Central,
    ThreadedDevice,
    asked_id,
    free_port,
    port_open,
    produced_keys,
    run_cli,
    stored_readings,
    wait_for,
)

TOPICS = Topics()
A, B = "gw-a", "gw-b"
NOT_AUTHORIZED = 0x87
GATEWAY_WRITES = (Channel.TELEMETRY, Channel.ALARMS, Channel.STATE, Channel.HEALTH)


@dataclass
class Fleet:
    ca: FleetCa
    broker: Broker
    gateways: dict[str, Issued]
    rogue: Authority
    workdir: Path
    center_port: int
    clients: list[Client] = field(default_factory=list)

    def client(self, issued: Issued | None, name: str, port: int | None = None) -> Client:
        """A client on the gateways' listener; the center's certificate on the center's."""
        if port is None:
            port = self.center_port if issued is self.ca.central else self.broker.port
        c = Client(self.ca.folder / "ca.crt", issued, name, port)
        self.clients.append(c)
        return c


class Client:
    """A paho MQTT v5 client over TLS, keeping every PUBACK's reason code and message."""

    def __init__(self, ca_file: Path, issued: Issued | None, name: str, port: int) -> None:
        self.port = port
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=asked_id(name), protocol=mqtt.MQTTv5
        )
        self.paho.tls_set(
            ca_certs=str(ca_file),
            certfile=str(issued.cert) if issued else None,
            keyfile=str(issued.key) if issued else None,
        )
        self.connected = threading.Event()
        self.acked: dict[int, int] = {}
        self.granted: dict[int, list[int]] = {}
        self.got: list[tuple[str, bytes]] = []
        self.disconnects = 0
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_publish = self._on_publish
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_message = lambda _c, _u, msg: self.got.append((msg.topic, msg.payload))

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        if rc.value == 0:
            self.connected.set()

    def _on_disconnect(self, *_: object) -> None:
        self.disconnects += 1

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        self.acked[mid] = rc.value

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, rcs: list[ReasonCode], _p: Properties | None
    ) -> None:
        self.granted[mid] = [rc.value for rc in rcs]

    def connect(self, timeout: float = 5) -> bool:
        """Whether the broker took the connection (a CONNACK of success) within ``timeout``."""
        try:
            self.paho.connect("127.0.0.1", self.port, keepalive=10)
        except (OSError, ssl.SSLError):
            return False
        self.paho.loop_start()
        return self.connected.wait(timeout)

    def publish(self, topic: str, payload: bytes = b"x", retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.paho.publish(topic, payload, qos=1, retain=retain)
        return wait_for(lambda: self.acked.get(info.mid), 10, what=f"PUBACK of {topic}") or 0

    def publish_ok(self, topic: str, payload: bytes = b"x", retain: bool = False) -> None:
        info = self.paho.publish(topic, payload, qos=1, retain=retain)
        wait_for(lambda: info.mid in self.acked, 10, what=f"PUBACK of {topic}")
        # 0, or 0x10 (no matching subscribers): both say it was taken
        assert self.acked[info.mid] in (0, 0x10), (topic, hex(self.acked[info.mid]))

    def subscribe(self, *topics: str) -> list[int]:
        """Subscribe at QoS 1 and return the SUBACK's reason codes (1: granted QoS 1)."""
        _, mid = self.paho.subscribe([(t, 1) for t in topics])
        return wait_for(lambda: self.granted.get(mid), 10, what=f"SUBACK of {topics}")

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p in self.got if t == topic]

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def write_config(
    ca: Path, out: Path, port: int, data: Path, *extra: str, center_port: int | None = None
) -> None:
    made = run_cli(
        "fleet",
        "broker-config",
        "--out",
        str(out),
        "--ca-dir",
        str(ca),
        "--port",
        str(port),
        "--center-port",
        str(center_port or port + 1),
        "--data-dir",
        str(data),
        *extra,
    )
    assert made.returncode == 0, made.stderr
    assert str(out / "mosquitto.conf") in made.stdout


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Mosquitto on the generated config, a fleet CA, gateways A and B, and another CA."""
    ca = fleet_ca(tmp_path / "fleet-ca")
    port, center_port = free_port(), free_port()
    out = tmp_path / "broker-config"
    data = tmp_path / "broker-data"
    data.mkdir()
    write_config(ca.folder, out, port, data, center_port=center_port)
    run = tmp_path / "broker"
    run.mkdir()
    broker = Broker(run, port, config=out / "mosquitto.conf").start()
    wait_for(lambda: port_open(center_port), 10, what="the center's listener")
    gateways = {gw: ca.gateway(gw, tmp_path / "gateways") for gw in (A, B)}
    rogue = Authority(tmp_path / "rogue", "Someone else's CA")
    fleet = Fleet(ca, broker, gateways, rogue, run, center_port)
    yield fleet
    for c in fleet.clients:
        c.close()
    broker.stop()


def connected(fleet: Fleet, issued: Issued | None, name: str) -> Client:
    c = fleet.client(issued, name)
    assert c.connect(), f"{name} could not connect"
    return c


def test_the_generated_config_names_the_ca_folder_by_absolute_path_and_the_contracts_size(
    tmp_path: Path,
) -> None:
    ca = fleet_ca(tmp_path / "fleet-ca")
    write_config(ca.folder, tmp_path / "out", 18883, tmp_path / "data", "--bind", "0.0.0.0")
    conf = (tmp_path / "out" / "mosquitto.conf").read_text().splitlines()
    folder = ca.folder.resolve()
    for line in (
        "listener 18883 0.0.0.0",
        f"cafile {folder / 'ca.crt'}",
        f"certfile {folder / 'broker.crt'}",
        f"keyfile {folder / 'broker.key'}",
        f"crlfile {folder / 'crl.pem'}",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        f"acl_file {(tmp_path / 'out' / 'edgefleet.acl').resolve()}",
        f"persistence_location {(tmp_path / 'data').resolve()}",
        f"message_size_limit {MESSAGE_MAX_BYTES}",
    ):
        assert line in conf
    acl = (tmp_path / "out" / "edgefleet.acl").read_text()
    assert "%c" not in acl and "$" not in acl  # every placeholder filled
    assert f"user {CENTRAL}" in acl.splitlines()


def test_it_refuses_to_overwrite_without_force_and_a_ca_folder_without_its_files(
    tmp_path: Path,
) -> None:
    ca = fleet_ca(tmp_path / "fleet-ca")
    out = tmp_path / "out"
    write_config(ca.folder, out, 18883, tmp_path / "data")
    (out / "edgefleet.acl").write_text("kept\n")
    again = run_cli("fleet", "broker-config", "--out", str(out), "--ca-dir", str(ca.folder))
    assert again.returncode == 1 and "--force" in again.stderr, again.stderr
    assert (out / "edgefleet.acl").read_text() == "kept\n"
    write_config(ca.folder, out, 18884, tmp_path / "data", "--force")
    assert "listener 18884 127.0.0.1" in (out / "mosquitto.conf").read_text()
    assert "kept" not in (out / "edgefleet.acl").read_text()

    (ca.folder / "crl.pem").unlink()
    empty = tmp_path / "out2"
    no_crl = run_cli("fleet", "broker-config", "--out", str(empty), "--ca-dir", str(ca.folder))
    assert no_crl.returncode == 1 and "crl.pem" in no_crl.stderr, no_crl.stderr
    assert not empty.exists()


def one_error(out: str) -> str:
    """The one line of an error a command printed; no traceback before it."""
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    return errors[0]


def refused(ca: Path, out: Path) -> str:
    """The error line of a broker-config that exits 1 (and leaves ``out`` as it was)."""
    made = run_cli("fleet", "broker-config", "--out", str(out), "--ca-dir", str(ca))
    assert made.returncode == 1, made.stdout + made.stderr
    return one_error(made.stderr)


def test_an_out_that_is_a_file_or_cannot_be_made_is_a_one_line_error(tmp_path: Path) -> None:
    ca = fleet_ca(tmp_path / "fleet-ca")
    a_file = tmp_path / "a-file"
    a_file.write_text("kept\n")
    assert "is a file, not a folder" in refused(ca.folder, a_file)
    assert a_file.read_text() == "kept\n"
    assert "cannot write into" in refused(ca.folder, a_file / "below")
    if Path("/proc/self").is_dir():  # a folder nobody can make a folder in, even root
        assert "cannot write into /proc/edgefleet-x" in refused(
            ca.folder, Path("/proc/edgefleet-x")
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "fleet-ca"]


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("ca.crt", "is not a PEM certificate"),
        ("broker.crt", "is not a PEM certificate"),
        ("crl.pem", "is not a PEM certificate revocation list"),
    ],
)
def test_a_ca_folder_file_that_is_not_pem_writes_nothing(
    tmp_path: Path, name: str, says: str
) -> None:
    ca = fleet_ca(tmp_path / "fleet-ca")
    (ca.folder / name).write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    error = refused(ca.folder, tmp_path / "out")
    assert name in error and says in error, error
    assert not (tmp_path / "out").exists()


def test_a_ca_folder_whose_broker_certificate_or_crl_another_ca_signed_writes_nothing(
    tmp_path: Path,
) -> None:
    ca = fleet_ca(tmp_path / "fleet-ca")
    out = tmp_path / "out"
    other = Authority(tmp_path / "other", "EdgeFleet fleet CA")  # the same name, not the key
    good = (ca.folder / "broker.crt").read_bytes()
    other.server("broker", stem="broker")
    (ca.folder / "broker.crt").write_bytes((other.folder / "broker.crt").read_bytes())
    error = refused(ca.folder, out)
    assert "broker.crt is not signed by" in error and "ca.crt" in error, error
    (ca.folder / "broker.crt").write_bytes(good)
    other.write_crl(ca.folder / "crl.pem")
    error = refused(ca.folder, out)
    assert "crl.pem is not signed by" in error, error
    ca.authority.write_crl(ca.folder / "crl.pem")
    (ca.folder / "ca.crt").write_bytes(good)  # a certificate, but not a CA's
    error = refused(ca.folder, out)
    assert "ca.crt is a certificate but not a CA's" in error, error
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [("--bind", "127.0.0.1\nallow_anonymous true"), ("--topic-root", "a/#"), ("--port", "0")],
)
def test_a_value_that_would_break_the_config_is_a_usage_error(
    tmp_path: Path, option: str, value: str
) -> None:
    ca = fleet_ca(tmp_path / "fleet-ca")
    out = tmp_path / "out"
    bad = run_cli(
        "fleet", "broker-config", "--out", str(out), "--ca-dir", str(ca.folder), option, value
    )
    assert bad.returncode == 2 and option in bad.stderr, bad.stderr
    assert not out.exists()


def test_the_templates_are_package_data_and_packaging_shows_the_same_files() -> None:
    """broker-config reads its templates from the central package, which a wheel carries
    (pyproject's package-data), not from a checkout's packaging/; packaging/ links to
    them, so there is one copy."""
    import fnmatch  # noqa: PLC0415
    import tomllib  # noqa: PLC0415
    from importlib import resources  # noqa: PLC0415

    root = Path(__file__).resolve().parent.parent
    data = tomllib.loads((root / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["central"]
    package = resources.files("central")
    for name in ("mosquitto.conf", "edgefleet.acl"):
        inside = f"broker_templates/{name}"
        assert any(fnmatch.fnmatch(inside, g) for g in globs), (inside, globs)
        assert (package / "broker_templates" / name).is_file()
        shown = root / "packaging" / name
        assert shown.resolve() == (root / "central" / inside).resolve(), shown
    from central import broker_config  # noqa: PLC0415

    assert "packaging" not in str(broker_config.TEMPLATES)


def test_the_template_renders_as_packaging_shows_it() -> None:
    """packaging/ shows the templates (links to the package's): rendered, every $name is
    filled."""
    texts = BrokerConfig(ca_dir=Path("/etc/edgefleet/ca"), out=Path("/etc/mosquitto")).render()
    assert "$" not in texts["mosquitto.conf"] and "$" not in texts["edgefleet.acl"]
    assert "pattern readwrite edgefleet/v1/gw/%u/state" in texts["edgefleet.acl"]


@pytest.mark.hil
def test_only_certificates_of_the_fleet_ca_connect(fleet: Fleet) -> None:
    assert fleet.client(fleet.gateways[A], "a").connect()
    assert fleet.client(fleet.ca.central, "center").connect()
    assert not fleet.client(None, "anonymous").connect()
    rogue_dir = fleet.workdir / "rogue-certs"
    rogue_dir.mkdir()
    for cn in (A, CENTRAL):
        other = fleet.rogue.client(cn, folder=rogue_dir)
        assert not fleet.client(other, f"rogue-{cn}").connect(), cn


@pytest.mark.hil
def test_a_certificate_the_crl_revokes_cannot_connect(fleet: Fleet) -> None:
    """The config reads the CA folder's crl.pem (at start here: revoking a live gateway,
    and cutting its session, are ``fleet revoke``'s)."""
    fleet.broker.stop()
    fleet.ca.authority.write_crl(fleet.ca.folder / "crl.pem", (fleet.gateways[A],), number=2)
    fleet.broker.start()
    assert not fleet.client(fleet.gateways[A], "a-revoked").connect()
    assert fleet.client(fleet.gateways[B], "b").connect()
    assert fleet.client(fleet.ca.central, "center").connect()


@pytest.mark.hil
def test_a_gateway_publishes_only_its_own_data_and_the_center_sees_none_of_the_rest(
    fleet: Fleet,
) -> None:
    center = connected(fleet, fleet.ca.central, "center")
    b = connected(fleet, fleet.gateways[B], "b")
    a = connected(fleet, fleet.gateways[A], "a")
    assert center.subscribe("#") == [1]
    assert b.subscribe(TOPICS.gw(B, Channel.CMD), TOPICS.gw(B, Channel.ACK)) == [1, 1]

    # B's data, anyone's commands and acks, the center's feed: PUBACK 0x87 each
    forbidden = [TOPICS.gw(B, ch) for ch in GATEWAY_WRITES]
    forbidden += [TOPICS.gw(gw, ch) for gw in (A, B) for ch in (Channel.ACK, Channel.CMD)]
    forbidden += [TOPICS.feed(), f"{TOPICS.root}/gw/{B}/other", "elsewhere"]
    for topic in forbidden:
        assert a.publish(topic, b"forged") == NOT_AUTHORIZED, topic
    assert a.publish(TOPICS.gw(B, Channel.STATE), b"forged", retain=True) == NOT_AUTHORIZED

    # its own data and a reply to the center go through, after the forgeries
    own = [TOPICS.gw(A, ch) for ch in GATEWAY_WRITES] + [f"{TOPICS.root}/center/reply/r1"]
    for topic in own:
        a.publish_ok(topic, b"real")
    wait_for(lambda: len(center.got) >= len(own), 10, what="A's own messages at the center")
    time.sleep(0.3)
    assert sorted(center.got) == sorted((t, b"real") for t in own)
    assert b.got == []


@pytest.mark.hil
def test_a_gateway_reads_only_its_own_commands_acks_and_state(fleet: Fleet) -> None:
    center = connected(fleet, fleet.ca.central, "center")
    b = connected(fleet, fleet.gateways[B], "b")
    a = connected(fleet, fleet.gateways[A], "a")
    # B's retained state is there before A subscribes: A does not get it either
    b.publish_ok(TOPICS.gw(B, Channel.STATE), b"B's state", retain=True)
    theirs = [TOPICS.gw(B, ch) for ch in (Channel.CMD, Channel.ACK, Channel.TELEMETRY)]
    theirs += [TOPICS.gw(B, Channel.STATE), f"{TOPICS.root}/center/reply/#", TOPICS.feed()]
    mine = [TOPICS.gw(A, ch) for ch in (Channel.CMD, Channel.ACK, Channel.STATE)]
    # the ACL file grants a subscription it will deliver nothing to
    assert a.subscribe(*theirs, *mine) == [1] * (len(theirs) + len(mine))
    assert b.subscribe(TOPICS.gw(B, Channel.CMD), TOPICS.gw(B, Channel.ACK)) == [1, 1]

    # the center writes commands and acks (to B, then to A) and its feed
    for topic in (TOPICS.gw(B, Channel.CMD), TOPICS.gw(B, Channel.ACK), TOPICS.feed()):
        center.publish_ok(topic, b"for B")
    b.publish_ok(TOPICS.gw(B, Channel.TELEMETRY), b"B's data")
    b.publish_ok(f"{TOPICS.root}/center/reply/r1", b"B's reply")
    for topic in mine:
        (center if topic != TOPICS.gw(A, Channel.STATE) else a).publish_ok(topic, b"for A")
    wait_for(lambda: len(a.got) >= len(mine), 10, what="A's own topics")
    time.sleep(0.3)
    assert sorted(a.got) == sorted((t, b"for A") for t in mine)
    assert sorted(b.got) == [
        (TOPICS.gw(B, Channel.ACK), b"for B"),
        (TOPICS.gw(B, Channel.CMD), b"for B"),
    ]
    # the center cannot write a gateway's data
    assert center.publish(TOPICS.gw(B, Channel.TELEMETRY)) == NOT_AUTHORIZED


@pytest.mark.hil
def test_a_stock_mosquitto_pub_with_a_gateways_certificate_is_refused_on_anothers_topic(
    fleet: Fleet,
) -> None:
    pub = shutil.which("mosquitto_pub")
    assert pub is not None, "mosquitto_pub is missing (apt-get install mosquitto-clients)"
    center = connected(fleet, fleet.ca.central, "center")
    assert center.subscribe("#") == [1]
    a = fleet.gateways[A]

    def mosquitto_pub(topic: str) -> subprocess.CompletedProcess[str]:
        where = ["-h", "127.0.0.1", "-p", str(fleet.broker.port)]
        tls = [
            "--cafile",
            str(fleet.ca.folder / "ca.crt"),
            "--cert",
            str(a.cert),
            "--key",
            str(a.key),
        ]
        what = ["-q", "1", "-i", "edgefleet-stock-a", "-t", topic, "-m", "from mosquitto_pub"]
        return subprocess.run(
            [pub, "-V", "mqttv5", "-d", *where, *tls, *what],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )

    refused = mosquitto_pub(TOPICS.gw(B, Channel.TELEMETRY))
    # mosquitto_pub 2.0.11 exits 0 all the same: what it prints is what tells
    said = refused.stdout + refused.stderr
    assert "received PUBACK" in said and "RC:135" in said, said
    assert "Not authorized" in said, said
    own = mosquitto_pub(TOPICS.gw(A, Channel.TELEMETRY))
    assert own.returncode == 0 and "RC:0" in own.stdout + own.stderr, own
    wait_for(lambda: center.got, 10, what="A's own telemetry at the center")
    time.sleep(0.3)
    assert center.got == [(TOPICS.gw(A, Channel.TELEMETRY), b"from mosquitto_pub")]


@pytest.mark.hil
def test_the_agent_and_the_center_work_through_the_generated_config(
    tmp_path: Path, fleet: Fleet, modbus_server: ThreadedDevice
) -> None:
    """The real agent (gateway GW's certificate) and ``fleet central run`` (the center's):
    readings are stored and acked (the agent deletes what was acked), its state reaches
    the registry, and a command goes out and its reply comes back. Another gateway's
    forged telemetry, ack and retained offline state for GW are refused, and none of it
    reaches the store or the registry."""
    url = f"mqtts://127.0.0.1:{fleet.broker.port}"
    center_url = f"mqtts://127.0.0.1:{fleet.center_port}"
    folder = fleet.ca.folder
    gw = fleet.ca.gateway(GW, tmp_path / "gw")
    command_pub = folder / "command.pub"
    tls = f"ca_file: '{folder / 'ca.crt'}', cert_file: '{gw.cert}', key_file: '{gw.key}'"
    outbox = tmp_path / "gw" / "outbox.db"
    agent = Agent(
        tmp_path / "gw",
        f"gateway: {{id: {GW}, site: test bench}}\n"
        f"central: {{url: '{url}', keepalive_s: 2, {tls}, command_key: '{command_pub}'}}\n"
        f"outbox: {{path: '{outbox}', ack_timeout_s: 2}}\n"
        "health: {interval_s: 1}\n"
        f"devices:\n{devices_yaml(modbus_server.port, 0.2)}",
    )
    center_env = {
        "EDGEFLEET_BROKER_CA_FILE": str(folder / "ca.crt"),
        "EDGEFLEET_BROKER_CERT_FILE": str(fleet.ca.central.cert),
        "EDGEFLEET_BROKER_KEY_FILE": str(fleet.ca.central.key),
    }
    (tmp_path / "center").mkdir()
    central = Central(tmp_path / "center", center_url, key=folder / "command.key")
    central.env.update(center_env)
    try:
        central.start()
        agent.start()
        store = central.store()
        try:
            wait_for(
                lambda: len(stored_readings(store, GW, "tank-1", "level", None, 20)) >= 10,
                30,
                what="readings of the gateway in the center's store",
            )
            row = wait_for(lambda: store.gateway(GW), 10, what="the gateway in the registry")
            assert row.online and row.site == "test bench"
        finally:
            store.close()

        # gateway A's certificate forges GW's data, an ack and a retained offline state
        a = connected(fleet, fleet.gateways[A], "a")
        forged = {"gw": GW, "stream": "forged", "seq_first": 1, "seq_last": 1}
        reading = {"dev": "tank-1", "pt": "level", "v": 9999.5, "u": None, "q": "good"}
        forged["readings"] = [{**reading, "ts": time.time()}]
        ack = {"stream": "forged", "telemetry": [[1, 10**9]], "alarms": []}
        for topic, body, retain in (
            (TOPICS.gw(GW, Channel.TELEMETRY), forged, False),
            (TOPICS.gw(GW, Channel.ACK), ack, False),
            (TOPICS.gw(GW, Channel.STATE), {"online": False}, True),
        ):
            assert a.publish(topic, json.dumps(body).encode(), retain) == NOT_AUTHORIZED

        def outbox_rows() -> int:
            db = sqlite3.connect(outbox)
            try:
                return int(db.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0])
            finally:
                db.close()

        # acked rows leave the outbox: fewer rows there than it ever produced
        wait_for(
            lambda: outbox_rows() < len(produced_keys(outbox)) - 5,
            20,
            what="the center's acks deleting rows of the outbox",
        )
        replied = run_cli(
            "fleet",
            "alarms",
            "ack",
            "tank-1/no.such.alarm",
            "-g",
            GW,
            "--broker",
            center_url,  # the center's certificate is for the center's listener alone
            "--key",
            str(folder / "command.key"),
            "--json",
            env=center_env,
        )
        # the gateway answers (there is no such alarm): the command and its reply passed
        assert replied.returncode == 1 and "error" in json.loads(replied.stdout), replied
        store = central.store()
        try:
            stored = stored_readings(store, GW, limit=None)
            assert stored
            assert [r for r in stored if r.stream == "forged" or r.value == 9999.5] == []
            assert store.rejected() == []
            row = store.gateway(GW)
            assert row is not None and row.online
        finally:
            store.close()
    finally:
        agent.stop()
        central.stop()
    assert "Not authorized" not in agent.output() + central.output()


@pytest.mark.hil
def test_a_gateway_cannot_take_over_the_centers_session_by_its_client_id(fleet: Fleet) -> None:
    """On the gateways' listener a client's id is its certificate's name: gateway A asking
    for the center's client id (or B's) gets its own, and the center, on its listener,
    keeps its session."""
    center = connected(fleet, fleet.ca.central, "edgefleet-central")
    b = connected(fleet, fleet.gateways[B], "b")
    intruder = connected(fleet, fleet.gateways[A], "edgefleet-central")
    as_b = connected(fleet, fleet.gateways[A], B)  # B's id, which B's session has
    time.sleep(1)
    assert center.disconnects == 0 and b.disconnects == 0
    assert intruder.connected.is_set() and as_b.connected.is_set()
