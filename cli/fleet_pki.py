"""``fleet ca init`` and ``fleet provision``: the fleet's certificate authority, and a
gateway's identity issued from it into one enrollment bundle (``central.pki``,
``edge_agent.contract.enrollment``). ``cryptography`` loads inside the commands only:
``fleet --help`` does not pay for it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.apps import group
from cli.broker_reload import BrokerPidFileOpt, broker_pid, reload_broker
from cli.fleet_enroll import approve, issue_token, revoked_before, show_pending, still_denied
from cli.store_options import DEFAULT_DB, DbOpt, open_db
from cli.topic_options import gateway_option

if TYPE_CHECKING:
    from central.store.rows import Identity

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
    add_center_ca: Annotated[
        bool,
        typer.Option(
            "--add-center-ca",
            help="to a folder made before the center had a CA of its own: add it and issue "
            "the center's certificate again (the fleet's CA and the gateways' stay)",
        ),
    ] = False,
) -> None:
    """Create the fleet's CA in a folder: ca.crt/ca.key, an empty crl.pem, the broker's
    server certificate, the center's client certificate (CN edgefleet-central) and the
    command-signing key pair (command.key, command.pub)."""
    # cryptography loads for this command only
    from central.pki import DEFAULT_BROKER_IPS, DEFAULT_BROKER_NAMES, PkiError, init_ca  # noqa: PLC0415

    if add_center_ca:
        _add_center_ca(folder, days)
        return
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


def _add_center_ca(folder: Path, days: int) -> None:
    from central.pki import PkiError, add_center_ca  # noqa: PLC0415

    try:
        written = add_center_ca(folder, days)
    except PkiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"error: cannot write into {folder}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"center CA in {folder}: {', '.join(p.name for p in written)}")
    typer.echo("now: fleet broker-config again, and restart the broker and the center")


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
    key: str | None,
) -> None:
    if verb == "pending":
        if gateway is not None:
            raise typer.BadParameter("pending takes no gateway")
        show_pending(ca_dir, json_out)
        return
    if gateway is None:
        raise typer.BadParameter("approve which gateway? fleet provision approve GW")
    gateway_option(gateway)
    if key is None:
        raise typer.BadParameter(
            "the key's sha256 that edge-agent enroll printed on the gateway (fleet provision "
            "pending shows the one waiting): only that key is signed",
            param_hint="--key",
        )
    require_named_store(ctx, db)
    approve(ca_dir, db, gateway, key, site, tags, broker, days)


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
        str | None,
        typer.Option(
            "--broker",
            help="the broker URL the gateway connects to (mqtts://) "
            "[default: mqtts://localhost:8883, with --password :8886]",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="the enrollment bundle to write [default: GW.bundle]"),
    ] = None,
    days: Annotated[
        int, typer.Option("--days", min=1, max=36500, help="how long the certificate lasts")
    ] = 825,
    password: Annotated[
        bool,
        typer.Option(
            "--password",
            help="a username (GW) and a random password in place of a client certificate, "
            "for the broker's password listener (fleet broker-config --password-port)",
        ),
    ] = False,
    passwords: Annotated[
        Path | None,
        typer.Option(
            "--passwords",
            help="with --password or --token: the broker's password file, where the "
            "password's or the token's hash goes (mosquitto_passwd) "
            "[default: CA-DIR/passwords; with --token, CA-DIR/enroll-passwords]",
        ),
    ] = None,
    broker_pid_file: BrokerPidFileOpt = None,
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
    review: Annotated[
        bool,
        typer.Option(
            "--review",
            help="with --token: the gateway's request waits until fleet provision approve "
            "GW --key SHA256 signs the key the gateway printed",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="pending: as JSON")] = False,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            metavar="SHA256",
            help="approve: the key's sha256 as the gateway printed it (16 hex digits or "
            "more); a request for another key is not signed",
            show_default=False,
        ),
    ] = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Issue a gateway's client certificate (CN = GW), or with --password a random password
    for username GW (its hash into the broker's password file), record its identity in
    the registry and write one enrollment bundle (0600) for `edge-agent enroll`; with
    --token, a one-time token instead. `fleet provision pending` lists enrollment
    requests no token vouches for; `fleet provision approve GW --key SHA256` signs one."""
    # cryptography and the store load for this command only
    from central.pki import is_center_name  # noqa: PLC0415
    from mqttlink.url import BrokerUrl  # noqa: PLC0415

    tags = dict(t.partition("=")[::2] for t in tag or ())
    if gateway in ("approve", "pending"):
        to = broker or ""  # the token's
        _enrollment_request(ctx, gateway, approved, ca_dir, db, site, tags, to, days, json_out, key)
        return
    if approved is not None:
        raise typer.BadParameter(f"one gateway at a time: {approved!r} is one too many")
    if is_center_name(gateway):
        # the broker's ACL gives the center's name the center's rights
        raise typer.BadParameter(
            f"{gateway!r}: ids starting edgefleet- are the center's, not a gateway's",
            param_hint="GW",
        )
    if passwords is not None and not (password or token):
        raise typer.BadParameter(
            "is for a gateway provisioned --password or --token", param_hint="--passwords"
        )
    if review and not token:
        raise typer.BadParameter("is for a gateway provisioned --token", param_hint="--review")
    if password and token:
        raise typer.BadParameter("one of --password and --token", param_hint="--token")
    if broker_pid_file is not None and not (password or token):
        raise typer.BadParameter(
            "is for --password or --token: a certificate changes nothing the broker reads",
            param_hint="--broker-pid-file",
        )
    pid = broker_pid(broker_pid_file) if broker_pid_file is not None else None
    # by name: Typer's own copy of click (0.2x) has its own ParameterSource class
    if password and getattr(ctx.get_parameter_source("days"), "name", None) != "DEFAULT":
        raise typer.BadParameter(
            "is for a certificate; a password has no expiry", param_hint="--days"
        )
    if broker is None:
        broker = f"mqtts://localhost:{DEFAULT_PASSWORD_PORT if password else 8883}"
    try:
        url = BrokerUrl.parse(broker)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--broker") from None
    if url.scheme != "mqtts":
        raise typer.BadParameter(
            "a gateway's certificate is for a TLS listener: mqtts://"
            if not password
            else "a password goes to the broker over TLS only: mqtts://",
            param_hint="--broker",
        )
    if token:
        ttl_s = _ttl(token_ttl)
        issue_token(
            ca_dir, gateway, site, tags, broker, ttl_s, review=review, passwords=passwords,
            pid=pid,
        )  # fmt: skip
        return
    require_named_store(ctx, db)
    bundle_path = out if out is not None else Path(f"{gateway}.bundle")
    if bundle_path.exists() and not force:
        typer.echo(f"error: {bundle_path} exists; not overwriting it (--force does)", err=True)
        raise typer.Exit(1)
    issue = _PasswordIssue(passwords) if password else _CertificateIssue(days)
    was_revoked = revoked_before(ca_dir, gateway)
    issue.make(ca_dir, gateway, site, tags, broker)
    # the bundle is staged beside its place before the registry records the identity, and
    # renamed in after: a bundle that cannot be written records nothing, and a registry
    # that refuses leaves no bundle
    _record(issue, bundle_path, db, site, tags)
    try:
        issue.keep(ca_dir)
    except _Refused as exc:
        issue.staged.unlink(missing_ok=True)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    issue.staged.replace(bundle_path)
    typer.echo(f"gateway {gateway}: {issue.said}; bundle {bundle_path} ({issue.held})")
    typer.echo(f"on the gateway: edge-agent enroll {bundle_path.name}")
    if was_revoked:
        typer.echo(still_denied(gateway))
    if password:
        reload_broker(pid)  # the password listener knows the new line once it reloads


