"""A certificate authority made in the test: a CA, a broker certificate for 127.0.0.1 and
client certificates it signs, as PEM files (``cryptography``, no openssl command); and
``fleet_ca``, the CA folder as ``fleet ca init`` lays it out."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class Authority:
    """A CA in ``folder``: ``ca.pem``, and the certificates it issues beside it."""

    def __init__(self, folder: Path, name: str = "EdgeFleet test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def server(self, name: str = "broker", stem: str | None = None) -> Issued:
        """A server certificate for 127.0.0.1 (and localhost)."""
        sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        return self.issue(name, ExtendedKeyUsageOID.SERVER_AUTH, sans, stem)

    def client(
        self,
        name: str,
        stem: str | None = None,
        folder: Path | None = None,
        validity: tuple[datetime.timedelta, datetime.timedelta] | None = None,
    ) -> Issued:
        """A client certificate whose common name is ``name`` (in ``folder``: the CA's),
        valid from now + ``validity[0]`` to now + ``validity[1]`` (default: -5 min, 1 day)."""
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
        return self.issue(name, usage, [x509.DNSName(name)], stem, folder, validity)

    def write_key(self, path: Path) -> None:
        """The CA's private key, PEM, mode 0600."""
        path.write_bytes(_private_pem(self._key))
        path.chmod(0o600)

    def write_crl(self, path: Path, revoked: tuple[Issued, ...] = (), number: int = 1) -> None:
        """A CRL signed by the CA that revokes ``revoked`` (by default nothing)."""
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._name)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(now + datetime.timedelta(days=1))
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        for issued in revoked:
            serial = x509.load_pem_x509_certificate(issued.cert.read_bytes()).serial_number
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(self._key, hashes.SHA256())
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
        stem: str | None = None,
        folder: Path | None = None,
        validity: tuple[datetime.timedelta, datetime.timedelta] | None = None,
    ) -> Issued:
        """A certificate for ``name``: ``<stem>.pem`` and ``<stem>.key`` (stem: the name),
        or ``<stem>.crt`` when the stem is given, as the fleet's CA folder names them."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start, end = validity or (datetime.timedelta(minutes=-5), datetime.timedelta(days=1))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + start)
            .not_valid_after(now + end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        base = (folder or self.folder) / (stem or name)
        suffix = ".crt" if stem else ".pem"
        issued = Issued(base.with_name(base.name + suffix), base.with_name(base.name + ".key"))
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(_private_pem(key))
        issued.key.chmod(0o600)
        return issued


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


CENTRAL = "edgefleet-central"


@dataclass(frozen=True)
class FleetCa:
    """A CA folder as ``fleet ca init`` makes it: ``ca.crt``, ``ca.key``, ``crl.pem``,
    ``broker.crt``/``broker.key`` (127.0.0.1), ``central.crt``/``central.key`` (CN
    ``edgefleet-central``), ``command.key``/``command.pub`` (Ed25519); its ``authority``
    issues gateways' certificates (``gateway``) outside it."""

    folder: Path
    authority: Authority
    broker: Issued
    central: Issued

    def gateway(self, gw: str, folder: Path) -> Issued:
        """Gateway ``gw``'s client certificate (CN = its id), ``folder/<gw>.pem`` and key."""
        folder.mkdir(parents=True, exist_ok=True)
        return self.authority.client(gw, folder=folder)


def fleet_ca(folder: Path) -> FleetCa:
    # the command key is the center's, made as `fleet keys init` makes it
    from edge_agent.contract.commands import generate_keys  # noqa: PLC0415

    ca = Authority(folder, "EdgeFleet fleet CA")
    ca.ca_file = ca.ca_file.rename(folder / "ca.crt")
    ca.write_key(folder / "ca.key")
    ca.write_crl(folder / "crl.pem")
    broker = ca.server("broker", stem="broker")
    # the center's own CA, which alone the center's listener trusts, signs the center's
    center_ca = Authority(folder / "center-ca", "EdgeFleet center CA")
    center_ca.ca_file.rename(folder / "center-ca.crt")
    center_ca.write_key(folder / "center-ca.key")
    central = center_ca.client(CENTRAL, stem="central", folder=folder)
    generate_keys(folder / "command.key")
    return FleetCa(folder, ca, broker, central)
