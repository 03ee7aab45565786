"""Token enrollment and renewal, decided on the center: one-time tokens, requests waiting
for an operator, and what to answer a certificate request (``edge_agent.contract.csr``).

The CA folder (``central.pki``) keeps them, beside the CA key that signs::

    enroll/tokens/GW.json    a one-time token for gateway GW (``fleet provision GW
                             --token``): its SHA-256 only, when it expires, whether it
                             was used, whether its request waits for an operator
                             (``--review``), and the site, tags and broker of its
                             starter config
    enroll/pending/GW.json   the request of a ``--review`` token: it waits for ``fleet
                             provision approve GW``, never signed by itself

The broker lets a client onto the enrollment listener only as GW's enrollment identity
(``enroll-GW``) with GW's token for password, and the signing service answers only what
came on that identity's topic for GW: a request reaching these rules was sent by someone
holding GW's token. The rules check the token again, in order, for a request of GW:

- GW is a name of the center (``edgefleet-…``, whose certificate the broker's ACL gives
  the center's rights): refused;
- GW has no token (withdrawn by ``fleet revoke``, or the folder's copy lost): refused;
- the request's token is not GW's (compared in constant time): refused;
- the token was used: the same key asking again until the token expires gets the same
  answer (the first one was lost on the way); another key is refused;
- the token expired: refused;
- a ``--review`` token: the request waits as pending (the newest key asking), the answer
  says so with the key's fingerprint, which the operator compares with what the gateway
  printed before ``fleet provision approve GW --key SHA256`` signs it; the request of
  that key after approval gets the certificate, and the token is marked used then;
- otherwise the request is signed, the token marked used (before the answer goes out: a
  second use is refused even if the first answer is lost), and the gateway recorded in
  the registry with its new identity.

A renewal (over the gateway's own certificate, so the broker vouches for the name) is
signed if the gateway is not on the revoked list, has a live identity and the key is
new; the same key again gets the same certificate again (an answer lost on the way), and
a gateway renews at most once per ``RENEW_MIN_INTERVAL_S``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from central.files import PRIVATE, replace
from central.pki import (
    CA_CERT,
    COMMAND_PUB,
    DEFAULT_CERT_DAYS,
    PkiError,
    is_center_name,
    request_key_fingerprint,
    sign_request,
)
from central.revocation import ISSUED_DIR, record_issued, revoked_gateways
from central.store.api import Store
from central.store.rows import Identity
from edge_agent.contract import enrollment
from edge_agent.contract.csr import EnrollRequest, RenewRequest, Reply
from edge_agent.contract.topics import check_gateway_id

log = logging.getLogger(__name__)

TOKENS_DIR = Path("enroll/tokens")
PENDING_DIR = Path("enroll/pending")
FETCHED_DIR = Path("enroll/fetched")
"""Where an earlier release kept approved requests once fetched; ``withdraw`` clears it."""
TOKEN_TTL_S = 7 * 86400
RENEW_MIN_INTERVAL_S = 3600.0
KEY_PREFIX_MIN = 16
"""Hex digits of a key's SHA-256 an operator gives to approve it: 64 bits, which no one
can match with a key of their own."""
KEY_PREFIX = re.compile(rf"[0-9a-f]{{{KEY_PREFIX_MIN},64}}")


class EnrollmentError(Exception):
    """An operator's enrollment command cannot be done; the message says why."""


@dataclass
class TokenRecord:
    gateway: str
    digest: str
    """SHA-256 of the token, hex: the token itself is never kept."""
    expires: float
    site: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    broker: str = ""
    used: float | None = None
    review: bool = False
    """Its request waits for ``fleet provision approve`` (``--review``)."""


@dataclass
class Pending:
    gateway: str
    csr: str
    key_fingerprint: str
    first_seen: float
    last_seen: float
    requests: int = 1
    approved: float | None = None
    cert: str = ""
    site: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    broker: str = ""


