"""Certificates expire; gateways must not. The agent renews its client certificate in band,
before it expires: a new key made here, its request on the gateway's own ``csr`` topic,
the center's answer on its ``cert`` topic (``edge_agent.contract.csr``), and the files
the config names swapped for the new ones.

Nothing stops meanwhile: the session goes on with the files it connected with (the new
ones are read at the next connect: ``mqttlink.url.Broker`` reads them at each), and every
reading stays in the outbox until acked, as always. The swap is two renames, the key's
then the certificate's, each of a file written and synced beside its place; a power cut
between them leaves the new key with the old certificate, which ``finish_swap`` (run
before the config's files are checked at start) puts right from the ``.new`` file left.

An answer is taken only if it is for the key made here, names this gateway, and is
signed by the CA the gateway trusts the broker by; anything else is logged and dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_agent.contract.csr import (
    CsrError,
    RenewRequest,
    Reply,
    certificate_topic,
    renewal_topic,
)
from edge_agent.contract.topics import Topics
from edge_agent.enroll_token import NewKey, new_key
from edge_agent.uplink import Inbound

log = logging.getLogger(__name__)

CHECK_S = 3600.0
"""How often the certificate's expiry is looked at, at most."""
ANSWER_S = 60.0
"""How long an answer is waited for before the request is sent again."""
REFUSED_RETRY_S = 3600.0


class RenewalUplink(Protocol):
    connected: asyncio.Event

    def subscribe(self, topic: str, handler: Callable[[Inbound], None]) -> None: ...

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> bool: ...


@dataclass(frozen=True, slots=True)
class CertFiles:
    cert: Path
    key: Path
    ca: Path | None


class Renewer:
    def __init__(
        self,
        *,
        gateway: str,
        topics: Topics,
        uplink: RenewalUplink,
        files: CertFiles,
        renew_before_s: float,
    ) -> None:
        self.gateway = gateway
        self.topics = topics
        self.files = files
        self.renew_before_s = renew_before_s
        self.renewed = 0
        self.refused = 0
        self._uplink = uplink
        self._key: NewKey | None = None
        self._answer: asyncio.Future[Reply] | None = None
        uplink.subscribe(certificate_topic(topics, gateway), self._received)

    async def run(self) -> None:
        while True:
            wait = self.due_in()
            if wait > 0:
                await asyncio.sleep(min(wait, CHECK_S))
                continue
            await self._uplink.connected.wait()
            outcome = await self.renew_once()
            if outcome == "refused":
                await asyncio.sleep(REFUSED_RETRY_S)

    def due_in(self) -> float:
        """Seconds until the certificate should be renewed (0: now): ``renew_before_s``
        before it expires, or half its life before if that is later. A certificate that
        lasts less than ``renew_before_s`` (``fleet provision --days 7``, and the default
        30 days) would otherwise be due again the moment it is renewed: a new certificate
        an hour, for ever, from every gateway."""
        validity = _validity(self.files.cert)
        if validity is None:
            return CHECK_S  # unreadable now: the host pass said so at start; look again
        starts, expires = validity
        before = min(self.renew_before_s, (expires - starts) / 2)
        return max(0.0, expires - before - time.time())

    async def renew_once(self) -> str:
        """Ask once, wait ``ANSWER_S``: ``renewed``, ``refused`` or ``no answer``."""
        if self._key is None:
            # made off the event loop: key generation is quick, but the loop runs polls
            self._key = await asyncio.to_thread(new_key, self.gateway)
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        request = RenewRequest(self.gateway, self._key.csr_pem)
        self._uplink.publish(renewal_topic(self.topics, self.gateway), request.encode())
        try:
            reply = await asyncio.wait_for(self._answer, ANSWER_S)
        except TimeoutError:
            log.warning("no answer to the certificate renewal in %g s; asking again", ANSWER_S)
            return "no answer"
        finally:
            self._answer = None
        if reply.status != "signed":
            self.refused += 1
            log.warning("the center refused to renew the certificate: %s", reply.reason)
            return "refused"
        key = self._key
        try:
            await asyncio.to_thread(self._install, reply.cert, key)
        except (OSError, ValueError) as exc:
            log.error("the renewed certificate cannot be installed: %s", exc)
            return "refused"
        self._key = None
        self.renewed += 1
        log.info("certificate renewed: %s now valid until %s", self.files.cert, _day(reply.cert))
        return "renewed"

    def _received(self, message: Inbound) -> None:
        try:
            reply = Reply.decode(message.payload)
        except CsrError as exc:
            log.warning("an answer on the certificate topic that is not one: %s", exc)
            return
        if reply.gw != self.gateway or self._answer is None or self._answer.done():
            return
        self._answer.set_result(reply)

    def _install(self, cert_pem: str, key: NewKey) -> None:
        check_certificate(cert_pem, key, self.gateway, self.files.ca)
        cert, key_path = self.files.cert, self.files.key
        _write_beside(key_path, key.key_pem.encode(), 0o600)
        try:
            _write_beside(cert, cert_pem.encode(), _mode(cert, 0o644))
        except BaseException:
            _new(key_path).unlink(missing_ok=True)  # the old pair stays, as it was
            raise
        os.replace(_new(key_path), key_path)
        os.replace(_new(cert), cert)