DEFAULT_PASSWORD_PORT = 8886
"""The password listener's port (``fleet broker-config --password-port``), as the docs
give it."""


class _Refused(Exception):
    """A step of provision failed; the message is the error line."""


class _Issue:
    """One way of issuing a gateway's identity: ``make`` builds it and its bundle in
    memory, ``keep`` writes what the CA folder keeps of it once the registry has it."""

    kind: str
    bundle: bytes
    identity: Identity
    said: str
    held: str
    staged: Path

    def make(
        self, ca_dir: Path, gateway: str, site: str, tags: dict[str, str], broker: str
    ) -> None:
        raise NotImplementedError

    def keep(self, ca_dir: Path) -> None:
        raise NotImplementedError


def _ca_files(ca_dir: Path) -> tuple[str, str]:
    """The CA certificate and the command key's public half, for a bundle."""
    from central.pki import CA_CERT, COMMAND_PUB  # noqa: PLC0415

    try:
        return (ca_dir / CA_CERT).read_text(), (ca_dir / COMMAND_PUB).read_text()
    except OSError as exc:
        typer.echo(
            f"error: {ca_dir} is not a fleet CA ({exc.filename}: {exc.strerror}; "
            "fleet ca init makes one)",
            err=True,
        )
        raise typer.Exit(1) from None


