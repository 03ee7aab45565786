"""Is a file a config names there, readable, and what it should be? The checks of the host
pass of config checking (``edge-agent check``, and ``run`` before it starts anything).

A config is valid on its own (the schema pass) before it is valid on a gateway: a
password file, a CA bundle, a serial port are facts of the host. Each function here
answers for one kind of file, with a message fit for ``file:line: field: message``, or
None when the file is fine. They read at most the file's first ``MAX_READ`` bytes: a
config naming ``/dev/zero`` gets an answer, not a hang.

``cryptography`` (certificates and keys) is imported only when a key or certificate is
checked: a gateway without TLS does not pay for it at each check.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
import time
from pathlib import Path

MAX_READ = 1024 * 1024
"""Bytes read of a file to tell what it is: bigger than any key, certificate or bundle."""

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


def pem_blocks(data: bytes) -> list[bytes]:
    """Each PEM block of a file, in order (a file of trusted keys may hold several)."""
    return [m.group(0) for m in _PEM_BLOCK.finditer(data)]


def _why(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def readable_file(path: Path) -> str | None:
    """A regular file we can open for reading (not a folder, a device or a socket)."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"{path}: {_why(exc)}"
    except ValueError:  # a NUL in the path: the OS cannot even be asked
        return f"{str(path)!r} is not a path"
    if stat.S_ISDIR(st.st_mode):
        return f"{path} is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        return f"{path}: {_why(exc)}"
    return None


def _head(path: Path) -> bytes | str:
    """The file's first bytes, or why it cannot be read."""
    problem = readable_file(path)
    if problem is not None:
        return problem
    try:
        with path.open("rb") as f:
            return f.read(MAX_READ)
    except OSError as exc:
        return f"{path}: {_why(exc)}"


def password_file_problem(path: Path) -> str | None:
    """A password file: readable, UTF-8 text, and not empty (an empty password is a
    mistake that would only show as a refused login)."""
    head = _head(path)
    if isinstance(head, str):
        return head
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"{path} is not UTF-8 text"
    if not text.strip():
        return f"{path} is empty"
    return None


def ca_file_problem(path: Path) -> str | None:
    """A CA bundle: PEM certificates that TLS can load, as the connection will."""
    head = _head(path)
    if isinstance(head, str):
        return head
    if b"-----BEGIN CERTIFICATE-----" not in head:
        return f"{path} is not a PEM certificate bundle (no BEGIN CERTIFICATE)"
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        return f"{path}: not a usable CA bundle ({exc})"
    return None


def cert_and_key_problems(cert: Path, key: Path) -> list[tuple[str, str]]:
    """A client certificate (PEM) and its private key (PEM), that belong together; as
    ``(which, message)`` with ``which`` ``cert`` or ``key``."""
    problems: list[tuple[str, str]] = []
    cert_head, key_head = _head(cert), _head(key)
    if isinstance(cert_head, str):
        problems.append(("cert", cert_head))
    elif b"-----BEGIN CERTIFICATE-----" not in cert_head:
        problems.append(("cert", f"{cert} is not a PEM certificate (no BEGIN CERTIFICATE)"))
    if isinstance(key_head, str):
        problems.append(("key", key_head))
    elif b"PRIVATE KEY-----" not in key_head:
        problems.append(("key", f"{key} is not a PEM private key (no BEGIN PRIVATE KEY)"))
    if problems:
        return problems
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            return [("key", f"{key} is not the key of the certificate {cert}")]
        return [("cert", f"{cert} with {key}: not usable for TLS ({exc.reason or exc})")]
    except OSError as exc:
        return [("cert", f"{cert}: {_why(exc)}")]
    return problems


