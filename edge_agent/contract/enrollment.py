"""The enrollment bundle: one file, written by ``fleet provision`` on the center, read by
``edge-agent enroll`` on the gateway, with everything a gateway needs to join the fleet.

It is JSON (``FORMAT`` names its version)::

    {"format": "edgefleet-enrollment/1", "gateway": "jingan-0001",
     "broker": "mqtts://broker.example:8883",
     "files": {"ca.crt": PEM, "gateway.crt": PEM, "gateway.key": PEM,
               "command.pub": PEM, "agent.yaml": TEXT}}

``gateway.key`` is the gateway's private key: the bundle is a secret (written 0600),
carried by the technician, and may be deleted once enrolled. ``agent.yaml`` is a starter
config naming the other files by relative paths (the agent resolves them from the
config's folder), the outbox where the shipped systemd unit lets the agent write
(``OUTBOX_PATH``), and no devices yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

FORMAT = "edgefleet-enrollment/1"

CA_FILE = "ca.crt"
CERT_FILE = "gateway.crt"
KEY_FILE = "gateway.key"
COMMAND_KEY_FILE = "command.pub"
CONFIG_FILE = "agent.yaml"
FILES = (CA_FILE, CERT_FILE, KEY_FILE, COMMAND_KEY_FILE, CONFIG_FILE)
PRIVATE = frozenset({KEY_FILE})
"""Installed 0600; the others 0644."""

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
    """By file name (``FILES``): its text. Left out of the ``repr``: it holds the gateway's
    private key, and a ``repr`` ends up in tracebacks, test reports and logs."""

    def encode(self) -> bytes:
        return json.dumps(
            {"format": FORMAT, "gateway": self.gateway, "broker": self.broker, "files": self.files},
            indent=1,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Bundle:
        if len(data) > BUNDLE_MAX:
            raise BundleError(f"larger than {BUNDLE_MAX} bytes: not an enrollment bundle")
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise BundleError("not JSON: not an enrollment bundle") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise BundleError(f"not an enrollment bundle of format {FORMAT}")
        gateway, broker, files = obj.get("gateway"), obj.get("broker"), obj.get("files")
        if not isinstance(gateway, str) or not isinstance(broker, str):
            raise BundleError("the bundle has no gateway id or broker URL")
        if (
            not isinstance(files, dict)
            or set(files) != set(FILES)
            or not all(isinstance(v, str) for v in files.values())
        ):
            raise BundleError(f"the bundle's files must be exactly {', '.join(FILES)}")
        return cls(gateway, broker, files)


def starter_config(gateway: str, site: str, tags: dict[str, str], broker: str) -> str:
    """The agent config a new gateway starts from: its identity, the center over mqtts://
    with the bundle's files, the outbox where the shipped unit can write it, and no devices
    (``edge-agent check`` passes it; the agent runs, connects and polls nothing until
    devices are added)."""
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
            f"  {key}: {value}".ljust(30) + f"# {why}\n"
            for key, value, why in (
                ("ca_file", CA_FILE, "the fleet's CA: it signed the broker"),
                ("cert_file", CERT_FILE, "this gateway's certificate (CN = its id)"),
                ("key_file", KEY_FILE, "and its key (0600)"),
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
