"""Tests that keep the docs honest: every command has help and is in the README; every
sample config in the repository passes `edge-agent check`."""

from __future__ import annotations

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


ALL = commands(typer.main.get_command(agent_app), "edge-agent") + commands(
    typer.main.get_command(fleet_app), "fleet"
)


@pytest.mark.parametrize(("name", "cmd"), ALL, ids=[n for n, _ in ALL])
def test_every_command_has_help_and_is_in_the_readme(name: str, cmd: Any) -> None:
    assert (cmd.help or "").strip(), f"{name} has no help text"
    parts = name.split()
    # "fleet alarms ack|reset|unshelve" counts for each of them
    assert name in README or any(
        line.count(parts[-1]) and " ".join(parts[:-1]) in line for line in README.splitlines()
    ), f"{name} is not in the README"


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
    out = run_cli("edge-agent", "check", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
