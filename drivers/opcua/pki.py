"""The agent's OPC-UA identity and its trust list of server certificates (``cryptography`` only).

Layout under ``pki_dir``::

    own/cert.der            the agent's application instance certificate (give it to the
    own/private/key.pem     server's administrator); generated on first use if absent
    trusted/                server certificates (or the CAs that issued them) the agent trusts
    rejected/               server certificates seen but not trusted; move one to trusted/

The trust list is read again at every connection attempt, so moving a certificate from
``rejected/`` to ``trusted/`` takes effect at the next retry, without a restart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import OpcUaConnection

CERT_DAYS = 5 * 365
"""Validity of a generated certificate. A server trusts one certificate; a short validity
would silently break the link on the day it runs out, so it is long, and the agent warns
30 days before the end."""
EXPIRY_WARNING = dt.timedelta(days=30)


class PkiError(Exception):
    """A certificate problem. ``reason`` is short (for readings), the message actionable."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    cert: Path
    key: Path
    application_uri: str
    expires: dt.datetime
    generated: bool = False


def default_application_uri() -> str:
    return f"urn:edgefleet:agent:{socket.gethostname()}"


def agent_identity(conn: OpcUaConnection) -> Identity:
    """The agent's certificate and key: as configured, or under ``pki_dir/own``, made if absent.

    The client's application URI is taken from the certificate (it must match the URI in
    the certificate, or servers refuse the session), so a configured certificate works
    whatever URI it was issued for.
    """
    generated = False
    if conn.certificate is not None:
        cert_path, key_path = conn.certificate.cert, conn.certificate.key
        for path in (cert_path, key_path):
            if not path.is_file():
                raise PkiError(f"certificate file {path} not found", "certificate file missing")
    else:
        own = conn.pki_dir / "own"
        cert_path, key_path = own / "cert.der", own / "private" / "key.pem"
        if cert_path.exists() and not key_path.exists():
            raise PkiError(
                f"the agent's certificate {cert_path} has no private key at {key_path}; "
                "delete the certificate to generate a new pair (the server must then trust "
                "the new one)",
                "private key missing",
            )
        if not cert_path.exists():
            uri = conn.application_uri or default_application_uri()
            generate(cert_path, key_path, uri, socket.gethostname())
            generated = True
    cert = load_certificate(cert_path.read_bytes())
    uris = _uris(cert)
    if not uris:
        raise PkiError(
            f"{cert_path} has no application URI (a URI in subjectAltName); OPC-UA needs one",
            "certificate without application URI",
        )
    if conn.application_uri is not None and conn.application_uri not in uris:
        raise PkiError(
            f"{cert_path} is issued for {uris[0]}, not for application_uri "
            f"{conn.application_uri}; remove application_uri or use a matching certificate",
            "application URI mismatch",
        )
    expires = cert.not_valid_after_utc
    if expires < dt.datetime.now(dt.UTC):
        raise PkiError(
            f"the agent's certificate {cert_path} expired on {expires:%Y-%m-%d}; "
            + (
                "delete it and its key to generate a new one, then give the new certificate "
                "to the server's administrator"
                if conn.certificate is None
                else "install a renewed certificate"
            ),
            "agent certificate expired",
        )
    return Identity(cert_path, key_path, conn.application_uri or uris[0], expires, generated)


def expires_soon(identity: Identity) -> bool:
    return identity.expires - dt.datetime.now(dt.UTC) < EXPIRY_WARNING


def generate(
    cert_path: Path, key_path: Path, uri: str, hostname: str, *, server: bool = False
) -> None:
    """A self-signed OPC-UA application instance certificate (Part 6, 6.2.2) and its key.

    An existing key is reused, so regenerating an expired certificate keeps the key.
    """
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise PkiError(f"{key_path} is not an RSA key", "private key not RSA")
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            key_path.parent.chmod(0o700)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"EdgeFleet {'server' if server else 'agent'}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EdgeFleet"),
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, hostname),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate a server clock a bit behind
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(uri), x509.DNSName(hostname)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))


def load_certificate(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(first_certificate(data))


def first_certificate(der: bytes) -> bytes:
    """The first certificate of a DER chain (servers may send theirs with its issuers)."""
    if len(der) > 4 and der[0] == 0x30 and der[1] == 0x82:
        return der[: int.from_bytes(der[2:4], "big") + 4]
    return der


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 of the DER form: what OPC-UA tools show as a certificate's thumbprint."""
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def _can_issue(ca: x509.Certificate, now: dt.datetime) -> bool:
    """A CA certificate valid now, marked as a CA, and (if it says) allowed to sign."""
    if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
        return False
    try:
        if not ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "unnamed"


class TrustList:
    """Server certificates the agent trusts (``trusted/``) and those it has turned down."""

    def __init__(self, pki_dir: Path) -> None:
        self.trusted_dir = pki_dir / "trusted"
        self.rejected_dir = pki_dir / "rejected"

    def check(self, der: bytes) -> None:
        """Return if the server certificate ``der`` is trusted; else file it and say so."""
        cert = load_certificate(der)
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise PkiError(
                f"the server's certificate ({_common_name(cert)}) is valid from "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now: renew it on the "
                "server (or set the clock right, on whichever side is wrong)",
                "server certificate expired",
            )
        if self._trusted(cert, now):
            return
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        self.trusted_dir.mkdir(parents=True, exist_ok=True)
        cn = _common_name(cert)
        thumb = thumbprint(cert)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", cn).strip("_") or "server"
        path = self.rejected_dir / f"{safe}_{thumb[:16]}.der"
        path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        raise PkiError(
            f"the agent does not trust the server's certificate ({cn}, SHA-1 {thumb}); "
            f"it was saved as {path}: if this is the right server, move it to "
            f"{self.trusted_dir}/ (the agent picks it up at its next attempt)",
            "server certificate not trusted",
        )

    def _trusted(self, cert: x509.Certificate, now: dt.datetime) -> bool:
        """Pinned (the very certificate is in ``trusted/``), or directly issued by a CA
        there that is valid now and allowed to sign certificates."""
        if not self.trusted_dir.is_dir():
            return False
        wanted = cert.public_bytes(serialization.Encoding.DER)
        for path in sorted(self.trusted_dir.iterdir()):
            if path.suffix.lower() not in (".der", ".pem", ".crt", ".cer"):
                continue
            try:
                known = load_certificate(path.read_bytes())
            except (OSError, ValueError):
                continue  # a stray file is not a certificate we trust
            if known.public_bytes(serialization.Encoding.DER) == wanted:
                return True
            if known.subject == cert.issuer and known.subject != cert.subject:
                if not _can_issue(known, now):
                    continue
                try:
                    cert.verify_directly_issued_by(known)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                return True
        return False
