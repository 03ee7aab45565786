"""Revoking a gateway (``fleet revoke``): its certificates in the CA's CRL, its name denied
everything in the broker's ACL, and a record in the CA folder of what was issued to whom.

The CA folder (``central.pki``) gains::

    issued/GW/SERIAL.pem   every certificate issued to gateway GW (``fleet provision``
                           records it), so that revoking GW finds every serial to list
    revoked.txt            the gateways revoked and not provisioned again, one per line

Why both a CRL and an ACL deny: Mosquitto reads the CRL at each TLS handshake only, so a
revoked gateway's new connections fail but its live session would go on. The ACL, which
Mosquitto re-reads on SIGHUP and checks at every publish and every delivery, denies the
revoked names everything (``topic deny #`` under their ``user`` line: a deny is checked
before any grant, the patterns' too), so the live session can do nothing from the
reload on: each publish gets PUBACK 0x87 and nothing is delivered to it. The center, for
defence in depth, also refuses what a revoked gateway publishes (``central.ingest``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from central.files import replace
from central.pki import BACKDATE, CA_CERT, CRL, PkiError, load_authority
from edge_agent.contract.topics import check_gateway_id

ISSUED_DIR = "issued"
REVOKED_LIST = "revoked.txt"
ACL_MARK = "# --- revoked gateways (fleet revoke): denied everything; nothing below by hand ---"
"""The ACL's last part, below this line, is rewritten by ``fleet revoke``."""


@dataclass(frozen=True, slots=True)
class Revocation:
    gateway: str
    serials: tuple[int, ...]
    """The serials newly on the CRL (none if every one was already, or none is on record)."""
    crl_number: int | None
    """The new CRL's number, if a new one was signed."""


def record_issued(folder: Path, gateway: str, cert_pem: bytes) -> Path:
    """Keep a copy of a certificate issued to ``gateway`` (its serial names the file), and
    take the gateway off the revoked list: a new identity is a gateway provisioned again."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    where = folder / ISSUED_DIR / check_gateway_id(gateway)
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{cert.serial_number:x}.pem"
    replace(path, cert_pem)
    reinstate(folder, gateway)
    return path


def reinstate(folder: Path, gateway: str) -> None:
    """Take ``gateway`` off the revoked list (if it is there): it has a new identity."""
    revoked = revoked_gateways(folder)
    if gateway in revoked:
        _write_revoked(folder, [g for g in revoked if g != gateway])


def revoke(folder: Path, gateway: str, now: datetime.datetime | None = None) -> Revocation:
    """Put every certificate issued to ``gateway`` on the CRL (a new one, signed by the CA,
    its number one more) and the gateway on the revoked list. ``PkiError`` for a folder
    that is not a CA or a CRL the CA did not sign; then nothing changed."""
    check_gateway_id(gateway)
    authority = load_authority(folder)
    crl = _load_crl(folder, authority.cert)
    listed = {entry.serial_number for entry in crl}
    serials = tuple(s for s in issued_serials(folder, gateway) if s not in listed)
    number = None
    if serials:
        now = now or datetime.datetime.now(datetime.UTC)
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
        except x509.ExtensionNotFound:
            number = 2
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(authority.cert.subject)
            .last_update(now - BACKDATE)
            # as long as the CA: a broker refuses every client once the CRL is past it
            .next_update(authority.cert.not_valid_after_utc)
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        for entry in crl:
            builder = builder.add_revoked_certificate(entry)
        for serial in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - BACKDATE)
                .build()
            )
        signed = builder.sign(authority.key, hashes.SHA256())
        replace(folder / CRL, signed.public_bytes(serialization.Encoding.PEM))
    revoked = revoked_gateways(folder)
    if gateway not in revoked:
        _write_revoked(folder, [*revoked, gateway])
    return Revocation(gateway, serials, number)


def issued_serials(folder: Path, gateway: str) -> list[int]:
    """The serials of the certificates on record as issued to ``gateway``."""
    where = folder / ISSUED_DIR / check_gateway_id(gateway)
    if not where.is_dir():
        return []
    serials = []
    for path in sorted(where.glob("*.pem")):
        try:
            serials.append(int(path.stem, 16))
        except ValueError:
            continue  # not one this module wrote
    return serials


def revoked_gateways(folder: Path) -> list[str]:
    """The gateways on the revoked list, in the order they were revoked."""
    try:
        text = (folder / REVOKED_LIST).read_text()
    except FileNotFoundError:
        return []
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            try:
                out.append(check_gateway_id(line))
            except ValueError:  # edited by hand: an id no gateway can have
                raise PkiError(
                    f"{folder / REVOKED_LIST} line {number}: {line[:80]!r} is not a gateway id"
                ) from None
    return out


def acl_denials(gateways: list[str]) -> str:
    """The ACL's last part: each revoked gateway's name denied every topic."""
    lines = [ACL_MARK]
    for gw in gateways:
        lines += [f"user {check_gateway_id(gw)}", "topic deny #"]
    return "\n".join(lines) + "\n"


def with_denials(acl: str, gateways: list[str]) -> str:
    """``acl`` with its last part (below ``ACL_MARK``, if there) made ``acl_denials``."""
    head, mark, _ = acl.partition(ACL_MARK)
    if not mark:
        head = acl if acl.endswith("\n") else acl + "\n"
    return head + acl_denials(gateways)


def update_acl(path: Path, gateways: list[str]) -> None:
    """Rewrite the ACL file at ``path`` (``fleet broker-config`` wrote it) with the denials
    of ``gateways``, in place of the ones it had; atomically, with its mode kept."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PkiError(f"cannot read the broker's ACL {path}: {exc.strerror}") from None
    if "pattern write" not in text:
        raise PkiError(f"{path} is not an ACL fleet broker-config wrote; not changing it")
    replace(path, with_denials(text, gateways).encode(), mode=path.stat().st_mode & 0o777)


def _load_crl(folder: Path, ca: x509.Certificate) -> x509.CertificateRevocationList:
    path = folder / CRL
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror} (fleet ca init makes it)") from None
    except ValueError:
        raise PkiError(f"{path} is not a PEM CRL") from None
    public = ca.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public):
        raise PkiError(f"{path} is not signed by {folder / CA_CERT}; not adding to it")
    return crl


def _write_revoked(folder: Path, gateways: list[str]) -> None:
    text = "# gateways revoked by fleet revoke (fleet provision of one takes it off)\n"
    replace(folder / REVOKED_LIST, (text + "".join(f"{g}\n" for g in gateways)).encode())
