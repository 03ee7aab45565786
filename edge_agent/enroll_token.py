"""``edge-agent enroll --token``: a gateway that makes its own key (it never leaves the
box), asks the center to sign it with a one-time token, and installs what comes back
(``edge_agent.contract.csr``), as a bundle would be (``edge_agent.enroll``).

The gateway trusts the broker by the fleet's CA certificate given to it (``--ca-file``,
public), connects to the broker's enrollment listener without a certificate, as its
one-time enrollment identity ``enroll-GW`` with the token for password, and asks again
every ``RETRY_S`` until the answer is signed or refused, or ``wait_s`` passes: a token
made ``--review`` has the request wait for an operator (``fleet provision approve GW``),
and the key's fingerprint printed here is what the operator compares.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.contract import enrollment
from edge_agent.contract.csr import (
    ENROLL_MOUNT,
    CsrError,
    EnrollRequest,
    Reply,
    enrollment_identity,
    reply_topic,
    request_topic,
)
from edge_agent.contract.enrollment import Bundle
from edge_agent.contract.topics import CLIENT_ID_PREFIX, Topics
from edge_agent.enroll import EnrollError
from mqttlink.session import Message, Refused, Session, SessionError, Subscription
from mqttlink.url import Broker, BrokerUrl

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class NewKey:
    key_pem: str
    csr_pem: str
    fingerprint: str
    """SHA-256 of the public key (DER SubjectPublicKeyInfo), hex."""


def new_key(gateway: str) -> NewKey:
    """An EC P-256 key and a certificate request for it, CN = ``gateway``."""
    # cryptography loads for enrollment only
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key: EllipticCurvePrivateKey = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway)]))
        .sign(key, hashes.SHA256())
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    return NewKey(key_pem, csr_pem, hashlib.sha256(spki).hexdigest())


def request_certificate(
    gateway: str,
    token: str,
    broker: str,
    ca_file: Path,
    key: NewKey,
    *,
    topics: Topics | None = None,
    wait_s: float = 600.0,
    retry_s: float = RETRY_S,
    on_pending: Callable[[str], None] = lambda _reason: None,
) -> Bundle:
    """Ask until signed: the bundle to install (with ``key``); ``EnrollError`` if refused,
    unreachable, or no answer within ``wait_s``."""
    topics = topics or Topics()
    try:
        url = BrokerUrl.parse(broker)
    except ValueError as exc:
        raise EnrollError(str(exc)) from None
    if not url.tls:
        raise EnrollError("the enrollment listener is TLS: mqtts://, so that the token is safe")
    nonce = secrets.token_hex(16)
    request = EnrollRequest(gateway, token, nonce, key.csr_pem)
    replies: list[Reply] = []
    came = threading.Event()

    def on_reply(msg: Message) -> None:
        try:
            replies.append(Reply.decode(msg.payload))
        except CsrError:
            return
        came.set()

    identity = enrollment_identity(gateway)
    # the token is the identity's password, which Session reads from a file at each
    # connect: one of this process's own, for as long as it asks
    with tempfile.TemporaryDirectory(prefix="edgefleet-enroll-") as folder:  # 0700
        password = Path(folder) / "token"
        fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        broker_at = Broker(url=url, ca_file=ca_file, username=identity, password_file=password)
        session = _connect(broker_at, identity, reply_topic(topics, identity), on_reply, wait_s)
        deadline = time.monotonic() + wait_s
        told = False
        try:
            while time.monotonic() < deadline:
                came.clear()
                topic = request_topic(topics, identity)
                session.publish(topic, request.encode(), qos=1, queue_offline=True)
                came.wait(min(retry_s, max(0.0, deadline - time.monotonic())))
                while replies:
                    reply = replies.pop(0)
                    if reply.gw != gateway or reply.nonce != nonce:
                        continue
                    if reply.status == "signed":
                        return _bundle(gateway, reply, key, ca_file)
                    if reply.status == "refused":
                        raise EnrollError(f"the center refused: {reply.reason}")
                    if not told:
                        on_pending(reply.reason)
                        told = True
            raise EnrollError(
                f"no certificate within {wait_s:g} s (is fleet central enroll running?)"
            )
        finally:
            session.close()


CONNECT_TRIES_S = 30.0
"""How long an unreachable enrollment listener is tried (a broker restarting)."""


def _connect(
    broker: Broker,
    identity: str,
    replies: str,
    on_reply: Callable[[Message], None],
    wait_s: float,
) -> Session:
    """A session as ``identity``, subscribed to its replies; ``EnrollError`` at once if the
    broker refuses the token, or after ``CONNECT_TRIES_S`` of not reaching it."""
    deadline = time.monotonic() + min(CONNECT_TRIES_S, wait_s)
    while True:
        # the broker makes the identity the client id (use_username_as_clientid), whatever
        # this one asks for; ask for one in the broker's prefix, which it refuses others
        session = Session(
            broker,
            client_id=CLIENT_ID_PREFIX + identity,
            name="enroll",
            mount_point=ENROLL_MOUNT,
        )
        session.subscribe(Subscription(replies, qos=1), on_reply)
        try:
            session.open(max(1.0, min(10.0, deadline - time.monotonic())))
            return session
        except Refused as exc:
            raise EnrollError(
                f"the enrollment listener {broker.url} refused {identity} ({exc}): the token "
                "is wrong, expired or revoked, or the broker was not reloaded since fleet "
                "provision --token made it"
            ) from None
        except SessionError as exc:
            if time.monotonic() >= deadline:
                raise EnrollError(
                    f"cannot reach the enrollment listener {broker.url}: {exc}"
                ) from None
            time.sleep(1.0)


def _bundle(gateway: str, reply: Reply, key: NewKey, ca_file: Path) -> Bundle:
    files = dict(reply.files or {})
    wanted = {enrollment.CA_FILE, enrollment.CERT_FILE, enrollment.COMMAND_KEY_FILE}
    wanted.add(enrollment.CONFIG_FILE)
    if set(files) != wanted:
        raise EnrollError(f"the answer's files must be exactly {', '.join(sorted(wanted))}")
    _same_ca(files[enrollment.CA_FILE], ca_file)
    _our_key(files[enrollment.CERT_FILE], key)
    files[enrollment.KEY_FILE] = key.key_pem
    return Bundle(gateway=gateway, broker=reply.broker, files=files)


def _same_ca(sent: str, trusted: Path) -> None:
    """The CA the answer names is the one this gateway trusted the broker by."""
    from cryptography import x509  # noqa: PLC0415

    try:
        ours = x509.load_pem_x509_certificate(trusted.read_bytes())
        theirs = x509.load_pem_x509_certificate(sent.encode())
    except (OSError, ValueError) as exc:
        raise EnrollError(f"the CA certificate cannot be read: {exc}") from None
    if ours != theirs:
        raise EnrollError(f"the answer names another CA than {trusted}: not installing it")


def _our_key(cert_pem: str, key: NewKey) -> None:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        raise EnrollError("the answer's certificate is not a PEM certificate") from None
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if hashlib.sha256(spki).hexdigest() != key.fingerprint:
        raise EnrollError("the answer's certificate is for another key: not installing it")
