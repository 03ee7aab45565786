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
    exit 2 if it has problems (those ``run`` would refuse to start with)."""
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


@app.command()
def run(
    config: ConfigOpt,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the agent: poll devices, keep every reading in the outbox, publish to the center."""
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
def enroll(
    bundle: Annotated[
        Path, typer.Argument(metavar="BUNDLE", help="the enrollment bundle from fleet provision")
    ],
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
    agent.yaml."""
    # loaded by the command that uses it: --help stays fast
    from edge_agent.contract.enrollment import KEY_FILE, PASSWORD, PASSWORD_FILE  # noqa: PLC0415
    from edge_agent.enroll import EnrollError, install, read_bundle  # noqa: PLC0415

    try:
        read = read_bundle(bundle)
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
    typer.echo(f"then delete {bundle}: it holds the gateway's {what}")


app.command()(browse)
app.add_typer(probe_app, name="probe")
app.add_typer(rules_app, name="rules")
app.add_typer(profiles_app, name="profiles")
app.add_typer(sim_app, name="sim")


def main() -> None:
    app()
