"""Token enrollment on the center: ``fleet provision GW --token`` (a one-time token),
``fleet provision pending`` and ``fleet provision approve GW`` (requests no token vouches
for), and ``fleet central enroll``, the service that signs (``central.signer``)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.broker_options import (
    DEFAULT_BROKER,
    BrokerOpt,
    CaFileOpt,
    CertFileOpt,
    KeyFileOpt,
    PasswordFileOpt,
    UsernameOpt,
    broker_settings,
)
from cli.broker_reload import reload_broker
from cli.store_options import DEFAULT_DB, DbOpt, open_db, require_db
from cli.topic_options import RootOpt
from edge_agent.contract.topics import DEFAULT_ROOT

DEFAULT_CA_DIR = Path("fleet-ca")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def issue_token(
    ca_dir: Path,
    gateway: str,
    site: str,
    tags: dict[str, str],
    broker: str,
    ttl_s: float,
    *,
    review: bool,
    passwords: Path | None,
    pid: int | None,
) -> None:
    """``fleet provision GW --token``: the token is printed once and kept nowhere; its
    hash goes into the enrollment listener's password file as the password of
    ``enroll-GW``, the identity the gateway logs in as there."""
    from central import passwords as password_file  # noqa: PLC0415
    from central.enrollment import live_tokens, make_token, new_token  # noqa: PLC0415
    from central.pki import CA_CERT  # noqa: PLC0415
    from edge_agent.contract.csr import enrollment_identity  # noqa: PLC0415

    if not (ca_dir / CA_CERT).is_file():
        raise _fail(f"{ca_dir} is not a fleet CA (no {CA_CERT}; fleet ca init makes one)")
    pw_path = passwords if passwords is not None else ca_dir / password_file.ENROLL_PASSWORDS
    identity = enrollment_identity(gateway)
    token = make_token()
    try:
        password_file.entries(pw_path)  # a file we would refuse to change, refused first
        line = password_file.hash_line(identity, token)
        new_token(
            ca_dir, gateway, site=site, tags=tags, broker=broker, ttl_s=ttl_s, review=review,
            token=token,
        )  # fmt: skip
        password_file.set_line(pw_path, line)
        live = {enrollment_identity(gw) for gw in live_tokens(ca_dir)}
        password_file.keep_enrollments(pw_path, live | {identity})
    except password_file.PasswordError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot write into {ca_dir}: {exc.strerror or exc}") from None
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() + ttl_s))
    typer.echo(f"gateway {gateway}: one-time enrollment token (works once, until {until}):")
    typer.echo(token)
    typer.echo(
        f"its hash is in {pw_path}, the password of {identity} on the broker's "
        "enrollment listener"
        + ("; its request waits for fleet provision approve" if review else "")
    )
    typer.echo(
        "on the gateway (with the fleet's ca.crt; the center must run fleet central enroll): "
        f"edge-agent enroll --token {token} --gateway {gateway} "
        "--broker mqtts://BROKER:8885 --ca-file ca.crt"
    )
    reload_broker(pid)


def show_pending(ca_dir: Path, json_out: bool) -> None:
    """``fleet provision pending``: requests waiting for an operator."""
    from central.enrollment import EnrollmentError, pending  # noqa: PLC0415

    try:
        waiting = pending(ca_dir)
    except EnrollmentError as exc:
        raise _fail(str(exc)) from None
    if json_out:
        rows = [
            {
                "gateway": p.gateway,
                "key_sha256": p.key_fingerprint,
                "first_seen": p.first_seen,
                "last_seen": p.last_seen,
                "requests": p.requests,
                "approved": p.approved,
            }
            for p in waiting
        ]
        typer.echo(json.dumps(rows))
        return
    if not waiting:
        typer.echo("no request waits for approval")
        return
    for p in waiting:
        state = "approved, not fetched yet" if p.approved else f"{p.requests} request(s)"
        seen = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(p.last_seen))
        typer.echo(f"{p.gateway}  key sha256 {p.key_fingerprint}  last {seen}  {state}")
    typer.echo(
        "compare the key with what edge-agent enroll printed, then: "
        "fleet provision approve GW --key SHA256"
    )


def approve(
    ca_dir: Path,
    db: str,
    gateway: str,
    key: str,
    site: str,
    tags: dict[str, str],
    broker: str,
    days: int,
) -> None:
    """``fleet provision approve GW --key SHA256``: sign its pending request, if it is
    still the one for that key."""
    from central.enrollment import EnrollmentError  # noqa: PLC0415
    from central.enrollment import approve as approve_request  # noqa: PLC0415
    from central.pki import PkiError  # noqa: PLC0415
    from central.store import StoreError  # noqa: PLC0415

    was_revoked = revoked_before(ca_dir, gateway)
    store = open_db(db, create=True)
    try:
        record = approve_request(
            ca_dir, store, gateway, key=key, site=site, tags=tags, broker=broker, days=days
        )
    except (EnrollmentError, PkiError, StoreError) as exc:
        raise _fail(str(exc)) from None
    finally:
        store.close()
    typer.echo(
        f"gateway {gateway}: key sha256 {record.key_fingerprint} approved and signed; "
        "it gets its certificate at its next request"
    )
    if was_revoked:
        typer.echo(still_denied(gateway))


def central_enroll(
    ca_dir: Annotated[
        Path,
        typer.Option("--ca-dir", envvar="EDGEFLEET_CA_DIR", help="the CA folder (its key signs)"),
    ] = DEFAULT_CA_DIR,
    broker: BrokerOpt = DEFAULT_BROKER,
    db: DbOpt = DEFAULT_DB,
    topic_root: RootOpt = DEFAULT_ROOT,
    client_id: Annotated[
        str, typer.Option(help="MQTT client id of the signing service")
    ] = "edgefleet-central-enroll",
    days: Annotated[
        int, typer.Option("--days", min=1, max=36500, help="how long certificates last")
    ] = 825,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    username: UsernameOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    cert_file: CertFileOpt = None,
    key_file: KeyFileOpt = None,
) -> None:
    """Run the signing service: answer token enrollments (from the broker's enrollment
    listener) and certificate renewals (from gateways' own topics) with certificates of
    the fleet's CA; the CA's key is read by this process only."""
    from central.pki import PkiError, load_authority  # noqa: PLC0415
    from central.signer import Signer, run_signer  # noqa: PLC0415
    from edge_agent.contract import Topics  # noqa: PLC0415

    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        load_authority(ca_dir)  # a folder that cannot sign: said now, not at a request
    except PkiError as exc:
        raise _fail(str(exc)) from None
    url = broker_settings(broker, username, password_file, ca_file, cert_file, key_file)
    store = open_db(require_db(db))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    signer = Signer(store, ca_dir, url, Topics(topic_root), client_id=client_id, days=days)
    logging.getLogger("central").info(
        "signing service: broker %s, CA %s, store %s", url, ca_dir, store.label
    )
    try:
        run_signer(signer, stop)
    finally:
        store.close()


def revoked_before(ca_dir: Path, gateway: str) -> bool:
    """Whether ``gateway`` is on the CA folder's revoked list (``fleet revoke``)."""
    from central.pki import PkiError  # noqa: PLC0415
    from central.revocation import revoked_gateways  # noqa: PLC0415

    try:
        return gateway in revoked_gateways(ca_dir)
    except PkiError:
        return False  # a list edited by hand: fleet revoke says what is wrong with it


def still_denied(gateway: str) -> str:
    """What an operator must do for a gateway revoked and now given a new identity: the
    broker's ACL still denies its name every topic (``fleet revoke --acl``)."""
    return (
        f"note: {gateway} was revoked, and the broker's ACL still denies it every topic: "
        "write the ACL again (fleet broker-config --force, with the options it was made "
        "with) and reload the broker, or the new identity can publish nothing"
    )