def client_certificate_problems(
    path: Path, common_name: str, now: float
) -> tuple[str | None, str | None]:
    """A client certificate's identity and time, each a problem or None: its common name
    must be ``common_name`` (the broker takes it as the client's name: any other, and every
    publish is refused), and ``now`` must be in its validity. Both None if the file is not
    a certificate at all: ``cert_and_key_problems`` says that."""
    # cryptography loads only where a certificate is to be checked
    from cryptography import x509  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    head = _head(path)
    if isinstance(head, str):
        return None, None
    try:
        cert = x509.load_pem_x509_certificate(head)
    except ValueError:
        return None, None
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    identity = None
    if names != [common_name]:
        shown = ", ".join(repr(n[:80]) for n in names) or "none"
        identity = (
            f"{path} is the certificate of {shown}, not of this gateway ({common_name!r}): "
            "the broker would take it for that one"
        )
    when = None
    after, before = cert.not_valid_after_utc.timestamp(), cert.not_valid_before_utc.timestamp()
    if now > after:
        when = (
            f"{path} expired on {_day(after)}: the broker refuses it "
            "(fleet provision GW --force issues a new one)"
        )
    elif now < before:
        when = f"{path} is not valid before {_day(before)}: is this gateway's clock right?"
    return identity, when


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def certificate_problem(path: Path) -> str | None:
    """An X.509 certificate in DER or PEM (an OPC-UA application instance certificate)."""
    # cryptography loads only where a certificate is to be checked
    from cryptography import x509  # noqa: PLC0415

    head = _head(path)
    if isinstance(head, str):
        return head
    try:
        if b"-----BEGIN" in head:
            x509.load_pem_x509_certificate(head)
        else:
            x509.load_der_x509_certificate(head)
    except ValueError:
        return f"{path} is not an X.509 certificate (DER or PEM)"
    return None


def private_key_problem(path: Path) -> str | None:
    """A private key in PEM or DER, without a passphrase (nobody is there to type one)."""
    # cryptography loads only where a key is to be checked
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    head = _head(path)
    if isinstance(head, str):
        return head
    try:
        if b"-----BEGIN" in head:
            serialization.load_pem_private_key(head, password=None)
        else:
            serialization.load_der_private_key(head, password=None)
    except TypeError:
        return f"{path} is encrypted with a passphrase; the agent needs it without one"
    except (ValueError, UnsupportedAlgorithm):
        return f"{path} is not a private key (PEM or DER)"
    return None


def ed25519_public_key_problem(path: Path) -> str | None:
    """Ed25519 public keys in PEM, one or more (the center's, that sign commands and acks;
    the new one beside the old while it is rotated); a private key in their place is a
    mistake said as such, as it must never be on a gateway."""
    # cryptography loads only where a key is to be checked
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415

    head = _head(path)
    if isinstance(head, str):
        return head
    if b"PRIVATE KEY-----" in head:
        return (
            f"{path} is a private key: give the center's public key (the .pub beside it), "
            "and keep the private key off the gateway"
        )
    blocks = pem_blocks(head) or [head]
    for i, block in enumerate(blocks, 1):
        which = path if len(blocks) == 1 else f"{path} (key {i} of {len(blocks)})"
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, UnsupportedAlgorithm):
            return f"{which} is not a PEM public key"
        if not isinstance(key, Ed25519PublicKey):
            return f"{which} is a public key, but not an Ed25519 one"
    return None


def serial_port_problem(port: str) -> str | None:
    """A serial port: a character device we may read and write."""
    path = Path(port)
    try:
        st = path.stat()
    except OSError as exc:
        return f"{port}: {_why(exc)}"
    except ValueError:  # a NUL in the path
        return f"{port!r} is not a path"
    if not stat.S_ISCHR(st.st_mode):
        return f"{port} is not a serial port (not a character device)"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"{port}: permission denied (the agent's user needs read and write)"
    return None


def folder_problem(path: Path, *, may_be_made: bool = False) -> str | None:
    """A folder; with ``may_be_made``, one that does not exist yet is fine if the nearest
    existing folder above it is one we may write in."""
    if "\0" in str(path):
        return f"{str(path)!r} is not a path"
    if path.is_dir():
        return None
    if path.exists():
        return f"{path} is not a folder"
    if not may_be_made:
        return f"{path}: no such folder"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} does not exist, and cannot be made in {parent}"
    return None
