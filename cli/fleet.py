"""``fleet``: the operator's command for the central service and the fleet's data."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from cli.apps import group, package_version, program
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
from cli.durations import length_option
from cli.fleet_broker import broker_config
from cli.fleet_cmd import cmd, commands
from cli.fleet_enroll import central_enroll
from cli.fleet_gateways import devices_app, gateways_app, status
from cli.fleet_pki import ca_app, provision
from cli.fleet_readings import readings
from cli.fleet_revoke import revoke
from cli.fleet_watch import watch
from cli.metrics_options import (
    DEFAULT_METRICS_HOST,
    MetricsHostOpt,
    MetricsPortOpt,
    serve_metrics,
)
from cli.output import (
    JsonOpt,
    print_fields,
    print_json,
    printable,
    show,
    shown,
    utc,
)
from cli.store_options import DEFAULT_DB, DbOpt, open_db
from cli.topic_options import KeyOpt, RootOpt, by_option, gateway_option, reason_option
from cli.where import WhereOpt, parse_where
from edge_agent.contract.topics import DEFAULT_ROOT

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mqttlink.url import Broker

app = program(
    "fleet",
    "EdgeFleet operator tool: run the central service, query gateways and readings.",
    lambda: package_version("fleet"),
)
central_app = group("The central service.")
alarms_app = group("Alarms raised at the edge: list, history, ack, shelve, reset.")
keys_app = group("The center's command-signing key.")
app.add_typer(central_app, name="central")
central_app.command("enroll")(central_enroll)
app.add_typer(gateways_app, name="gateways")
app.add_typer(devices_app, name="devices")
app.command("status")(status)
app.command("readings")(readings)
app.command("cmd")(cmd)
app.command("commands")(commands)
app.command("watch")(watch)
app.command("broker-config")(broker_config)
app.add_typer(alarms_app, name="alarms")
app.add_typer(keys_app, name="keys")
app.add_typer(ca_app, name="ca")
app.command("provision")(provision)
app.command("revoke")(revoke)

GatewayArg = Annotated[
    str, typer.Option("--gateway", "-g", help="gateway id", callback=gateway_option)
]
AlarmArg = Annotated[str, typer.Argument(metavar="ALARM", help="alarm id, as listed: device/rule")]
AlarmsArg = Annotated[
    list[str],
    typer.Argument(metavar="ALARM...", help="alarm ids, as listed (device/rule); one or more"),
]
ByOpt = Annotated[
    str,
    typer.Option("--by", help="who does it (kept in the alarm history)", callback=by_option),
]

SEVERITIES = ("critical", "major", "minor", "warning")
"""As the contract names them (``Severity``), most severe first."""

LIMIT_MAX = 2**63 - 1
"""The largest ``--limit``: what SQLite's LIMIT takes (a larger one was an OverflowError)."""

REPLY_TIMES = ("shelved_until",)
"""Fields of a command's result that are unix times: shown in UTC."""


