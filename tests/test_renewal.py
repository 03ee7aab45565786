"""A gateway renews its certificate in band before it expires, against a real Mosquitto on
the generated config, the real ``fleet central enroll`` signing and the real agent: the
new key and certificate replace the files, the agent reconnects with them after the
broker restarts, and no reading is lost on the way. A swap a stop cut short is finished
at the next start."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from central.pki import issue_client
from central.revocation import record_issued
from central.store.rows import Identity
from central.store.sqlite import SqliteStore
from edge_agent.contract.csr import RenewRequest, Reply
from edge_agent.contract.topics import Topics
from edge_agent.renewal import CertFiles, Renewer, finish_swap
from edge_agent.uplink import Inbound
from tests.rig import GW, devices_yaml
from tests.support import (
    Broker,
    Central,
    Process,
    ThreadedDevice,
    free_port,
    port_open,
    run_cli,
    stored_readings,
    wait_for,
)

pytestmark = pytest.mark.hil


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def backdated(ca: Path, cert_pem: bytes, *, hours: float) -> bytes:
    """``cert_pem`` signed again by the CA in ``ca``, its validity ``hours`` earlier."""
    import datetime  # noqa: PLC0415

    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    key = serialization.load_pem_private_key((ca / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = x509.load_pem_x509_certificate(cert_pem)
    shift = datetime.timedelta(hours=hours)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc - shift)
        .not_valid_after(cert.not_valid_after_utc - shift)
    )
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_a_gateway_renews_its_certificate_before_it_expires_and_loses_nothing(
    tmp_path: Path, modbus_server: ThreadedDevice
) -> None:
    ca, center_dir, etc = tmp_path / "ca", tmp_path / "center", tmp_path / "etc"
    center_dir.mkdir()
    etc.mkdir()
    assert run_cli("fleet", "ca", "init", "--dir", str(ca)).returncode == 0
    port, center_port = free_port(), free_port()
    conf, data, run = tmp_path / "broker-config", tmp_path / "broker-data", tmp_path / "broker"
    data.mkdir()
    run.mkdir()
    made = run_cli(
        "fleet", "broker-config", "--out", str(conf), "--ca-dir", str(ca), "--port", str(port),
        "--center-port", str(center_port), "--data-dir", str(data),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    # the gateway's certificate: a day's, 13 hours through it (past half its life: due at
    # once), recorded two hours ago (renewals come an hour apart)
    db = center_dir / "central.db"
    issued = issue_client(ca, GW, days=1)
    cert_pem = backdated(ca, issued.cert_pem, hours=13)
    (etc / "gateway.crt").write_bytes(cert_pem)
    (etc / "gateway.key").write_bytes(issued.key_pem)
    (etc / "gateway.key").chmod(0o600)
    record_issued(ca, GW, cert_pem)
    store = SqliteStore(db)
    try:
        two_hours_ago = time.time() - 7200
        store.add_identity(
            Identity(GW, "certificate", issued.fingerprint, two_hours_ago, issued.not_after)
        )
    finally:
        store.close()
    before = serial(etc / "gateway.crt")
    config = etc / "agent.yaml"
    config.write_text(
        f"gateway: {{id: {GW}}}\n"
        "central:\n"
        f"  url: mqtts://127.0.0.1:{port}\n"
        "  tls: {ca: ../ca/ca.crt, cert: gateway.crt, key: gateway.key}\n"
        "  renew_before: 2d\n"  # more than its life: due at half of it, which is past
        "  keepalive_s: 2\n"
        f"outbox: {{path: {tmp_path / 'outbox.db'}, ack_timeout_s: 2}}\n"
        f"devices:\n{devices_yaml(modbus_server.port, 0.2)}"
    )
    tls = ["--ca-file", str(ca / "ca.crt"), "--cert-file", str(ca / "central.crt")]
    tls += ["--key-file", str(ca / "central.key")]
    center_url = f"mqtts://127.0.0.1:{center_port}"
    central = Central(center_dir, center_url, db)
    central.args += tls
    signer = Process(
        "fleet",
        ["central", "enroll", "--ca-dir", str(ca), "--db", str(db), "--broker", center_url, *tls],
        tmp_path / "signer.log",
    )
    agent = Process("edge-agent", ["run", "-c", str(config)], tmp_path / "agent.log")
    broker = Broker(run, port, config=conf / "mosquitto.conf").start()
    try:
        wait_for(lambda: port_open(center_port), 10, what="the center's listener")
        central.start()
        signer.start()
        agent.start()
        wait_for(lambda: "certificate renewed" in agent.output(), 60, what="the renewal")
        assert serial(etc / "gateway.crt") != before
        assert (etc / "gateway.key").read_bytes() != issued.key_pem
        assert (etc / "gateway.key").stat().st_mode & 0o777 == 0o600
        assert not (etc / "gateway.crt.new").exists() and not (etc / "gateway.key.new").exists()
        renewed = x509.load_pem_x509_certificate((etc / "gateway.crt").read_bytes())
        assert renewed.not_valid_after_utc.timestamp() > time.time() + 800 * 86400

        # the broker goes and comes back: the agent connects with the new pair
        broker.stop()
        time.sleep(1)
        broker.start()
        wait_for(lambda: port_open(center_port), 10, what="the center's listener again")
        store = central.store()
        try:
            wait_for(
                lambda: (
                    len(stored_readings(store, GW, "tank-1", "level", None, 10_000)) > 0
                    and store.status(time.time()).online == 1
                ),
                30,
                what="the gateway back online with its new certificate",
            )
            counted = len(stored_readings(store, GW, "tank-1", "level", None, 10_000))
            wait_for(
                lambda: (
                    len(stored_readings(store, GW, "tank-1", "level", None, 10_000)) > counted + 5
                ),
                30,
                what="readings flowing after the reconnect",
            )
            assert len(store.identities(GW)) == 2
            assert store.losses(GW) == []
        finally:
            store.close()
    finally:
        agent.stop()
        signer.stop()
        central.stop()
        broker.stop()
    # every reading the agent produced reached the center: seqs without a gap
    store = SqliteStore(db)
    try:
        seqs = sorted(r.seq for r in stored_readings(store, GW, None, None, None, 100_000))
    finally:
        store.close()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a reading went missing"
    assert "Traceback" not in agent.output()


def test_a_swap_cut_between_its_renames_is_finished(tmp_path: Path) -> None:
    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    cert.write_text("old cert")
    key.write_text("new key")  # the key's rename happened
    (tmp_path / "gateway.crt.new").write_text("new cert")
    assert finish_swap(cert, key)
    assert (cert.read_text(), key.read_text()) == ("new cert", "new key")
    # both left: both renamed in
    (tmp_path / "gateway.crt.new").write_text("newer cert")
    (tmp_path / "gateway.key.new").write_text("newer key")
    assert finish_swap(cert, key)
    assert (cert.read_text(), key.read_text()) == ("newer cert", "newer key")
    # only a key written, the certificate never came: the old pair stays
    (tmp_path / "gateway.key.new").write_text("orphan")
    assert not finish_swap(cert, key)
    assert (cert.read_text(), key.read_text()) == ("newer cert", "newer key")
    assert not (tmp_path / "gateway.key.new").exists()


class SigningUplink:
    """The uplink as the renewer sees it, with the center's answer in memory: a renewal
    request published is signed by the CA in ``ca`` and answered on the cert topic."""

    def __init__(self, ca: Path, gateway: str) -> None:
        import asyncio  # noqa: PLC0415

        self.ca, self.gateway = ca, gateway
        self.connected = asyncio.Event()
        self.connected.set()
        self.handlers: dict[str, Callable[[Inbound], None]] = {}

    def subscribe(self, topic: str, handler: Callable[[Inbound], None]) -> None:
        self.handlers[topic] = handler

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        import asyncio  # noqa: PLC0415

        from central.pki import sign_request  # noqa: PLC0415

        request = RenewRequest.decode(payload)
        cert = sign_request(self.ca, self.gateway, request.csr.encode(), 30).cert_pem.decode()
        answer = Reply(self.gateway, "signed", cert=cert).encode()
        (handler,) = self.handlers.values()
        asyncio.get_running_loop().call_soon(handler, Inbound(answer))
        return True


def test_a_full_disk_during_the_swap_leaves_the_pair_that_works(
    tmp_path: Path, small_fs: Path
) -> None:
    """The new key is written, the new certificate's write fails (no space left): the old
    pair must stay the one the next start uses, not the new key with an empty
    certificate (no TLS, and a technician to send to the box)."""
    import asyncio  # noqa: PLC0415

    from central.pki import init_ca  # noqa: PLC0415

    ca = tmp_path / "ca"
    init_ca(ca)
    old = issue_client(ca, GW, 30)
    cert, key = small_fs / "gateway.crt", small_fs / "gateway.key"
    cert.write_bytes(old.cert_pem)
    key.write_bytes(old.key_pem)
    filler = small_fs / "filler"
    # the disk full, but for the new key
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    filler.write_bytes(b"\0" * (filler.stat().st_size - 4096))
    renewer = Renewer(
        gateway=GW,
        topics=Topics(),
        uplink=SigningUplink(ca, GW),
        files=CertFiles(cert, key, ca / "ca.crt"),
        renew_before_s=60 * 86400,
    )
    outcome = asyncio.run(renewer.renew_once())
    assert outcome == "refused"  # not installed: the disk is full
    filler.unlink()  # space again, and the agent starts anew
    finish_swap(cert, key)
    assert (cert.read_bytes(), key.read_bytes()) == (old.cert_pem, old.key_pem)
    assert sorted(p.name for p in small_fs.iterdir()) == ["gateway.crt", "gateway.key"]


def test_a_certificate_shorter_than_renew_before_is_renewed_at_half_its_life(
    tmp_path: Path,
) -> None:
    """renew_before 30 days (the default) and a week's certificate (fleet provision --days
    7): due at once, it would be due again as soon as it was renewed, and the gateway
    would ask for a new certificate every hour for ever."""
    from central.pki import init_ca  # noqa: PLC0415

    ca = tmp_path / "ca"
    init_ca(ca)
    week = issue_client(ca, GW, 7)
    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    cert.write_bytes(week.cert_pem)
    key.write_bytes(week.key_pem)
    renewer = Renewer(
        gateway=GW,
        topics=Topics(),
        uplink=SigningUplink(ca, GW),
        files=CertFiles(cert, key, ca / "ca.crt"),
        renew_before_s=30 * 86400,
    )
    assert 3.4 * 86400 < renewer.due_in() < 3.6 * 86400
    # 5 days through it: due; a long certificate, due renew_before before its end
    cert.write_bytes(backdated(ca, week.cert_pem, hours=5 * 24))
    assert renewer.due_in() == 0
    cert.write_bytes(issue_client(ca, GW, 825).cert_pem)
    assert 794 * 86400 < renewer.due_in() < 796 * 86400
