"""The enrollment bundle: one file, written by ``fleet provision`` on the center, read by
``edge-agent enroll`` on the gateway, with everything a gateway needs to join the fleet.

It is JSON (``FORMAT`` names its version)::

    {"format": "edgefleet-enrollment/1", "kind": "certificate", "gateway": "jingan-0001",
     "broker": "mqtts://broker.example:8883",
     "files": {"ca.crt": PEM, "gateway.crt": PEM, "gateway.key": PEM,
               "command.pub": PEM, "agent.yaml": TEXT}}

``kind`` says how the gateway proves who it is, and which files the bundle holds
(``FILES_OF``): ``certificate`` (a client certificate and its key; a bundle without
``kind``, as the first ones were written, is one) or ``password`` (``gateway.pass``, the
password of username GW, in place of ``gateway.crt`` and ``gateway.key``; the broker is
still authenticated by TLS, with ``ca.crt``).

``gateway.key`` or ``gateway.pass`` is the gateway's secret: the bundle is a secret
(written 0600), carried by the technician, and may be deleted once enrolled.
``agent.yaml`` is a starter config naming the other files by relative paths (the agent
resolves them from the config's folder), the outbox where the shipped systemd unit lets
the agent write (``OUTBOX_PATH``), and no devices yet.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from edge_agent.contract.payloads import PayloadError, loads

FORMAT = "edgefleet-enrollment/1"

CERTIFICATE = "certificate"
PASSWORD = "password"

CA_FILE = "ca.crt"
CERT_FILE = "gateway.crt"
KEY_FILE = "gateway.key"
PASSWORD_FILE = "gateway.pass"
COMMAND_KEY_FILE = "command.pub"
CONFIG_FILE = "agent.yaml"
FILES = (CA_FILE, CERT_FILE, KEY_FILE, COMMAND_KEY_FILE, CONFIG_FILE)
"""A ``certificate`` bundle's files."""
FILES_OF = {
    CERTIFICATE: FILES,
    PASSWORD: (CA_FILE, PASSWORD_FILE, COMMAND_KEY_FILE, CONFIG_FILE),
}
"""Each kind's files, exactly."""
PRIVATE = frozenset({KEY_FILE, PASSWORD_FILE})
"""Installed 0600; the others 0644."""

PASSWORD_TEXT = re.compile(r"[A-Za-z0-9_-]{22,256}")
"""A password as ``fleet provision --password`` makes it: at least 128 bits in URL-safe
base64, nothing that needs quoting. ``gateway.pass`` holds it and a newline."""

OUTBOX_PATH = "/var/lib/edgefleet/outbox.db"
"""The starter config's outbox: in the state folder of the shipped unit
(``packaging/edge-agent.service``: ``StateDirectory=edgefleet``, the one folder its
``ProtectSystem=strict`` leaves writable). The default, ``outbox.db`` beside the config,
would be ``/etc/edgefleet/outbox.db``, which the agent cannot create there."""

BUNDLE_MAX = 1024 * 1024
"""A bundle is a few kilobytes: a larger file is something else."""