def new_token(
    folder: Path,
    gateway: str,
    *,
    site: str = "",
    tags: dict[str, str] | None = None,
    broker: str,
    ttl_s: float = TOKEN_TTL_S,
    review: bool = False,
    token: str | None = None,
    now: float | None = None,
) -> str:
    """A new one-time token for ``gateway`` (one it had before is replaced, and a request
    of it waiting is dropped); the token (``token``, default ``make_token()``), which is
    shown once and kept nowhere."""
    token = make_token() if token is None else token
    now = time.time() if now is None else now
    record = TokenRecord(
        gateway, _digest(token), now + ttl_s, site, dict(tags or {}), broker, review=review
    )
    gw = check_gateway_id(gateway)
    (folder / PENDING_DIR / f"{gw}.json").unlink(missing_ok=True)
    _write(folder / TOKENS_DIR / f"{gw}.json", asdict(record))
    return token


def make_token() -> str:
    """192 random bits, URL-safe (also the enrollment identity's password: no ``:``)."""
    return secrets.token_urlsafe(24)


def live_tokens(folder: Path, now: float | None = None) -> set[str]:
    """The gateways whose token is still good (unexpired; a used one too, for the same
    key asking again): their enrollment identities keep their password lines."""
    now = time.time() if now is None else now
    where = folder / TOKENS_DIR
    out = set()
    for path in sorted(where.glob("*.json")) if where.is_dir() else ():
        try:
            token = _token(path)
        except (EnrollmentError, TypeError):
            continue  # not one of ours: its line is not kept for it
        if token is not None and now <= token.expires:
            out.add(token.gateway)
    return out


def withdraw(folder: Path, gateway: str) -> list[str]:
    """Take back ``gateway``'s token and the request of it that waits (``fleet revoke``):
    made before the revocation, either would enroll a new key after it, and so take the
    gateway off the revoked list. What was taken back: ``token``, ``request``."""
    gw = check_gateway_id(gateway)
    gone = []
    (folder / FETCHED_DIR / f"{gw}.json").unlink(missing_ok=True)
    for what, path in (("token", TOKENS_DIR), ("request", PENDING_DIR)):
        record = _read(folder / path / f"{gw}.json")
        if record is None:
            continue
        (folder / path / f"{gw}.json").unlink(missing_ok=True)
        if what == "request" or record.get("used") is None:
            gone.append(what)
    return gone


def pending(folder: Path) -> list[Pending]:
    """The requests waiting for an operator, oldest first."""
    where = folder / PENDING_DIR
    out = [_pending(p) for p in sorted(where.glob("*.json"))] if where.is_dir() else []
    return sorted((p for p in out if p is not None), key=lambda p: p.first_seen)


def approve(
    folder: Path,
    store: Store,
    gateway: str,
    *,
    key: str,
    site: str = "",
    tags: dict[str, str] | None = None,
    broker: str = "",
    days: int = DEFAULT_CERT_DAYS,
    now: float | None = None,
) -> Pending:
    """Sign gateway ``gateway``'s pending request and record its identity; the gateway
    gets the certificate at its next try. ``key`` is the key's SHA-256 the operator
    compared with what the gateway printed (its first ``KEY_PREFIX_MIN`` hex digits at
    least): whoever holds the token may ask and the newest request waits, so one that
    came after the operator looked is not signed. ``site``, ``tags`` and ``broker``
    default to the token's. ``EnrollmentError`` if none is pending, the one pending is
    for another key, or the token is no longer good."""
    if is_center_name(gateway):
        raise EnrollmentError(f"{gateway!r} is a name of the center, not a gateway's")
    path = folder / PENDING_DIR / f"{check_gateway_id(gateway)}.json"
    record = _pending(path)
    if record is None:
        raise EnrollmentError(f"no request of {gateway} is pending (fleet provision pending)")
    wanted = key.strip().lower()
    if not KEY_PREFIX.fullmatch(wanted):
        raise EnrollmentError(
            f"--key must be the key's sha256 as the gateway printed it "
            f"(at least its first {KEY_PREFIX_MIN} hex digits)"
        )
    if not record.key_fingerprint.startswith(wanted):
        raise EnrollmentError(
            f"the request of {gateway} waiting now is for key sha256 {record.key_fingerprint}, "
            f"not {wanted}: not signing it (a newer request, the gateway's or another's)"
        )
    if record.approved is not None:
        return record
    now = time.time() if now is None else now
    token = _token(folder / TOKENS_DIR / f"{gateway}.json")
    if token is None or token.used is not None or now > token.expires:
        raise EnrollmentError(
            f"{gateway}'s token is gone, used or expired: fleet provision {gateway} --token "
            "makes a new one"
        )
    site, tags, broker = site or token.site, tags or token.tags, broker or token.broker
    issued = _issue(folder, store, gateway, record.csr.encode(), days, site, tags, now)
    record.approved, record.cert = now, issued
    record.site, record.tags, record.broker = site, dict(tags), broker
    _write(path, asdict(record))
    return record


