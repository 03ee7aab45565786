"""``edge-agent profiles``: the device profiles a technician can name in a config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.apps import group
from cli.output import Column, JsonOpt, Styled, inline, print_json, print_rich, table, text
from cli.problems import exit_with_problems

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text

    from edge_agent.config.profiles import ProfileLibrary

profiles_app = group("Device profiles: how to read a device model at a firmware version.")

DirsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--dir",
        help="also search this profile folder, before the shipped ones (repeatable)",
        envvar="EDGEFLEET_PROFILE_DIRS",
    ),
]


def _library(dirs: list[Path] | None) -> ProfileLibrary:
    # the profile library (pydantic models) loads only for this command
    from edge_agent.config.profiles import ProfileLibrary  # noqa: PLC0415

    return ProfileLibrary(dirs or [])


@profiles_app.command("list")
def profiles_list(dirs: DirsOpt = None, json_out: JsonOpt = False) -> None:
    """List every profile: vendor/model@firmware, protocol, versions, points, rules; exit 2
    if any profile file has problems (each printed as file:line: field: message)."""
    # the profile library (pydantic models) loads only for this command
    from edge_agent.config.profiles import describe  # noqa: PLC0415

    library = _library(dirs)
    loaded, problems = library.load_all()
    if json_out:
        print_json(describe(loaded))
    else:
        columns = (
            Column("profile", no_wrap=True),
            "protocol",
            "firmware",
            "points",
            "rules",
            "title",
        )
        rows = [
            (
                lp.profile.ref(),
                lp.profile.protocol,
                ", ".join(lp.profile.firmware),
                str(len(lp.profile.points)),
                str(len(lp.profile.rules)),
                lp.profile.title,
            )
            for lp in loaded
        ]
        print_rich(table(columns, rows))
    if problems:  # after the profiles that do load: one broken file hides none of them
        exit_with_problems(", ".join(str(d) for d in library.dirs), problems)


@profiles_app.command("show")
def profiles_show(
    ref: Annotated[str, typer.Argument(help="vendor/model@firmware, e.g. acme/sd-2000@1.4")],
    dirs: DirsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one profile: where its map comes from, its points, rules and simulation."""
    # the profile library (pydantic models) loads only for this command
    from edge_agent.config.profiles import ProfileError  # noqa: PLC0415

    try:
        loaded = _library(dirs).find(ref)
    except ProfileError as exc:
        # a reference that matches no file is a problem of the reference, not of a file
        lookup = [p.message if p.file == "(profile)" else p for p in exc.problems]
        exit_with_problems(ref, lookup)
    profile = loaded.profile
    if json_out:
        print_json({"ref": ref, "file": loaded.file, **profile.model_dump(mode="json")})
        return
    about = [
        text(Styled(ref, "bold"), " ", profile.title),
        text(f"protocol {profile.protocol}; firmware {', '.join(profile.firmware)}"),
        text(f"source: {profile.source}"),
        text(f"file: {loaded.file}"),
    ]
    if profile.connection:
        about.append(text(f"{profile.protocol} defaults: {inline(profile.connection)}"))
    if profile.device:
        about.append(text(f"device defaults: {inline(profile.device)}"))
    points: list[tuple[str, ...]] = []
    for point in profile.points:
        where = point.model_dump(exclude={"name", "unit"}, exclude_unset=True)
        points.append((point.name, point.unit or "", inline(where)))
    shown: list[Table | Text] = [*about, table(("point", "unit", "where"), points, title="points")]
    if profile.rules:
        rules: list[tuple[str, ...]] = []
        for rule in profile.rules:
            condition = rule.when or (
                "offline" if rule.offline else f"{rule.kind} {rule.point or ''}".strip()
            )
            delays = f"on {rule.on_delay_s:g} s, off {rule.off_delay_s:g} s"
            rules.append((rule.id, rule.severity, condition, delays))
        columns = ("rule", "severity", "condition", "delays")
        shown.append(table(columns, rules, title="default rules"))
    print_rich(*shown)