@central_app.command("run")
def central_run(
    broker: BrokerOpt = DEFAULT_BROKER,
    db: DbOpt = DEFAULT_DB,
    topic_root: RootOpt = DEFAULT_ROOT,
    client_id: Annotated[
        str,
        typer.Option(
            help="MQTT client id (keep it stable: the sessions are persistent); alarms come "
            "on a second session, <client-id>-alarms"
        ),
    ] = "edgefleet-central",
    keep_raw: Annotated[
        str,
        typer.Option(
            help="how long raw readings are kept, by their edge time: 30d, 12w (s, m, h, d "
            "or w), or forever"
        ),
    ] = "30d",
    keep_rollups: Annotated[
        str,
        typer.Option(help="how long their 1-minute rollups are kept: 400d, or forever"),
    ] = "400d",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="ingest worker processes splitting the fleet through MQTT v5 shared "
            "subscriptions (PostgreSQL only: SQLite has one writer)",
        ),
    ] = 1,
    share_group: Annotated[
        str | None,
        typer.Option(
            help="the shared subscriptions' group, the same for every worker of one center "
            "(on every machine) [default: edgefleet-central when --workers > 1, else no "
            "shared subscription]",
            callback=share_group_option,
        ),
    ] = None,
    worker_index: Annotated[
        int | None,
        typer.Option(
            min=0, hidden=True, help="set by the supervisor: which worker this process is"
        ),
    ] = None,
    username: UsernameOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    cert_file: CertFileOpt = None,
    key_file: KeyFileOpt = None,
    metrics_port: MetricsPortOpt = 0,
    metrics_host: MetricsHostOpt = DEFAULT_METRICS_HOST,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            envvar="EDGEFLEET_KEY",
            help="the center's Ed25519 private key, as fleet cmd takes it (fleet keys init's "
            "center.key, or fleet ca init's command.key): every ack is signed with it, and "
            "gateways with central.command_key take no other [default: acks unsigned]",
        ),
    ] = None,
) -> None:
    """Run the central service: store what the fleet sends and acknowledge it."""
    # loaded by the command that uses it: fleet --help stays under 0.3 s
    from central.ingest import Ingest, run_central  # noqa: PLC0415
    from central.store import Retention, is_postgres  # noqa: PLC0415
    from central.workers import worker_client_id  # noqa: PLC0415
    from edge_agent.contract import Topics  # noqa: PLC0415

    if workers > 1 and not is_postgres(db):
        typer.echo(
            f"error: --workers {workers} needs a PostgreSQL store (--db postgresql://…): "
            "SQLite has one writer, so one worker",
            err=True,
        )
        raise typer.Exit(2)
    if worker_index is not None and worker_index >= workers:
        raise typer.BadParameter(
            f"{worker_index} is not below --workers", param_hint="--worker-index"
        )
    who = "" if workers == 1 else " supervisor" if worker_index is None else f" w{worker_index}"
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s{who} %(name)s: %(message)s",
    )
    url = broker_settings(broker, username, password_file, ca_file, cert_file, key_file)
    ack_key = _ack_key(key)  # every worker loads it: a bad key stops the start here
    retention = Retention(
        raw_s=_keep_option(keep_raw, "--keep-raw"),
        rollups_s=_keep_option(keep_rollups, "--keep-rollups"),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if workers > 1 and worker_index is None:
        _supervise(workers, stop)
        return
    worker = worker_index or 0
    group = share_group if share_group is not None or workers == 1 else DEFAULT_SHARE_GROUP
    # worker k serves its metrics on --metrics-port + k (the supervisor serves none);
    # before the store: a port in use leaves nothing to close
    metrics = serve_metrics(metrics_host, metrics_port + worker if metrics_port else 0)
    store = open_db(db, create=True)
    ingest = Ingest(
        store,
        url,
        Topics(topic_root),
        client_id=worker_client_id(client_id, worker, workers),
        retention=retention,
        worker=worker,
        share_group=group,
        ack_key=ack_key,
    )
    if metrics is not None:
        metrics.add_worker(ingest, str(worker))
    if worker_index is not None:
        from central.workers import watch_parent  # noqa: PLC0415

        watch_parent(stop, os.getppid())
    logging.getLogger("central").info(
        "central service%s: broker %s, store %s, keeping readings %s and rollups %s%s",
        "" if workers == 1 else f" worker {worker} of {workers}",
        url,
        store.label,
        keep_raw,
        keep_rollups,
        "" if group is None else f", shared subscriptions of group {group}",
    )
    if ack_key is None:
        logging.getLogger("central").warning(
            "no --key: acks go unsigned, and gateways with central.command_key ignore them "
            "(their outboxes never drain)"
        )
    try:
        code = run_central(store, ingest, stop)
    finally:
        if metrics is not None:
            metrics.close()
    if code:  # ingest stopped by itself: exit non-zero, so that systemd restarts us
        raise typer.Exit(code)


def _ack_key(key: Path | None) -> Ed25519PrivateKey | None:
    """The signing key ``--key`` names, or a one-line error and exit 1."""
    if key is None:
        return None
    from edge_agent.contract.commands import load_private_key  # noqa: PLC0415

    try:
        return load_private_key(key)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


DEFAULT_SHARE_GROUP = "edgefleet-central"


def share_group_option(value: str | None) -> str | None:
    """``--share-group``, if it can be an MQTT v5 share name (a topic level)."""
    if value is None:
        return None
    from edge_agent.contract.topics import TopicError, check_share_group  # noqa: PLC0415

    try:
        return check_share_group(value)
    except TopicError as exc:
        raise typer.BadParameter(str(exc)) from None


def _supervise(workers: int, stop: threading.Event) -> None:
    """Run ``workers`` processes of this same command, each told its number, and keep them
    up (``central.workers``). The workers get the command line as it came (and the
    environment), so that nothing given by the environment, a password in a ``--db`` URL
    among it, is put on a command line where ``ps`` would show it."""
    from central.workers import Supervisor  # noqa: PLC0415

    argv = sys.argv[1:]
    # a frozen (PyInstaller) fleet is its own interpreter and takes no -m
    frozen = getattr(sys, "frozen", False)
    program = [sys.executable] if frozen else [sys.executable, "-m", "cli.fleet"]
    supervisor = Supervisor(lambda k: [*program, *argv, "--worker-index", str(k)], workers, stop)
    logging.getLogger("central").info("central service: %d ingest workers", workers)
    code = supervisor.run()
    if code:
        raise typer.Exit(code)


@app.command("losses")
def losses(
    gateway: Annotated[str | None, typer.Option("--gateway", "-g", help="gateway id")] = None,
    db: DbOpt = DEFAULT_DB,
    json_out: JsonOpt = False,
) -> None:
    """Readings gateways had to drop (outbox full, too old, disk full): which, and when."""
    # loaded by the command that uses it: fleet --help stays under 0.3 s
    rows = open_db(db).losses(gateway)
    show(
        [r.to_json() for r in rows],
        json_out,
        ("gateway", "stream", "seq", "count", "taken from (UTC)", "to", "cause"),
        lambda: (
            (
                r.gateway,
                r.stream,
                f"{r.first_seq}..{r.last_seq}",
                str(r.count),
                utc(r.ts_first),
                utc(r.ts_last),
                r.cause,
            )
            for r in rows
        ),
    )


@app.command("rejected")
def rejected(
    gateway: Annotated[str | None, typer.Option("--gateway", "-g", help="gateway id")] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=LIMIT_MAX, help="at most this many, newest first")
    ] = 100,
    db: DbOpt = DEFAULT_DB,
    json_out: JsonOpt = False,
) -> None:
    """Messages the center could not store (dead letters): why, and what they held; and
    messages that resent seqs stored with other content (CONFLICT: kept whole, look)."""
    # loaded by the command that uses it: fleet --help stays under 0.3 s
    rows = open_db(db).rejected(gateway, limit)
    show(
        [r.to_json() for r in rows],  # JSON has no bytes: the payload as text
        json_out,
        ("gateway", "topic", "outbox rows", "times", "last seen (UTC)", "error"),
        lambda: (
            (
                r.gateway,
                r.topic,
                f"{r.stream} {r.seq_first}..{r.seq_last} "
                + ("(acked, CONFLICT)" if r.conflict else "(acked)")
                if r.stream
                else "unknown (not acked)",
                str(r.times),
                utc(r.last_seen),
                r.error,
            )
            for r in rows
        ),
    )


