"""Rotating the center's signing key (``fleet keys rotate``) without re-enrolling a gateway.

Gateways accept a signature by any key in their ``central.command_key`` file (one or more
PEM public keys), so a rotation is two steps, with the gateways' files updated between:

1. ``begin``: a new key pair beside the current one (``KEY.next``, 0600), and ``KEY.pub``
   made to hold both public keys, the current one first. The center still signs with
   the current key; give the new ``KEY.pub`` to every gateway (a config update, or a new
   bundle), which then accepts both.
2. ``finish``: the new key becomes ``KEY`` (the old one is kept as ``KEY.old``, 0600,
   until ``--forget-old``), and the center signs with it from its next start. ``KEY.pub``
   keeps both, so that a gateway not yet updated with it still takes both keys' acks and
   commands... until the old key is forgotten: then ``KEY.pub`` holds the new one alone.

The command key, the CA and (later) the release key are separate files: rotating one
touches nothing of the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from central.files import replace
from drivers.host_files import pem_blocks
from edge_agent.contract.commands import load_private_key, new_key_pair


class RotationError(Exception):
    """The rotation cannot be done now; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Rotation:
    key: Path
    public: Path
    keys_in_public: int


def next_path(key: Path) -> Path:
    return key.with_name(key.name + ".next")


def old_path(key: Path) -> Path:
    return key.with_name(key.name + ".old")


def public_path(key: Path) -> Path:
    return key.with_suffix(".pub")


def begin(key: Path) -> Rotation:
    """Step 1; ``RotationError`` if a rotation is under way already or ``key`` is none."""
    _current(key)
    current_pub = _public_of(key)
    if next_path(key).exists():
        if _next_public(key) not in public_path(key).read_bytes():
            # a stop after the new key was written, before KEY.pub was: this step again
            replace(public_path(key), current_pub + _next_public(key), 0o644)
            return Rotation(key, public_path(key), 2)
        raise RotationError(
            f"a rotation is under way ({next_path(key)} exists): fleet keys rotate --finish"
        )
    private_pem, public_pem = new_key_pair()
    replace(next_path(key), private_pem, 0o600)
    replace(public_path(key), current_pub + public_pem, 0o644)
    return Rotation(key, public_path(key), 2)


def finish(key: Path, *, forget_old: bool = False) -> Rotation:
    """Step 2: the new key in ``key``'s place. Two renames; a stop between them leaves no
    ``KEY``, only ``KEY.old`` and ``KEY.next``, and ``finish`` again completes them."""
    new = next_path(key)
    if not key.exists() and new.exists() and old_path(key).exists():
        load_private_key(new)
        os.replace(new, key)  # the second rename of a finish a stop cut
        return finish(key, forget_old=True) if forget_old else _rotation(key)
    _current(key)
    if new.exists():
        # a damaged file stops here, before anything moves; and so does a new key the
        # gateways were never given (a stop in the first step before KEY.pub was written)
        if _next_public(key) not in public_path(key).read_bytes():
            raise RotationError(
                f"{public_path(key)} does not hold the new key's public key: the gateways "
                f"were not given it. fleet keys rotate --key {key} writes it, then give it "
                "to every gateway"
            )
        os.replace(key, old_path(key))
        os.replace(new, key)
    elif not forget_old:
        raise RotationError(f"no rotation under way: fleet keys rotate begins one for {key}")
    if forget_old:
        old_path(key).unlink(missing_ok=True)
        replace(public_path(key), _public_of(key), 0o644)
        return Rotation(key, public_path(key), 1)
    return _rotation(key)


def _rotation(key: Path) -> Rotation:
    blocks = pem_blocks(public_path(key).read_bytes())
    return Rotation(key, public_path(key), len(blocks))


def forget(key: Path) -> Rotation:
    """After step 2: the old key deleted, and ``KEY.pub`` the current key's alone.
    ``RotationError`` while a rotation is only begun: the new key is not signing yet, and
    forgetting now would make it sign alone before the gateways were given it (``finish``
    with ``forget_old`` does both steps, when that is meant)."""
    _current(key)
    if next_path(key).exists():
        raise RotationError(
            f"a rotation is under way ({next_path(key)} exists): fleet keys rotate --finish "
            "first, once every gateway has the .pub that holds both keys"
        )
    return finish(key, forget_old=True)


def _current(key: Path) -> None:
    try:
        load_private_key(key)
    except ValueError as exc:
        raise RotationError(f"{exc} (fleet keys init makes one)") from None


def _next_public(key: Path) -> bytes:
    try:
        return _public_of(next_path(key))
    except ValueError as exc:
        raise RotationError(f"{exc}: delete it and begin again") from None


def _public_of(key: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    return (
        load_private_key(key)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
