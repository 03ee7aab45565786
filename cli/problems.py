"""How a command that loads a file (agent config, profile, sim file) reports its problems.

One way for every command: each problem on stderr as its ``str()``
(``file:line: field: message``), then ``SOURCE: N problem(s)``, and exit 2. systemd's
unit does not restart the agent on 2, so a bad file cannot crash-loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from edge_agent.config import LoadedConfig

EXIT_PROBLEMS = 2


def exit_with_problems(source: object, problems: Sequence[object]) -> NoReturn:
    """Print ``problems`` (anything whose ``str()`` is one line: ``file:line: field:
    message``) and how many there were in ``source`` (a path, a profile reference), on
    stderr; exit 2."""
    for problem in problems:
        typer.echo(str(problem), err=True)
    n = len(problems)
    typer.echo(f"{source}: {n} problem{'s' if n != 1 else ''}", err=True)
    raise typer.Exit(EXIT_PROBLEMS)


def load_config_or_exit(path: Path, *, host: bool = False) -> LoadedConfig:
    """The agent config at ``path``, or its problems printed and exit 2. With ``host``,
    also the host pass: the files and ports it names are there and what they should be
    (``check`` and ``run``; a command that only reads the config leaves it out)."""
    # the config models, every driver's config and YAML load only for a command that reads
    # a config: edge-agent --help stays quick
    from edge_agent.config import ConfigError, check_host, load_config  # noqa: PLC0415

    try:
        loaded = load_config(path)
        return check_host(loaded) if host else loaded
    except ConfigError as exc:
        exit_with_problems(path, exc.problems)
