"""The broker's configuration (``fleet broker-config``): a Mosquitto 2 config and its ACL,
rendered from the templates in ``central/broker_templates/`` for one fleet CA folder.

The templates are package data, read through ``importlib.resources``: ``fleet`` installed
from a wheel finds them as well as a checkout does. They are the one copy;
``packaging/mosquitto.conf`` and ``packaging/edgefleet.acl``, where the docs show them
with the rest of what is shipped, are links to them.

The CA folder is the one ``fleet ca init`` makes: ``ca.crt`` (the fleet's CA), ``crl.pem``
(the certificates it revoked), ``broker.crt`` and ``broker.key`` (the broker's server
certificate); the broker reads nothing else of it. Its paths are resolved when the config
is written, so the config works from any directory Mosquitto is started in.

Every value written into a config line is checked first: a newline in a path or an
address would otherwise add a line of its own to the config (``allow_anonymous true``).

Errors: ``BrokerConfigError`` (nothing was written) is the only one raised:

    BrokerConfigError     ``out`` is not a folder, or cannot be written
    ├── CaFolderError     the CA folder lacks a file the broker needs, or one is not what
    │                     it claims (``central.pki.check_broker_files``)
    └── ExistingFiles     an output file is there and ``force`` was not given
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from central.files import PUBLIC, replace_all
from central.passwords import ENROLL_PASSWORDS, PASSWORDS, PasswordError, ensure
from central.pki import (
    BROKER_CERT,
    BROKER_KEY,
    CA_CERT,
    CENTER_CA_CERT,
    CENTRAL_CN,
    CRL,
    PkiError,
    check_broker_files,
)
from central.revocation import revoked_gateways, with_denials
from edge_agent.contract.csr import (
    ENROLL_MOUNT,
    acl_patterns,
    mounted,
    replies_filter,
    requests_filter,
)
from edge_agent.contract.limits import MESSAGE_MAX_BYTES
from edge_agent.contract.topics import CLIENT_ID_PREFIX, DEFAULT_ROOT, Topics

TEMPLATES = resources.files("central") / "broker_templates"
"""The templates, package data of ``central`` (``pyproject.toml``'s package-data)."""

CONFIG_NAME = "mosquitto.conf"
ACL_NAME = "edgefleet.acl"

CA_FILES = (CA_CERT, CENTER_CA_CERT, CRL, BROKER_CERT, BROKER_KEY)
"""What the broker reads from the CA folder (named as ``central.pki`` makes them)."""

PACKET_HEADROOM = 65_536
"""Bytes a packet may hold beside a payload of ``MESSAGE_MAX_BYTES``: its topic (ours are
short, MQTT allows 65,535 bytes) and its properties (a command's response topic and
correlation data). ``max_packet_size`` is their sum."""

ENROLL_MAX_CONNECTIONS = 200
"""Clients the enrollment listener holds at once: anyone may connect there, and a flood
of connections must not take the broker's file descriptors from the gateways' and the
center's listeners (one gateway enrolls in seconds; 200 at once is a busy day)."""

DEFAULT_PASSWORD_PORT = 8886
"""The password listener's port, shown (as a comment) where it is off."""

DEFAULT_DATA_DIR = Path("/var/lib/mosquitto")
"""Where Debian's package keeps Mosquitto's persistence file."""

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


class BrokerConfigError(Exception):
    """The config could not be written; nothing was."""


class CaFolderError(BrokerConfigError):
    """The CA folder lacks a file the broker needs, or holds one that is not what it is
    named (not PEM, or not signed by the folder's CA)."""


class ExistingFiles(BrokerConfigError):
    """An output file exists and overwriting was not asked for."""


@dataclass(frozen=True)
class BrokerConfig:
    """What a generated config says: where the CA folder is, what the two listeners bind.

    Gateways connect to ``port``, where the broker takes a client's id from its
    certificate (``use_username_as_clientid``): whatever client id a gateway asks for, it
    gets its own, so it cannot take over another's session, nor the center's. The center
    connects to ``center_port``, where its processes keep the client ids they choose
    (``edgefleet-central``, ``…-alarms``, ``…-w1``…); bind it where only the center's
    machines reach it (``center_bind``, loopback by default).

    With ``password_port``, a third listener takes gateways that log in with a username
    and a password (``fleet provision --password``) over TLS that authenticates the
    broker only; the password file (``password_file``, default ``passwords`` in the CA
    folder, made empty if missing) holds their hashes, and a client's id is its username
    there too."""

    ca_dir: Path
    out: Path
    port: int = 8883
    bind: str = "127.0.0.1"
    topic_root: str = DEFAULT_ROOT
    data_dir: Path = DEFAULT_DATA_DIR
    center_port: int = 8884
    center_bind: str = "127.0.0.1"
    enroll_port: int | None = None
    """The enrollment listener's port (token enrollment), None: no such listener."""
    enroll_bind: str = "127.0.0.1"
    password_port: int | None = None
    password_bind: str = "127.0.0.1"
    password_file: Path | None = None

    def __post_init__(self) -> None:
        ports = [("port", self.port), ("center port", self.center_port)]
        if self.enroll_port is not None:
            ports.append(("enrollment port", self.enroll_port))
        if self.password_port is not None:
            ports.append(("password port", self.password_port))
        for what, port in ports:
            if not 1 <= port <= 65535:
                raise ValueError(f"{what} {port} is not 1-65535")
        if len({port for _, port in ports}) != len(ports):
            raise ValueError(
                "each listener (gateways', center's, enrollment, password) needs a port of its own"
            )
        check_address(self.bind)
        check_address(self.center_bind)
        check_address(self.enroll_bind)
        check_address(self.password_bind)
        Topics(self.topic_root)  # raises TopicError (a ValueError) for a wildcard or space
        for what, path in (
            ("CA folder", self.ca_dir),
            ("out", self.out),
            ("data", self.data_dir),
            ("password file", self.passwords),
        ):
            _check_path(what, path)

    @property
    def passwords(self) -> Path:
        """The password file the password listener reads."""
        return self.password_file if self.password_file is not None else self.ca_dir / PASSWORDS

    @property
    def enroll_passwords(self) -> Path:
        """The enrollment listener's: the one-time identities' hashed tokens."""
        return self.ca_dir / ENROLL_PASSWORDS

    def render(self) -> dict[str, str]:
        """The two files' texts by name (``mosquitto.conf``, ``edgefleet.acl``)."""
        ca, out, data, passwords = (
            p.resolve() for p in (self.ca_dir, self.out, self.data_dir, self.passwords)
        )
        for what, path in (
            ("CA folder", ca),
            ("out", out),
            ("data folder", data),
            ("password file", passwords),
        ):
            _check_path(what, path)  # the working directory's name is in them now
        conf = _template(CONFIG_NAME).substitute(
            port=self.port,
            bind=self.bind,
            center_port=self.center_port,
            center_bind=self.center_bind,
            # the password listener's lines: comments unless it is asked for
            password="" if self.password_port is not None else "# ",
            password_port=self.password_port or DEFAULT_PASSWORD_PORT,
            password_bind=self.password_bind,
            password_file=passwords,
            cafile=ca / CA_CERT,
            center_cafile=ca / CENTER_CA_CERT,
            certfile=ca / BROKER_CERT,
            keyfile=ca / BROKER_KEY,
            crlfile=ca / CRL,
            acl_file=out / ACL_NAME,
            data_dir=data,  # Mosquitto 2 puts the "/" before the file's name
            client_id_prefix=CLIENT_ID_PREFIX,
            message_size_limit=MESSAGE_MAX_BYTES,
            max_packet_size=MESSAGE_MAX_BYTES + PACKET_HEADROOM,
            **self._enroll_conf(ca, out / ACL_NAME),
        )
        acl = _template(ACL_NAME).substitute(
            root=self.topic_root, center=CENTRAL_CN, **self._enroll_acl()
        )
        # the gateways `fleet revoke` revoked stay denied in a config made again
        acl = with_denials(acl, revoked_gateways(ca))
        return {CONFIG_NAME: conf, ACL_NAME: acl}

    def _enroll_conf(self, ca: Path, acl_file: Path) -> dict[str, str]:
        if self.enroll_port is None:
            return {"enroll_listener": ""}
        listener = (
            "# the enrollment listener (fleet provision --token): TLS that proves the broker,\n"
            "# no client certificate. A client logs in as a gateway's one-time enrollment\n"
            "# identity, enroll-GW, with GW's token for password (its hash in the listener's\n"
            "# own password file: those identities log in nowhere else, and no gateway's\n"
            "# password logs in here), and that name is its client id, whatever id it asks\n"
            "# for: no one here\n"
            "# takes over another's session, the center's nor a gateway's. Its topics are\n"
            f"# mounted under {ENROLL_MOUNT}: nothing it publishes reaches a fleet topic, and\n"
            "# the ACL lets it write only its own request and read only its own answers\n"
            f"listener {self.enroll_port} {self.enroll_bind}\n"
            f"cafile {ca / CA_CERT}\ncertfile {ca / BROKER_CERT}\nkeyfile {ca / BROKER_KEY}\n"
            f"mount_point {ENROLL_MOUNT}\n"
            "use_username_as_clientid true\n"
            "# at most this many connections at once (each holds a file descriptor until\n"
            "# it logs in or times out): a flood leaves the other listeners theirs\n"
            f"max_connections {ENROLL_MAX_CONNECTIONS}\n"
            f"password_file {self.enroll_passwords.resolve()}\n"
            "allow_anonymous false\n"
            f"acl_file {acl_file}\n"
            f"auto_id_prefix {CLIENT_ID_PREFIX}auto-\n"
        )
        return {"enroll_listener": listener}

    def _enroll_acl(self) -> dict[str, str]:
        if self.enroll_port is None:
            return {"enroll_acl": "", "enroll_center": ""}
        topics = Topics(self.topic_root)
        own_request, own_replies = (mounted(t) for t in acl_patterns(topics))
        identity = (
            "# an enrollment identity (enroll-GW, the enrollment listener's), as mounted:\n"
            "# it writes only its own request and reads only its own answers (a client\n"
            "# reading others' would learn which gateways enroll, and their sites)\n"
            f"pattern write {own_request}\n"
            f"pattern read {own_replies}\n\n"
        )
        center = (
            f"topic read {mounted(requests_filter(topics))}\n"
            f"topic write {mounted(replies_filter(topics))}\n"
        )
        return {"enroll_acl": identity, "enroll_center": center}

    def write(self, force: bool = False) -> list[Path]:
        """Write both files into ``out`` (made if missing); the paths written.

        Raises ``CaFolderError`` if the CA folder lacks a file the broker reads or holds
        one that is not what it claims, ``ExistingFiles`` if an output file is there and
        ``force`` is not set, and ``BrokerConfigError`` if ``out`` is no folder or cannot
        be written; every way, nothing is written."""
        self._check_ca_folder()
        texts = self.render()
        if self.out.exists() and not self.out.is_dir():
            raise BrokerConfigError(
                f"{self.out} is a file, not a folder: --out names the folder that "
                f"{CONFIG_NAME} and {ACL_NAME} go in"
            )
        paths = [self.out / name for name in texts]
        there = [str(p) for p in paths if p.exists() or p.is_symlink()]
        if there and not force:
            raise ExistingFiles(f"{', '.join(there)} exists; --force overwrites")
        made: list[Path] = []
        needed = [self.passwords] if self.password_port is not None else []
        needed += [self.enroll_passwords] if self.enroll_port is not None else []
        for path in needed:
            # Mosquitto does not start on a password_file that is missing: an empty one
            # (left there if the config cannot be written: it is of no harm)
            try:
                if ensure(path):
                    made.append(path)
            except PasswordError as exc:
                raise BrokerConfigError(str(exc)) from None
        try:
            _write_all(self.out, texts)
        except OSError as exc:
            raise BrokerConfigError(
                f"cannot write into {self.out}: {exc.strerror or exc}"
            ) from None
        return [*paths, *made]

    def _check_ca_folder(self) -> None:
        missing = [name for name in CA_FILES if not (self.ca_dir / name).is_file()]
        if missing == [CENTER_CA_CERT]:
            raise CaFolderError(
                f"{self.ca_dir} was made before the center had a CA of its own: fleet ca init "
                f"--dir {self.ca_dir} --add-center-ca adds it (and issues the center's "
                "certificate again; the gateways' stay as they are)"
            )
        if missing:
            raise CaFolderError(
                f"{self.ca_dir} has no {', '.join(missing)} (fleet ca init makes the CA folder)"
            )
        try:
            check_broker_files(self.ca_dir)
        except PkiError as exc:
            raise CaFolderError(str(exc)) from None


def _write_all(folder: Path, texts: dict[str, str]) -> None:
    """Both files or neither (``central.files``); no secret inside, and Mosquitto's own
    user must read them: 0644."""
    replace_all(folder, {name: (text.encode(), PUBLIC) for name, text in texts.items()})


def _template(name: str) -> Template:
    try:
        return Template((TEMPLATES / name).read_text(encoding="utf-8"))
    except OSError as exc:
        raise BrokerConfigError(
            f"cannot read the template {name} of the installed package "
            f"({exc.strerror or exc}): reinstall edgefleet"
        ) from None


def check_address(text: str) -> str:
    """``text`` if it is an IP address or a host name (a listener's bind address)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if _HOSTNAME.fullmatch(text) is None:
            raise ValueError(f"{text!r} is not an IP address or host name") from None
    return text


def _check_path(what: str, path: Path) -> None:
    if _UNSAFE.search(str(path)) or str(path) != str(path).strip():
        raise ValueError(f"{what} {str(path)!r} holds control characters or edge spaces")