@keys_app.command("init")
def keys_init(key: KeyOpt = Path("center.key")) -> None:
    """Create the center's signing key pair; give the .pub file to every gateway
    (central.command_key in its config)."""
    # loaded by the command that uses it: fleet --help stays under 0.3 s
    from edge_agent.contract.commands import generate_keys  # noqa: PLC0415

    if key.exists():
        typer.echo(f"error: {key} exists; not overwriting a key gateways trust", err=True)
        raise typer.Exit(1)
    public = generate_keys(key)
    typer.echo(f"private key {key} (keep it on the center), public key {public}")


@keys_app.command("rotate")
def keys_rotate(
    key: KeyOpt = Path("center.key"),
    finish: Annotated[
        bool, typer.Option("--finish", help="step 2: sign with the new key from now on")
    ] = False,
    forget_old: Annotated[
        bool,
        typer.Option(
            "--forget-old",
            help="with --finish, or after it: delete the old key, and its public key from .pub",
        ),
    ] = False,
) -> None:
    """Rotate the center's signing key in two steps: first a new key beside the current
    one and a .pub holding both (give it to every gateway: they accept either); then,
    with --finish, the new key signs. No gateway is enrolled again."""
    # loaded by the command that uses it: fleet --help stays under 0.3 s
    from central.key_rotation import RotationError, begin, forget  # noqa: PLC0415
    from central.key_rotation import finish as finish_rotation  # noqa: PLC0415

    try:
        if finish:
            done = finish_rotation(key, forget_old=forget_old)
        else:
            done = forget(key) if forget_old else begin(key)
    except (RotationError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if not (finish or forget_old):
        typer.echo(
            f"new key {key}.next beside {key}; {done.public} now holds both public keys. "
            "Give it to every gateway (central.command_key), then: "
            f"fleet keys rotate --key {key} --finish"
        )
    elif forget_old:
        typer.echo(f"{key} signs alone; {done.public} holds its public key only")
    else:
        typer.echo(
            f"{key} is the new key (restart fleet central run and use it with fleet cmd); "
            f"the old one is {key}.old; {done.public} still holds both. Once every gateway "
            f"has it: fleet keys rotate --key {key} --forget-old"
        )


@alarms_app.command("list")
def alarms_list(
    gateway: Annotated[str | None, typer.Option("--gateway", "-g", help="gateway id")] = None,
    state: Annotated[
        list[str] | None,
        typer.Option(
            help="only alarms in this state (repeatable): active, acknowledged, "
            "cleared_unacked, cleared or shelved"
        ),
    ] = None,
    severity: Annotated[
        list[str] | None,
        typer.Option(help="only alarms of this severity (repeatable): " + ", ".join(SEVERITIES)),
    ] = None,
    where: WhereOpt = None,
    db: DbOpt = DEFAULT_DB,
    json_out: JsonOpt = False,
) -> None:
    """Current alarms fleet-wide (or of one gateway, or of the gateways --where matches), as
    their latest transition left them, newest first; a shelved alarm is listed shelved
    until its shelving ends."""
    # loaded by the command that uses it: fleet --help stays under 0.3 s
    from central.store.api import AlarmQuery  # noqa: PLC0415
    from cli.alarm_history import LISTED_STATES, listed_alarm  # noqa: PLC0415

    wanted = set(state or ())
    if unknown := sorted(wanted - set(LISTED_STATES)):
        raise typer.BadParameter(
            f"{', '.join(map(repr, unknown))}: an alarm's state is one of "
            f"{', '.join(LISTED_STATES)}",
            param_hint="--state",
        )
    severities = tuple(dict.fromkeys(severity or ()))
    if unknown := sorted(set(severities) - set(SEVERITIES)):
        raise typer.BadParameter(
            f"{', '.join(map(repr, unknown))}: a severity is one of {', '.join(SEVERITIES)}",
            param_hint="--severity",
        )

    now = time.time()
    query = AlarmQuery(gateway, severities=severities, where=parse_where(where))
    found = open_db(db).alarms(query)
    rows = [listed_alarm(r.to_json(), now) for r in found]
    rows = [r for r in rows if not wanted or r["state"] in wanted]
    show(
        rows,
        json_out,
        ("since (UTC)", "gateway", "alarm", "severity", "state", "value", "message"),
        lambda: (
            (
                utc(r["since"]),
                r["gateway"],
                r["alarm_id"],
                r["severity"],
                r["state"],
                shown(r["value"]),
                r["msg"],
            )
            for r in rows
        ),
    )


@alarms_app.command("show")
def alarms_show(
    alarm: AlarmArg, gateway: GatewayArg, db: DbOpt = DEFAULT_DB, json_out: JsonOpt = False
) -> None:
    """One alarm as its latest transition left it: state, severity, value, since when, who
    acknowledged it, shelving; exit 1 if the store has no such alarm."""
    # loaded by the command that uses it: fleet --help stays under 0.3 s
    from cli.alarm_history import listed_alarm  # noqa: PLC0415

    row = open_db(db).alarm(gateway, alarm)
    if row is None:
        _no_such_alarm(alarm, gateway)
    listed = listed_alarm(row.to_json(), time.time())
    if json_out:
        print_json(listed)
    else:
        print_fields(listed, times=("since", "ts", "shelved_until"))


def _no_such_alarm(alarm: str, gateway: str) -> NoReturn:
    typer.echo(
        f"error: no such alarm: {alarm} on gateway {gateway} "
        f"(`fleet alarms list -g {gateway}` lists its alarms)",
        err=True,
    )
    raise typer.Exit(1)


@alarms_app.command("history")
def alarms_history(
    alarm: AlarmArg, gateway: GatewayArg, db: DbOpt = DEFAULT_DB, json_out: JsonOpt = False
) -> None:
    """Every transition and action of one alarm, with the edge's timestamps and who acted;
    exit 1 if the store has no such alarm."""
    # loaded by the command that uses it: fleet --help stays under 0.3 s
    from cli.alarm_history import HISTORY_COLUMNS, history_rows  # noqa: PLC0415

    events = open_db(db).alarm_history(gateway, alarm)
    if not events:
        _no_such_alarm(alarm, gateway)
    show(events, json_out, HISTORY_COLUMNS, lambda: history_rows(events))


def _commands(
    broker: Broker,
    topic_root: str,
    gateway: str,
    cmd: str,
    alarms: list[str],
    args: dict[str, object],
    key: Path,
    json_out: bool,
    db: str,
) -> None:
    """``cmd`` for each alarm in turn (explicit ids, never a pattern), each reply printed;
    exit 1 if any was refused or not answered, after trying them all. Each goes into the
    command ledger of the store at ``db``, if there is one."""
    # loaded by the command that uses it: fleet --help stays under 0.3 s
    from central.commands import CommandFailed, send_command  # noqa: PLC0415
    from edge_agent.contract import Topics  # noqa: PLC0415
    from edge_agent.contract.commands import load_private_key  # noqa: PLC0415

    if not key.exists():
        typer.echo(f"error: no signing key at {key} (fleet keys init creates one)", err=True)
        raise typer.Exit(1)
    try:
        load_private_key(key)  # once, before any is sent: a bad key is one error
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    from cli.fleet_cmd import Ledger  # noqa: PLC0415

    ledger = Ledger.at(db, str(args.get("by", "operator")))
    replies: list[dict[str, object]] = []
    failed = False
    for alarm in dict.fromkeys(alarms):
        try:
            reply = send_command(
                broker,
                Topics(topic_root),
                gateway,
                cmd,
                {"alarm": alarm, **args},
                key,
                on_sent=(lambda _: None) if ledger is None else ledger.sent,
                on_outcome=(lambda _: None) if ledger is None else ledger.ended,
            )
        except CommandFailed as exc:
            typer.echo(f"error: {alarm}: {exc}", err=True)
            failed = True
            continue
        replies.append(reply)
        failed |= reply.get("ok") is not True
        if json_out:
            continue
        if reply.get("ok") is True:
            typer.echo(printable(f"{gateway}: {cmd} {alarm} done"))
            result = reply.get("result")
            if isinstance(result, dict):
                print_fields(result, times=REPLY_TIMES)
            elif result is not None:
                typer.echo(printable(f"result: {shown(result)}"))
        else:
            error = shown(reply.get("error"))
            typer.echo(printable(f"{gateway}: {cmd} {alarm} refused: {error}"), err=True)
    if json_out and replies:
        print_json(replies[0] if len(alarms) == 1 else replies)
    if failed:
        raise typer.Exit(1)


def _alarm_command(name: str, cmd: str, doc: str) -> None:
    """ack, reset and unshelve take the same arguments: one definition, three commands."""

    def command(
        alarms: AlarmsArg,
        gateway: GatewayArg,
        by: ByOpt = "operator",
        broker: BrokerOpt = DEFAULT_BROKER,
        topic_root: RootOpt = DEFAULT_ROOT,
        key: KeyOpt = Path("center.key"),
        json_out: JsonOpt = False,
        db: DbOpt = DEFAULT_DB,
        username: UsernameOpt = None,
        password_file: PasswordFileOpt = None,
        ca_file: CaFileOpt = None,
        cert_file: CertFileOpt = None,
        key_file: KeyFileOpt = None,
    ) -> None:
        url = broker_settings(broker, username, password_file, ca_file, cert_file, key_file)
        _commands(url, topic_root, gateway, cmd, alarms, {"by": by}, key, json_out, db)

    command.__doc__ = doc
    alarms_app.command(name)(command)


_alarm_command(
    "ack", "alarm.ack", "Acknowledge alarms on their gateway (a signed command each), named by id."
)
_alarm_command(
    "reset", "alarm.reset", "Release latched alarms whose condition has gone, named by id."
)
_alarm_command("unshelve", "alarm.unshelve", "End shelvings early, named by alarm id.")


@alarms_app.command("shelve")
def alarms_shelve(
    alarms: AlarmsArg,
    gateway: GatewayArg,
    reason: Annotated[str, typer.Option(help="why (kept in the history)", callback=reason_option)],
    for_: Annotated[
        str, typer.Option("--for", help="how long: 30m, 2h, 7d (s, m, h, d or w)")
    ] = "1h",
    by: ByOpt = "operator",
    broker: BrokerOpt = DEFAULT_BROKER,
    topic_root: RootOpt = DEFAULT_ROOT,
    key: KeyOpt = Path("center.key"),
    json_out: JsonOpt = False,
    db: DbOpt = DEFAULT_DB,
    username: UsernameOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    cert_file: CertFileOpt = None,
    key_file: KeyFileOpt = None,
) -> None:
    """Suppress alarms' annunciation for a while, with a reason, named by id."""
    url = broker_settings(broker, username, password_file, ca_file, cert_file, key_file)
    for_s = length_option(for_, "--for", positive=True)
    args = {"by": by, "reason": reason, "for_s": round(for_s, 3)}
    _commands(url, topic_root, gateway, "alarm.shelve", alarms, args, key, json_out, db)


def _keep_option(text: str, option: str) -> float | None:
    """A retention: a length above 0 (``0`` would delete everything as it comes), or
    ``forever`` (None: never removed)."""
    if text.strip().lower() == "forever":
        return None
    return length_option(text, option, positive=True)


def main() -> None:
    app()


if __name__ == "__main__":  # how the supervisor starts its workers (``_supervise``)
    main()
