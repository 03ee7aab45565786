"""OPC-UA config, value codec and certificates: no server needed, nothing mocked."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from drivers.base import Quality
from drivers.opcua import BrowsePath, NodeRef, OpcUaConnection, OpcUaDevice, OpcUaPoint
from drivers.opcua.codec import coerce, decode, judge
from drivers.opcua.pki import PkiError, TrustList, agent_identity, generate
from drivers.simulated.opcua_server import PUMP_STATION
from edge_agent.config import ConfigError, load_config
from tests.support import run_cli

REPO = Path(__file__).resolve().parent.parent


def config_text(devices: str) -> str:
    return f"gateway: {{id: gw-1}}\ndevices:\n{devices}"


DEVICE = """\
  - id: pumps
    opcua:
      endpoint: "opc.tcp://10.1.2.3:4840/plc"
      mode: subscribe
      security: {policy: Basic256Sha256, mode: SignAndEncrypt}
      username: ops
      password_file: /etc/edgefleet/pumps.pass
    poll_s: 1
    points:
      - {name: level, node: "ns=2;s=Pump1.Level", unit: mm, deadband: {abs: 5}}
      - {name: running, node: "ns=2;i=1042"}
"""


# -- node ids and browse paths ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "identifier", "namespace", "uri"),
    [
        ("ns=2;s=Pump1.Level", "s", "Pump1.Level", 2, None),
        ("ns=2;s=a;b=c", "s", "a;b=c", 2, None),  # a string id may hold ; and =
        ("ns=2;i=1042", "i", 1042, 2, None),
        ("i=85", "i", 85, 0, None),
        (
            "ns=3;g=09087e75-8e5e-499b-954f-f2a9603db28a",
            "g",
            uuid.UUID("09087e75-8e5e-499b-954f-f2a9603db28a"),
            3,
            None,
        ),
        ("ns=2;b=U0VSSUFM", "b", b"SERIAL", 2, None),
        ("nsu=urn:acme:plc;s=Tank.Level", "s", "Tank.Level", 0, "urn:acme:plc"),
    ],
)
def test_node_ids_in_every_form(
    text: str, kind: str, identifier: object, namespace: int, uri: str | None
) -> None:
    ref = NodeRef.parse(text)
    assert (ref.kind, ref.identifier, ref.namespace, ref.namespace_uri) == (
        kind,
        identifier,
        namespace,
        uri,
    )
    assert NodeRef.parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ns=2;x=5", "expected [ns=<index>;]i=<number>"),
        ("Pump1.Level", "expected [ns=<index>;]i=<number>"),
        ("ns=2;i=-1", "i= takes a number"),
        ("ns=2;i=4294967296", "i= takes a number"),
        ("ns=70000;i=1", "namespace index 70000 is over 65535"),
        ("ns=2;s=", "s= needs a string"),
        ("ns=2;g=not-a-guid", "g= takes a GUID"),
        ("ns=2;b=***", "b= takes base64"),
    ],
)
def test_bad_node_ids_say_what_is_expected(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=r"bad node id") as info:
        NodeRef.parse(text)
    assert needle in str(info.value)


def test_browse_paths() -> None:
    assert BrowsePath.parse("0:Objects/2:Pump1/2:Level").steps == (
        (0, "Objects"),
        (2, "Pump1"),
        (2, "Level"),
    )
    assert str(BrowsePath.parse("/0:Objects/2:Pump 1/")) == "0:Objects/2:Pump 1"
    for bad in ("Objects/Pump1", "0:Objects//2:Level", "x:Objects", "2:"):
        with pytest.raises(ValueError, match="bad browse path"):
            BrowsePath.parse(bad)


# -- models --------------------------------------------------------------------------------


def device(**opcua: object) -> dict[str, object]:
    return {
        "id": "pumps",
        "opcua": {"endpoint": "opc.tcp://127.0.0.1:4840", **opcua},
        "points": [{"name": "level", "node": "ns=2;s=Pump1.Level"}],
    }


def test_defaults_and_derived_values() -> None:
    dev = OpcUaDevice.model_validate(device())
    conn = dev.opcua
    assert (conn.mode, str(conn.security), conn.pki_dir) == ("subscribe", "None", Path("pki"))
    assert (conn.reconnect_min_s, conn.reconnect_max_s) == (0.5, 10.0)
    assert dev.sampling_ms(dev.points[0]) == 1000
    point = OpcUaPoint.model_validate({"name": "p", "path": "0:Objects/2:P", "sampling_ms": 250})
    assert dev.sampling_ms(point) == 250
    assert point.ref == BrowsePath(((0, "Objects"), (2, "P")))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"security": {"policy": "Basic256Sha256"}}, "policy None goes with mode None"),
        ({"security": {"policy": "None", "mode": "Sign"}}, "policy None goes with mode None"),
        ({"security": {"policy": "Basic128Rsa15", "mode": "Sign"}}, "Input should be"),
        ({"username": "ops"}, "username and password_file go together"),
        ({"endpoint": "http://plc:4840"}, "expected opc.tcp://host"),
        ({"endpoint": "opc.tcp://ops:pw@plc:4840"}, "not the URL"),
        ({"endpoint": "opc.tcp://plc:99999"}, "port must be a number"),
        ({"reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_max_s must not be below"),
    ],
)
def test_connection_problems(change: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        OpcUaDevice.model_validate(device(**change))
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("point", "needle"),
    [
        ({"name": "p"}, "exactly one of node (a node id) or path"),
        ({"name": "p", "node": "i=1", "path": "0:Objects"}, "exactly one of node"),
        ({"name": "p", "node": "i=1", "deadband": {}}, "either {abs: <value>} or {percent"),
        ({"name": "p", "node": "i=1", "deadband": {"abs": 1, "percent": 2}}, "either {abs"),
        ({"name": "p", "node": "i=1", "deadband": {"percent": 101}}, "less than or equal to 100"),
        ({"name": "p", "node": "i=1", "array": "explode"}, "'refuse' or 'flatten'"),
        ({"name": "p" * 61, "node": "i=1", "array": "flatten"}, "name too long to flatten"),
    ],
)
def test_point_problems(point: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        OpcUaPoint.model_validate(point)
    assert needle in str(info.value)


def test_config_errors_name_file_line_and_field(tmp_path: Path) -> None:
    text = config_text(
        DEVICE.replace("mode: subscribe", "mode: subscribe\n      endpiont: x").replace(
            'node: "ns=2;i=1042"', 'node: "ns=2;q=1042"'
        )
    )
    f = tmp_path / "agent.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    got = {(p.line, p.field): p.message for p in info.value.problems}
    assert got[(7, "devices[0].opcua.endpiont")] == "unknown key (misspelt, or not valid here)"
    assert got[(14, "devices[0].points[1].node")].startswith(
        "bad node id 'ns=2;q=1042': expected [ns=<index>;]i=<number> | s=<string>"
    )
    assert len(got) == 2

    result = run_cli("edge-agent", "check", "-c", str(f))
    assert result.returncode == 2
    assert f"{f}:7: devices[0].opcua.endpiont: unknown key" in result.stderr
    assert f"{f}:14: devices[0].points[1].node: bad node id 'ns=2;q=1042'" in result.stderr

    f.write_text(config_text(DEVICE + '      - {name: level, node: "i=1"}\n'))
    with pytest.raises(ConfigError) as info:
        load_config(f)
    (problem,) = info.value.problems
    assert (problem.line, problem.field) == (14, "devices[0].points[2].name")
    assert problem.message == "duplicate point name 'level' (first at points[0])"


def test_check_accepts_an_opcua_device_and_the_sample(tmp_path: Path) -> None:
    sample = yaml.safe_load((REPO / "drivers/opcua/sample.yaml").read_text())
    sample[0]["id"] = "sim-pumps"
    f = tmp_path / "agent.yaml"
    f.write_text(config_text(DEVICE) + "\n".join("  - " + json.dumps(d) for d in sample) + "\n")
    # the sample names a password file of a gateway, not of this host: the file on its own
    result = run_cli("edge-agent", "check", "--schema-only", "-c", str(f))
    assert result.returncode == 0, result.stderr
    points = 2 + len(sample[0]["points"])
    assert f"ok - gateway gw-1, 2 device(s), {points} point(s)" in result.stdout
    cfg = load_config(f).config
    assert [type(d).__name__ for d in cfg.devices] == ["OpcUaDevice", "OpcUaDevice"]


def test_the_sample_describes_the_simulated_pump_station() -> None:
    (entry,) = yaml.safe_load((REPO / "drivers/opcua/sample.yaml").read_text())
    dev = OpcUaDevice.model_validate(entry)
    assert dev.opcua.endpoint == "opc.tcp://127.0.0.1:4840/edgefleet/sim"
    node_ids = {NodeRef.parse(n.node_id) for n in PUMP_STATION}
    paths = {BrowsePath(((0, "Objects"), (2, n.parent), (2, n.browse_name))) for n in PUMP_STATION}
    for point in dev.points:
        assert point.ref in node_ids | paths, point.name


def test_loading_a_config_does_not_import_asyncua(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(config_text(DEVICE))
    code = (
        "import sys\n"
        "import drivers.opcua, drivers.opcua.config, edge_agent.config, edge_agent.devices\n"
        "import cli.agent, edge_agent.app\n"
        "from edge_agent.config import load_config\n"
        f"cfg = load_config(__import__('pathlib').Path({str(f)!r})).config\n"
        "assert type(cfg.devices[0]).__name__ == 'OpcUaDevice'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncua', 'rich')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


# -- values and status codes ---------------------------------------------------------------


def test_status_codes_become_quality_and_reason() -> None:
    assert judge(0, "Good") == (Quality.GOOD, None)
    assert judge(0x00A00000, "GoodClamped") == (Quality.GOOD, "GoodClamped")
    assert judge(0x40900000, "UncertainLastUsableValue") == (
        Quality.STALE,
        "UncertainLastUsableValue",
    )  # the PLC lost its sensor: not a live value, rules must not act on it
    assert judge(0x408F0000, "UncertainNoCommunicationLastUsableValue")[0] is Quality.STALE
    assert judge(0x42090000, "UncertainSimulatedValue")[0] is Quality.STALE
    assert judge(0x40930000, "UncertainSensorNotAccurate") == (
        Quality.GOOD,
        "UncertainSensorNotAccurate",
    )  # live, if less accurate
    assert judge(0x80340000, "BadNodeIdUnknown") == (Quality.BAD, "BadNodeIdUnknown")


def test_values_become_reading_values() -> None:
    p = OpcUaPoint.model_validate({"name": "p", "node": "i=1"})
    assert decode(p, 1.5) == [("p", 1.5)]
    assert decode(p, True) == [("p", True)]
    assert decode(p, "x") == [("p", "x")]
    stamp = dt.datetime(2024, 3, 18, 7, 30, 0, 250000)
    assert decode(p, stamp) == [("p", "2024-03-18T07:30:00.250000Z")]
    assert decode(p, stamp.replace(tzinfo=dt.UTC)) == decode(p, stamp)
    guid = uuid.UUID("09087e75-8e5e-499b-954f-f2a9603db28a")
    assert decode(p, guid) == [("p", "09087e75-8e5e-499b-954f-f2a9603db28a")]
    with pytest.raises(ValueError, match=r"array value not supported \(3 elements, int\)"):
        decode(p, [1, 2, 3])
    with pytest.raises(ValueError, match="ByteString value not supported"):
        decode(p, b"\x00\x01")
    flat = OpcUaPoint.model_validate({"name": "w", "node": "i=1", "array": "flatten"})
    assert decode(flat, [1.0, 2.0]) == [("w.0", 1.0), ("w.1", 2.0)]
    with pytest.raises(ValueError, match="matrix"):
        decode(flat, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("value", "vtype", "expected"),
    [
        (55, "Int16", 55),
        (55.0, "Int16", 55),
        (True, "Int16", 1),
        (1, "Boolean", True),
        (False, "Boolean", False),
        (2, "Double", 2.0),
        ("on", "String", "on"),
        (0, "DateTime", dt.datetime(1970, 1, 1, tzinfo=dt.UTC)),
        ("2024-03-18T07:30:00Z", "DateTime", dt.datetime(2024, 3, 18, 7, 30, tzinfo=dt.UTC)),
        (2**64 - 1, "UInt64", 2**64 - 1),
    ],
)
def test_values_written_as_the_node_type(value: object, vtype: str, expected: object) -> None:
    got = coerce(value, vtype)  # type: ignore[arg-type]
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("value", "vtype", "needle"),
    [
        (1.5, "Int16", "whole number"),
        (40000, "Int16", "out of range for Int16 (-32768..32767)"),
        (-1, "UInt32", "out of range"),
        (2, "Boolean", "true or false"),
        ("5", "Double", "takes a number"),
        (5, "String", "takes text"),
        ("yesterday", "DateTime", "ISO-8601"),
        (None, "Double", "cannot write null"),
        (1, "ExtensionObject", "cannot write a ExtensionObject node"),
    ],
)
def test_values_that_would_change_meaning_are_refused(
    value: object, vtype: str, needle: str
) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        coerce(value, vtype)  # type: ignore[arg-type]


# -- certificates ----------------------------------------------------------------------------


def test_the_agent_makes_its_certificate_once_with_its_application_uri(tmp_path: Path) -> None:
    conn = OpcUaConnection(endpoint="opc.tcp://plc:4840", pki_dir=tmp_path / "pki")
    first = agent_identity(conn)
    assert first.generated
    assert first.cert == tmp_path / "pki/own/cert.der"
    assert first.key.stat().st_mode & 0o777 == 0o600
    cert = x509.load_der_x509_certificate(first.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [first.application_uri]
    assert first.application_uri.startswith("urn:edgefleet:agent:")
    again = agent_identity(conn)
    assert not again.generated and again.cert.read_bytes() == first.cert.read_bytes()

    other = OpcUaConnection.model_validate(
        {"endpoint": "opc.tcp://plc", "pki_dir": tmp_path / "pki", "application_uri": "urn:x"}
    )
    with pytest.raises(PkiError, match="not for application_uri urn:x"):
        agent_identity(other)
    missing = OpcUaConnection.model_validate(
        {"endpoint": "opc.tcp://plc", "certificate": {"cert": tmp_path / "c", "key": tmp_path}}
    )
    with pytest.raises(PkiError, match=r"certificate file .*c not found"):
        agent_identity(missing)


def test_an_unknown_server_certificate_is_filed_under_rejected(tmp_path: Path) -> None:
    generate(tmp_path / "srv.der", tmp_path / "srv.pem", "urn:srv", "plc", server=True)
    der = (tmp_path / "srv.der").read_bytes()
    trust = TrustList(tmp_path / "pki")
    with pytest.raises(PkiError) as info:
        trust.check(der)
    (rejected,) = (tmp_path / "pki/rejected").iterdir()
    assert rejected.read_bytes() == der
    assert f"saved as {rejected}" in str(info.value)
    assert f"move it to {tmp_path / 'pki/trusted'}/" in str(info.value)
    assert info.value.reason == "server certificate not trusted"
    rejected.rename(tmp_path / "pki/trusted" / rejected.name)
    trust.check(der)  # trusted now, without any restart


def make_ca_and_leaf(
    *, ca_is_ca: bool = True, ca_days: float = 1, leaf_days: float = 1
) -> tuple[x509.Certificate, x509.Certificate]:
    """A CA and a server certificate it signed; negative days: already expired."""
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Plant CA")])

    def window(days: float) -> tuple[dt.datetime, dt.datetime]:
        return (now - dt.timedelta(days=2), now + dt.timedelta(days=days))

    start, end = window(ca_days)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca_is_ca, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    start, end = window(leaf_days)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plc-7")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(2)
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(ca_key, hashes.SHA256())
    )
    return ca, leaf


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"ca_is_ca": False}, "server certificate not trusted"),  # not a CA: cannot vouch
        ({"ca_days": -1}, "server certificate not trusted"),  # the CA has expired
        ({"leaf_days": -1}, "server certificate expired"),
    ],
)
def test_a_ca_vouches_only_while_valid_and_only_for_valid_certificates(
    tmp_path: Path, options: dict[str, Any], reason: str
) -> None:
    ca, leaf = make_ca_and_leaf(**options)
    trusted = tmp_path / "pki/trusted"
    trusted.mkdir(parents=True)
    (trusted / "plant-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(PkiError) as info:
        TrustList(tmp_path / "pki").check(leaf.public_bytes(serialization.Encoding.DER))
    assert info.value.reason == reason


def test_a_server_certificate_issued_by_a_trusted_ca_is_trusted(tmp_path: Path) -> None:
    ca, leaf = make_ca_and_leaf()
    trusted = tmp_path / "pki/trusted"
    trusted.mkdir(parents=True)
    (trusted / "plant-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    TrustList(tmp_path / "pki").check(leaf.public_bytes(serialization.Encoding.DER))