def check_certificate(cert_pem: str, key: NewKey, gateway: str, ca: Path | None) -> None:
    """``ValueError`` unless ``cert_pem`` is for ``key``, names ``gateway`` and is signed by
    the CA in ``ca`` (when the gateway names one), and valid now."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if hashlib.sha256(spki).hexdigest() != key.fingerprint:
        raise ValueError("the certificate is for another key")
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [gateway]:
        raise ValueError(f"the certificate names {names!r}, not {gateway!r}")
    now = time.time()
    if (
        not cert.not_valid_before_utc.timestamp() - 600
        <= now
        <= cert.not_valid_after_utc.timestamp()
    ):
        raise ValueError("the certificate is not valid now")
    if ca is not None:
        issuer = x509.load_pem_x509_certificate(ca.read_bytes())
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, TypeError) as exc:
            raise ValueError(f"the certificate is not signed by {ca}") from exc


def finish_swap(cert: Path, key: Path) -> bool:
    """Put right a swap a power cut broke (see the module's docstring); True if it did."""
    new_cert, new_key_path = _new(cert), _new(key)
    if not new_cert.exists():
        new_key_path.unlink(missing_ok=True)  # the swap had not begun: the old pair stays
        return False
    if new_key_path.exists():
        os.replace(new_key_path, key)
    os.replace(new_cert, cert)
    log.warning("finished a certificate swap a stop interrupted: %s", cert)
    return True


def _new(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def _mode(path: Path, default: int) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return default


def _write_beside(path: Path, data: bytes, mode: int) -> None:
    """``data`` into ``path.new``, which exists only whole: written and synced under a
    name of its own first (a full disk or a stop mid-write leaves no ``.new`` that
    ``finish_swap`` would take for the new file)."""
    new = _new(path)
    tmp = path.with_name(f".{path.name}.tmp")
    new.unlink(missing_ok=True)
    tmp.unlink(missing_ok=True)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:  # the old file's owner (the agent's user), where we may give it
            st = path.stat()
            os.chown(tmp, st.st_uid, st.st_gid)
        except OSError:
            pass
        os.replace(tmp, new)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _validity(cert: Path) -> tuple[float, float] | None:
    from cryptography import x509  # noqa: PLC0415

    try:
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return None
    return loaded.not_valid_before_utc.timestamp(), loaded.not_valid_after_utc.timestamp()


def _day(cert_pem: str) -> str:
    from cryptography import x509  # noqa: PLC0415

    after = x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc
    return after.strftime("%Y-%m-%d %H:%M UTC")
