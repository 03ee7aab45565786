"""``fleet revoke GW``: the gateway's certificates on the CRL, its name denied everything in
the broker's ACL, the broker told to reload both, and its identities marked revoked in the
registry, so that the center refuses what it still sends (``central.revocation``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.fleet_pki import DEFAULT_CA_DIR
from cli.store_options import DEFAULT_DB, DbOpt, open_db, require_db
from cli.topic_options import gateway_option

RELOAD_HINT = (
    "tell the broker to reload (it re-reads the CRL and the ACL on SIGHUP): "
    "systemctl reload mosquitto, or kill -HUP <its pid>"
)


def revoke(
    gateway: Annotated[
        str, typer.Argument(metavar="GW", help="the gateway to revoke", callback=gateway_option)
    ],
    ca_dir: Annotated[
        Path, typer.Option("--ca-dir", envvar="EDGEFLEET_CA_DIR", help="the CA folder")
    ] = DEFAULT_CA_DIR,
    acl: Annotated[
        Path | None,
        typer.Option(
            "--acl",
            help="the broker's edgefleet.acl (fleet broker-config wrote it): the revoked "
            "gateways are denied every topic in it",
        ),
    ] = None,
    broker_pid_file: Annotated[
        Path | None,
        typer.Option(
            "--broker-pid-file",
            help="Mosquitto's pid file: the broker is sent SIGHUP, to reload the CRL and ACL",
        ),
    ] = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Revoke a gateway: its certificates go on the CRL (it cannot connect again), its name
    is denied every topic in the broker's ACL (its live session can do nothing once the
    broker reloads), and the center refuses what it sends."""
    # cryptography and the store load for this command only
    from central.pki import PkiError  # noqa: PLC0415
    from central.revocation import revoke as revoke_in_ca  # noqa: PLC0415
    from central.revocation import revoked_gateways, update_acl  # noqa: PLC0415
    from central.store import StoreError  # noqa: PLC0415

    store = open_db(require_db(db))
    try:
        if not store.identities(gateway):
            typer.echo(
                f"error: {db} has no identity of {gateway} (fleet provision makes one)", err=True
            )
            raise typer.Exit(1)
        pid = _broker_pid(broker_pid_file) if broker_pid_file is not None else None
        try:
            done = revoke_in_ca(ca_dir, gateway)
            if acl is not None:
                update_acl(acl, revoked_gateways(ca_dir))
        except PkiError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except OSError as exc:
            typer.echo(f"error: cannot write into {ca_dir}: {exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None
        try:
            marked = store.revoke_identities(gateway, time.time())
        except StoreError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    finally:
        store.close()
    if done.serials:
        serials = ", ".join(f"{s:x}" for s in done.serials)
        typer.echo(f"{gateway}: certificate serial {serials} on the CRL (number {done.crl_number})")
    else:
        typer.echo(f"{gateway}: no certificate of it on record in {ca_dir} not already revoked")
    typer.echo(f"{gateway}: {marked} identit{'y' if marked == 1 else 'ies'} marked revoked")
    if acl is not None:
        typer.echo(f"{gateway}: denied every topic in {acl}")
    else:
        typer.echo("no --acl given: its live session is cut only by a broker restart")
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            typer.echo(f"error: cannot signal the broker (pid {pid}): {exc.strerror}", err=True)
            typer.echo(RELOAD_HINT, err=True)
            raise typer.Exit(1) from None
        typer.echo(f"broker (pid {pid}) told to reload")
    else:
        typer.echo(RELOAD_HINT)


def _broker_pid(path: Path) -> int:
    """The pid in Mosquitto's pid file, read before anything changes."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError as exc:
        raise typer.BadParameter(
            f"{path}: {exc.strerror}", param_hint="--broker-pid-file"
        ) from None
    if not text.isdigit() or not 1 < int(text) < 2**22:
        raise typer.BadParameter(f"{path} holds no pid", param_hint="--broker-pid-file")
    return int(text)
