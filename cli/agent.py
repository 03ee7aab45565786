"""``edge-agent``: the technician's command on a gateway."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.apps import build_version, program
from cli.browse import browse
from cli.probe import probe_app
from cli.problems import exit_with_problems, load_config_or_exit
from cli.profiles import profiles_app
from cli.rules import rules_app
from cli.sim import sim_app

if TYPE_CHECKING:
    from edge_agent.config import LoadedConfig
    from edge_agent.contract.enrollment import Bundle

app = program(
    "edge-agent",
    "EdgeFleet edge agent: check a gateway config, run the agent.",
    lambda: build_version("edge-agent"),
)

ConfigOpt = Annotated[
    Path,
    typer.Option(
        "--config", "-c", help="agent config file (YAML)", envvar="EDGEFLEET_AGENT_CONFIG"
    ),
]


def exit_if_outbox_path_is_wrong(config: Path, loaded: LoadedConfig) -> None:
    """``check`` and ``run`` alike: an ``outbox.path`` that is not an outbox this agent
    made (nor a place for one) is a problem of the config at its line, exit 2, and
    nothing is touched."""
    # the outbox package loads once a config is valid, not for --help
    from edge_agent.outbox import outbox_path_problem  # noqa: PLC0415

    problem = outbox_path_problem(loaded.config.outbox.path)
    if problem is not None:
        exit_with_problems(config, [loaded.problem(("outbox", "path"), problem)])


@app.command()
def check(
    config: ConfigOpt,
    schema_only: Annotated[
        bool,
        typer.Option(
            "--schema-only",
            help="check the file on its own, not the files and ports it names on this host "
            "(for a config written away from its gateway)",
        ),
    ] = False,
) -> None:
    """Validate a config file, and what it names on this host, without running anything;
    exit 2 if it has problems (those ``run`` would refuse to start with). A certificate
    renewal a stop cut short is finished first, as ``run`` does."""
    if not schema_only:
        # as run does first: a renewal a stop cut short is the pair run starts with
        _finish_certificate_swap(config)
    loaded = load_config_or_exit(config, host=not schema_only)
    cfg = loaded.config
    if not schema_only:
        exit_if_outbox_path_is_wrong(config, loaded)
        # run starts with it (the gateway still polls and alarms locally); check says it
        from edge_agent.config import certificate_time_problems  # noqa: PLC0415

        expired = certificate_time_problems(loaded)
        if expired:
            exit_with_problems(config, expired)
    points = sum(len(d.points) for d in cfg.devices)
    typer.echo(
        f"{config}: ok - gateway {cfg.gateway.id}, {len(cfg.devices)} device(s), "
        f"{points} point(s), config rev {loaded.revision}"
    )
    if cfg.central.command_key is None:
        # valid (the plain demo), but worth saying: a warning, the exit status stays 0
        where = loaded.problem(("central",), UNAUTHENTICATED)
        typer.echo(f"warning: {where}", err=True)


UNAUTHENTICATED = (
    "no command_key: commands are refused, and acks are not authenticated (any client the "
    "broker lets publish on this gateway's ack topic can make it delete its outbox)"
)


@app.command()
def run(
    config: ConfigOpt,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the agent: poll devices, keep every reading in the outbox, publish to the center."""
    _finish_certificate_swap(config)
    loaded = load_config_or_exit(config, host=True)
    exit_if_outbox_path_is_wrong(config, loaded)
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # the runtime (drivers, outbox) and asyncio load only for run, never for check or --help
    import asyncio  # noqa: PLC0415

    from edge_agent.config import certificate_time_problems  # noqa: PLC0415

    for problem in certificate_time_problems(loaded):
        # not refused: polling, the outbox and local alarms go on without the center
        logging.getLogger("edge_agent").error("%s (the center is out of reach until then)", problem)

    from edge_agent.app import run_agent  # noqa: PLC0415
    from edge_agent.bind_address import MetricsUnavailable  # noqa: PLC0415
    from edge_agent.config import ConfigError  # noqa: PLC0415
    from edge_agent.contract.gateway_commands import RESTART_EXIT_CODE  # noqa: PLC0415
    from edge_agent.outbox import OutboxPathError, OutboxUnavailable  # noqa: PLC0415

    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_agent(loaded, stop)

    try:
        restart = asyncio.run(main())
    except OutboxPathError as exc:
        # what the check above found, had the path changed since: a problem of the config
        exit_with_problems(config, [f"{config}: outbox.path: {exc}"])
    except ConfigError as exc:  # a file named by the config changed since it was checked
        exit_with_problems(config, exc.problems)
    except (OutboxUnavailable, MetricsUnavailable) as exc:
        # not exit 2: systemd starts us again, and the disk may have room by then, or the
        # metrics port be free (a check cannot know: the running agent holds it)
        typer.echo(f"edge-agent: not starting: {exc}", err=True)
        raise typer.Exit(1) from None
    if restart:  # a restart command: stopped cleanly; systemd (Restart=always) starts us again
        raise typer.Exit(RESTART_EXIT_CODE)


