"""The central broker as ``fleet`` commands reach it: URL, TLS files and credentials, from
options or the environment, turned into one ``mqttlink.url.Broker``.

Every ``fleet`` command that connects to the broker takes the same six options::

    --broker URL          EDGEFLEET_BROKER                 mqtt://host[:port] or mqtts://
    --username NAME       EDGEFLEET_BROKER_USERNAME
    --password-file FILE  EDGEFLEET_BROKER_PASSWORD_FILE   the password, never on the command line
    --ca-file FILE        EDGEFLEET_BROKER_CA_FILE         mqtts: CA bundle (default: system)
    --cert-file FILE      EDGEFLEET_BROKER_CERT_FILE       mqtts: client certificate
    --key-file FILE       EDGEFLEET_BROKER_KEY_FILE        mqtts: its key

Files must exist when the command starts (a usage error, exit 2, otherwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from mqttlink.url import Broker

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def _file(flag: str, env: str, help_text: str) -> Any:
    return typer.Option(flag, envvar=env, help=help_text, exists=True, dir_okay=False)


BrokerOpt = Annotated[
    str,
    typer.Option("--broker", envvar="EDGEFLEET_BROKER", help="central MQTT broker URL"),
]
UsernameOpt = Annotated[
    str | None,
    typer.Option("--username", envvar="EDGEFLEET_BROKER_USERNAME", help="broker username"),
]
PasswordFileOpt = Annotated[
    Path | None,
    _file("--password-file", "EDGEFLEET_BROKER_PASSWORD_FILE", "file holding the password"),
]
CaFileOpt = Annotated[
    Path | None,
    _file("--ca-file", "EDGEFLEET_BROKER_CA_FILE", "mqtts: CA bundle (default: system)"),
]
CertFileOpt = Annotated[
    Path | None,
    _file("--cert-file", "EDGEFLEET_BROKER_CERT_FILE", "mqtts: client certificate"),
]
KeyFileOpt = Annotated[
    Path | None,
    _file("--key-file", "EDGEFLEET_BROKER_KEY_FILE", "mqtts: client certificate's key"),
]


def broker_settings(
    url: str,
    username: str | None = None,
    password_file: Path | None = None,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> Broker:
    """The options as one value; a usage error (exit 2) naming the option if they do not
    fit together."""
    # mqttlink (and ssl) load only for a command that connects: fleet --help stays quick
    from mqttlink.url import Broker, BrokerUrl  # noqa: PLC0415

    try:
        parsed = BrokerUrl.parse(url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--broker") from None
    try:
        return Broker(
            url=parsed,
            username=username,
            password_file=password_file,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
    except ValueError as exc:
        hint = str(exc).split(" ", 1)[0].replace("_", "-")
        raise typer.BadParameter(str(exc), param_hint=f"--{hint}") from None
