"""``edge-agent rules``: see which alarms a config's rules raise, before deploying it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.apps import group
from cli.output import print_json

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig
    from edge_agent.rules.series import Catalog

# a file of a million bad rows must not bury the terminal: the first ones and a count
SHOWN_PROBLEMS = 50

rules_app = group("Check a gateway's rules against a series of readings.")


@rules_app.command("test")
def rules_test(
    config: Annotated[Path, typer.Option("--config", "-c", help="agent config file (YAML)")],
    replay: Annotated[
        Path, typer.Option("--replay", help="CSV with columns ts, device, point, value")
    ],
    tail: Annotated[float, typer.Option(min=0, help="seconds to run on after the last sample")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Print which alarms the series would raise, clear or re-trigger, and when."""
    # the rule engine loads only for this command
    from cli.problems import load_config_or_exit  # noqa: PLC0415
    from edge_agent.rules.replay import ReplayError, SeriesRefused, replay_file  # noqa: PLC0415

    cfg = load_config_or_exit(config).config
    try:
        replayed = replay_file(
            cfg.compiled_rules(),
            replay,
            catalog_of(cfg),
            tail_s=tail,
            settings=cfg.alarms.engine_options(),
        )
    except OSError as exc:
        typer.echo(f"error: {replay}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    except SeriesRefused as exc:
        typer.echo("\n".join(exc.problems), err=True)
        typer.echo("error: nothing replayed", err=True)
        raise typer.Exit(1) from None
    except ReplayError as exc:
        for problem in exc.problems[:SHOWN_PROBLEMS]:
            typer.echo(problem, err=True)
        more = len(exc.problems) - SHOWN_PROBLEMS
        typer.echo(
            f"error: {len(exc.problems)} rows cannot be replayed"
            f"{f' ({more} more not shown)' if more > 0 else ''}; nothing replayed",
            err=True,
        )
        raise typer.Exit(1) from None
    events = [e.to_json() for e in replayed]
    if json_out:
        print_json(events)
        return
    if not events:
        typer.echo("no alarms")
        return
    for e in events:
        typer.echo(
            f"{e['ts']:>12.3f}  {e['id']:<32} {e['state']:<16} {e['severity']:<8} {e['msg']}"
        )


def catalog_of(cfg: AgentConfig) -> Catalog:
    """The gateway's devices and points, as a replayed row may name them."""
    from edge_agent.rules.series import Catalog  # noqa: PLC0415 - loaded with the command

    return Catalog(
        gateway=cfg.gateway.id,
        points={
            d.id: {p.name: getattr(p, "type", None) in (None, "string") for p in d.points}
            for d in cfg.devices
        },
        arrays={
            d.id: frozenset(p.name for p in d.points if getattr(p, "array", "") == "flatten")
            for d in cfg.devices
        },
    )
