"""Signed acks (``edge_agent.contract.acks``) and the center's keys a gateway trusts: the
signature covers the gateway, the stream and both lists of ranges, so changing any of them
(or the signature) is refused, as is an ack signed for another gateway or by another key;
several trusted keys in one file (a rotation) each verify acks and commands alike."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.host_files import ed25519_public_key_problem
from edge_agent.contract import Ack, Channel, PayloadError, decode_ack, encode_ack
from edge_agent.contract.acks import AckRejected, sign_ack, verify_ack
from edge_agent.contract.commands import (
    CommandRejected,
    canonical,
    generate_keys,
    load_private_key,
    load_public_keys,
    new_command,
    sign,
    verify,
)
from edge_agent.contract.payloads import SEQ_MAX
from edge_agent.contract.schema import validate

GW = "jingan-0001"
STREAM = "3f9c2b1e8a7d4c60b5e2f1a09d8c7e6b"
ACK = Ack(STREAM, telemetry=((48001, 48215), (48216, 48300)), alarms=((117, 117),))


@pytest.fixture
def center() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_signed_ack_verifies_for_its_gateway_and_follows_the_schema(
    center: Ed25519PrivateKey,
) -> None:
    payload = sign_ack(ACK, GW, center)
    validate(Channel.ACK, payload)
    obj = json.loads(payload)
    assert set(obj) == {"gw", "stream", "telemetry", "alarms", "sig"}
    assert obj["gw"] == GW and len(obj["sig"]) == 88
    assert verify_ack(payload, [center.public_key()], GW) == ACK
    # the signature is over the canonical JSON of the other four fields, as for commands
    body = {k: v for k, v in obj.items() if k != "sig"}
    center.public_key().verify(base64.b64decode(obj["sig"]), canonical(body))
    # and a gateway that checks nothing takes the signed form as the plain one
    assert decode_ack(payload) == ACK


def test_empty_lanes_are_signed_too(center: Ed25519PrivateKey) -> None:
    payload = sign_ack(Ack(STREAM), GW, center)
    assert json.loads(payload)["telemetry"] == [] and json.loads(payload)["alarms"] == []
    assert verify_ack(payload, [center.public_key()], GW) == Ack(STREAM)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gw", "jingan-0002"),
        ("stream", "0000000000000000"),
        ("telemetry", [[1, SEQ_MAX]]),
        ("telemetry", [[48001, 48215]]),  # a range dropped: still a change
        ("alarms", [[117, 118]]),
        ("alarms", []),
    ],
)
def test_changing_any_signed_field_breaks_the_signature(
    center: Ed25519PrivateKey, field: str, value: Any
) -> None:
    obj = json.loads(sign_ack(ACK, GW, center))
    obj[field] = value
    # to the gateway the ack now names (a changed gw: the one it was moved to)
    gateway = value if field == "gw" else GW
    with pytest.raises(AckRejected, match="bad signature") as info:
        verify_ack(json.dumps(obj).encode(), [center.public_key()], gateway)
    assert info.value.reason == "signature"


def test_a_changed_or_foreign_signature_is_refused(center: Ed25519PrivateKey) -> None:
    obj = json.loads(sign_ack(ACK, GW, center))
    sig = base64.b64decode(obj["sig"])
    flipped = base64.b64encode(bytes([sig[0] ^ 1]) + sig[1:]).decode()
    for bad in (flipped, "not base64!", "", "A" * 86 + "=="):
        with pytest.raises(AckRejected, match="bad signature"):
            verify_ack(json.dumps({**obj, "sig": bad}).encode(), [center.public_key()], GW)
    other = sign_ack(ACK, GW, Ed25519PrivateKey.generate())
    with pytest.raises(AckRejected, match="bad signature"):
        verify_ack(other, [center.public_key()], GW)


def test_an_ack_signed_for_another_gateway_is_refused_on_this_one(
    center: Ed25519PrivateKey,
) -> None:
    payload = sign_ack(ACK, "jingan-0002", center)
    with pytest.raises(AckRejected, match="signed for gateway 'jingan-0002'") as info:
        verify_ack(payload, [center.public_key()], GW)
    assert info.value.reason == "gateway"
    assert verify_ack(payload, [center.public_key()], "jingan-0002") == ACK


def test_an_unsigned_ack_is_refused_by_a_gateway_with_keys(center: Ed25519PrivateKey) -> None:
    with pytest.raises(AckRejected, match="unsigned") as info:
        verify_ack(encode_ack(ACK), [center.public_key()], GW)
    assert info.value.reason == "unsigned"


@pytest.mark.parametrize(
    "change",
    [
        {"note": "extra"},  # a field outside the signature
        {"gw": None},
        {"sig": 5},
    ],
)
def test_a_signed_ack_has_exactly_its_fields(
    center: Ed25519PrivateKey, change: dict[str, Any]
) -> None:
    obj = {**json.loads(sign_ack(ACK, GW, center)), **change}
    obj = {k: v for k, v in obj.items() if v is not None}
    with pytest.raises(AckRejected):
        verify_ack(json.dumps(obj).encode(), [center.public_key()], GW)


def test_a_malformed_ack_is_a_payload_error_before_any_signature(
    center: Ed25519PrivateKey,
) -> None:
    obj = json.loads(sign_ack(ACK, GW, center))
    for bad in ({**obj, "telemetry": [[9, 3]]}, {**obj, "stream": "a/b"}):
        with pytest.raises(PayloadError):
            verify_ack(json.dumps(bad).encode(), [center.public_key()], GW)
    with pytest.raises(PayloadError):
        verify_ack(b"\x00", [center.public_key()], GW)


def test_any_trusted_key_verifies_acks_and_commands(tmp_path: Path) -> None:
    """A rotation: the gateway's key file holds the old key and the new one."""
    old_pub = generate_keys(tmp_path / "old.key")
    new_pub = generate_keys(tmp_path / "new.key")
    trusted = tmp_path / "center.pub"
    trusted.write_bytes(old_pub.read_bytes() + b"\n" + new_pub.read_bytes())
    keys = load_public_keys(trusted)
    assert len(keys) == 2
    assert ed25519_public_key_problem(trusted) is None
    for name in ("old.key", "new.key"):
        private = load_private_key(tmp_path / name)
        assert verify_ack(sign_ack(ACK, GW, private), keys, GW) == ACK
        command = new_command(GW, "ping", {})
        assert verify(sign(command, private), keys, GW)["id"] == command["id"]
    retired = Ed25519PrivateKey.generate()
    with pytest.raises(AckRejected):
        verify_ack(sign_ack(ACK, GW, retired), keys, GW)
    with pytest.raises(CommandRejected, match="bad signature"):
        verify(sign(new_command(GW, "ping", {}), retired), keys, GW)
    # the old key alone again once every gateway has the new one
    assert len(load_public_keys(old_pub)) == 1


def test_a_key_file_with_one_bad_block_names_it(tmp_path: Path) -> None:
    good = generate_keys(tmp_path / "c.key").read_bytes()
    rsa = (
        serialization.load_pem_private_key(_rsa_pem(), password=None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    mixed = tmp_path / "mixed.pub"
    mixed.write_bytes(good + rsa)
    with pytest.raises(ValueError, match=r"\(key 2 of 2\) is not an Ed25519 public key"):
        load_public_keys(mixed)
    problem = ed25519_public_key_problem(mixed)
    assert problem is not None and "(key 2 of 2)" in problem and "not an Ed25519" in problem


def _rsa_pem() -> bytes:
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
