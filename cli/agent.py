"""``edge-agent``: the technician's command on a gateway."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from edge_agent.config import ConfigError, LoadedConfig, load_config

app = typer.Typer(
    name="edge-agent",
    help="EdgeFleet edge agent: check a gateway config, run the agent.",
    no_args_is_help=True,
    add_completion=False,
)

ConfigOpt = Annotated[
    Path,
    typer.Option(
        "--config", "-c", help="agent config file (YAML)", envvar="EDGEFLEET_AGENT_CONFIG"
    ),
]
EXIT_CONFIG = 2  # systemd's unit does not restart on 2: a bad file cannot crash-loop


def _load_or_exit(path: Path) -> LoadedConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        n = len(exc.problems)
        typer.echo(f"{path}: {n} problem{'s' if n != 1 else ''}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None


@app.command()
def check(config: ConfigOpt) -> None:
    """Validate a config file without running anything; exit 2 if it has problems."""
    loaded = _load_or_exit(config)
    cfg = loaded.config
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
    loaded = _load_or_exit(config)
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from edge_agent.app import run_agent

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_agent(loaded, stop)

    asyncio.run(main())


def main() -> None:
    app()
