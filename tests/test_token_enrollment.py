"""Token enrollment through a real Mosquitto on the config ``fleet broker-config
--enroll-port`` writes, with the real ``fleet central enroll`` signing and the real
``edge-agent enroll --token`` making its own key: a token works once; a ``--review``
token's request waits until ``fleet provision approve``; the enrollment listener's
clients (no certificate: each logs in as ``enroll-GW`` with GW's token) reach nothing of
the fleet, nor another's enrollment, nor another client's id; the enrolled gateway then
runs over TLS."""

from __future__ import annotations

import contextlib
import json
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from central.store.sqlite import SqliteStore
from edge_agent.contract.topics import CLIENT_ID_PREFIX, Channel, Topics
from tests.support import BIN, Broker, Process, free_port, port_open, run_cli, wait_for

pytestmark = pytest.mark.hil

TOPICS = Topics()
GW = "gw-token"
NOT_AUTHORIZED = 0x87


@dataclass
class Center:
    ca: Path
    db: Path
    port: int
    center_port: int
    enroll_port: int
    password_port: int
    broker: Broker
    signer: Process
    pid_file: Path


@pytest.fixture
def center(tmp_path: Path) -> Iterator[Center]:
    yield from start_center(tmp_path, password_listener=True)


@pytest.fixture
def center_without_passwords(tmp_path: Path) -> Iterator[Center]:
    """The enrollment listener without the password listener: no password file at all."""
    yield from start_center(tmp_path, password_listener=False)


