"""Duration options (``--since 10m``, ``--for 2h``), read by the one duration parser.

A ``--since`` is a time (now minus the duration), a ``--for`` is a length; both read the
forms of ``edge_agent.durations``, and a wrong value is a usage error (exit 2) that names
the option it was given to.
"""

from __future__ import annotations

import time

import typer

from edge_agent.durations import parse_duration


def length_option(text: str, option: str) -> float:
    """The seconds ``text`` (the value of ``option``) says."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def since_option(text: str | None, option: str = "--since") -> float | None:
    """The unix time ``text`` ago (``10m``: ten minutes ago), or None for no limit."""
    if text is None:
        return None
    return time.time() - length_option(text, option)
