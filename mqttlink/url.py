"""Where a broker is and how to prove who we are to it: two values that validate themselves.

``BrokerUrl`` is ``mqtt://host[:port]`` or ``mqtts://host[:port]`` and nothing more: no
credentials (they belong in a password file, not in a URL that ends up in logs and process
lists), no path, a port from 1 to 65535. ``Broker`` adds the TLS files (CA bundle, client
certificate and its key) and a username with the file that holds its password. Both are
frozen; neither imports paho, so config models can build them at load time.

Files are read when a connection is made, not when the value is built: a password file
rotated, or a certificate installed by enrolment after the agent started, is picked up by
the next connect, and a missing file is one failed attempt (``BrokerFileError``, said
once, tried again) rather than a process that will not start. The password is never kept
in the value, so it cannot appear in a ``repr``, a log line or ``--json`` output; a URL
refused for holding one is shown with it masked (``shown_url``), as is any URL a message
quotes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}

_QUERY_PASSWORD = re.compile(r"(?i)((?:^|[?&;])(?:password|passwd|pwd|token)=)[^&;#]*")


def shown_url(url: str) -> str:
    """``url`` as an error message may quote it: a password in it (``scheme://user:pw@``,
    or ``password=`` in the query) replaced by ``***``. Works on any text, a URL no parser
    accepts included: everything up to the last ``@`` after ``://`` is taken for the
    credentials, so a password holding ``@``, ``/`` or ``?`` is masked whole."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        info, _, rest = rest.rpartition("@")
        user, colon, _ = info.partition(":")
        rest = f"{user}{':***' if colon else ''}@{rest}"
    return scheme + sep + _QUERY_PASSWORD.sub(r"\1***", rest)


class BrokerFileError(Exception):
    """A file the broker settings name cannot be read or used (``key`` says which)."""

    def __init__(self, key: str, path: Path, why: str) -> None:
        super().__init__(f"{key} {path}: {why}")
        self.key = key
        self.path = path


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """``mqtt://host:port`` (plain) or ``mqtts://host:port`` (TLS); see ``parse``."""

    scheme: Literal["mqtt", "mqtts"]
    host: str
    port: int

    def __post_init__(self) -> None:
        if self.scheme not in DEFAULT_PORTS:
            raise ValueError(f"scheme {self.scheme!r}: expected mqtt or mqtts")
        if not self.host or any(c in self.host for c in "/@ ") or "://" in self.host:
            raise ValueError(f"host {self.host!r}: expected a host name or address")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port}: must be a number from 1 to 65535")

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """The URL checked; ``ValueError`` with a message fit for a config error."""
        # each message quotes the URL with any password masked: it goes to the terminal,
        # a config error and the journal
        shown = repr(shown_url(url))
        expected = f"{shown}: expected mqtt://host[:port] or mqtts://host[:port]"
        try:
            parts = urlsplit(url)
        except ValueError:  # an unclosed [ of an IPv6 address
            raise ValueError(expected) from None
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(expected)
        if parts.username or parts.password:
            raise ValueError(f"{shown}: put credentials in username and password_file, not the URL")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{shown}: a broker URL has no path, query or fragment")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"{shown}: port must be a number from 1 to 65535")
        scheme: Literal["mqtt", "mqtts"] = "mqtts" if parts.scheme == "mqtts" else "mqtt"
        return cls(scheme, parts.hostname, port or DEFAULT_PORTS[scheme])

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Broker:
    """A broker URL with the TLS files and credentials to use there.

    Refused when built: TLS files on an ``mqtt://`` URL (they would be silently unused),
    a certificate without its key or a key without its certificate, and a password file
    without a username."""

    url: BrokerUrl
    ca_file: Path | None = None
    """mqtts: the CA bundle that signed the broker's certificate (default: the system's)."""
    cert_file: Path | None = None
    """mqtts: our client certificate, for a broker that requires one."""
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    """Holds the password (one line; surrounding whitespace is not part of it)."""

    def __post_init__(self) -> None:
        if not self.url.tls:
            for key in ("ca_file", "cert_file", "key_file"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} needs an mqtts:// url")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs a username")
        if self.username is not None and not self.username:
            raise ValueError("username cannot be empty")

    @classmethod
    def plain(cls, url: str) -> Broker:
        """A broker reached with no credentials (the system CAs for ``mqtts://``)."""
        return cls(url=BrokerUrl.parse(url))

    def password(self) -> str | None:
        """The password, read from its file now; ``BrokerFileError`` if it cannot be."""
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise BrokerFileError("password_file", self.password_file, _why(exc)) from None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for ``mqtts://`` (None for ``mqtt://``): the broker's certificate
        checked against ``ca_file`` (or the system's CAs) and its name against the URL's
        host; our certificate presented if we have one. Reads the files now."""
        if not self.url.tls:
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            assert self.ca_file is not None  # the system store does not fail this way
            raise BrokerFileError("ca_file", self.ca_file, _why(exc)) from None
        # create_default_context already says so; kept explicit, as it is the point of TLS
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        if self.cert_file is not None and self.key_file is not None:
            for key, path in (("cert_file", self.cert_file), ("key_file", self.key_file)):
                if not path.is_file():
                    raise BrokerFileError(key, path, "no such file")
            try:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
            except (OSError, ssl.SSLError) as exc:
                raise BrokerFileError("cert_file", self.cert_file, _why(exc)) from None
        return context

    def client_id(self, name: str) -> str:
        """The client id to ask the broker for, for a session called ``name`` (kept as it
        is when empty: the broker assigns one). With a key or a password file, ``name``
        and a secret of 80 bits from it (the same at each start, so a persistent session
        is found again): a client that can name a session can, on some brokers, harm it
        (Mosquitto 2.0.11 unlinks the session whose id a refused anonymous client asked
        for), and no one without our key or password can name this one. Without either,
        or with the file unreadable (the connect will say so), ``name`` itself."""
        secret_file = self.key_file or self.password_file
        if not name or secret_file is None:
            return name
        try:
            secret = secret_file.read_bytes()
        except OSError:
            return name
        tag = hmac.new(secret, b"edgefleet client id\0" + name.encode(), hashlib.sha256)
        return f"{name}-{tag.hexdigest()[:20]}"

    def missing_files(self) -> list[tuple[str, Path]]:
        """The files named here that do not exist, as ``(key, path)``: for a check that
        wants to say so before any connect."""
        named = ("ca_file", "cert_file", "key_file", "password_file")
        paths = [(key, getattr(self, key)) for key in named]
        return [(key, path) for key, path in paths if path is not None and not path.is_file()]

    @property
    def host(self) -> str:
        return self.url.host

    @property
    def port(self) -> int:
        return self.url.port

    @property
    def tls(self) -> bool:
        return self.url.tls

    def __str__(self) -> str:
        return str(self.url)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