def start_center(tmp_path: Path, *, password_listener: bool) -> Iterator[Center]:
    ca, db = tmp_path / "ca", tmp_path / "central.db"
    assert run_cli("fleet", "ca", "init", "--dir", str(ca)).returncode == 0
    SqliteStore(db).close()
    port, center_port, enroll_port = free_port(), free_port(), free_port()
    password_port = free_port()
    conf, data, run = tmp_path / "broker-config", tmp_path / "broker-data", tmp_path / "broker"
    data.mkdir()
    run.mkdir()
    made = run_cli(
        "fleet", "broker-config", "--out", str(conf), "--ca-dir", str(ca), "--port", str(port),
        "--center-port", str(center_port), "--enroll-port", str(enroll_port),
        *(["--password-port", str(password_port)] if password_listener else []),
        "--data-dir", str(data),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    broker = Broker(run, port, config=conf / "mosquitto.conf").start()
    wait_for(lambda: port_open(enroll_port), 10, what="the enrollment listener")
    assert broker.proc is not None
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{broker.proc.pid}\n")
    args = ["central", "enroll", "--ca-dir", str(ca), "--db", str(db)]
    args += ["--broker", f"mqtts://127.0.0.1:{center_port}", "--ca-file", str(ca / "ca.crt")]
    args += ["--cert-file", str(ca / "central.crt"), "--key-file", str(ca / "central.key")]
    signer = Process(
        "fleet",
        args,
        tmp_path / "signer.log",
    ).start()
    try:
        wait_for(lambda: "signing service" in signer.output(), 15, what="the signing service")
        yield Center(
            ca, db, port, center_port, enroll_port, password_port, broker, signer, pid_file
        )
    finally:
        signer.stop()
        broker.stop()


def token_for(center: Center, gw: str, *args: str) -> str:
    """A token for ``gw`` (``fleet provision --token``), its hash in the broker's password
    file, and the broker reloaded (``--broker-pid-file``) before this returns."""
    reloads = center.broker.log.read_text().count(RELOADED)
    out = run_cli(
        "fleet", "provision", gw, "--token", "--ca-dir", str(center.ca), "--site", "bench",
        "--broker", f"mqtts://127.0.0.1:{center.port}",
        "--broker-pid-file", str(center.pid_file), *args,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "told to reload" in out.stdout, out.stdout
    wait_for(lambda: center.broker.log.read_text().count(RELOADED) > reloads, 10, what="the reload")
    return out.stdout.splitlines()[1]


RELOADED = "Reloading config"
"""What Mosquitto logs on SIGHUP."""


def enroll_args(center: Center, gw: str, token: str, folder: Path, wait: str = "30s") -> list[str]:
    return [
        "enroll", "--token", token, "--gateway", gw, "--dir", str(folder), "--wait", wait,
        "--broker", f"mqtts://127.0.0.1:{center.enroll_port}",
        "--ca-file", str(center.ca / "ca.crt"),
    ]  # fmt: skip


def enroll(center: Center, gw: str, token: str, folder: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("edge-agent", *enroll_args(center, gw, token, folder), timeout=60)


def common_name(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_a_token_enrolls_once_and_the_gateway_then_runs_over_tls(
    center: Center, tmp_path: Path
) -> None:
    token = token_for(center, GW)
    etc = tmp_path / "etc"
    done = enroll(center, GW, token, etc)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "new key, sha256" in done.stdout
    assert common_name(etc / "gateway.crt") == GW
    assert stat.S_IMODE((etc / "gateway.key").stat().st_mode) == 0o600
    assert token not in (etc / "agent.yaml").read_text()
    store = SqliteStore(center.db)
    try:
        (identity,) = store.identities(GW)
        assert identity.kind == "certificate" and identity.revoked is None
        gateway = store.gateway(GW)
        assert gateway is not None and gateway.site == "bench"
    finally:
        store.close()
    # the token works once: the same token again, even with a new key, is refused
    again = enroll(center, GW, token, tmp_path / "etc2")
    assert again.returncode == 1 and "used already" in again.stderr, again.stderr
    assert not (tmp_path / "etc2" / "gateway.key").exists()

    # the enrolled gateway: its config passes check, and the agent connects over mTLS as
    # itself (its retained state reaches the center)
    checked = run_cli("edge-agent", "check", "-c", str(etc / "agent.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    states: list[bytes] = []
    watcher = center_client(center, states)
    agent = Process("edge-agent", ["run", "-c", str(etc / "agent.yaml")], tmp_path / "agent.log")
    config = (etc / "agent.yaml").read_text()
    (etc / "agent.yaml").write_text(
        config.replace("/var/lib/edgefleet/outbox.db", str(tmp_path / "outbox.db"))
    )
    agent.start()
    try:
        wait_for(
            lambda: any(json.loads(s).get("online") is True for s in states if s),
            20,
            what="the token-enrolled gateway online at the center",
        )
    finally:
        agent.stop()
        watcher.loop_stop()
        watcher.disconnect()
    # revoked, it loses its enrollment login too (a used token's, kept until pruned)
    assert logs_in(center, f"enroll-{GW}", token)
    revoked = run_cli(
        "fleet", "revoke", GW, "--ca-dir", str(center.ca), "--db", str(center.db),
        "--broker-pid-file", str(center.pid_file),
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert "its enrollment login taken out" in revoked.stdout, revoked.stdout
    wait_for(lambda: not logs_in(center, f"enroll-{GW}", token), 10, what="the login refused")


def center_client(center: Center, states: list[bytes]) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="edgefleet-test-watch", protocol=mqtt.MQTTv5
    )
    client.tls_set(
        ca_certs=str(center.ca / "ca.crt"),
        certfile=str(center.ca / "central.crt"),
        keyfile=str(center.ca / "central.key"),
    )
    client.on_message = lambda _c, _u, msg: states.append(bytes(msg.payload))
    client.connect("127.0.0.1", center.center_port)
    client.subscribe(TOPICS.gw(GW, Channel.STATE), qos=1)
    client.loop_start()
    return client


def test_a_wrong_or_expired_token_is_refused_and_installs_nothing(
    center: Center, tmp_path: Path
) -> None:
    token_for(center, GW)
    # the broker refuses the identity at CONNECT: the center never sees the request
    wrong = enroll(center, GW, "A" * 32, tmp_path / "etc")
    assert wrong.returncode == 1 and f"refused enroll-{GW}" in wrong.stderr, wrong.stderr
    assert "new key" in wrong.stdout
    assert not (tmp_path / "etc").exists()
    # nor does another gateway's good token get in as this one
    other = token_for(center, "gw-other")
    stolen = enroll(center, GW, other, tmp_path / "etc")
    assert stolen.returncode == 1 and "refused" in stolen.stderr, stolen.stderr
    assert not (tmp_path / "etc").exists()
    short = run_cli(
        "fleet", "provision", "gw-short", "--token", "--token-ttl", "1s", "--ca-dir",
        str(center.ca),
    )  # fmt: skip
    assert short.returncode == 2 and "1 minute" in short.stderr, short.stderr


def test_a_review_token_waits_until_an_operator_approves_the_key_it_printed(
    center: Center, tmp_path: Path
) -> None:
    etc = tmp_path / "etc"
    gw = "gw-reviewed"
    token = token_for(center, gw, "--review")
    with (tmp_path / "enroll.log").open("w") as log:
        proc = subprocess.Popen(
            # it waits for an operator: long enough for two fleet commands on a loaded machine
            [str(BIN / "edge-agent"), *enroll_args(center, gw, token, etc, wait="90s")],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_for(lambda: "waiting" in (tmp_path / "enroll.log").read_text(), 30, what="pending")
        printed = (tmp_path / "enroll.log").read_text()
        fingerprint = printed.split("sha256 ", 1)[1].split()[0]
        listed = run_cli("fleet", "provision", "pending", "--ca-dir", str(center.ca), "--json")
        assert listed.returncode == 0, listed.stderr
        (waiting,) = json.loads(listed.stdout)
        assert (waiting["gateway"], waiting["key_sha256"]) == (gw, fingerprint)
        assert not etc.exists()  # never signed by itself
        approved = run_cli(
            "fleet", "provision", "approve", gw, "--key", fingerprint, "--ca-dir", str(center.ca),
            "--db", str(center.db),
        )  # fmt: skip
        assert approved.returncode == 0, approved.stderr
        assert proc.wait(60) == 0, (tmp_path / "enroll.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert common_name(etc / "gateway.crt") == gw
    # the token's site and broker, given at provision, are the starter config's
    config = (etc / "agent.yaml").read_text()
    assert "bench" in config and f"127.0.0.1:{center.port}" in config, config
    listed = run_cli("fleet", "provision", "pending", "--ca-dir", str(center.ca), "--json")
    assert json.loads(listed.stdout) == []
    again = enroll(center, gw, token, tmp_path / "etc2")  # used now: once
    assert again.returncode == 1 and "used already" in again.stderr, again.stderr


def test_a_client_of_the_enrollment_listener_reaches_nothing_of_the_fleet(
    center: Center,
) -> None:
    """Logged in with a good token, as its enrollment identity: it may write its own
    request and read its own answers, nothing else (its topics are mounted apart, so that
    even the pattern every gateway may write to is not its); and without a token no one
    gets in there at all."""
    token = token_for(center, GW)
    acked: dict[int, int] = {}
    got: list[str] = []
    client, code = enrollment_client(center, f"enroll-{GW}", token, client_id="edgefleet-intruder")
    assert code == 0
    client.on_publish = lambda _c, _u, mid, rc, _p: acked.__setitem__(mid, rc.value)
    client.on_message = lambda _c, _u, msg: got.append(msg.topic)
    try:
        client.subscribe([("#", 1), (TOPICS.gw(GW, Channel.CMD), 1)])
        forbidden = [TOPICS.gw(GW, ch) for ch in (Channel.TELEMETRY, Channel.ACK, Channel.CMD)]
        forbidden += [f"{TOPICS.root}/center/reply/r1", f"{TOPICS.root}/gw/{GW}/csr"]
        # another gateway's enrollment, and the answers' side of its own
        forbidden += [f"{TOPICS.root}/enroll/enroll-gw-other/request"]
        forbidden += [f"{TOPICS.root}/enroll/enroll-{GW}/reply"]
        for topic in forbidden:
            mid = client.publish(topic, b"forged", qos=1).mid
            code = wait_for(lambda m=mid: acked.get(m), 10, what=f"PUBACK of {topic}")
            assert code == NOT_AUTHORIZED, topic
        own = client.publish(f"{TOPICS.root}/enroll/enroll-{GW}/request", b"{}", qos=1).mid
        assert wait_for(lambda: own in acked, 10, what="PUBACK of its own request")
        assert acked[own] == 0
        # no certificate and no password: refused on every listener, the enrollment
        # listener's too (allow_anonymous false), and a username alone too
        for port in (center.port, center.center_port, center.password_port, center.enroll_port):
            assert not connects_without_certificate(center, port), port
        assert not connects_without_certificate(center, center.password_port, user="gw-x")
        assert not connects_without_certificate(center, center.enroll_port, user=f"enroll-{GW}")
    finally:
        client.loop_stop()
        client.disconnect()
    assert got == []


def enrollment_client(
    center: Center,
    user: str | None,
    password: str | None,
    *,
    client_id: str = "",
    port: int | None = None,
) -> tuple[mqtt.Client, int | None]:
    """A client of the enrollment listener, connected as ``user`` (or trying to), and the
    CONNACK's reason code (None: no answer within 5 s, or refused at TLS)."""
    codes: list[int] = []
    answered = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(center.ca / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
    if user is not None:
        client.username_pw_set(user, password)

    def on_connect(_c: object, _u: object, _f: object, rc: object, _p: object) -> None:
        codes.append(getattr(rc, "value", -1))
        answered.set()

    client.on_connect = on_connect
    try:
        client.connect("127.0.0.1", port or center.enroll_port)
    except (OSError, ssl.SSLError):
        return client, None
    client.loop_start()
    answered.wait(5)
    return client, codes[0] if codes else None


def connects_without_certificate(center: Center, port: int, user: str | None = None) -> bool:
    """Whether a client without a certificate (and without a password: ``user`` alone, or
    nothing) gets a CONNACK on ``port`` within 3 s (TLS 1.3 lets the client finish its
    handshake before the broker reads that it has no certificate)."""
    ok = threading.Event()
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    plain.tls_set(ca_certs=str(center.ca / "ca.crt"))
    if user is not None:
        plain.username_pw_set(user)
    plain.on_connect = lambda _c, _u, _f, rc, _p: ok.set() if rc.value == 0 else None
    try:
        plain.connect("127.0.0.1", port)
    except (OSError, ssl.SSLError):
        return False
    plain.loop_start()
    try:
        return ok.wait(3)
    finally:
        plain.loop_stop()
        plain.disconnect()


@pytest.mark.parametrize("with_passwords", [True, False], ids=["passwords", "no-passwords"])
def test_a_client_of_the_enrollment_listener_cannot_claim_the_centers_name(
    request: pytest.FixtureRequest, with_passwords: bool, tmp_path: Path
) -> None:
    """Mosquitto takes the username a client says when nothing checks it (no password
    file): a client claiming the center's name on the enrollment listener would have the
    center's rights there, reading every request (and its token) and answering them with
    a CA and a command key of its own. It is refused at CONNECT."""
    center = request.getfixturevalue("center" if with_passwords else "center_without_passwords")
    connected = threading.Event()
    refused: list[int] = []
    spy = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edgefleet-spy", protocol=mqtt.MQTTv5)
    spy.tls_set(ca_certs=str(center.ca / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
    spy.username_pw_set("edgefleet-central")
    seen: list[bytes] = []
    spy.on_message = lambda _c, _u, msg: seen.append(bytes(msg.payload))

    def on_connect(_c: object, _u: object, _f: object, rc: object, _p: object) -> None:
        code = getattr(rc, "value", 0)
        if code == 0:
            spy.subscribe(f"{TOPICS.root}/enroll/+/request", qos=1)
            connected.set()
        else:
            refused.append(code)

    spy.on_connect = on_connect
    with contextlib.suppress(OSError, ssl.SSLError):  # refused at TLS or CONNECT: fine
        spy.connect("127.0.0.1", center.enroll_port)
    spy.loop_start()
    try:
        token = token_for(center, GW)
        done = enroll(center, GW, token, tmp_path / "etc")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not connected.is_set(), "the center's name was taken on the enrollment listener"
        assert all(token.encode() not in payload for payload in seen)
    finally:
        spy.loop_stop()
        spy.disconnect()


def test_a_client_of_the_enrollment_listener_reads_no_answer_but_its_own(
    center: Center, tmp_path: Path
) -> None:
    """An answer names its gateway, its site and tags: a client reading every answer
    would learn which gateways enroll, and where. Another gateway's identity, with its
    own good token, reads only its own."""
    spy_token = token_for(center, "gw-spy")
    got: list[str] = []
    subscribed = threading.Event()
    spy, code = enrollment_client(center, "enroll-gw-spy", spy_token)
    assert code == 0
    spy.on_message = lambda _c, _u, msg: got.append(msg.topic)
    spy.on_subscribe = lambda *_: subscribed.set()
    spy.subscribe([(f"{TOPICS.root}/enroll/+/reply", 1), (f"{TOPICS.root}/enroll/#", 1)])
    try:
        assert subscribed.wait(10)
        done = enroll(center, GW, token_for(center, GW), tmp_path / "etc")
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        spy.loop_stop()
        spy.disconnect()
    assert got == []


def test_a_flood_on_the_enrollment_listener_does_not_starve_renewals(
    center: Center, tmp_path: Path
) -> None:
    """Whoever holds a token may reach the enrollment listener; only a gateway with a
    certificate may ask for a renewal. A flood of the first must not take every answer the
    signing service gives a second: a gateway must still hear back about its renewal."""
    from central.pki import issue_client  # noqa: PLC0415
    from edge_agent.contract.csr import RenewRequest  # noqa: PLC0415
    from edge_agent.enroll_token import new_key  # noqa: PLC0415

    gw = "gw-renewing"
    issued = issue_client(center.ca, gw, 30)
    (tmp_path / "gw.crt").write_bytes(issued.cert_pem)
    (tmp_path / "gw.key").write_bytes(issued.key_pem)
    answers: list[bytes] = []
    gateway = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"edgefleet-{gw}", protocol=mqtt.MQTTv5
    )
    gateway.tls_set(
        ca_certs=str(center.ca / "ca.crt"),
        certfile=str(tmp_path / "gw.crt"),
        keyfile=str(tmp_path / "gw.key"),
    )
    subscribed = threading.Event()
    gateway.on_message = lambda _c, _u, msg: answers.append(bytes(msg.payload))
    gateway.on_subscribe = lambda *_: subscribed.set()
    gateway.on_connect = lambda c, *_: c.subscribe(f"{TOPICS.root}/gw/{gw}/cert", qos=1)
    gateway.connect("127.0.0.1", center.port)
    gateway.loop_start()
    # a token's holder floods its own request topic (the only one it may write)
    flooder, code = enrollment_client(center, "enroll-gw-flood", token_for(center, "gw-flood"))
    assert code == 0
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            for _ in range(200):
                flooder.publish(f"{TOPICS.root}/enroll/enroll-gw-flood/request", b"{}", qos=0)
            stop.wait(0.01)

    flooding = threading.Thread(target=flood, daemon=True)
    try:
        assert subscribed.wait(10)
        flooding.start()
        stop.wait(1.5)  # the signing service's burst is spent
        ask = RenewRequest(gw, new_key(gw).csr_pem).encode()
        for _ in range(4):
            gateway.publish(f"{TOPICS.root}/gw/{gw}/csr", ask, qos=1)
            if stop.wait(1.0) or answers:
                break
    finally:
        stop.set()
        flooding.join(5)
        flooder.loop_stop()
        flooder.disconnect()
        gateway.loop_stop()
        gateway.disconnect()
    assert answers, center.signer.output()[-2000:]
    assert "dropped" in center.signer.output()  # the flood was one
    # what is not a request is counted, and said once a minute, not once each
    assert center.signer.output().count("that is not one") == 1


def test_a_folder_enroll_would_not_write_into_is_said_before_the_token_is_spent(
    center: Center, tmp_path: Path
) -> None:
    """The token works once and the key lives only in the enrolling process: refused at
    install (a config there already, no --force), the token would be gone for nothing."""
    token = token_for(center, GW)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "agent.yaml").write_text("# the gateway's config of before\n")
    refused = enroll(center, GW, token, etc)
    assert refused.returncode == 1 and "--force" in refused.stderr, refused.stderr
    assert "new key" not in refused.stdout  # nothing asked of the center
    done = run_cli("edge-agent", *enroll_args(center, GW, token, etc), "--force", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert common_name(etc / "gateway.crt") == GW


@pytest.mark.parametrize(
    "taken", ["edgefleet-central-enroll", "edgefleet-central", "enroll-gw-victim", GW]
)
def test_a_client_of_the_enrollment_listener_cannot_take_another_client_id(
    center: Center, taken: str, tmp_path: Path
) -> None:
    """Client ids are the broker's, not a listener's: a client of the enrollment listener
    asking for the signing service's id (or ingest's, another gateway's enrollment's, a
    gateway's) would close that session and wipe what the broker kept for it. The
    listener makes every client's id its username, which only its token logs in as.
    One that logs in as no one is refused, and Mosquitto 2.0.11 then unlinks the session
    holding the id it asked for (the next reload leaves that one no rights): the broker
    refuses ids outside its prefix first, and the center's ids carry a secret."""
    token = token_for(center, "gw-taker")
    victim_token = token_for(center, "gw-victim")
    victim, code = enrollment_client(center, "enroll-gw-victim", victim_token)
    assert code == 0
    lost = threading.Event()
    victim.on_disconnect = lambda *_: lost.set()
    # with a token of its own, asking for the id; without one, asking for it too
    taker, code = enrollment_client(center, "enroll-gw-taker", token, client_id=taken)
    # an id outside the broker's prefix is refused before anything else; one in it is
    # replaced by the client's name
    assert (code == 0) == taken.startswith(CLIENT_ID_PREFIX), code
    anonymous, refused = enrollment_client(center, None, None, client_id=taken)
    try:
        assert refused != 0
        # the signing service's session is there still: an enrollment is answered
        done = enroll(center, GW, token_for(center, GW), tmp_path / "etc")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not lost.is_set(), "the victim's session was closed"
    finally:
        for client in (victim, taker, anonymous):
            client.loop_stop()
            client.disconnect()
    assert "already connected, closing old connection" not in center.broker.log.read_text()


def test_a_flood_of_connections_to_the_enrollment_listener_is_capped(center: Center) -> None:
    """Anyone may connect to the enrollment listener (the token is checked after TLS);
    each connection holds one of the broker's file descriptors, which the gateways' and
    the center's listeners need too.
    Past the cap, the enrollment listener takes no more; the center's still does."""
    import socket  # noqa: PLC0415

    from central.broker_config import ENROLL_MAX_CONNECTIONS  # noqa: PLC0415

    # the token first: issuing one reloads the broker, and Mosquitto 2.0.11 no longer
    # caps a listener after a reload, until it is restarted (the README says so)
    token = token_for(center, GW)
    center.broker.stop()
    center.broker.start()
    held = [
        socket.create_connection(("127.0.0.1", center.enroll_port), timeout=5)
        for _ in range(ENROLL_MAX_CONNECTIONS)
    ]
    try:
        time.sleep(0.5)  # accepted, each waiting for a TLS handshake that never comes
        held_out, code = enrollment_client(center, f"enroll-{GW}", token)
        held_out.loop_stop()
        assert code is None, "a connection past the cap was taken"
        states: list[bytes] = []
        watcher = center_client(center, states)  # the center's listener: still in
        try:
            wait_for(watcher.is_connected, 10, what="the center's client")
        finally:
            watcher.loop_stop()
            watcher.disconnect()
    finally:
        for sock in held:
            sock.close()
    # once they are gone, an enrolling gateway gets in again
    wait_for(lambda: logs_in(center, f"enroll-{GW}", token), 15, what="room again")


def logs_in(center: Center, user: str, password: str, port: int | None = None) -> bool:
    """Whether ``user`` gets in with ``password`` on ``port`` (the enrollment listener's)."""
    client, code = enrollment_client(center, user, password, port=port)
    client.loop_stop()
    client.disconnect()
    return code == 0


def test_a_token_logs_in_on_the_enrollment_listener_only(center: Center, tmp_path: Path) -> None:
    """The password listener mounts nothing, and there an enrollment identity would have
    the rights every name has on its own gateway topics (the attacker pass: it wrote
    telemetry, state and command replies there). Each listener has its own password
    file: a token is no login there, and a gateway's password none here."""
    token = token_for(center, GW)
    assert logs_in(center, f"enroll-{GW}", token)
    assert not logs_in(center, f"enroll-{GW}", token, port=center.password_port)
    provisioned = run_cli(
        "fleet", "provision", "gw-pass", "--password", "--ca-dir", str(center.ca),
        "--db", str(center.db), "--out", str(tmp_path / "gw-pass.bundle"),
        "--broker-pid-file", str(center.pid_file),
    )  # fmt: skip
    assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr
    bundle = json.loads((tmp_path / "gw-pass.bundle").read_text())
    secret = bundle["files"]["gateway.pass"].strip()
    wait_for(
        lambda: logs_in(center, "gw-pass", secret, port=center.password_port),
        10,
        what="the password gateway in on its listener",
    )
    assert not logs_in(center, "gw-pass", secret)  # and not on the enrollment listener
