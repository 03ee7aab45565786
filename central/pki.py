"""The fleet's own certificate authority, in one folder (``fleet ca init``), and the
client certificates it issues to gateways (``fleet provision``).

The folder, which ``fleet broker-config`` reads as well::

    ca.crt        the CA certificate (every gateway, the broker and the center trust it)
    ca.key        its key (0600)
    crl.pem       the certificate revocation list, signed by the CA (empty at first)
    broker.crt    the broker's server certificate (names and addresses from options)
    broker.key    (0600)
    center-ca.crt the center's own CA: the broker's listener for the center trusts it alone,
    center-ca.key so that no gateway's certificate gets in there (0600)
    central.crt   the center's MQTT client certificate, CN = edgefleet-central, signed
    central.key   by the center's CA (0600)
    command.key   the center's Ed25519 command-signing key (0600), as ``fleet keys init``
    command.pub   makes it; gateways get the .pub

Keys are EC P-256, certificates X.509 (``cryptography``, imported only here: the ``fleet``
commands that do not use the CA never load it). A private key file is made 0600 before
a byte is written into it, and nothing here overwrites one unless told to (``force``):
``PkiError`` otherwise, as for a folder that is not a CA.

``init_ca`` checks every name and builds every key and certificate in memory before it
writes a byte, then writes each file beside its place and renames them all into it: a
failure leaves the folder as it was (and no folder, if it made it).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from central.files import PRIVATE, PUBLIC, replace_all
from edge_agent.contract.commands import new_key_pair

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
CENTER_CA_CERT = "center-ca.crt"
CENTER_CA_KEY = "center-ca.key"
COMMAND_KEY = "command.key"
COMMAND_PUB = "command.pub"
PRIVATE_FILES = (CA_KEY, CENTER_CA_KEY, BROKER_KEY, CENTRAL_KEY, COMMAND_KEY)

CENTRAL_CN = "edgefleet-central"
"""The center's client certificate's common name: its MQTT username where the broker
takes the certificate's identity as one (``use_identity_as_username``)."""
CENTER_PREFIX = "edgefleet-"
"""Names starting so are the center's (its processes', a watcher's): never a gateway's."""
DEFAULT_BROKER_NAMES = ("localhost",)
DEFAULT_BROKER_IPS = ("127.0.0.1",)
BROKER_CN = "EdgeFleet broker"
"""The broker certificate's common name when its first name is too long for one (a common
name holds 64 characters, a DNS name 253); clients check the names, not the CN."""
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
    broker_cn = broker_names[0] if broker_names and len(broker_names[0]) <= 64 else BROKER_CN
    files = _ca_files(broker_cn, sans, days)
    _write_all(folder, files)
    return [folder / name for name in files]


def _ca_files(broker_cn: str, sans: list[x509.GeneralName], days: int) -> dict[str, bytes]:
    """Every file of a new CA folder by name, in memory (private keys as ``PRIVATE_FILES``
    names them)."""
    now = _now()
    authority = _self_signed("EdgeFleet CA", now, days)
    files = {
        CA_KEY: _key_pem(authority.key),
        CA_CERT: _cert_pem(authority.cert),
        CRL: _empty_crl(authority.cert, authority.key, now, days),
    }
    key = _new_key()
    files[BROKER_KEY] = _key_pem(key)
    broker = authority.issue(broker_cn, key, ExtendedKeyUsageOID.SERVER_AUTH, sans, days)
    files[BROKER_CERT] = _cert_pem(broker)
    files |= _center_files(days, now)
    files[COMMAND_KEY], files[COMMAND_PUB] = new_key_pair()
    return files


