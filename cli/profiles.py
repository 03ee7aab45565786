"""``edge-agent profiles``: the device profiles a technician can name in a config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from edge_agent.config.profiles import ProfileLibrary

profiles_app = typer.Typer(
    help="Device profiles: how to read a device model at a firmware version.",
    no_args_is_help=True,
)

DirsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--dir",
        help="also search this profile folder, before the shipped ones (repeatable)",
        envvar="EDGEFLEET_PROFILE_DIRS",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
EXIT_INVALID = 2


def _library(dirs: list[Path] | None) -> ProfileLibrary:
    from edge_agent.config.profiles import ProfileLibrary

    return ProfileLibrary(dirs or [])


@profiles_app.command("list")
def profiles_list(dirs: DirsOpt = None, json_out: JsonOpt = False) -> None:
    """List every profile: vendor/model@firmware, protocol, versions, points, rules; exit 2
    if any profile file has problems (each printed as file:line: field: message)."""
    from edge_agent.config.profiles import describe

    loaded, problems = _library(dirs).load_all()
    if json_out:
        from cli.common import print_json

        print_json(describe(loaded))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("profile", "protocol", "firmware", "points", "rules", "title")
        table.columns[0].no_wrap = True
        for lp in loaded:
            prof = lp.profile
            table.add_row(
                prof.ref(),
                prof.protocol,
                ", ".join(prof.firmware),
                str(len(prof.points)),
                str(len(prof.rules)),
                prof.title,
            )
        Console().print(table)
    for p in problems:
        typer.echo(str(p), err=True)
    if problems:
        raise typer.Exit(EXIT_INVALID)


@profiles_app.command("show")
def profiles_show(
    ref: Annotated[str, typer.Argument(help="vendor/model@firmware, e.g. acme/sd-2000@1.4")],
    dirs: DirsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one profile: where its map comes from, its points, rules and simulation."""
    from edge_agent.config.profiles import ProfileError

    try:
        loaded = _library(dirs).find(ref)
    except ProfileError as exc:
        for p in exc.problems:
            typer.echo(p.message if p.file == "(profile)" else str(p), err=True)
        raise typer.Exit(EXIT_INVALID) from None
    profile = loaded.profile
    if json_out:
        from cli.common import print_json

        print_json({"ref": ref, "file": loaded.file, **profile.model_dump(mode="json")})
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{ref}[/] {profile.title}")
    console.print(f"protocol {profile.protocol}; firmware {', '.join(profile.firmware)}")
    console.print(f"source: {profile.source}")
    console.print(f"file: {loaded.file}")
    if profile.connection or profile.device:
        console.print(
            f"defaults: {profile.protocol}: {profile.connection} device: {profile.device}"
        )
    table = Table("point", "unit", "where", title="points")
    for point in profile.points:
        where = point.model_dump(exclude={"name", "unit"}, exclude_unset=True)
        table.add_row(point.name, point.unit or "", _inline(where))
    console.print(table)
    if profile.rules:
        rules = Table("rule", "severity", "condition", "delays", title="default rules")
        for rule in profile.rules:
            condition = rule.when or (
                "offline" if rule.offline else f"{rule.kind} {rule.point or ''}".strip()
            )
            delays = f"on {rule.on_delay_s:g} s, off {rule.off_delay_s:g} s"
            rules.add_row(rule.id, rule.severity, condition, delays)
        console.print(rules)


def _inline(fields: dict[str, object]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in fields.items())