@app.command()
def doctor(
    config: ConfigOpt,
    json_out: Annotated[bool, typer.Option("--json", help="the findings as JSON")] = False,
    timeout: Annotated[
        float, typer.Option(min=0.5, max=60, help="seconds for each device and the broker")
    ] = 5.0,
) -> None:
    """The technician's check on site, one line a finding (ok / warn / fail, with what to
    do): config, the files and ports it names, clock, disk and outbox, one read of each
    device, the broker (TLS, login, subscriptions). Exit 1 if anything failed, else 0."""
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415

    from edge_agent.config import ConfigError, load_config  # noqa: PLC0415
    from edge_agent.doctor import Finding, diagnose  # noqa: PLC0415

    logging.basicConfig(level=logging.CRITICAL)  # findings say it; drivers' logs would not
    try:
        findings = asyncio.run(diagnose(load_config(config), timeout))
    except ConfigError as exc:
        fix = f"edge-agent check -c {config} shows each at its line"
        findings = [Finding("config", "fail", f"{config}: {p}", fix) for p in exc.problems]
    if json_out:
        typer.echo(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        for finding in findings:
            typer.echo(finding.line())
    failed = sum(f.level == "fail" for f in findings)
    if not json_out:
        warned = sum(f.level == "warn" for f in findings)
        typer.echo(f"{failed} failed, {warned} warning(s), {len(findings)} check(s)")
    raise typer.Exit(1 if failed else 0)


@app.command()
def enroll(
    bundle: Annotated[
        Path | None,
        typer.Argument(
            metavar="[BUNDLE]",
            help="the enrollment bundle from fleet provision (or --token)",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="a one-time token from fleet provision GW --token: this gateway makes its "
            "own key and the center signs it",
        ),
    ] = None,
    gateway: Annotated[
        str | None, typer.Option("--gateway", help="with --token: this gateway's id")
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option("--broker", help="with --token: the broker's enrollment listener, mqtts://"),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            help="with --token: the fleet's CA certificate (ca.crt), that the broker is "
            "checked against",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    wait: Annotated[
        str,
        typer.Option("--wait", help="with --token: how long to wait for the certificate (10m, 1h)"),
    ] = "10m",
    folder: Annotated[
        Path, typer.Option("--dir", help="where the gateway's config and files go")
    ] = Path("/etc/edgefleet"),
    force: Annotated[
        bool, typer.Option("--force", help="overwrite an existing agent.yaml and key")
    ] = False,
    owner: Annotated[
        str | None,
        typer.Option(
            "--owner",
            help="the user the agent runs as (edgefleet under the shipped systemd unit): "
            "the key (or password file) is given to it",
        ),
    ] = None,
) -> None:
    """Install an enrollment bundle: the CA certificate, the gateway's certificate and key
    (0600) or its password file (0600), the center's command key and a starter
    agent.yaml. With --token instead, make the key here and have the center sign it (its
    answer is installed the same way)."""
    # loaded by the command that uses it: --help stays fast
    from edge_agent.contract import enrollment as files  # noqa: PLC0415
    from edge_agent.contract.enrollment import KEY_FILE, PASSWORD, PASSWORD_FILE  # noqa: PLC0415
    from edge_agent.enroll import (  # noqa: PLC0415
        EnrollError,
        check_destination,
        install,
        read_bundle,
    )

    try:
        if token is not None:
            if bundle is not None:
                raise typer.BadParameter("a bundle or --token, not both")
            # said before the token is spent: the key lives in this process only
            answer = (files.CA_FILE, files.CERT_FILE, KEY_FILE, files.COMMAND_KEY_FILE)
            check_destination(folder, (*answer, files.CONFIG_FILE), force=force)
            read = _enroll_by_token(token, gateway, broker, ca_file, wait)
        elif bundle is not None:
            read = read_bundle(bundle)
        else:
            raise typer.BadParameter("give the BUNDLE from fleet provision, or --token")
        written = install(read, folder, force=force, owner=owner)
    except EnrollError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    secret, what = (
        (PASSWORD_FILE, "password") if read.kind == PASSWORD else (KEY_FILE, "private key")
    )
    config = folder / "agent.yaml"
    typer.echo(f"enrolled into {folder}: {', '.join(p.name for p in written)}")
    steps = [f"add this gateway's devices to {config} (replace `devices: []`)"]
    if owner is None and os.geteuid() == 0:
        # root owns the secret now; the shipped unit runs the agent as edgefleet
        steps.append(f"chown edgefleet {folder / secret} (the agent's user)")
    steps += [f"edge-agent check -c {config}", "systemctl enable --now edge-agent"]
    typer.echo("next:")
    for i, step in enumerate(steps, 1):
        typer.echo(f"  {i}. {step}")
    if bundle is not None:
        typer.echo(f"then delete {bundle}: it holds the gateway's {what}")


def _finish_certificate_swap(config: Path) -> None:
    """A renewal a stop cut between its two renames is finished before the host pass
    looks at the certificate and key (``edge_agent.renewal``)."""
    files = load_config_or_exit(config).config.central.files
    if files.cert_file is not None and files.key_file is not None:
        from edge_agent.renewal import finish_swap  # noqa: PLC0415

        try:
            finish_swap(files.cert_file, files.key_file)
        except OSError as exc:  # the host pass says what is wrong with the files
            logging.getLogger("edge_agent").error("cannot finish a certificate swap: %s", exc)


def _enroll_by_token(
    token: str, gateway: str | None, broker: str | None, ca_file: Path | None, wait: str
) -> Bundle:
    from edge_agent.contract.csr import TOKEN  # noqa: PLC0415
    from edge_agent.contract.topics import is_gateway_id  # noqa: PLC0415
    from edge_agent.durations import parse_duration  # noqa: PLC0415
    from edge_agent.enroll_token import new_key, request_certificate  # noqa: PLC0415

    for name, value in (("--gateway", gateway), ("--broker", broker), ("--ca-file", ca_file)):
        if value is None:
            raise typer.BadParameter(f"--token needs {name}")
    assert gateway is not None and broker is not None and ca_file is not None
    if not is_gateway_id(gateway):
        raise typer.BadParameter(f"{gateway!r} is not a gateway id", param_hint="--gateway")
    if not TOKEN.fullmatch(token):
        raise typer.BadParameter("not a token of fleet provision --token", param_hint="--token")
    try:
        wait_s = parse_duration(wait)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--wait") from None
    key = new_key(gateway)
    typer.echo(f"gateway {gateway}: new key, sha256 {key.fingerprint}")

    def pending(reason: str) -> None:
        typer.echo(f"waiting: {reason}")

    return request_certificate(
        gateway, token, broker, ca_file, key, wait_s=wait_s, on_pending=pending
    )


app.command()(browse)
app.add_typer(probe_app, name="probe")
app.add_typer(rules_app, name="rules")
app.add_typer(profiles_app, name="profiles")
app.add_typer(sim_app, name="sim")


def main() -> None:
    app()
