"""Acks signed by the center, so that no other client of the broker can make a gateway
delete its outbox (a lax ACL, a stolen gateway identity, a misconfigured bridge).

A signed ack is the unsigned one (``payloads.encode_ack``) with the gateway it is for and
a signature: ``{gw, stream, telemetry, alarms, sig}``. ``sig`` is Ed25519 by the center's
command key over the canonical JSON of the other four fields, exactly as a command's
(``commands.canonical``): ``gw`` under it, so that an ack seen on one gateway's topic and
published again on another's is refused there; ``stream`` and both lists of ranges under
it, so that none can be changed. One signature per ack message: per gateway and stream
per round at the center.

An ack has no expiry and no nonce: one replayed on its own gateway's topic deletes rows
that the center has already committed, which is what it said the first time.

A gateway with keys (``central.command_key``) takes only acks that verify with one of
them; one without takes unsigned acks (the plain demo) and ignores the signature.

Errors: ``PayloadError`` for an ack that breaks the contract (its shape), ``AckRejected``
for one that keeps it but is not the center's for this gateway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edge_agent.contract.commands import signature, signed_by
from edge_agent.contract.payloads import Ack, ack_from, dumps, loads

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

SIGNED = ("gw", "stream", "telemetry", "alarms")
"""The fields of a signed ack, every one under the signature."""


class AckRejected(ValueError):
    """An ack of the right shape that is not the center's for this gateway: unsigned,
    badly signed (another key, a field changed), or signed for another gateway."""

    def __init__(self, why: str, reason: str) -> None:
        super().__init__(why)
        self.reason = reason
        """One word for the kind of rejection: ``unsigned``, ``signature``, ``gateway``."""


def _body(gw: str, ack: Ack) -> dict[str, Any]:
    return {
        "gw": gw,
        "stream": ack.stream,
        "telemetry": [list(r) for r in ack.telemetry],
        "alarms": [list(r) for r in ack.alarms],
    }


def sign_ack(ack: Ack, gw: str, key: Ed25519PrivateKey) -> bytes:
    """The wire form of ``ack`` for gateway ``gw``, signed with the center's ``key``."""
    body = _body(gw, ack)
    return dumps({**body, "sig": signature(body, key)})


def verify_ack(payload: bytes | bytearray, keys: Sequence[Ed25519PublicKey], gateway: str) -> Ack:
    """The ack, if it is signed by one of ``keys`` for ``gateway``; ``PayloadError`` if it
    breaks the contract, ``AckRejected`` if it is not the center's for this gateway."""
    obj = loads(payload)
    ack = ack_from(obj)  # the shape first: a malformed ack is a bad ack, signed or not
    sig = obj.pop("sig", None)
    if sig is None:
        raise AckRejected("unsigned ack (this gateway takes only signed acks)", "unsigned")
    if not isinstance(sig, str) or set(obj) != set(SIGNED):
        raise AckRejected(
            "a signed ack has exactly gw, stream, telemetry, alarms and sig", "signature"
        )
    if not signed_by(obj, sig, keys):
        raise AckRejected("bad signature (not by the center's key, or altered)", "signature")
    if obj["gw"] != gateway:
        # the center's, but for another gateway: a replay from that gateway's topic
        raise AckRejected(f"signed for gateway {obj['gw']!r}, not this one", "gateway")
    return ack
