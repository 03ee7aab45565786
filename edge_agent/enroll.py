"""``edge-agent enroll``: an enrollment bundle (``edge_agent.contract.enrollment``)
installed into the gateway's config folder.

Nothing is written unless all of it can be: a folder that holds any of the bundle's files
already (another enrollment's key, an edited config) is refused, unless ``force``; the
bundle's config must pass the schema pass first, and its files must be what they are named
(``check_identity``: a CA certificate, a certificate that CA signed for this gateway, the
key of that certificate, an Ed25519 public key; for a ``password`` bundle, a password as
``fleet provision --password`` makes it, and a config that logs in as the gateway with
it), so a bundle that was damaged, edited or mixed up with another gateway's installs
nothing. The key (or the password file) is 0600 from the moment it exists (given to the
agent's user with ``owner``: the shipped systemd unit runs it as ``edgefleet``, and a key
root owns it could not read); the rest 0644.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.config.loader import ConfigError, parse_config
from edge_agent.contract.commands import parse_public_keys
from edge_agent.contract.enrollment import (
    CA_FILE,
    CERT_FILE,
    COMMAND_KEY_FILE,
    CONFIG_FILE,
    KEY_FILE,
    PASSWORD,
    PASSWORD_FILE,
    PASSWORD_TEXT,
    PRIVATE,
    Bundle,
    BundleError,
)
from edge_agent.contract.topics import is_gateway_id

if TYPE_CHECKING:
    from cryptography import x509


class EnrollError(Exception):
    """The bundle cannot be installed; the message says why."""


def read_bundle(path: Path) -> Bundle:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EnrollError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        bundle = Bundle.decode(data)
    except BundleError as exc:
        raise EnrollError(f"{path}: {exc}") from None
    if not is_gateway_id(bundle.gateway):
        raise EnrollError(f"{path}: {bundle.gateway!r} is not a gateway id")
    return bundle


def install(
    bundle: Bundle, folder: Path, *, force: bool = False, owner: str | None = None
) -> list[Path]:
    """The bundle's files written into ``folder`` (made if missing); the paths written.
    ``owner``: the user the agent runs as, given the key or the password file (it alone
    may read it)."""
    ids = _user(owner) if owner is not None else None
    targets = [folder / name for name in bundle.names]
    check_destination(folder, bundle.names, force=force)
    check_identity(bundle)
    try:
        config = parse_config(bundle.files[CONFIG_FILE], f"the bundle's {CONFIG_FILE}", folder)
    except ConfigError as exc:
        raise EnrollError(f"the bundle's {CONFIG_FILE} is not a valid config: {exc}") from None
    if bundle.kind == PASSWORD and (
        config.central.username != bundle.gateway
        or config.central.password_file != folder / PASSWORD_FILE
    ):
        raise EnrollError(
            f"the bundle's {CONFIG_FILE} does not log in as gateway {bundle.gateway!r} with "
            f"its {PASSWORD_FILE}"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path in targets:
            private = path.name in PRIVATE
            _write(path, bundle.files[path.name].encode(), 0o600 if private else 0o644)
            if private and ids is not None:
                os.chown(path, *ids, follow_symlinks=False)
    except OSError as exc:
        raise EnrollError(f"cannot write into {folder}: {exc.strerror or exc}") from None
    return targets


def check_destination(folder: Path, names: Iterable[str], *, force: bool) -> None:
    """``EnrollError`` if ``folder`` holds one of ``names`` and ``force`` is not given:
    said by ``install``, and before a token is spent on an answer it would not write."""
    present = [n for n in names if (folder / n).exists() or (folder / n).is_symlink()]
    if present and not force:
        raise EnrollError(
            f"{folder} already holds {', '.join(present)}; not overwriting them "
            "(--force does, for a gateway enrolled again)"
        )


def check_identity(bundle: Bundle) -> None:
    """The bundle's certificates and keys are what their names say, and belong together:
    ``ca.crt`` a CA certificate, ``gateway.crt`` a certificate that CA signed whose common
    name is the bundle's gateway (the broker takes it as the gateway's identity),
    ``gateway.key`` that certificate's key, ``command.pub`` an Ed25519 public key; in a
    ``password`` bundle, ``gateway.pass`` one line of a password (``PASSWORD_TEXT``) in
    place of the certificate and key. ``EnrollError`` saying which is wrong otherwise: an
    agent started on any of them would fail at the broker, or refuse every command, far
    from the cause."""
    # cryptography loads for enroll only: the agent's other commands do not pay for it
    from cryptography import x509  # noqa: PLC0415

    ca = _certificate(bundle, CA_FILE)
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise EnrollError(f"the bundle's {CA_FILE} is a certificate but not a CA's")
    if bundle.kind == PASSWORD:
        _check_password(bundle)
    else:
        _check_certificate(bundle, ca)
    try:
        parse_public_keys(
            bundle.files[COMMAND_KEY_FILE].encode(), f"the bundle's {COMMAND_KEY_FILE}"
        )
    except ValueError as exc:
        raise EnrollError(str(exc)) from None


def _check_password(bundle: Bundle) -> None:
    text = bundle.files[PASSWORD_FILE]
    if not text.endswith("\n") or PASSWORD_TEXT.fullmatch(text[:-1]) is None:
        raise EnrollError(
            f"the bundle's {PASSWORD_FILE} is not one line of a password as fleet provision "
            "--password makes it (22 or more letters, digits, - and _)"
        )


def _check_certificate(bundle: Bundle, ca: x509.Certificate) -> None:
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    cert = _certificate(bundle, CERT_FILE)
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [bundle.gateway]:
        shown = ", ".join(repr(n) for n in names) or "none"
        raise EnrollError(
            f"the bundle's {CERT_FILE} is for {shown}, not gateway {bundle.gateway!r}"
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise EnrollError(f"the bundle's {CERT_FILE} is not signed by its {CA_FILE}") from None
    _check_key(bundle, cert)


def _certificate(bundle: Bundle, name: str) -> x509.Certificate:
    from cryptography import x509  # noqa: PLC0415

    try:
        return x509.load_pem_x509_certificate(bundle.files[name].encode())
    except ValueError:
        raise EnrollError(f"the bundle's {name} is not a PEM certificate") from None


def _check_key(bundle: Bundle, cert: x509.Certificate) -> None:
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    try:
        key = serialization.load_pem_private_key(bundle.files[KEY_FILE].encode(), None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # not PEM, encrypted, unknown
        raise EnrollError(
            f"the bundle's {KEY_FILE} is not an unencrypted PEM private key"
        ) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise EnrollError(f"the bundle's {KEY_FILE} is not the key of its {CERT_FILE}")


def _user(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise EnrollError(f"no user {name!r} on this host (--owner)") from None
    return entry.pw_uid, entry.pw_gid


def _write(path: Path, data: bytes, mode: int) -> None:
    # a symlink left in the folder is replaced, never followed; the mode is set before
    # the key is in the file
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)
        f.write(data)
