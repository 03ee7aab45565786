"""``fleet ca init`` and ``fleet provision``: the fleet's certificate authority, and a
gateway's identity issued from it into one enrollment bundle (``central.pki``,
``edge_agent.contract.enrollment``). ``cryptography`` loads inside the commands only:
``fleet --help`` does not pay for it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cli.apps import group
from cli.fleet_enroll import approve, issue_token, show_pending
from cli.store_options import DEFAULT_DB, DbOpt, open_db
from cli.topic_options import gateway_option

ca_app = group("The fleet's certificate authority: CA, broker, center and command keys.")

DEFAULT_CA_DIR = Path("fleet-ca")
CaDirOpt = Annotated[
    Path,
    typer.Option("--dir", envvar="EDGEFLEET_CA_DIR", help="the CA folder (fleet ca init makes it)"),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="overwrite what is there")]


def broker_name_option(values: list[str] | None) -> list[str] | None:
    """Each ``--broker-name`` a DNS name, checked before the CA folder is touched: a usage
    error (exit 2), not a certificate half made."""
    from central.pki import check_dns_name  # noqa: PLC0415

    for value in values or ():
        try:
            check_dns_name(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return values


def broker_ip_option(values: list[str] | None) -> list[str] | None:
    """Each ``--broker-ip`` an IP address: a usage error (exit 2) otherwise."""
    from central.pki import check_ip  # noqa: PLC0415

    for value in values or ():
        try:
            check_ip(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return values


@ca_app.command("init")
def ca_init(
    folder: CaDirOpt = DEFAULT_CA_DIR,
    broker_name: Annotated[
        list[str] | None,
        typer.Option(
            "--broker-name",
            help="a DNS name of the broker, for its certificate (repeatable; *.NAME for a "
            "wildcard) [default: localhost]",
            callback=broker_name_option,
        ),
    ] = None,
    broker_ip: Annotated[
        list[str] | None,
        typer.Option(
            "--broker-ip",
            help="an IP address of the broker, for its certificate (repeatable) "
            "[default: 127.0.0.1]",
            callback=broker_ip_option,
        ),
    ] = None,
    days: Annotated[
        int,
        typer.Option("--days", min=1, max=36500, help="how long the CA and its certificates last"),
    ] = 3650,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="replace an existing CA and its keys (every gateway must then be enrolled again)",
        ),
    ] = False,
) -> None:
    """Create the fleet's CA in a folder: ca.crt/ca.key, an empty crl.pem, the broker's
    server certificate, the center's client certificate (CN edgefleet-central) and the
    command-signing key pair (command.key, command.pub)."""
    # cryptography loads for this command only
    from central.pki import DEFAULT_BROKER_IPS, DEFAULT_BROKER_NAMES, PkiError, init_ca  # noqa: PLC0415

    if broker_name or broker_ip:  # given: the certificate holds exactly these
        names, ips = broker_name or [], broker_ip or []
    else:
        names, ips = list(DEFAULT_BROKER_NAMES), list(DEFAULT_BROKER_IPS)
    try:
        written = init_ca(folder, broker_names=names, broker_ips=ips, days=days, force=force)
    except PkiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"error: cannot write into {folder}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"fleet CA in {folder}: {', '.join(p.name for p in written)}")
    typer.echo(
        f"broker certificate for {', '.join([*names, *ips])}; keep {folder} on the center "
        "(its .key files are secrets)"
    )


def tag_option(values: list[str] | None) -> list[str] | None:
    for value in values or ():
        key, eq, _ = value.partition("=")
        if not eq or not key:
            raise typer.BadParameter(f"{value!r}: a tag is key=value")
    return values


def _enrollment_request(
    ctx: typer.Context,
    verb: str,
    gateway: str | None,
    ca_dir: Path,
    db: str,
    site: str,
    tags: dict[str, str],
    broker: str,
    days: int,
    json_out: bool,
) -> None:
    if verb == "pending":
        if gateway is not None:
            raise typer.BadParameter("pending takes no gateway")
        show_pending(ca_dir, json_out)
        return
    if gateway is None:
        raise typer.BadParameter("approve which gateway? fleet provision approve GW")
    gateway_option(gateway)
    require_named_store(ctx, db)
    approve(ca_dir, db, gateway, site, tags, broker, days)


def _ttl(text: str) -> float:
    from edge_agent.durations import parse_duration  # noqa: PLC0415

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--token-ttl") from None
    if not 60 <= seconds <= 90 * 86400:
        raise typer.BadParameter("a token lasts 1 minute to 90 days", param_hint="--token-ttl")
    return seconds


def require_named_store(ctx: typer.Context, db: str) -> None:
    """Exit 1 unless the store is there or was named (``--db``, ``EDGEFLEET_DB``). Like
    every ``fleet`` command but ``fleet central run``, provision does not make a store it
    was not told of: ``central.db`` made in whatever folder it ran in would hold an
    identity the center never sees. A store named on purpose is made if missing, so a
    fleet can be provisioned before the center first runs."""
    source = ctx.get_parameter_source("db")
    # by name: Typer's own copy of click (0.2x) has its own ParameterSource class
    if getattr(source, "name", None) != "DEFAULT" or Path(db).exists():
        return
    typer.echo(
        f"error: no central store at {db} (the default, in this folder): name the "
        "center's store with --db or EDGEFLEET_DB (it is made there if missing)",
        err=True,
    )
    raise typer.Exit(1)


def provision(
    ctx: typer.Context,
    gateway: Annotated[
        str,
        typer.Argument(
            metavar="GW",
            help="the new gateway's id; or approve (then GW), or pending",
            callback=gateway_option,
        ),
    ],
    approved: Annotated[
        str | None,
        typer.Argument(
            metavar="[GW]",
            help="after approve: the gateway whose request to sign",
            show_default=False,
        ),
    ] = None,
    site: Annotated[str, typer.Option("--site", help="where the gateway is")] = "",
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="a tag, key=value (repeatable)", callback=tag_option),
    ] = None,
    ca_dir: Annotated[
        Path, typer.Option("--ca-dir", envvar="EDGEFLEET_CA_DIR", help="the CA folder")
    ] = DEFAULT_CA_DIR,
    broker: Annotated[
        str,
        typer.Option("--broker", help="the broker URL the gateway connects to (mqtts://)"),
    ] = "mqtts://localhost:8883",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="the enrollment bundle to write [default: GW.bundle]"),
    ] = None,
    days: Annotated[
        int, typer.Option("--days", min=1, max=36500, help="how long the certificate lasts")
    ] = 825,
    force: ForceOpt = False,
    token: Annotated[
        bool,
        typer.Option(
            "--token",
            help="make a one-time enrollment token instead of a bundle: the gateway makes "
            "its own key, and fleet central enroll signs its request once",
        ),
    ] = False,
    token_ttl: Annotated[
        str, typer.Option("--token-ttl", help="how long the token stays good: 7d, 12h")
    ] = "7d",
    json_out: Annotated[bool, typer.Option("--json", help="pending: as JSON")] = False,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Issue a gateway's client certificate (CN = GW), record its identity in the registry
    and write one enrollment bundle (0600) for `edge-agent enroll`; with --token, a
    one-time token instead. `fleet provision pending` lists enrollment requests no token
    vouches for; `fleet provision approve GW` signs one."""
    # cryptography and the store load for this command only
    from central.pki import (  # noqa: PLC0415
        CENTRAL_CN,
        COMMAND_PUB,
        PkiError,
        issue_client,
    )
    from central.revocation import record_issued  # noqa: PLC0415
    from central.store import StoreError  # noqa: PLC0415
    from central.store.rows import Identity  # noqa: PLC0415
    from edge_agent.contract import enrollment  # noqa: PLC0415
    from mqttlink.url import BrokerUrl  # noqa: PLC0415

    tags = dict(t.partition("=")[::2] for t in tag or ())
    if gateway in ("approve", "pending"):
        _enrollment_request(ctx, gateway, approved, ca_dir, db, site, tags, broker, days, json_out)
        return
    if approved is not None:
        raise typer.BadParameter(f"one gateway at a time: {approved!r} is one too many")
    if gateway == CENTRAL_CN or gateway.startswith("edgefleet-"):
        # the broker's ACL gives the center's name the center's rights
        raise typer.BadParameter(
            f"{gateway!r}: ids starting edgefleet- are the center's, not a gateway's",
            param_hint="GW",
        )
    try:
        url = BrokerUrl.parse(broker)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--broker") from None
    if url.scheme != "mqtts":
        raise typer.BadParameter(
            "a gateway's certificate is for a TLS listener: mqtts://", param_hint="--broker"
        )
    if token:
        issue_token(ca_dir, gateway, site, tags, broker, _ttl(token_ttl))
        return
    require_named_store(ctx, db)
    bundle_path = out if out is not None else Path(f"{gateway}.bundle")
    if bundle_path.exists() and not force:
        typer.echo(f"error: {bundle_path} exists; not overwriting it (--force does)", err=True)
        raise typer.Exit(1)
    try:
        command_pub = (ca_dir / COMMAND_PUB).read_text()
        issued = issue_client(ca_dir, gateway, days)
        ca_crt = (ca_dir / "ca.crt").read_text()
    except PkiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(
            f"error: {ca_dir} is not a fleet CA ({exc.filename}: {exc.strerror}; "
            "fleet ca init makes one)",
            err=True,
        )
        raise typer.Exit(1) from None
    bundle = enrollment.Bundle(
        gateway=gateway,
        broker=broker,
        files={
            enrollment.CA_FILE: ca_crt,
            enrollment.CERT_FILE: issued.cert_pem.decode(),
            enrollment.KEY_FILE: issued.key_pem.decode(),
            enrollment.COMMAND_KEY_FILE: command_pub,
            enrollment.CONFIG_FILE: enrollment.starter_config(gateway, site, tags, broker),
        },
    )
    # the bundle is staged beside its place before the registry records the identity, and
    # renamed in after: a bundle that cannot be written records nothing, and a registry
    # that refuses leaves no bundle
    store = open_db(db, create=True)
    try:
        staged = _stage_bundle(bundle_path, bundle.encode())
        try:
            store.add_identity(
                Identity(gateway, "certificate", issued.fingerprint, time.time(), issued.not_after),
                site=site or None,
                tags=tags or None,
            )
        except StoreError as exc:
            staged.unlink(missing_ok=True)
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    finally:
        store.close()
    try:
        record_issued(ca_dir, gateway, issued.cert_pem)  # so that fleet revoke finds its serial
    except (PkiError, OSError) as exc:
        staged.unlink(missing_ok=True)
        typer.echo(f"error: cannot keep a copy of the certificate in {ca_dir}: {exc}", err=True)
        raise typer.Exit(1) from None
    staged.replace(bundle_path)
    expires = time.strftime("%Y-%m-%d", time.gmtime(issued.not_after))
    typer.echo(
        f"gateway {gateway}: certificate sha256 {issued.fingerprint} until {expires}; "
        f"bundle {bundle_path} (it holds the gateway's key: hand it over, then delete it)"
    )
    typer.echo(f"on the gateway: edge-agent enroll {bundle_path.name}")


def _stage_bundle(path: Path, data: bytes) -> Path:
    """``data`` in a 0600 file beside ``path``, to be renamed onto it; exit 1 with one line
    if it cannot be written there (no such folder, not writable)."""
    # loaded by the command that uses it, as in provision
    from central.pki import write_private  # noqa: PLC0415

    staged = path.with_name(f".{path.name}.tmp")
    try:
        staged.unlink(missing_ok=True)  # a stale one (or a link) is not written through
        return write_private(staged, data)
    except OSError as exc:
        typer.echo(f"error: cannot write the bundle {path}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