def enroll(
    folder: Path,
    store: Store,
    request: EnrollRequest,
    *,
    days: int = DEFAULT_CERT_DAYS,
    now: float | None = None,
) -> Reply:
    """The answer to an enrollment request (see the module's rules)."""
    now = time.time() if now is None else now
    gw = request.gw
    if is_center_name(gw):
        return Reply(gw, "refused", reason=f"{gw!r} is a name of the center, not a gateway's")
    try:
        fingerprint = request_key_fingerprint(request.csr.encode())
    except PkiError as exc:
        return Reply(gw, "refused", reason=str(exc))
    token_path = folder / TOKENS_DIR / f"{gw}.json"
    token = _token(token_path)
    if token is None:
        return Reply(gw, "refused", reason="no token for this gateway (fleet provision --token)")
    if not hmac.compare_digest(token.digest, _digest(request.token)):
        return Reply(gw, "refused", reason="not this gateway's token")
    if token.used is not None:
        # the same key again, while the token is good: its answer was lost on the way
        again = None if now > token.expires else _issued_for_key(folder, gw, fingerprint)
        if again is not None:
            return _signed(folder, gw, again, token.site, token.tags, token.broker)
        return Reply(gw, "refused", reason="the token was used already: it works once")
    if now > token.expires:
        return Reply(gw, "refused", reason="the token expired (fleet provision GW --token)")
    if token.review:
        pending_path = folder / PENDING_DIR / f"{gw}.json"
        waiting = _pending(pending_path)
        if waiting is None or waiting.approved is None:
            return _wait(pending_path, waiting, request, fingerprint, now)
        if waiting.key_fingerprint != fingerprint:
            return Reply(gw, "refused", reason="approved for another key: ask the operator")
        # what the operator approved is what the same key asking again gets
        token.site, token.tags, token.broker = waiting.site, waiting.tags, waiting.broker
        token.used = now
        _write(token_path, asdict(token))
        pending_path.unlink(missing_ok=True)
        return _signed(folder, gw, waiting.cert, token.site, token.tags, token.broker)
    try:
        cert = _issue(folder, store, gw, request.csr.encode(), days, token.site, token.tags, now)
    except PkiError as exc:
        return Reply(gw, "refused", reason=str(exc))
    token.used = now
    _write(token_path, asdict(token))  # used before anyone hears of the certificate
    return _signed(folder, gw, cert, token.site, token.tags, token.broker)


def renew(
    folder: Path,
    store: Store,
    topic_gateway: str,
    request: RenewRequest,
    *,
    days: int = DEFAULT_CERT_DAYS,
    now: float | None = None,
) -> Reply:
    """The answer to a renewal request that came on ``topic_gateway``'s own topic."""
    now = time.time() if now is None else now
    gw = topic_gateway
    if request.gw != gw:
        return Reply(gw, "refused", reason=f"the request names {request.gw!r}, not {gw!r}")
    try:
        revoked = gw in revoked_gateways(folder)
    except PkiError as exc:  # a list edited by hand: not answered until it is put right
        raise EnrollmentError(str(exc)) from None
    if revoked:
        # fleet revoke writes the CA folder's list before it marks the registry: a
        # renewal in between must not be taken for the gateway provisioned again
        return Reply(gw, "refused", reason="revoked (fleet revoke)")
    live = [i for i in store.identities(gw) if i.revoked is None and i.kind == "certificate"]
    if not live:
        return Reply(gw, "refused", reason="no live identity in the registry (revoked?)")
    try:
        fingerprint = request_key_fingerprint(request.csr.encode())
    except PkiError as exc:
        return Reply(gw, "refused", reason=str(exc))
    again = _issued_for_key(folder, gw, fingerprint)
    if again is not None:
        return Reply(gw, "signed", cert=again)
    if now - max(i.issued for i in live) < RENEW_MIN_INTERVAL_S:
        return Reply(gw, "refused", reason="renewed less than an hour ago")
    try:
        cert = _issue(folder, store, gw, request.csr.encode(), days, None, None, now)
    except PkiError as exc:
        return Reply(gw, "refused", reason=str(exc))
    return Reply(gw, "signed", cert=cert)


