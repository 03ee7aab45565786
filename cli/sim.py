"""``edge-agent sim``: simulated devices for every profile, several gateways at once."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.apps import group
from cli.output import print_json
from cli.problems import exit_with_problems

if TYPE_CHECKING:
    from sim.plan import SimPlan

sim_app = group("Simulated devices over their real protocols, with scripted scenarios.")

SimFile = Annotated[Path, typer.Argument(help="sim file (YAML): gateways and their devices")]
SeedOpt = Annotated[int | None, typer.Option(help="seed of the value dynamics (default: file's)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _plan(path: Path, **overrides: object) -> SimPlan:
    # The simulators load pymodbus, paho and asyncua: only the sim commands pay for them,
    # never `edge-agent run` or `check`, which import this module too.
    from sim.plan import load_sim  # noqa: PLC0415
    from sim.simfile import SimConfigError  # noqa: PLC0415

    try:
        return load_sim(path, **overrides)  # type: ignore[arg-type]
    except SimConfigError as exc:
        exit_with_problems(path, exc.problems)


@sim_app.command("run")
def sim_run(
    sim_file: SimFile,
    write_configs: Annotated[
        Path | None,
        typer.Option(help="write one agent config per gateway here, for the running simulators"),
    ] = None,
    seed: SeedOpt = None,
    speed: Annotated[
        float | None, typer.Option(help="simulated seconds per wall second (default: file's)")
    ] = None,
    broker: Annotated[
        str | None, typer.Option(help="MQTT broker the simulated wireless devices publish to")
    ] = None,
    central: Annotated[
        str | None, typer.Option(help="central broker written into the agent configs")
    ] = None,
    command_key: Annotated[
        Path | None,
        typer.Option(
            help="the center's public key, written into the agent configs",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Serve every device of the sim file, moving its values and playing its scenario,
    until Ctrl-C or SIGTERM."""
    plan = _plan(
        sim_file,
        seed=seed,
        speed=speed,
        broker=broker,
        central=central,
        # from the working directory, not from the sim file as the file's own key is
        command_key=None if command_key is None else command_key.resolve(),
    )
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    # lazy, as in _plan: the simulators' libraries (and asyncio) load for sim commands only
    import asyncio  # noqa: PLC0415

    from sim.serve import SimStartError, serve  # noqa: PLC0415

    def say(text: str) -> None:
        typer.echo(text)
        sys.stdout.flush()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(plan, stop, write_configs=write_configs, duration_s=duration, announce=say)

    try:
        asyncio.run(main())
    except SimStartError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    say("sim: stopped")


@sim_app.command("timeline")
def sim_timeline(
    sim_file: SimFile,
    device: Annotated[str, typer.Option("--device", "-d", help="device id in the sim file")],
    ticks: Annotated[int, typer.Option(min=1, help="ticks to run")] = 60,
    seed: SeedOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the values a device would show tick by tick (no server started): the same
    seed gives the same timeline, so a test can assert on it."""
    # lazy, as in _plan: the simulators' libraries load for sim commands only
    from sim.plan import device_timeline, tick_json  # noqa: PLC0415

    plan = _plan(sim_file, seed=seed)
    try:
        ticks_out = device_timeline(plan, device, ticks)
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(1) from None
    if json_out:
        print_json([tick_json(t) for t in ticks_out])
        return
    for t in ticks_out:
        row = tick_json(t)
        values = " ".join(f"{k}={_show(v)}" for k, v in t.values.items())
        effects = f"  [{'; '.join(row['effects'])}]" if row["effects"] else ""  # type: ignore[arg-type]
        silent = " (silent)" if t.silent else ""
        typer.echo(f"{t.t:>8g}{silent} {values}{effects}")


@sim_app.command("scenarios")
def sim_scenarios(json_out: JsonOpt = False) -> None:
    """List the shipped scenarios and the points they move."""
    # lazy, as in _plan: the simulators load for sim commands only
    from drivers.simulated.scenario import load_scenario, scenario_names  # noqa: PLC0415

    rows = []
    for name in scenario_names():
        s = load_scenario(name)
        rows.append(
            {
                "name": name,
                "title": s.title,
                "points": sorted(s.points),
                "transport": sorted(s.transport_events),
                "loop_s": s.loop_s,
            }
        )
    if json_out:
        print_json(rows)
        return
    for r in rows:
        moves = ", ".join([*r["points"], *r["transport"]])  # type: ignore[misc]
        typer.echo(f"{r['name']:<20} {r['title']}  (moves: {moves})")


def _show(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
