"""Gateways with a username and a password instead of a client certificate:
``fleet provision GW --password`` (the hash into the broker's password file, made by
Mosquitto's own ``mosquitto_passwd``, the password never on a command line),
``edge-agent enroll`` of that bundle, the password listener of ``fleet broker-config
--password-port`` on a real Mosquitto beside the certificate listeners (its
``password_file`` is global under ``per_listener_settings false``), and ``fleet revoke``
of such a gateway."""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from central import passwords
from central.store import open_store
from edge_agent.contract.topics import Channel, Topics
from tests.rig import devices_yaml
from tests.support import (
    Broker,
    Central,
    Process,
    ThreadedDevice,
    asked_id,
    free_port,
    port_open,
    run_cli,
    stored_readings,
    wait_for,
)

TOPICS = Topics()
A, B, C = "gw-a", "gw-b", "gw-c"
NOT_AUTHORIZED = 0x87
HASHED = re.compile(r"[^:\s]+:\$[67]\$\S+")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def fleet(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    out = run_cli("fleet", *args, env=env)
    return out.returncode, out.stdout + out.stderr


def provision(tmp: Path, gw: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    return fleet(
        "provision", gw, "--ca-dir", str(tmp / "ca"), "--db", str(tmp / "central.db"),
        "--out", str(tmp / f"{gw}.bundle"), *args, env=env,
    )  # fmt: skip


def bundle_files(tmp: Path, gw: str) -> dict[str, str]:
    files: dict[str, str] = json.loads((tmp / f"{gw}.bundle").read_text())["files"]
    return files


def spy(tmp: Path) -> tuple[Path, Path]:
    """A ``mosquitto_passwd`` first on PATH that logs how it is called (its argv, and the
    modes of the file it is given and of that file's folder), then runs the real one."""
    real = passwords.find_program()
    folder, log = tmp / "spy", tmp / "spy.log"
    folder.mkdir()
    script = folder / "mosquitto_passwd"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "argv: $*" >> {log}\n'
        'for a in "$@"; do [ -f "$a" ] || continue\n'
        f'  stat -c "mode: %a %n" "$a" "$(dirname "$a")" >> {log}\n'
        "done\n"
        f'exec {real} "$@"\n'
    )
    script.chmod(0o755)
    return folder, log


def test_provision_password_hashes_with_mosquitto_passwd_and_never_shows_the_password(
    tmp_path: Path,
) -> None:
    assert fleet("ca", "init", "--dir", str(tmp_path / "ca"))[0] == 0
    folder, log = spy(tmp_path)
    env = {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}
    rc, out = provision(tmp_path, A, "--password", env=env)
    assert rc == 0, out
    rc, out = provision(tmp_path, B, "--password", env=env)
    assert rc == 0, out
    secret = bundle_files(tmp_path, A)["gateway.pass"]
    assert secret.endswith("\n") and re.fullmatch(r"[A-Za-z0-9_-]{43}", secret[:-1]), secret
    password = secret.strip()
    assert password not in out

    # mosquitto_passwd ran twice, with -U and a file, never with the password; that file
    # was 0600 in a 0700 folder
    calls = log.read_text()
    argvs = [line for line in calls.splitlines() if line.startswith("argv: ")]
    assert len(argvs) == 2 and all(re.fullmatch(r"argv: -U /\S+", a) for a in argvs), calls
    assert password not in calls
    modes = [line.split()[1] for line in calls.splitlines() if line.startswith("mode: ")]
    assert modes == ["600", "700"] * 2, calls

    # the password file: one hashed line a gateway, 0600, no password in it
    pw_file = tmp_path / "ca" / "passwords"
    assert mode(pw_file) == 0o600
    lines = pw_file.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == [A, B]
    assert all(HASHED.fullmatch(line) and line.split(":")[1].startswith("$7$") for line in lines)
    assert password not in pw_file.read_text()

    # the registry: kind password, the fingerprint the SHA-256 of its line; no password
    store = open_store(tmp_path / "central.db")
    try:
        (identity,) = store.identities(A)
    finally:
        store.close()
    assert identity.kind == "password" and identity.expires is None
    assert identity.fingerprint == hashlib.sha256(lines[0].encode()).hexdigest()
    assert password.encode() not in (tmp_path / "central.db").read_bytes()

    # the bundle: the CA, the password, the command key, a config that logs in as GW
    body = json.loads((tmp_path / f"{A}.bundle").read_text())
    assert body["kind"] == "password" and body["broker"] == "mqtts://localhost:8886"
    assert sorted(body["files"]) == ["agent.yaml", "ca.crt", "command.pub", "gateway.pass"]
    assert mode(tmp_path / f"{A}.bundle") == 0o600

    # again (a new box): A's line replaced, B's kept; the old password no longer there
    rc, out = provision(tmp_path, A, "--password", "--force")
    assert rc == 0, out
    again = pw_file.read_text().splitlines()
    assert [line.split(":")[0] for line in again] == [A, B]
    assert again[1] == lines[1] and again[0] != lines[0]
    assert bundle_files(tmp_path, A)["gateway.pass"] != secret

    etc = tmp_path / "etc"
    enrolled = run_cli("edge-agent", "enroll", str(tmp_path / f"{A}.bundle"), "--dir", str(etc))
    assert enrolled.returncode == 0, enrolled.stderr
    assert "gateway.pass" in enrolled.stdout and "password" in enrolled.stdout
    assert sorted(p.name for p in etc.iterdir()) == sorted(body["files"])
    assert mode(etc / "gateway.pass") == 0o600 and mode(etc / "ca.crt") == 0o644
    checked = run_cli("edge-agent", "check", "-c", str(etc / "agent.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = (etc / "agent.yaml").read_text()
    assert f'username: "{A}"' in config and "password_file: gateway.pass" in config
    assert "cert_file" not in config and "key_file" not in config


def test_provision_password_without_mosquitto_passwd_says_so_and_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from cli.fleet import app  # noqa: PLC0415

    assert fleet("ca", "init", "--dir", str(tmp_path / "ca"))[0] == 0
    monkeypatch.setattr(passwords, "FALLBACK_DIRS", ())
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    bundle = tmp_path / "a.bundle"
    args = ["provision", A, "--password", "--ca-dir", str(tmp_path / "ca")]
    result = CliRunner().invoke(
        app, [*args, "--db", str(tmp_path / "central.db"), "--out", str(bundle)]
    )
    assert result.exit_code == 1, result.output
    assert "mosquitto_passwd is not installed" in result.output, result.output
    assert "apt-get install mosquitto" in result.output
    assert not bundle.exists() and not (tmp_path / "ca" / "passwords").exists()
    assert not (tmp_path / "central.db").exists()


def test_provision_refuses_a_password_file_with_a_plain_line_and_a_plain_broker(
    tmp_path: Path,
) -> None:
    assert fleet("ca", "init", "--dir", str(tmp_path / "ca"))[0] == 0
    pw_file = tmp_path / "ca" / "passwords"
    pw_file.write_text("someone:plain-password\n")
    rc, out = provision(tmp_path, A, "--password")
    assert rc == 1 and "line 1 is not USER:HASH" in out, out
    assert pw_file.read_text() == "someone:plain-password\n"
    assert not (tmp_path / f"{A}.bundle").exists()
    rc, out = provision(tmp_path, A, "--password", "--broker", "mqtt://broker.example")
    assert rc == 2 and "over TLS only" in out, out
    rc, out = provision(tmp_path, A, "--passwords", str(pw_file))
    assert rc == 2 and "--password" in out, out
    rc, out = provision(tmp_path, A, "--password", "--days", "30")
    assert rc == 2 and "--days" in out and "no expiry" in out, out


def test_revoke_of_a_password_gateway_without_its_password_file_changes_nothing(
    tmp_path: Path,
) -> None:
    assert fleet("ca", "init", "--dir", str(tmp_path / "ca"))[0] == 0
    assert provision(tmp_path, A, "--password")[0] == 0
    pw_file = tmp_path / "ca" / "passwords"
    moved = pw_file.rename(tmp_path / "moved")
    args = ["revoke", A, "--ca-dir", str(tmp_path / "ca"), "--db", str(tmp_path / "central.db")]
    rc, out = fleet(*args)
    assert rc == 1 and f"no password file {pw_file}" in out and "--passwords" in out, out
    assert not (tmp_path / "ca" / "revoked.txt").exists()
    rc, out = fleet(*args, "--passwords", str(moved))
    assert rc == 0 and f"its password taken out of {moved}" in out, out
    assert moved.read_text() == ""
    assert (tmp_path / "ca" / "revoked.txt").read_text().splitlines()[-1] == A


def test_enroll_refuses_a_password_bundle_that_is_not_what_it_claims(tmp_path: Path) -> None:
    assert fleet("ca", "init", "--dir", str(tmp_path / "ca"))[0] == 0
    assert provision(tmp_path, A, "--password")[0] == 0
    assert provision(tmp_path, B, "--password")[0] == 0
    assert provision(tmp_path, C)[0] == 0
    good = json.loads((tmp_path / f"{A}.bundle").read_text())
    files = good["files"]
    cert_files = bundle_files(tmp_path, C)
    cases: list[tuple[dict[str, object], str]] = [
        ({"files": {**files, "gateway.pass": "short\n"}}, "gateway.pass is not one line"),
        ({"files": {**files, "gateway.pass": "a b" * 20 + "\n"}}, "gateway.pass is not one line"),
        (
            {"files": {**files, "agent.yaml": bundle_files(tmp_path, B)["agent.yaml"]}},
            "does not log in as gateway 'gw-a'",
        ),
        ({"files": {**files, "gateway.key": "x"}}, "files must be exactly"),
        ({"kind": "token"}, "kind 'token' is not one of"),
        ({"kind": "certificate"}, "files must be exactly ca.crt, gateway.crt"),
        ({"files": cert_files}, "files must be exactly ca.crt, gateway.pass"),
    ]
    for change, says in cases:
        bad = tmp_path / "bad.bundle"
        bad.write_text(json.dumps({**good, **change}))
        etc = tmp_path / "etc"
        out = run_cli("edge-agent", "enroll", str(bad), "--dir", str(etc))
        assert out.returncode == 1, (change.keys(), out.stdout + out.stderr)
        assert says in out.stderr and "Traceback" not in out.stderr, (says, out.stderr)
        assert not etc.exists()
    # a certificate bundle without "kind" (as the first were written) still installs
    legacy = json.loads((tmp_path / f"{C}.bundle").read_text())
    assert legacy.pop("kind") == "certificate"
    (tmp_path / "legacy.bundle").write_text(json.dumps(legacy))
    out = run_cli(
        "edge-agent", "enroll", str(tmp_path / "legacy.bundle"), "--dir", str(tmp_path / "c")
    )
    assert out.returncode == 0, out.stderr


def test_broker_config_writes_the_password_listener_only_when_asked(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    assert fleet("ca", "init", "--dir", str(ca))[0] == 0
    base = ["broker-config", "--ca-dir", str(ca), "--data-dir", str(tmp_path)]
    rc, out = fleet(*base, "--out", str(tmp_path / "off"))
    assert rc == 0, out
    off = (tmp_path / "off" / "mosquitto.conf").read_text().splitlines()
    assert not [line for line in off if line.startswith(("password_file", "listener 8886"))]
    assert f"# password_file {ca.resolve() / 'passwords'}" in off
    assert not (ca / "passwords").exists()

    pw_file = tmp_path / "elsewhere" / "pw"
    pw_file.parent.mkdir()
    rc, out = fleet(
        *base, "--out", str(tmp_path / "on"), "--password-port", "18886",
        "--password-bind", "0.0.0.0", "--passwords", str(pw_file),
    )  # fmt: skip
    assert rc == 0, out
    on = (tmp_path / "on" / "mosquitto.conf").read_text()
    block = on[on.index("listener 18886 0.0.0.0") :].splitlines()[:6]
    assert block == [
        "listener 18886 0.0.0.0",
        f"cafile {ca.resolve() / 'ca.crt'}",
        f"certfile {ca.resolve() / 'broker.crt'}",
        f"keyfile {ca.resolve() / 'broker.key'}",
        "use_username_as_clientid true",
        f"password_file {pw_file.resolve()}",
    ], block
    assert "require_certificate" not in "\n".join(block)
    assert pw_file.read_text() == "" and mode(pw_file) == 0o600  # Mosquitto needs the file
    rc, out = fleet(*base, "--out", str(tmp_path / "x"), "--password-port", "8883")
    assert rc == 2 and "port of its own" in out, out


@dataclass
class Fleet:
    tmp: Path
    ca: Path
    db: Path
    conf: Path
    broker: Broker
    center_port: int
    password_port: int
    pid_file: Path
    clients: list[Client] = field(default_factory=list)

    def password(self, gw: str) -> str:
        return bundle_files(self.tmp, gw)["gateway.pass"].strip()

    def client(
        self,
        port: int,
        username: str | None = None,
        password: str | None = None,
        cert: str | None = None,
        client_id: str = "x",
    ) -> Client:
        c = Client(self, port, username, password, cert, client_id)
        self.clients.append(c)
        return c


class Client:
    """A paho MQTT v5 client over TLS (the fleet's CA checks the broker), with a password
    or a certificate from a bundle, keeping each PUBACK's reason code."""

    def __init__(
        self,
        fleet: Fleet,
        port: int,
        username: str | None,
        password: str | None,
        cert: str | None,
        client_id: str,
    ) -> None:
        self.port = port
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=asked_id(client_id), protocol=mqtt.MQTTv5
        )
        certfile = keyfile = None
        if cert is not None:  # a certificate gateway's bundle, or the center's files
            certfile, keyfile = self._cert_files(fleet, cert)
        self.paho.tls_set(ca_certs=str(fleet.ca / "ca.crt"), certfile=certfile, keyfile=keyfile)
        if username is not None:
            self.paho.username_pw_set(username, password)
        self.connected = threading.Event()
        self.refused: int | None = None
        self.acked: dict[int, int] = {}
        self.disconnects = 0
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = lambda *_: setattr(self, "disconnects", self.disconnects + 1)
        self.paho.on_publish = lambda _c, _u, mid, rc, _p: self.acked.__setitem__(mid, rc.value)

    @staticmethod
    def _cert_files(fleet: Fleet, cert: str) -> tuple[str, str]:
        if cert == "center":
            return str(fleet.ca / "central.crt"), str(fleet.ca / "central.key")
        files = bundle_files(fleet.tmp, cert)
        crt, key = fleet.tmp / f"{cert}.crt", fleet.tmp / f"{cert}.key"
        crt.write_text(files["gateway.crt"])
        key.write_text(files["gateway.key"])
        key.chmod(0o600)
        return str(crt), str(key)

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        if rc.value == 0:
            self.connected.set()
        else:
            self.refused = rc.value

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


@pytest.fixture
def password_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Mosquitto on a config with the password listener; gateways A and B with passwords,
    C with a certificate."""
    ca, db = tmp_path / "ca", tmp_path / "central.db"
    assert fleet("ca", "init", "--dir", str(ca))[0] == 0
    conf, data = tmp_path / "broker-config", tmp_path / "broker-data"
    data.mkdir()
    port, center_port, password_port = free_port(), free_port(), free_port()
    rc, out = fleet(
        "broker-config", "--out", str(conf), "--ca-dir", str(ca), "--port", str(port),
        "--center-port", str(center_port), "--password-port", str(password_port),
        "--data-dir", str(data),
    )  # fmt: skip
    assert rc == 0, out
    for gw, args in ((A, ["--password"]), (B, ["--password"]), (C, [])):
        url = f"mqtts://127.0.0.1:{password_port if args else port}"
        rc, out = provision(tmp_path, gw, "--broker", url, *args)
        assert rc == 0, out
    run = tmp_path / "broker"
    run.mkdir()
    broker = Broker(run, port, config=conf / "mosquitto.conf").start()
    wait_for(lambda: port_open(center_port), 10, what="the center's listener")
    wait_for(lambda: port_open(password_port), 10, what="the password listener")
    assert broker.proc is not None
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{broker.proc.pid}\n")
    setup = Fleet(tmp_path, ca, db, conf, broker, center_port, password_port, pid_file)
    yield setup
    for c in setup.clients:
        c.close()
    broker.stop()


@pytest.mark.hil
def test_a_password_gateway_gets_in_with_its_own_password_only_and_writes_only_its_topics(
    password_fleet: Fleet,
) -> None:
    f = password_fleet
    pw = f.password
    b = f.client(f.password_port, B, pw(B), client_id=B)
    a = f.client(f.password_port, A, pw(A), client_id=A)
    assert a.connect() and b.connect()
    assert a.publish(TOPICS.gw(A, Channel.TELEMETRY)) in (0, 0x10)
    assert a.publish(TOPICS.gw(A, Channel.HEALTH)) in (0, 0x10)
    for topic in (TOPICS.gw(B, Channel.TELEMETRY), TOPICS.gw(B, Channel.STATE)):
        assert a.publish(topic) == NOT_AUTHORIZED, topic
    assert a.publish(TOPICS.gw(A, Channel.ACK)) == NOT_AUTHORIZED  # only the center's

    # refused: a wrong password, another gateway's username with A's, no username, no
    # password, a user the file does not have, the center's name
    for username, password in (
        (A, pw(A)[:-1] + ("x" if pw(A)[-1] != "x" else "y")),
        (B, pw(A)),
        (None, None),
        (A, None),
        ("gw-unknown", pw(A)),
        ("edgefleet-central", pw(A)),
    ):
        c = f.client(f.password_port, username, password, client_id="intruder")
        assert not c.connect(2), (username, password and password[:4])
        assert c.refused == NOT_AUTHORIZED, (username, c.refused)
    # a password is no way onto the certificate listeners
    assert not f.client(f.broker.port, A, pw(A)).connect(2)
    assert not f.client(f.center_port, A, pw(A)).connect(2)

    # the global password_file leaves the certificate listeners as they were: gateway C
    # (even claiming A's username) and the center connect with their certificates
    assert f.client(f.broker.port, A, "whatever", cert=C).connect()
    assert f.client(f.center_port, cert="center").connect()
    # the client id is the username: A asking for B's id takes nothing from B
    as_b = f.client(f.password_port, A, pw(A), client_id=B)
    assert as_b.connect()
    time.sleep(1)
    assert b.disconnects == 0 and b.publish(TOPICS.gw(B, Channel.HEALTH)) in (0, 0x10)
    log = f.broker.log.read_text()
    assert f"as {A} (p5" in log and f"u'{A}'" in log


@pytest.mark.hil
def test_an_enrolled_password_gateway_reaches_the_center_and_revoked_cannot_connect(
    password_fleet: Fleet, modbus_server: ThreadedDevice
) -> None:
    f = password_fleet
    etc = f.tmp / "etc"
    enrolled = run_cli("edge-agent", "enroll", str(f.tmp / f"{A}.bundle"), "--dir", str(etc))
    assert enrolled.returncode == 0, enrolled.stderr
    config = etc / "agent.yaml"
    text = re.sub(
        r"^outbox: .*$", f"outbox: {{path: {etc / 'outbox.db'}}}", config.read_text(), count=1,
        flags=re.MULTILINE,
    )  # fmt: skip
    config.write_text(
        text.replace("devices: []\n", f"devices:\n{devices_yaml(modbus_server.port, 0.2)}")
    )
    checked = run_cli("edge-agent", "check", "-c", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    center = f.tmp / "center"
    center.mkdir()
    central = Central(center, f"mqtts://127.0.0.1:{f.center_port}", db=f.db)
    central.args += [
        "--ca-file", str(f.ca / "ca.crt"),
        "--cert-file", str(f.ca / "central.crt"),
        "--key-file", str(f.ca / "central.key"),
    ]  # fmt: skip
    agent = Process("edge-agent", ["run", "-c", str(config)], etc / "agent.log")
    try:
        central.start()
        agent.start()
        store = central.store()
        try:
            wait_for(
                lambda: stored_readings(store, A, "tank-1", "level", None, 5),
                30,
                what="the password gateway's readings in the center's store",
            )
            (identity,) = store.identities(A)
            assert identity.kind == "password"
        finally:
            store.close()
        log = f.broker.log.read_text()
        assert f"on port {f.password_port}" in log and f"u'{A}'" in log

        pw_file = f.ca / "passwords"
        rc, out = fleet(
            "revoke", A, "--ca-dir", str(f.ca), "--db", str(f.db),
            "--acl", str(f.conf / "edgefleet.acl"), "--broker-pid-file", str(f.pid_file),
        )  # fmt: skip
        assert rc == 0, out
        assert f"its password taken out of {pw_file}" in out and "told to reload" in out, out
        assert [line.split(":")[0] for line in pw_file.read_text().splitlines()] == [B]
        # the reload: A's password opens nothing any more; B's still does
        wait_for(
            lambda: not f.client(f.password_port, A, f.password(A)).connect(2),
            10,
            what="the revoked password refused",
        )
        assert f.client(f.password_port, B, f.password(B), client_id=B).connect()
        # and the agent's live session, denied every topic by the reloaded ACL, gets no
        # more readings to the center
        time.sleep(2)
        store = central.store()
        try:
            before = len(stored_readings(store, A, limit=None))
            time.sleep(3)
            assert len(stored_readings(store, A, limit=None)) == before
        finally:
            store.close()
    finally:
        agent.stop()
        central.stop()