def _issue(
    folder: Path,
    store: Store,
    gw: str,
    csr: bytes,
    days: int,
    site: str | None,
    tags: dict[str, str] | None,
    now: float,
) -> str:
    issued = sign_request(folder, gw, csr, days)
    was_revoked = gw in revoked_gateways(folder)
    record_issued(folder, gw, issued.cert_pem)
    if was_revoked:
        log.warning(
            "%s was revoked and has a new certificate now; the broker's ACL still denies it "
            "every topic until it is written again (fleet broker-config --force)",
            gw,
        )
    store.add_identity(
        Identity(gw, "certificate", issued.fingerprint, now, issued.not_after),
        site=site or None,
        tags=tags or None,
    )
    return issued.cert_pem.decode()


def _signed(
    folder: Path, gw: str, cert: str, site: str, tags: dict[str, str], broker: str
) -> Reply:
    files = {
        enrollment.CA_FILE: (folder / CA_CERT).read_text(),
        enrollment.CERT_FILE: cert,
        enrollment.COMMAND_KEY_FILE: (folder / COMMAND_PUB).read_text(),
        enrollment.CONFIG_FILE: enrollment.starter_config(gw, site, tags, broker),
    }
    return Reply(gw, "signed", broker=broker, files=files)


def _wait(
    path: Path,
    waiting: Pending | None,
    request: EnrollRequest,
    fingerprint: str,
    now: float,
) -> Reply:
    gw = request.gw
    if waiting is None:
        waiting = Pending(gw, request.csr, fingerprint, now, now, requests=0)
    if waiting.key_fingerprint != fingerprint:  # a newer request: the newest waits
        waiting.csr, waiting.key_fingerprint = request.csr, fingerprint
    waiting.last_seen, waiting.requests = now, waiting.requests + 1
    _write(path, asdict(waiting))
    return Reply(
        gw,
        "pending",
        reason=f"waiting for an operator: fleet provision approve {gw} (key sha256 {fingerprint})",
    )


def _issued_for_key(folder: Path, gw: str, fingerprint: str) -> str | None:
    """The certificate on record as issued to ``gw`` for the key ``fingerprint``, if any."""
    # cryptography: the center's, loaded with central.pki already
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    where = folder / ISSUED_DIR / gw
    for path in sorted(where.glob("*.pem")) if where.is_dir() else ():
        pem = path.read_bytes()
        key = x509.load_pem_x509_certificate(pem).public_key()
        spki = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if hashlib.sha256(spki).hexdigest() == fingerprint:
            return pem.decode()
    return None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token(path: Path) -> TokenRecord | None:
    obj = _read(path)
    return None if obj is None else TokenRecord(**obj)


def _pending(path: Path) -> Pending | None:
    obj = _read(path)
    return None if obj is None else Pending(**obj)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise EnrollmentError(f"{path} cannot be read: {exc}") from None
    if not isinstance(obj, dict):
        raise EnrollmentError(f"{path} is not a record of this release")
    return obj


def _write(path: Path, obj: dict[str, Any]) -> None:
    """``obj`` into ``path`` by a rename, 0600 (a token's hash is no secret, but the folder
    is the CA's)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    replace(path, json.dumps(obj).encode(), PRIVATE)
