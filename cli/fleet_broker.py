"""``fleet broker-config``: the broker's config and ACL for the fleet's CA folder
(``central.broker_config``, loaded when the command runs: ``fleet --help`` stays fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.topic_options import RootOpt
from edge_agent.contract.topics import DEFAULT_ROOT


def _bind_option(value: str) -> str:
    from central.broker_config import check_address  # noqa: PLC0415

    try:
        return check_address(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def broker_config(
    out: Annotated[
        Path, typer.Option("--out", help="folder to write mosquitto.conf and edgefleet.acl in")
    ],
    ca_dir: Annotated[
        Path,
        typer.Option(
            "--ca-dir",
            help="the fleet's CA folder (fleet ca init): ca.crt, crl.pem, broker.crt, "
            "broker.key are read from it, by absolute path",
        ),
    ] = Path("fleet-ca"),
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="the TLS listener's port")
    ] = 8883,
    bind: Annotated[
        str,
        typer.Option(
            "--bind", help="the address the listener binds (0.0.0.0: all)", callback=_bind_option
        ),
    ] = "127.0.0.1",
    center_port: Annotated[
        int,
        typer.Option("--center-port", min=1, max=65535, help="the center's TLS listener's port"),
    ] = 8884,
    center_bind: Annotated[
        str,
        typer.Option(
            "--center-bind",
            help="the address the center's listener binds: where only the center reaches it",
            callback=_bind_option,
        ),
    ] = "127.0.0.1",
    enroll_port: Annotated[
        int | None,
        typer.Option(
            "--enroll-port",
            min=1,
            max=65535,
            help="an enrollment listener on this port, for fleet provision --token (TLS, "
            "no client certificate, confined to enrollment) [default: none]",
        ),
    ] = None,
    enroll_bind: Annotated[
        str,
        typer.Option(
            "--enroll-bind",
            help="the address the enrollment listener binds",
            callback=_bind_option,
        ),
    ] = "127.0.0.1",
    password_port: Annotated[
        int | None,
        typer.Option(
            "--password-port",
            min=1,
            max=65535,
            help="a third TLS listener, for gateways with a username and password (fleet "
            "provision --password), on this port (8886 is usual) [default: none]",
        ),
    ] = None,
    password_bind: Annotated[
        str,
        typer.Option(
            "--password-bind",
            help="the address the password listener binds",
            callback=_bind_option,
        ),
    ] = "127.0.0.1",
    passwords: Annotated[
        Path | None,
        typer.Option(
            "--passwords",
            help="the password file the password listener reads (mosquitto_passwd hashes; "
            "made empty, 0600, if missing) [default: CA-DIR/passwords]",
        ),
    ] = None,
    topic_root: RootOpt = DEFAULT_ROOT,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="where Mosquitto keeps its persistence file")
    ] = Path("/var/lib/mosquitto"),
    force: Annotated[
        bool, typer.Option("--force", help="overwrite the files if they are there")
    ] = False,
) -> None:
    """Write a Mosquitto 2 config (TLS listeners that require a certificate of the fleet's
    CA and check its CRL: the gateways', where a client's id is its certificate's name,
    and the center's; with --password-port, one for gateways with a password) and the ACL
    that confines each gateway to its topics."""
    from central.broker_config import BrokerConfig, BrokerConfigError  # noqa: PLC0415

    try:
        config = BrokerConfig(
            ca_dir=ca_dir,
            out=out,
            port=port,
            bind=bind,
            topic_root=topic_root,
            data_dir=data_dir,
            center_port=center_port,
            center_bind=center_bind,
            enroll_port=enroll_port,
            enroll_bind=enroll_bind,
            password_port=password_port,
            password_bind=password_bind,
            password_file=passwords,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        written = config.write(force=force)
    except BrokerConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(f"run: mosquitto -c {written[0]}")