def _center_files(days: int, now: datetime.datetime) -> dict[str, bytes]:
    """The center's CA and the center's client certificate it signs."""
    center_ca = _self_signed("EdgeFleet center CA", now, days)
    key = _new_key()
    sans: list[x509.GeneralName] = [x509.DNSName(CENTRAL_CN)]
    cert = center_ca.issue(CENTRAL_CN, key, ExtendedKeyUsageOID.CLIENT_AUTH, sans, days)
    return {
        CENTER_CA_KEY: _key_pem(center_ca.key),
        CENTER_CA_CERT: _cert_pem(center_ca.cert),
        CENTRAL_KEY: _key_pem(key),
        CENTRAL_CERT: _cert_pem(cert),
    }


def add_center_ca(folder: Path, days: int = DEFAULT_CA_DAYS) -> list[Path]:
    """A CA folder made before the center had a CA of its own: the center's CA added and
    the center's certificate issued again under it; the fleet's CA, the broker's files,
    the command key and every gateway's certificate are left as they are. ``PkiError``
    for a folder that is not a fleet CA, or has a center CA already."""
    _Authority.load(folder)
    if (folder / CENTER_CA_CERT).exists():
        raise PkiError(f"{folder} has {CENTER_CA_CERT} already")
    files = _center_files(days, _now())
    replace_all(
        folder,
        {n: (data, PRIVATE if n in PRIVATE_FILES else PUBLIC) for n, data in files.items()},
    )
    return [folder / name for name in files]


def _self_signed(common_name: str, now: datetime.datetime, days: int) -> _Authority:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Authority(cert, key)


def _write_all(folder: Path, files: dict[str, bytes]) -> None:
    """``files`` into ``folder``, all or none: each is written beside its place first (a
    private one 0600 from the start), then all are renamed into place. What is in the way
    and is not a file (a directory) is refused before anything is written."""
    blocked = [n for n in files if (folder / n).exists() and not (folder / n).is_file()]
    if blocked:
        raise PkiError(f"{folder}: {', '.join(blocked)} is there and is not a file; move it away")
    modes = {n: (data, PRIVATE if n in PRIVATE_FILES else PUBLIC) for n, data in files.items()}
    replace_all(folder, modes)


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


def sign_request(
    folder: Path, common_name: str, csr_pem: bytes, days: int = DEFAULT_CERT_DAYS
) -> ClientCertificate:
    """A client certificate for the key of a certificate request (a gateway that made its
    own key: token enrollment, renewal), from the CA in ``folder``. Only the request's key
    is taken: the name is ``common_name``, whatever the request asks for. ``PkiError`` for
    a request that is not one, not signed by its own key, or not of an EC P-256 key."""
    public = _request_key(csr_pem)
    authority = _Authority.load(folder)
    cert = authority.issue(
        common_name, public, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName(common_name)], days
    )
    return ClientCertificate(
        cert_pem=_cert_pem(cert),
        key_pem=b"",
        fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def is_center_name(name: str) -> bool:
    """Whether ``name`` is one of the center's (the broker's ACL gives ``CENTRAL_CN`` the
    center's rights), which no gateway certificate may carry."""
    return name == CENTRAL_CN or name.startswith(CENTER_PREFIX)


def request_key_fingerprint(csr_pem: bytes) -> str:
    """SHA-256 of a request's public key (DER SubjectPublicKeyInfo), hex: what an operator
    compares with what the gateway printed before approving it. ``PkiError``, as from
    ``sign_request``, for a request that could not be signed: it is not left waiting."""
    return hashlib.sha256(_spki(_request_key(csr_pem))).hexdigest()


def _request_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The key of a request that is one, signed by that key, and of an EC P-256 key."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise PkiError("not a PEM certificate request") from None
    if not csr.is_signature_valid:
        raise PkiError("the request is not signed by its own key")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise PkiError("the request's key must be EC P-256")
    return public


def broker_sans(names: Sequence[str], ips: Sequence[str]) -> list[x509.GeneralName]:
    """The broker certificate's subject alternative names; ``PkiError`` for a name or an
    address that is not one, or no name at all."""
    try:
        sans: list[x509.GeneralName] = [x509.DNSName(check_dns_name(n)) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(check_ip(ip))) for ip in ips]
    except ValueError as exc:
        raise PkiError(str(exc)) from None
    if not sans:
        raise PkiError("the broker certificate needs at least one name or IP address")
    return sans