class BundleError(ValueError):
    """Not an enrollment bundle of this version; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Bundle:
    gateway: str
    broker: str
    files: dict[str, str] = field(repr=False)
    """By file name (``FILES_OF[kind]``): its text. Left out of the ``repr``: it holds the
    gateway's private key or password, and a ``repr`` ends up in tracebacks and logs."""
    kind: str = CERTIFICATE

    def __post_init__(self) -> None:
        if self.kind not in FILES_OF:
            raise BundleError(f"kind {self.kind!r} is not one of {', '.join(FILES_OF)}")
        if set(self.files) != set(FILES_OF[self.kind]):
            raise BundleError(
                f"a {self.kind} bundle's files must be exactly {', '.join(FILES_OF[self.kind])}"
            )

    @property
    def names(self) -> tuple[str, ...]:
        """Its files' names, in the order they are installed."""
        return FILES_OF[self.kind]

    def encode(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "kind": self.kind,
                "gateway": self.gateway,
                "broker": self.broker,
                "files": self.files,
            },
            indent=1,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Bundle:
        if len(data) > BUNDLE_MAX:
            raise BundleError(f"larger than {BUNDLE_MAX} bytes: not an enrollment bundle")
        try:
            obj = loads(data, max_bytes=BUNDLE_MAX)  # nested past the parser's depth included
        except PayloadError:
            raise BundleError("not JSON: not an enrollment bundle") from None
        if obj.get("format") != FORMAT:
            raise BundleError(f"not an enrollment bundle of format {FORMAT}")
        gateway, broker, files = obj.get("gateway"), obj.get("broker"), obj.get("files")
        kind = obj.get("kind", CERTIFICATE)  # the first bundles had no kind
        if not isinstance(gateway, str) or not isinstance(broker, str):
            raise BundleError("the bundle has no gateway id or broker URL")
        if not isinstance(kind, str) or kind not in FILES_OF:
            raise BundleError(f"the bundle's kind {kind!r} is not one of {', '.join(FILES_OF)}")
        names = FILES_OF[kind]
        if (
            not isinstance(files, dict)
            or set(files) != set(names)
            or not all(isinstance(v, str) for v in files.values())
        ):
            raise BundleError(f"the bundle's files must be exactly {', '.join(names)}")
        return cls(gateway, broker, files, kind)


def starter_config(
    gateway: str, site: str, tags: dict[str, str], broker: str, kind: str = CERTIFICATE
) -> str:
    """The agent config a new gateway starts from: its identity, the center over mqtts://
    with the bundle's files (a certificate and its key, or for ``kind`` ``password`` the
    username GW and its password file), the outbox where the shipped unit can write it,
    and no devices (``edge-agent check`` passes it; the agent runs, connects and polls
    nothing until devices are added)."""
    if kind == PASSWORD:
        identity = [
            ("ca_file", CA_FILE, "the fleet's CA: it signed the broker"),
            ("username", json.dumps(gateway), "this gateway's broker username: its id"),
            ("password_file", PASSWORD_FILE, "and its password (0600)"),
        ]
    else:  # central.tls: the bundle's files, beside this config
        identity = [
            ("tls", "", "the TLS files, beside this config:"),
            ("  ca", CA_FILE, "the fleet's CA: it signed the broker"),
            ("  cert", CERT_FILE, "this gateway's certificate (CN = its id)"),
            ("  key", KEY_FILE, "and its key (0600)"),
        ]
    # JSON strings and objects are YAML flow scalars and mappings: quoted whatever the
    # site or a tag holds (a colon, a leading 0, "yes")
    q = json.dumps
    return (
        f"# Starter config for gateway {gateway}, from `fleet provision` "
        "(installed by `edge-agent enroll`).\n"
        "# Add this gateway's devices below (replace `devices: []`), then check it:\n"
        "#   edge-agent check -c agent.yaml\n"
        "gateway:\n"
        f"  id: {q(gateway)}\n"
        f"  site: {q(site, ensure_ascii=False)}\n"
        f"  tags: {q(tags, ensure_ascii=False)}\n"
        "central:\n"
        f"  url: {q(broker)}\n"
        + "".join(
            f"  {key}:{' ' if value else ''}{value}".ljust(30) + f"# {why}\n"
            for key, value, why in (
                *identity,
                ("command_key", COMMAND_KEY_FILE, "the center's command-signing public key"),
            )
        )
        + f"outbox: {{path: {OUTBOX_PATH}}}  # the shipped systemd unit's StateDirectory\n"
        "devices: []\n"
        "# devices:\n"
        "#   - id: tank-1\n"
        "#     modbus: {host: 192.168.1.20, port: 502, unit: 1}\n"
        "#     poll_s: 1\n"
        "#     points:\n"
        "#       - {name: level, table: holding, address: 103, type: uint16, scale: 0.001}\n"
    )
