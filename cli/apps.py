"""How the two programs and their command groups are made: the same settings for all.

- Help is click's plain text, not rich's panels (``rich_markup_mode=None``): drawing help
  with rich loads rich and markdown-it, a third of ``fleet --help``'s start. Rich is for
  tables of data (``cli/output.py``).
- Shell completion is on (``--install-completion``, ``--show-completion``): typer's
  completion code loads at start either way, and the completion script calls the program
  itself, so it completes as fast as ``--help`` starts.
- A crash's traceback never shows local variables (``pretty_exceptions_show_locals``,
  said here as older typer releases, which pyproject.toml allows, show them by default): a
  local may hold a password read from its file, a ``postgresql://user:pw@…`` URL or a
  loaded key (issue 14).
- ``--version`` prints the package's version; ``edge-agent --version`` also the Python and
  the platform it runs on, and whether it is the single-file build, which is what a
  technician reads out on the phone.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable

import typer

import edge_agent


def program(name: str, help_text: str, version: Callable[[], str]) -> typer.Typer:
    """A program (``fleet``, ``edge-agent``) with completion and ``--version``."""
    app = typer.Typer(
        name=name,
        help=help_text,
        no_args_is_help=True,
        rich_markup_mode=None,
        add_completion=True,
        pretty_exceptions_show_locals=False,
    )

    def show_version(wanted: bool) -> None:
        if wanted:
            typer.echo(version())
            raise typer.Exit()

    # the option as a default value, not in Annotated: the annotation is a string here
    # (postponed annotations), which typer evaluates where show_version is not defined
    version_option: bool = typer.Option(
        False, "--version", help="print the version and exit", is_eager=True, callback=show_version
    )

    @app.callback()
    def options(_version: bool = version_option) -> None:
        pass

    return app


def group(help_text: str) -> typer.Typer:
    """A command group (``fleet alarms …``, ``edge-agent probe …``)."""
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)


def package_version(name: str) -> str:
    """``fleet 0.1.0``."""
    return f"{name} {edge_agent.__version__}"


def build_version(name: str) -> str:
    """``edge-agent 0.1.0 (CPython 3.11.2, Linux x86_64, installed package)``."""
    build = "single-file build" if getattr(sys, "frozen", False) else "installed package"
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{package_version(name)} ({python}, {platform.system()} {platform.machine()}, {build})"