_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)
DNS_NAME_MAX = 253


def check_dns_name(name: str) -> str:
    """``name`` if it is a DNS host name a TLS client can match (RFC 1123 labels of ASCII
    letters, digits and inner hyphens, each at most 63 long, 253 in all), or a wildcard
    ``*.`` before at least two such labels (``*.broker.example``: one label's worth of any
    name, as clients match it); ``ValueError`` saying what is wrong otherwise."""
    shown = repr(name) if len(name) <= 80 else repr(name[:77] + "...")
    if not name:
        raise ValueError("a broker name is empty; give a DNS name (broker.example)")
    if not name.isascii():
        raise ValueError(f"broker name {shown} is not ASCII: give its IDNA form (xn--...) instead")
    if len(name) > DNS_NAME_MAX:
        raise ValueError(f"broker name {shown} is {len(name)} characters; at most 253")
    if _is_ip(name):
        raise ValueError(f"broker name {shown} is an IP address: give it as --broker-ip")
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            raise ValueError(f"broker name {shown}: a wildcard needs two labels after '*.'")
    bad = next((label for label in labels if not _LABEL.fullmatch(label)), None)
    if bad is not None:
        raise ValueError(
            f"broker name {shown} is not a DNS name: label {bad!r} must be 1-63 letters, "
            "digits and inner hyphens"
        )
    return name


def check_ip(text: str) -> str:
    """``text`` if it is an IPv4 or IPv6 address; ``ValueError`` otherwise."""
    if not _is_ip(text):
        raise ValueError(f"broker IP {text!r} is not an IP address")
    return text


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def write_private(path: Path, data: bytes, *, force: bool = False) -> Path:
    """``data`` into ``path``, mode 0600 from the start; ``PkiError`` if it exists and not
    ``force``."""
    if path.exists() and not force:
        raise PkiError(f"{path} exists; not overwriting it (--force does)")
    return _write_private(path, data)


def load_authority(folder: Path) -> _Authority:
    """The CA in ``folder``, its certificate and key; ``PkiError`` if it is not one."""
    return _Authority.load(folder)


def check_broker_files(folder: Path) -> None:
    """What the broker reads of ``folder`` is what it claims: ``ca.crt`` (and
    ``center-ca.crt``) a CA certificate,
    ``broker.crt`` a certificate that CA signed, ``crl.pem`` a CRL it signed; ``PkiError``
    naming the file otherwise. A broker started on any of them wrong would refuse every
    client, or start and trust no one, with a message about TLS, not the file."""
    ca = _load_cert(folder / CA_CERT)
    for name, cert in ((CA_CERT, ca), (CENTER_CA_CERT, _load_cert(folder / CENTER_CA_CERT))):
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise PkiError(f"{folder / name} is a certificate but not a CA's")
    broker = _load_cert(folder / BROKER_CERT)
    try:
        broker.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(
            f"{folder / BROKER_CERT} is not signed by {folder / CA_CERT} (another CA's "
            "certificate: fleet ca init --force makes the folder again)"
        ) from None
    path = folder / CRL
    try:
        crl = x509.load_pem_x509_crl(_read(path))
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate revocation list") from None
    try:
        # a key that cannot sign (X25519) raises TypeError: nothing it signed, either
        signed = crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except TypeError:
        signed = False
    if not signed or crl.issuer != ca.subject:
        raise PkiError(f"{path} is not signed by {folder / CA_CERT}")


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PkiError(f"{path}: cannot be read ({exc.strerror or exc})") from None


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
        key: EllipticCurvePrivateKey | ec.EllipticCurvePublicKey,
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
            .public_key(key if isinstance(key, ec.EllipticCurvePublicKey) else key.public_key())
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
