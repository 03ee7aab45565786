"""``fleet revoke GW``: the gateway's certificates on the CRL, its password (if it has one)
out of the broker's password file, its name denied everything in the broker's ACL, the
broker told to reload them, and its identities marked revoked in the registry, so that
the center refuses what it still sends (``central.revocation``, ``central.passwords``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cli.broker_reload import BrokerPidFileOpt, broker_pid, reload_broker
from cli.fleet_pki import DEFAULT_CA_DIR
from cli.store_options import DEFAULT_DB, DbOpt, open_db, require_db
from cli.topic_options import gateway_option


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
    passwords: Annotated[
        Path | None,
        typer.Option(
            "--passwords",
            help="the broker's password file (fleet provision --password): the gateway's "
            "line is taken out [default: CA-DIR/passwords, if it is there]",
        ),
    ] = None,
    broker_pid_file: BrokerPidFileOpt = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Revoke a gateway: its certificates go on the CRL and its password out of the
    broker's password file (it cannot connect again), its name is denied every topic in
    the broker's ACL (its live session can do nothing once the
    broker reloads), and the center refuses what it sends."""
    # cryptography and the store load for this command only
    from central import passwords as password_file  # noqa: PLC0415
    from central.enrollment import EnrollmentError, withdraw  # noqa: PLC0415
    from central.pki import PkiError  # noqa: PLC0415
    from central.revocation import revoke as revoke_in_ca  # noqa: PLC0415
    from central.revocation import revoked_gateways, update_acl  # noqa: PLC0415
    from central.store import StoreError  # noqa: PLC0415
    from edge_agent.contract.csr import enrollment_identity  # noqa: PLC0415

    store = open_db(require_db(db))
    pw_path = passwords if passwords is not None else ca_dir / password_file.PASSWORDS
    try:
        identities = store.identities(gateway)
        if not identities:
            typer.echo(
                f"error: {db} has no identity of {gateway} (fleet provision makes one)", err=True
            )
            raise typer.Exit(1)
        has_password = any(i.kind == "password" for i in identities)
        if has_password and not pw_path.exists():
            typer.echo(
                f"error: {gateway} has a password and there is no password file {pw_path} "
                "(--passwords names the broker's)",
                err=True,
            )
            raise typer.Exit(1)
        pid = broker_pid(broker_pid_file) if broker_pid_file is not None else None
        try:
            enroll_path = ca_dir / password_file.ENROLL_PASSWORDS
            for path in (pw_path, enroll_path):
                if path.exists():
                    password_file.entries(path)  # a file it would not change, before the CRL
            done = revoke_in_ca(ca_dir, gateway)
            withdrawn = withdraw(ca_dir, gateway)
            # a password the file still has (of a gateway provisioned both ways) goes too
            removed = pw_path.exists() and password_file.remove(pw_path, gateway)
            # and its token's login to the enrollment listener
            unlisted = enroll_path.exists() and password_file.remove(
                enroll_path, enrollment_identity(gateway)
            )
            if acl is not None:
                update_acl(acl, revoked_gateways(ca_dir))
        except password_file.PasswordError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except (PkiError, EnrollmentError) as exc:
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
    elif any(i.kind == "certificate" for i in identities):
        typer.echo(f"{gateway}: no certificate of it on record in {ca_dir} not already revoked")
    for what in withdrawn:
        which = "unused enrollment token" if what == "token" else "enrollment request waiting"
        typer.echo(f"{gateway}: its {which} taken back")
    if removed:
        typer.echo(f"{gateway}: its password taken out of {pw_path}")
    elif has_password:
        typer.echo(f"{gateway}: no password of it in {pw_path} (taken out before)")
    if unlisted:
        typer.echo(f"{gateway}: its enrollment login taken out of {enroll_path}")
    typer.echo(f"{gateway}: {marked} identit{'y' if marked == 1 else 'ies'} marked revoked")
    if acl is not None:
        typer.echo(f"{gateway}: denied every topic in {acl}")
    else:
        typer.echo("no --acl given: its live session is cut only by a broker restart")
    reload_broker(pid)
