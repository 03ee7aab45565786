"""``edge-agent rules``: see which alarms a config's rules raise, before deploying it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.output import print_json

rules_app = typer.Typer(
    help="Check a gateway's rules against a series of readings.", no_args_is_help=True
)


@rules_app.command("test")
def rules_test(
    config: Annotated[Path, typer.Option("--config", "-c", help="agent config file (YAML)")],
    replay: Annotated[Path, typer.Option("--replay", help="CSV: ts,device,point,value")],
    tail: Annotated[float, typer.Option(help="seconds to run on after the last sample")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Print which alarms the series would raise, clear or re-trigger, and when."""
    # the rule engine loads only for this command
    from cli.problems import load_config_or_exit  # noqa: PLC0415
    from edge_agent.rules.replay import ReplayError, replay_file  # noqa: PLC0415

    cfg = load_config_or_exit(config).config
    try:
        replayed = replay_file(
            cfg.compiled_rules(), replay, tail_s=tail, settings=cfg.alarms.engine_options()
        )
    except (OSError, ReplayError) as exc:
        typer.echo(f"error: {exc}", err=True)
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
