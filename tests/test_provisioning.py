"""``fleet ca init``, ``fleet provision`` and ``edge-agent enroll``, as an operator and a
technician run them: the CA folder and its file modes, nothing overwritten unasked, the
bundle, the enrolled folder; and an enrolled gateway whose readings reach the center over
TLS through a real Mosquitto that takes each client's identity from its certificate."""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from central.store import open_store
from edge_agent.config.loader import load_config
from tests.rig import GW, devices_yaml
from tests.support import (
    Broker,
    Central,
    Process,
    ThreadedDevice,
    free_port,
    run_cli,
    stored_readings,
    wait_for,
)

PRIVATE = ("ca.key", "center-ca.key", "broker.key", "central.key", "command.key")
PUBLIC = ("ca.crt", "center-ca.crt", "crl.pem", "broker.crt", "central.crt", "command.pub")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def common_name(c: x509.Certificate) -> str:
    return str(c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def unit_state_folders() -> tuple[list[Path], list[Path]]:
    """The shipped systemd unit's state folders (``StateDirectory=``, under /var/lib) and
    the paths its ``ProtectSystem=strict`` leaves writable (``ReadWritePaths=``)."""
    unit = (Path(__file__).resolve().parent.parent / "packaging" / "edge-agent.service").read_text()
    values: dict[str, list[str]] = {}
    for line in unit.splitlines():
        key, eq, value = line.partition("=")
        if eq and not line.startswith("#"):
            values.setdefault(key.strip(), []).extend(value.split())
    state = [Path("/var/lib") / name for name in values.get("StateDirectory", [])]
    return state, [Path(p) for p in values.get("ReadWritePaths", [])]


def ca_init(folder: Path, *args: str) -> tuple[int, str]:
    out = run_cli("fleet", "ca", "init", "--dir", str(folder), *args)
    return out.returncode, out.stdout + out.stderr


def provision(tmp: Path, gw: str, *args: str) -> tuple[int, str]:
    out = run_cli(
        "fleet", "provision", gw, "--ca-dir", str(tmp / "ca"), "--db", str(tmp / "central.db"),
        *args,
    )  # fmt: skip
    return out.returncode, out.stdout + out.stderr


def test_ca_init_makes_the_folder_with_private_keys_0600_and_never_overwrites_them(
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca"
    rc, out = ca_init(ca, "--broker-name", "broker.example", "--broker-ip", "10.0.0.5")
    assert rc == 0, out
    assert sorted(p.name for p in ca.iterdir()) == sorted(PRIVATE + PUBLIC)
    assert {name: mode(ca / name) for name in PRIVATE} == dict.fromkeys(PRIVATE, 0o600)
    assert {name: mode(ca / name) for name in PUBLIC} == dict.fromkeys(PUBLIC, 0o644)

    root = cert(ca / "ca.crt")
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    broker, central = cert(ca / "broker.crt"), cert(ca / "central.crt")
    broker.verify_directly_issued_by(root)
    # the center's certificate is its own CA's, which alone the center's listener trusts
    center_ca = cert(ca / "center-ca.crt")
    assert center_ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    central.verify_directly_issued_by(center_ca)
    with pytest.raises((InvalidSignature, ValueError)):
        central.verify_directly_issued_by(root)
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    usage = broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert common_name(central) == "edgefleet-central"
    usage = central.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    crl = x509.load_pem_x509_crl((ca / "crl.pem").read_bytes())
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert len(crl) == 0
    # the command key pair is the one fleet keys init makes: the agent's loader takes it
    assert (ca / "command.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")

    before = {p.name: p.read_bytes() for p in ca.iterdir()}
    rc, out = ca_init(ca)
    assert rc == 1
    assert "not overwriting" in out and "ca.key" in out, out
    assert {p.name: p.read_bytes() for p in ca.iterdir()} == before

    (ca / "ca.key").chmod(0o644)  # a key someone loosened: --force writes it 0600 again
    rc, out = ca_init(ca, "--force")
    assert rc == 0, out
    assert (ca / "ca.key").read_bytes() != before["ca.key"]
    assert mode(ca / "ca.key") == 0o600
    # defaults: localhost and 127.0.0.1
    sans = cert(ca / "broker.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(i) for i in sans.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def one_error(out: str) -> str:
    """The one line of an error a command printed; no traceback before it."""
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, out
    return errors[0]


def test_a_ca_folder_from_before_the_center_ca_gets_one_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca"
    assert ca_init(ca)[0] == 0
    # as an older fleet ca init left it: no center CA, the center's certificate the fleet's
    (ca / "center-ca.crt").unlink()
    (ca / "center-ca.key").unlink()
    kept = {name: (ca / name).read_bytes() for name in ("ca.key", "broker.key", "command.key")}
    made = run_cli("fleet", "broker-config", "--out", str(tmp_path / "conf"), "--ca-dir", str(ca))
    assert made.returncode == 1 and "--add-center-ca" in made.stderr, made.stderr
    rc, out = ca_init(ca, "--add-center-ca")
    assert rc == 0, out
    assert {name: (ca / name).read_bytes() for name in kept} == kept
    cert(ca / "central.crt").verify_directly_issued_by(cert(ca / "center-ca.crt"))
    assert mode(ca / "center-ca.key") == 0o600
    rc, out = ca_init(ca, "--add-center-ca")
    assert rc == 1 and "already" in out, out
    made = run_cli(
        "fleet", "broker-config", "--out", str(tmp_path / "conf"), "--ca-dir", str(ca),
        "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    conf = (tmp_path / "conf" / "mosquitto.conf").read_text()
    assert f"cafile {(ca / 'center-ca.crt').resolve()}" in conf


def test_ca_init_refuses_an_address_that_is_not_one(tmp_path: Path) -> None:
    rc, out = ca_init(tmp_path / "ca", "--broker-ip", "broker.example")
    assert rc == 2 and "not an IP address" in one_error(out), out
    assert not (tmp_path / "ca").exists()
    rc, out = ca_init(tmp_path / "ip-only", "--broker-ip", "10.0.0.7", "--broker-ip", "::1")
    assert rc == 0, out
    broker = cert(tmp_path / "ip-only" / "broker.crt")
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == []
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7", "::1"]


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "empty"),
        ("a" * 300, "at most 253"),
        ("bröker.example", "not ASCII"),
        ("bad name/x", "not a DNS name"),
        ("-broker.example", "not a DNS name"),
        ("b" * 64 + ".example", "not a DNS name"),
        ("broker..example", "not a DNS name"),
        ("*.example", "wildcard"),
        ("10.0.0.5", "--broker-ip"),
    ],
)
def test_ca_init_refuses_a_broker_name_that_is_no_dns_name_before_making_anything(
    tmp_path: Path, name: str, says: str
) -> None:
    rc, out = ca_init(tmp_path / "ca", "--broker-name", "broker.example", "--broker-name", name)
    assert rc == 2, out
    error = one_error(out)
    assert "--broker-name" in error and says in error, error
    assert not (tmp_path / "ca").exists()


def test_ca_init_takes_a_long_dns_name_and_a_wildcard(tmp_path: Path) -> None:
    long_name = ".".join(c * 63 for c in "abc") + ".example"  # 199 characters
    rc, out = ca_init(tmp_path / "ca", "--broker-name", long_name, "--broker-name", "*.b.example")
    assert rc == 0, out
    broker = cert(tmp_path / "ca" / "broker.crt")
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [long_name, "*.b.example"]
    assert common_name(broker) == "EdgeFleet broker"  # a CN holds 64 characters


def test_ca_init_that_cannot_write_a_file_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    (ca / "central.crt").mkdir(parents=True)  # in the way of the 7th file written
    rc, out = ca_init(ca)
    assert rc == 1 and "central.crt" in one_error(out), out
    assert [p.name for p in ca.iterdir()] == ["central.crt"]
    assert list((ca / "central.crt").iterdir()) == []


def test_provision_writes_one_bundle_0600_and_enroll_installs_it(tmp_path: Path) -> None:
    assert ca_init(tmp_path / "ca")[0] == 0
    bundle = tmp_path / "gw.bundle"
    rc, out = provision(
        tmp_path, GW, "--site", "Jing'an: 1266", "--tag", "district=jingan",
        "--broker", "mqtts://broker.example:8883", "--out", str(bundle),
    )  # fmt: skip
    assert rc == 0, out
    assert mode(bundle) == 0o600
    body = json.loads(bundle.read_text())
    assert body["gateway"] == GW and body["broker"] == "mqtts://broker.example:8883"
    issued = x509.load_pem_x509_certificate(body["files"]["gateway.crt"].encode())
    assert common_name(issued) == GW
    issued.verify_directly_issued_by(cert(tmp_path / "ca" / "ca.crt"))
    assert body["files"]["command.pub"] == (tmp_path / "ca" / "command.pub").read_text()

    # the registry: the identity (never its key), and the gateway with its site and tags
    store = open_store(tmp_path / "central.db")
    try:
        (identity,) = store.identities(GW)
        row = store.gateway(GW)
    finally:
        store.close()
    assert identity.kind == "certificate" and identity.revoked is None
    assert identity.fingerprint == issued.fingerprint(hashes.SHA256()).hex()
    assert identity.expires == issued.not_valid_after_utc.timestamp()
    assert row is not None and row.site == "Jing'an: 1266" and row.tags == {"district": "jingan"}
    assert not row.online
    db_bytes = (tmp_path / "central.db").read_bytes()
    key_body = body["files"]["gateway.key"].splitlines()[1].encode()
    assert key_body not in db_bytes

    # not twice into the same file, not for an id that is no gateway id
    rc, out = provision(tmp_path, GW, "--out", str(bundle))
    assert rc == 1 and "exists" in out, out
    assert json.loads(bundle.read_text()) == body
    rc, out = provision(tmp_path, "gw/1", "--out", str(tmp_path / "x.bundle"))
    assert rc == 2 and "gateway id" in out, out
    rc, out = provision(tmp_path, "gw-2", "--broker", "mqtt://broker.example")
    assert rc == 2 and "mqtts://" in out, out
    # the center's name would get the center's rights from the broker's ACL
    rc, out = provision(tmp_path, "edgefleet-central", "--out", str(tmp_path / "c.bundle"))
    assert rc == 2 and "ids starting edgefleet-" in out, out

    etc = tmp_path / "etc"
    out_ = run_cli("edge-agent", "enroll", str(bundle), "--dir", str(etc))
    assert out_.returncode == 0, out_.stderr
    assert f"edge-agent check -c {etc / 'agent.yaml'}" in out_.stdout
    assert "systemctl enable --now edge-agent" in out_.stdout
    names = ("ca.crt", "gateway.crt", "gateway.key", "command.pub", "agent.yaml")
    assert sorted(p.name for p in etc.iterdir()) == sorted(names)
    assert mode(etc / "gateway.key") == 0o600
    assert (etc / "gateway.key").read_text() == body["files"]["gateway.key"]
    checked = run_cli("edge-agent", "check", "--schema-only", "-c", str(etc / "agent.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"gateway {GW}, 0 device(s)" in checked.stdout
    # and with its files: the certificate is the key's, the command key a public key
    checked = run_cli("edge-agent", "check", "-c", str(etc / "agent.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # its outbox is where the shipped unit lets the agent write, not beside the config
    state_dirs, writable = unit_state_folders()
    outbox = load_config(etc / "agent.yaml").config.outbox.path
    assert outbox.is_absolute() and outbox.parent in state_dirs and outbox.parent in writable

    # an enrolled gateway's edited config is not overwritten by a second enroll
    (etc / "agent.yaml").write_text((etc / "agent.yaml").read_text() + "# edited\n")
    again = run_cli("edge-agent", "enroll", str(bundle), "--dir", str(etc))
    assert again.returncode == 1 and "agent.yaml" in again.stderr, again.stderr
    assert (etc / "agent.yaml").read_text().endswith("# edited\n")
    forced = run_cli("edge-agent", "enroll", str(bundle), "--dir", str(etc), "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (etc / "agent.yaml").read_text().endswith("# edited\n")


def test_provision_without_a_ca_writes_and_records_nothing(tmp_path: Path) -> None:
    bundle = tmp_path / "gw.bundle"
    rc, out = provision(tmp_path, GW, "--out", str(bundle))
    assert rc == 1 and "is not a fleet CA" in out and "fleet ca init" in out, out
    assert not bundle.exists() and not (tmp_path / "central.db").exists()
    assert ca_init(tmp_path / "ca")[0] == 0
    rc, out = provision(tmp_path, GW, "--out", str(bundle), "--tag", "district")
    assert rc == 2 and "key=value" in out, out
    assert not bundle.exists()


def test_provision_that_cannot_write_its_bundle_records_no_identity(tmp_path: Path) -> None:
    assert ca_init(tmp_path / "ca")[0] == 0
    open_store(tmp_path / "central.db").close()
    rc, out = provision(tmp_path, GW, "--out", str(tmp_path / "no-such-folder" / "gw.bundle"))
    assert rc == 1, out
    assert "cannot write the bundle" in one_error(out), out
    store = open_store(tmp_path / "central.db")
    try:
        assert store.identities(GW) == [] and store.gateway(GW) is None
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca", "central.db"]


def test_provision_makes_no_store_it_was_not_told_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As every fleet command but `fleet central run`, provision does not make the default
    ./central.db; a store named (--db, EDGEFLEET_DB) is made if missing."""
    from typer.testing import CliRunner  # noqa: PLC0415

    from cli.fleet import app  # noqa: PLC0415

    assert ca_init(tmp_path / "ca")[0] == 0
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGEFLEET_DB", raising=False)
    runner = CliRunner()
    args = ["provision", GW, "--ca-dir", "ca", "--out", "gw.bundle"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    error = one_error(result.output)
    assert "no central store at central.db" in error and "--db or EDGEFLEET_DB" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca"]

    result = runner.invoke(app, args, env={"EDGEFLEET_DB": str(tmp_path / "named.db")})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "named.db").is_file() and not (tmp_path / "central.db").exists()
    open_store(tmp_path / "central.db").close()  # the center's store, here: it is used
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    store = open_store(tmp_path / "central.db")
    try:
        assert len(store.identities(GW)) == 1
    finally:
        store.close()


def test_enroll_refuses_what_is_not_a_bundle(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bundle"
    junk.write_text('{"format": "something else"}')
    out = run_cli("edge-agent", "enroll", str(junk), "--dir", str(tmp_path / "etc"))
    assert out.returncode == 1 and "not an enrollment bundle" in out.stderr, out.stderr
    assert not (tmp_path / "etc").exists()


def test_enroll_refuses_a_bundle_whose_certificates_and_keys_are_not_what_they_claim(
    tmp_path: Path,
) -> None:
    """A bundle damaged, edited by hand or put together from two gateways' (or two CAs')
    installs nothing: each file is checked for what it is and whose it is."""
    assert ca_init(tmp_path / "ca")[0] == 0
    assert ca_init(tmp_path / "other-ca")[0] == 0
    mine, theirs, foreign = tmp_path / "gw.bundle", tmp_path / "gw-2.bundle", tmp_path / "f"
    assert provision(tmp_path, GW, "--out", str(mine))[0] == 0
    assert provision(tmp_path, "gw-2", "--out", str(theirs))[0] == 0
    other = run_cli(
        "fleet", "provision", GW, "--ca-dir", str(tmp_path / "other-ca"), "--out", str(foreign),
        "--db", str(tmp_path / "other.db"),
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    good = json.loads(mine.read_text())
    files = good["files"]
    theirs_files = json.loads(theirs.read_text())["files"]
    foreign_files = json.loads(foreign.read_text())["files"]
    garbage = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    cases = [
        ({"ca.crt": garbage}, "ca.crt is not a PEM certificate"),
        ({"ca.crt": files["gateway.crt"]}, "ca.crt is a certificate but not a CA's"),
        ({"ca.crt": foreign_files["ca.crt"]}, "gateway.crt is not signed by its ca.crt"),
        ({"gateway.crt": "hello"}, "gateway.crt is not a PEM certificate"),
        ({"gateway.crt": files["ca.crt"]}, "gateway.crt is for 'EdgeFleet CA'"),
        (
            {
                "gateway.crt": theirs_files["gateway.crt"],
                "gateway.key": theirs_files["gateway.key"],
            },
            "gateway.crt is for 'gw-2', not gateway",
        ),
        ({"gateway.key": "not a key"}, "gateway.key is not an unencrypted PEM private key"),
        ({"gateway.key": theirs_files["gateway.key"]}, "gateway.key is not the key of"),
        ({"command.pub": garbage}, "command.pub is not a PEM public key"),
        ({"command.pub": files["gateway.crt"]}, "command.pub is not a PEM public key"),
    ]
    for change, says in cases:
        bad = tmp_path / "bad.bundle"
        bad.write_text(json.dumps({**good, "files": {**files, **change}}))
        etc = tmp_path / "etc"
        out = run_cli("edge-agent", "enroll", str(bad), "--dir", str(etc))
        assert out.returncode == 1, (change.keys(), out.stdout + out.stderr)
        error = one_error(out.stderr)
        assert says in error, (says, error)
        assert not etc.exists(), error
    # the same files, unchanged, install
    out = run_cli("edge-agent", "enroll", str(mine), "--dir", str(tmp_path / "etc"))
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user takes root")
def test_enroll_gives_the_key_to_the_agents_user(tmp_path: Path) -> None:
    assert ca_init(tmp_path / "ca")[0] == 0
    bundle = tmp_path / "gw.bundle"
    assert provision(tmp_path, GW, "--out", str(bundle))[0] == 0
    etc = tmp_path / "etc"
    unknown = run_cli(
        "edge-agent", "enroll", str(bundle), "--dir", str(etc), "--owner", "no-such-user-x"
    )
    assert unknown.returncode == 1 and "no user 'no-such-user-x'" in unknown.stderr
    assert not etc.exists()
    hinted = run_cli("edge-agent", "enroll", str(bundle), "--dir", str(tmp_path / "etc2"))
    assert f"chown edgefleet {tmp_path / 'etc2' / 'gateway.key'}" in hinted.stdout
    out = run_cli("edge-agent", "enroll", str(bundle), "--dir", str(etc), "--owner", "nobody")
    assert out.returncode == 0, out.stderr
    assert "chown" not in out.stdout
    nobody = pwd.getpwnam("nobody")
    key = (etc / "gateway.key").stat()
    assert (key.st_uid, key.st_gid, stat.S_IMODE(key.st_mode)) == (
        nobody.pw_uid,
        nobody.pw_gid,
        0o600,
    )
    assert (etc / "agent.yaml").stat().st_uid == 0


@pytest.mark.hil
def test_an_enrolled_gateway_reaches_the_center_over_tls_with_its_own_identity(
    tmp_path: Path, modbus_server: ThreadedDevice
) -> None:
    ca = tmp_path / "ca"
    assert ca_init(ca)[0] == 0
    # the broker on the config fleet broker-config makes from that CA folder, ACL included
    broker_dir, conf_dir = tmp_path / "broker", tmp_path / "broker-config"
    broker_dir.mkdir()
    port, center_port = free_port(), free_port()
    made = run_cli(
        "fleet", "broker-config", "--out", str(conf_dir), "--ca-dir", str(ca),
        "--port", str(port), "--center-port", str(center_port), "--data-dir", str(broker_dir),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    broker = Broker(broker_dir, port, config=conf_dir / "mosquitto.conf")
    url = f"mqtts://127.0.0.1:{broker.port}"
    center_url = f"mqtts://127.0.0.1:{center_port}"
    center = tmp_path / "center"
    center.mkdir()
    bundle = tmp_path / f"{GW}.bundle"
    rc, out = provision(
        tmp_path, GW, "--site", "test bench", "--broker", url, "--out", str(bundle),
        "--db", str(center / "central.db"),
    )  # fmt: skip
    assert rc == 0, out
    etc = tmp_path / "etc"
    enrolled = run_cli("edge-agent", "enroll", str(bundle), "--dir", str(etc))
    assert enrolled.returncode == 0, enrolled.stderr
    config = etc / "agent.yaml"
    text = config.read_text()
    assert "devices: []\n" in text
    # the starter's outbox is the shipped unit's state folder; here the test's own
    outbox = f"outbox: {{path: {etc / 'outbox.db'}}}"
    text = re.sub(r"^outbox: .*$", outbox, text, count=1, flags=re.MULTILINE)
    config.write_text(
        text.replace("devices: []\n", f"devices:\n{devices_yaml(modbus_server.port, 0.2)}")
    )
    checked = run_cli("edge-agent", "check", "-c", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # the center's own listener, signing acks with the key the gateway was given
    central = Central(center, center_url, key=ca / "command.key")
    central.args += [
        "--ca-file", str(ca / "ca.crt"),
        "--cert-file", str(ca / "central.crt"),
        "--key-file", str(ca / "central.key"),
    ]  # fmt: skip
    agent = Process("edge-agent", ["run", "-c", str(config)], etc / "agent.log")
    broker.start()
    try:
        central.start()
        agent.start()
        store = central.store()
        try:
            wait_for(
                lambda: stored_readings(store, GW, "tank-1", "level", None, 5),
                30,
                what="the enrolled gateway's readings in the center's store, over mqtts",
            )
            (identity,) = store.identities(GW)
        finally:
            store.close()
        assert identity.kind == "certificate"
        shown = run_cli(
            "fleet", "gateways", "show", GW, "--db", str(center / "central.db"), "--json"
        )
        assert shown.returncode == 0, shown.stderr
        listed = json.loads(shown.stdout)
        assert listed["online"] is True and listed["site"] == "test bench"
        assert [i["fingerprint"] for i in listed["identities"]] == [identity.fingerprint]
        # each connected as its certificate's common name, the broker's username for it
        log = broker.log.read_text()
        assert f"u'{GW}'" in log, log
        assert "u'edgefleet-central'" in log, log
    finally:
        agent.stop()
        central.stop()
        broker.stop()
