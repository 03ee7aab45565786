"""The fleet's own certificate authority, in one folder (``fleet ca init``), and the
client certificates it issues to gateways (``fleet provision``).

The folder, which ``fleet broker-config`` reads as well::

    ca.crt        the CA certificate (every gateway, the broker and the center trust it)
    ca.key        its key (0600)
    crl.pem       the certificate revocation list, signed by the CA (empty at first)
    broker.crt    the broker's server certificate (names and addresses from options)
    broker.key    (0600)
    central.crt   the center's MQTT client certificate, CN = edgefleet-central
    central.key   (0600)
    command.key   the center's Ed25519 command-signing key (0600), as ``fleet keys init``
    command.pub   makes it; gateways get the .pub

Keys are EC P-256, certificates X.509 (``cryptography``, imported only here: the ``fleet``
commands that do not use the CA never load it). A private key file is made 0600 before
a byte is written into it, and nothing here overwrites one unless told to (``force``):
``PkiError`` otherwise, as for a folder that is not a CA.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.contract.commands import generate_keys

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CRL = "crl.pem"
BROKER_CERT = "broker.crt"
BROKER_KEY = "broker.key"
CENTRAL_CERT = "central.crt"
CENTRAL_KEY = "central.key"
COMMAND_KEY = "command.key"
COMMAND_PUB = "command.pub"
PRIVATE_FILES = (CA_KEY, BROKER_KEY, CENTRAL_KEY, COMMAND_KEY)

CENTRAL_CN = "edgefleet-central"
"""The center's client certificate's common name: its MQTT username where the broker
takes the certificate's identity as one (``use_identity_as_username``)."""
DEFAULT_BROKER_NAMES = ("localhost",)
DEFAULT_BROKER_IPS = ("127.0.0.1",)
DEFAULT_CA_DAYS = 3650
DEFAULT_CERT_DAYS = 825
BACKDATE = datetime.timedelta(minutes=5)
"""Certificates start a little in the past: a gateway whose clock lags still accepts them."""


class PkiError(Exception):
    """A CA folder that cannot be made or used; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A client certificate just issued, its key, and what the registry keeps of it."""

    cert_pem: bytes
    key_pem: bytes
    fingerprint: str
    """SHA-256 of the certificate's DER, lower-case hex."""
    not_before: float
    not_after: float


def init_ca(
    folder: Path,
    *,
    broker_names: Sequence[str] = DEFAULT_BROKER_NAMES,
    broker_ips: Sequence[str] = DEFAULT_BROKER_IPS,
    days: int = DEFAULT_CA_DAYS,
    force: bool = False,
) -> list[Path]:
    """Make the whole folder (see the module's docstring); the files written."""
    sans = broker_sans(broker_names, broker_ips)
    existing = [name for name in PRIVATE_FILES if (folder / name).exists()]
    if existing and not force:
        raise PkiError(
            f"{folder} already holds {', '.join(existing)}; not overwriting keys the fleet "
            "trusts (--force replaces them, and every gateway must then be enrolled again)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    now = _now()
    ca_key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "EdgeFleet CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    written = [
        _write_private(folder / CA_KEY, _key_pem(ca_key)),
        _write_public(folder / CA_CERT, _cert_pem(ca_cert)),
        _write_public(folder / CRL, _empty_crl(ca_cert, ca_key, now, days)),
    ]
    authority = _Authority(ca_cert, ca_key)
    broker_cn = broker_names[0] if broker_names else "broker"
    central_sans: list[x509.GeneralName] = [x509.DNSName(CENTRAL_CN)]
    for cert_name, key_name, cn, usage, alt in (
        (BROKER_CERT, BROKER_KEY, broker_cn, ExtendedKeyUsageOID.SERVER_AUTH, sans),
        (CENTRAL_CERT, CENTRAL_KEY, CENTRAL_CN, ExtendedKeyUsageOID.CLIENT_AUTH, central_sans),
    ):
        key = _new_key()
        cert = authority.issue(cn, key, usage, alt, days)
        written.append(_write_private(folder / key_name, _key_pem(key)))
        written.append(_write_public(folder / cert_name, _cert_pem(cert)))
    command_key = folder / COMMAND_KEY
    command_key.unlink(missing_ok=True)  # generate_keys makes it 0600 only when new
    written += [command_key, generate_keys(command_key)]
    return written


def issue_client(
    folder: Path, common_name: str, days: int = DEFAULT_CERT_DAYS
) -> ClientCertificate:
    """A new key and a client certificate (CN and DNS name ``common_name``) from the CA in
    ``folder``; nothing is written."""
    authority = _Authority.load(folder)
    key = _new_key()
    cert = authority.issue(
        common_name, key, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName(common_name)], days
    )
    return ClientCertificate(
        cert_pem=_cert_pem(cert),
        key_pem=_key_pem(key),
        fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def broker_sans(names: Sequence[str], ips: Sequence[str]) -> list[x509.GeneralName]:
    """The broker certificate's subject alternative names; ``PkiError`` for an address
    that is not one, or no name at all."""
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    for ip in ips:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PkiError(f"--broker-ip {ip!r} is not an IP address") from None
    if not sans:
        raise PkiError("the broker certificate needs at least one name or IP address")
    return sans


def write_private(path: Path, data: bytes, *, force: bool = False) -> Path:
    """``data`` into ``path``, mode 0600 from the start; ``PkiError`` if it exists and not
    ``force``."""
    if path.exists() and not force:
        raise PkiError(f"{path} exists; not overwriting it (--force does)")
    return _write_private(path, data)


def load_authority(folder: Path) -> _Authority:
    """The CA in ``folder``, its certificate and key; ``PkiError`` if it is not one."""
    return _Authority.load(folder)


class _Authority:
    def __init__(self, cert: x509.Certificate, key: EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def load(cls, folder: Path) -> _Authority:
        try:
            cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), None)
        except OSError as exc:
            raise PkiError(
                f"{folder} is not a fleet CA ({exc.filename}: {exc.strerror}; "
                "fleet ca init makes one)"
            ) from None
        except (ValueError, TypeError) as exc:
            raise PkiError(f"{folder}: the CA certificate or key cannot be read ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{folder / CA_KEY} is not an EC private key")
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise PkiError(f"{folder / CA_KEY} is not the key of {folder / CA_CERT}")
        return cls(cert, key)

    def issue(
        self,
        common_name: str,
        key: EllipticCurvePrivateKey,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
        days: int,
    ) -> x509.Certificate:
        now = _now()
        not_after = min(now + datetime.timedelta(days=days), self.cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )


def _empty_crl(
    cert: x509.Certificate, key: EllipticCurvePrivateKey, now: datetime.datetime, days: int
) -> bytes:
    # the CRL is good as long as the CA: a broker that checks CRLs refuses every client
    # once the CRL is past its next update (fleet revoke signs a new one)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + datetime.timedelta(days=days))
        .add_extension(x509.CRLNumber(1), critical=False)
        .sign(key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,  # ECDHE in TLS 1.2 with an EC certificate
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> Path:
    # 0600 before the key is in it; an existing file (force) is made 0600 too
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)
        f.write(data)
    return path


def _write_public(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o644)
    return path
