"""Tests that keep the docs honest: every command has help text and a row of its own in
the README's reference, every option is shown there with its command; every sample
config in the repository passes `edge-agent check`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from cli.agent import app as agent_app
from cli.fleet import app as fleet_app
from tests.support import run_cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    """Typer's commands, leaves only, as ``("fleet alarms ack", command)``."""
    out: list[tuple[str, Any]] = []
    if getattr(group, "commands", None):
        for name, cmd in group.commands.items():
            out += commands(cmd, f"{prefix} {name}")
    else:
        out.append((prefix, group))
    return out


def groups(group: Any, prefix: str) -> list[tuple[str, Any]]:
    """The programs and their sub-apps (``fleet alarms``): what ``--help`` lists."""
    subs = getattr(group, "commands", None) or {}
    return [(prefix, group)] + [
        found for name, cmd in subs.items() for found in groups(cmd, f"{prefix} {name}")
    ]


AGENT, FLEET = typer.main.get_command(agent_app), typer.main.get_command(fleet_app)
ALL = commands(AGENT, "edge-agent") + commands(FLEET, "fleet")
GROUPS = [g for g in groups(AGENT, "edge-agent") + groups(FLEET, "fleet") if g not in ALL]


def reference() -> tuple[list[str], str]:
    """The README's reference section: the first cells of its table's rows (each a code
    span: ``fleet readings [-g GW] ...``), and its prose, which names the options that
    many commands share."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## `fleet` and "))
    end = next(i for i, line in enumerate(lines) if i > start and line.startswith("## "))
    section = lines[start:end]
    cells = [re.split(r"(?<!\\)\|", line) for line in section if line.startswith("| `")]
    rows = [cell[1].strip() for cell in cells]
    prose = "\n".join(line for line in section if not line.startswith("|"))
    return [row.strip("`") for row in rows], prose


ROWS, SHARED = reference()


def mentions(text: str, word: str) -> bool:
    """``word`` (a command, an option) in ``text`` as itself: ``--for`` is not in
    ``--format``, ``-d`` is not in ``--dir``, ``fleet alarms list`` not in ``...listing``."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def options(cmd: Any) -> list[list[str]]:
    """Each option of ``cmd`` as its names (``["--gateway", "-g"]``), ``--help`` aside."""
    return [
        [*p.opts, *p.secondary_opts]
        for p in cmd.params
        if p.param_type_name == "option" and "--help" not in p.opts
    ]


@pytest.mark.parametrize(("name", "cmd"), GROUPS, ids=[n for n, _ in GROUPS])
def test_every_program_and_sub_app_has_help(name: str, cmd: Any) -> None:
    assert (cmd.help or "").strip(), f"{name} has no help text"


@pytest.mark.parametrize(("name", "cmd"), ALL, ids=[n for n, _ in ALL])
def test_every_command_has_help_and_a_row_in_the_readme_reference(name: str, cmd: Any) -> None:
    """The reference table has a row for each command, spelt out as itself (a row for
    ``fleet alarms ack|reset`` counts for neither)."""
    assert (cmd.help or "").strip(), f"{name} has no help text"
    assert any(row == name or row.startswith(name + " ") for row in ROWS), (
        f"{name} has no row in the README's reference table"
    )


@pytest.mark.parametrize(("name", "cmd"), ALL, ids=[n for n, _ in ALL])
def test_every_option_is_in_the_readme_with_its_command(name: str, cmd: Any) -> None:
    """Each option (by any of its names: ``-g`` or ``--gateway``) is on a README line that
    holds the command itself: its reference row, or a line of an example. Options that
    many commands share (``--db``, ``--json``...) may instead be named once, in the prose
    that opens the reference section."""
    lines = [line for line in README.splitlines() if mentions(line, name)]
    missing = [
        "/".join(names)
        for names in options(cmd)
        if not any(mentions(text, n) for text in [*lines, SHARED] for n in names)
    ]
    assert not missing, f"{name}: the README never shows {', '.join(missing)}"


def test_every_row_of_the_readme_reference_is_a_command() -> None:
    names = [n for n, _ in ALL]
    stale = [row for row in ROWS if not any(row == n or row.startswith(n + " ") for n in names)]
    assert not stale, f"the README's reference lists commands that do not exist: {stale}"
    assert len(ROWS) >= len(names)


def test_help_runs_through_the_real_entry_points() -> None:
    for exe in ("edge-agent", "fleet"):
        out = run_cli(exe, "--help")
        assert out.returncode == 0 and "Usage" in out.stdout


def sample_configs() -> list[Path]:
    return sorted(ROOT.glob("packaging/*.yaml"))


@pytest.mark.parametrize("path", sample_configs(), ids=lambda p: p.name)
def test_every_sample_agent_config_passes_check(path: Path) -> None:
    out = run_cli("edge-agent", "check", "-c", str(path))
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "path", sorted(ROOT.glob("drivers/*/sample.yaml")), ids=lambda p: p.parent.name
)
def test_every_driver_sample_passes_check(path: Path, tmp_path: Path) -> None:
    devices = yaml.safe_load(path.read_text())
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({"gateway": {"id": "sample-gw"}, "devices": devices}))
    # a sample names the serial ports and files of a gateway, not of this host
    out = run_cli("edge-agent", "check", "--schema-only", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
