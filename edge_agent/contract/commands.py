"""Commands from the center to a gateway: signed (Ed25519), with an expiry, never replayed.

The signature covers the canonical JSON of ``{id, gw, cmd, args, expires}``: keys sorted,
no insignificant whitespace, UTF-8 (RFC 8785 for the values we use: strings, integers,
floats Python prints the shortest way). ``gw`` is the gateway the command is for: a
signed command seen on one gateway's topic (by that gateway, or on a lax broker) and
published again to another's is refused there (``verify(…, gateway=…)``); ``id``, random,
is the nonce the gateway's replay ledger remembers until ``expires``. The reply travels on
the MQTT v5 response topic the command named, with its correlation data.

The gateway trusts one or more public keys (``central.command_key`` names a file of one
or more PEM blocks, ``load_public_keys``): a signature by any of them holds, so that the
center's key can be rotated by giving gateways the new key beside the old one first. The
same keys and the same canonical JSON authenticate acks (``contract/acks.py``).

``cryptography`` is imported only when a key is used: a gateway that takes no commands
does not pay for it.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.host_files import pem_blocks
from edge_agent.contract.payloads import PayloadError, dumps, loads

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

MAX_LIFETIME_S = 24 * 3600
"""A command valid for longer than this is refused: a stolen one must not live for ever."""


class CommandRejected(ValueError):
    """Unsigned, badly signed, expired, replayed or malformed; the message says which."""


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


SIGNED = ("id", "gw", "cmd", "args", "expires")
"""The fields of a command, every one under the signature."""


def signature(body: dict[str, Any], key: Ed25519PrivateKey) -> str:
    """The ``sig`` of ``body``: Ed25519 over its canonical JSON, standard base64."""
    return base64.b64encode(key.sign(canonical(body))).decode()


def signed_by(body: dict[str, Any], sig: str, keys: Sequence[Ed25519PublicKey]) -> bool:
    """Whether ``sig`` is a signature of ``body`` by one of ``keys``."""
    # cryptography loads only where commands are signed or checked
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

    try:
        raw = base64.b64decode(sig, validate=True)
    except ValueError:
        return False
    message = canonical(body)
    for key in keys:
        try:
            key.verify(raw, message)
        except InvalidSignature:
            continue
        return True
    return False


def new_command(gw: str, cmd: str, args: dict[str, Any], ttl_s: float = 60) -> dict[str, Any]:
    """A command for gateway ``gw``, valid for ``ttl_s``."""
    return {
        "id": uuid.uuid4().hex,
        "gw": gw,
        "cmd": cmd,
        "args": args,
        "expires": time.time() + ttl_s,
    }


def sign(command: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    body = {k: command[k] for k in SIGNED}
    return dumps({**body, "sig": signature(body, key)})


def verify(
    payload: bytes | bytearray,
    keys: Sequence[Ed25519PublicKey],
    gateway: str,
    now: float | None = None,
) -> dict[str, Any]:
    """The command, if it is signed by one of ``keys``, its shape and expiry hold and it
    is for ``gateway``; replay is the caller's check."""
    try:
        obj = loads(payload)
    except PayloadError as exc:
        raise CommandRejected(str(exc)) from None
    sig = obj.pop("sig", None)
    if not isinstance(sig, str):
        raise CommandRejected("unsigned command")
    if set(obj) != set(SIGNED):
        raise CommandRejected("a command has exactly id, gw, cmd, args, expires and sig")
    if not signed_by(obj, sig, keys):
        raise CommandRejected("bad signature")
    if not isinstance(obj["id"], str) or not isinstance(obj["cmd"], str):
        raise CommandRejected("id and cmd must be strings")
    if obj["gw"] != gateway:
        # signed, but for another gateway: a replay from its topic
        raise CommandRejected("the command is signed for another gateway, not this one")
    if not isinstance(obj["args"], dict):
        raise CommandRejected("args must be an object")
    expires = obj["expires"]
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        raise CommandRejected("expires must be a number")
    now = time.time() if now is None else now
    if expires < now:
        raise CommandRejected(f"expired {now - expires:.0f} s ago")
    if expires > now + MAX_LIFETIME_S:
        raise CommandRejected("expires too far in the future")
    return obj


def encode_reply(cmd_id: str, ok: bool, result: Any = None, error: str | None = None) -> bytes:
    return dumps({"id": cmd_id, "ok": ok, "result": result, "error": None if ok else error})


def decode_reply(payload: bytes | bytearray) -> dict[str, Any]:
    obj = loads(payload)
    if not isinstance(obj.get("id"), str) or not isinstance(obj.get("ok"), bool):
        raise PayloadError("a reply has id (string) and ok (boolean)")
    return obj


# --- keys --------------------------------------------------------------------------------


def generate_keys(private_path: Path) -> Path:
    """A new Ed25519 key pair: the private key (mode 0600) and ``.pub`` beside it."""
    private_pem, public_pem = new_key_pair()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.touch(mode=0o600)
    private_path.write_bytes(private_pem)
    public_path = private_path.with_suffix(".pub")
    public_path.write_bytes(public_pem)
    return public_path


def new_key_pair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as PEM (PKCS #8, SubjectPublicKeyInfo), in memory: for a
    caller that writes it with other files, all or none (``fleet ca init``)."""
    # cryptography loads only where commands are signed or checked
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def load_private_key(path: Path) -> Ed25519PrivateKey:
    # cryptography loads only where commands are signed or checked
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

    pem = _key_file(path)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # not PEM, encrypted, ...
        raise ValueError(f"{path} is not a PEM private key ({_first_line(exc)})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_keys(path: Path) -> tuple[Ed25519PublicKey, ...]:
    """The Ed25519 public keys in a file of one or more PEM blocks (several while the
    center's key is rotated: the new one beside the old); ``ValueError`` naming the path,
    and the block when there are several, for anything else in it."""
    return parse_public_keys(_key_file(path), str(path))


def parse_public_keys(pem: bytes, where: str) -> tuple[Ed25519PublicKey, ...]:
    """``load_public_keys`` of text already read (an enrollment bundle's ``command.pub``);
    ``where`` names it in messages."""
    # cryptography loads only where commands are signed or checked
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415

    blocks = pem_blocks(pem) or [pem]  # no PEM block at all: cryptography says why
    keys: list[Ed25519PublicKey] = []
    for i, block in enumerate(blocks, 1):
        which = where if len(blocks) == 1 else f"{where} (key {i} of {len(blocks)})"
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"{which} is not a PEM public key ({_first_line(exc)})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{which} is not an Ed25519 public key")
        keys.append(key)
    return tuple(keys)


KEY_FILE_MAX = 64 * 1024
"""An Ed25519 PEM is under 200 bytes: a key file larger than this is some other file."""


def _key_file(path: Path) -> bytes:
    """The bytes of a key file; ``ValueError`` naming the path for one that cannot be read
    (missing, a directory, a device) or is far too large to be a key."""
    try:
        with path.open("rb") as f:
            pem = f.read(KEY_FILE_MAX + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read as a key ({exc.strerror or exc})") from None
    if len(pem) > KEY_FILE_MAX:
        raise ValueError(f"{path} is larger than {KEY_FILE_MAX} bytes: not a key file")
    return pem


def _first_line(exc: Exception) -> str:
    """cryptography's messages run to a paragraph and a link: their first sentence."""
    text = str(exc).strip() or type(exc).__name__
    return text.split(". ")[0].splitlines()[0]