class _CertificateIssue(_Issue):
    def __init__(self, days: int) -> None:
        self.days = days

    def make(
        self, ca_dir: Path, gateway: str, site: str, tags: dict[str, str], broker: str
    ) -> None:
        from central.pki import PkiError, issue_client  # noqa: PLC0415
        from central.store.rows import Identity  # noqa: PLC0415
        from edge_agent.contract import enrollment  # noqa: PLC0415

        ca_crt, command_pub = _ca_files(ca_dir)
        try:
            issued = issue_client(ca_dir, gateway, self.days)
        except PkiError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        self.gateway, self.cert_pem = gateway, issued.cert_pem
        self.bundle = enrollment.Bundle(
            gateway=gateway,
            broker=broker,
            files={
                enrollment.CA_FILE: ca_crt,
                enrollment.CERT_FILE: issued.cert_pem.decode(),
                enrollment.KEY_FILE: issued.key_pem.decode(),
                enrollment.COMMAND_KEY_FILE: command_pub,
                enrollment.CONFIG_FILE: enrollment.starter_config(gateway, site, tags, broker),
            },
        ).encode()
        self.identity = Identity(
            gateway, "certificate", issued.fingerprint, time.time(), issued.not_after
        )
        expires = time.strftime("%Y-%m-%d", time.gmtime(issued.not_after))
        self.said = f"certificate sha256 {issued.fingerprint} until {expires}"
        self.held = "it holds the gateway's key: hand it over, then delete it"

    def keep(self, ca_dir: Path) -> None:
        from central.pki import PkiError  # noqa: PLC0415
        from central.revocation import record_issued  # noqa: PLC0415

        try:
            record_issued(ca_dir, self.gateway, self.cert_pem)  # fleet revoke finds its serial
        except (PkiError, OSError) as exc:
            raise _Refused(f"cannot keep a copy of the certificate in {ca_dir}: {exc}") from None


class _PasswordIssue(_Issue):
    def __init__(self, passwords: Path | None) -> None:
        self.passwords = passwords

    def make(
        self, ca_dir: Path, gateway: str, site: str, tags: dict[str, str], broker: str
    ) -> None:
        from central import passwords  # noqa: PLC0415
        from central.store.rows import Identity  # noqa: PLC0415
        from edge_agent.contract import enrollment  # noqa: PLC0415

        ca_crt, command_pub = _ca_files(ca_dir)
        self.file = self.passwords or ca_dir / passwords.PASSWORDS
        secret = passwords.new_password()
        try:
            passwords.entries(self.file)  # a file we would refuse to change, refused first
            self.line = passwords.hash_line(gateway, secret)
        except passwords.PasswordError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        self.gateway = gateway
        self.bundle = enrollment.Bundle(
            gateway=gateway,
            broker=broker,
            kind=enrollment.PASSWORD,
            files={
                enrollment.CA_FILE: ca_crt,
                enrollment.PASSWORD_FILE: secret + "\n",
                enrollment.COMMAND_KEY_FILE: command_pub,
                enrollment.CONFIG_FILE: enrollment.starter_config(
                    gateway, site, tags, broker, enrollment.PASSWORD
                ),
            },
        ).encode()
        print_ = passwords.fingerprint(self.line)
        self.identity = Identity(gateway, "password", print_, time.time(), None)
        self.said = f"password, its hash in {self.file} (sha256 of the line {print_})"
        self.held = "it holds the gateway's password: hand it over, then delete it"

    def keep(self, ca_dir: Path) -> None:
        from central import passwords  # noqa: PLC0415
        from central.pki import PkiError  # noqa: PLC0415
        from central.revocation import reinstate  # noqa: PLC0415

        try:
            passwords.set_line(self.file, self.line)
            reinstate(ca_dir, self.gateway)  # a gateway provisioned again is not revoked
        except (passwords.PasswordError, PkiError, OSError) as exc:
            raise _Refused(str(exc)) from None


def _record(issue: _Issue, bundle_path: Path, db: str, site: str, tags: dict[str, str]) -> None:
    """Stage the bundle, then record the identity and the gateway in the registry; exit 1
    (and no bundle) if the registry refuses."""
    from central.store import StoreError  # noqa: PLC0415

    store = open_db(db, create=True)
    try:
        issue.staged = _stage_bundle(bundle_path, issue.bundle)
        try:
            store.add_identity(issue.identity, site=site or None, tags=tags or None)
        except StoreError as exc:
            issue.staged.unlink(missing_ok=True)
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    finally:
        store.close()


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
