"""Telling Mosquitto to reload (SIGHUP: it re-reads the CRL, the password file and the
ACL), for the commands that change one of them: ``fleet revoke``, ``fleet provision``
(``--password``, ``--token``). ``--broker-pid-file`` names Mosquitto's pid file; it is
read before anything changes, so that a wrong one fails before the command does any."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated

import typer

RELOAD_HINT = (
    "tell the broker to reload (it re-reads the CRL, the password file and the ACL on "
    "SIGHUP): "
    "systemctl reload mosquitto, or kill -HUP <its pid>"
)

BrokerPidFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--broker-pid-file",
        help="Mosquitto's pid file: the broker is sent SIGHUP, to reload what changed",
    ),
]


def broker_pid(path: Path) -> int:
    """The pid in Mosquitto's pid file, read before anything changes."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError as exc:
        raise typer.BadParameter(
            f"{path}: {exc.strerror}", param_hint="--broker-pid-file"
        ) from None
    if not text.isdigit() or not 1 < int(text) < 2**22:
        raise typer.BadParameter(f"{path} holds no pid", param_hint="--broker-pid-file")
    return int(text)


def reload_broker(pid: int | None) -> None:
    """SIGHUP to ``pid`` and say so; with no pid, say how to reload. Exit 1 if the signal
    cannot be sent."""
    if pid is None:
        typer.echo(RELOAD_HINT)
        return
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        typer.echo(f"error: cannot signal the broker (pid {pid}): {exc.strerror}", err=True)
        typer.echo(RELOAD_HINT, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"broker (pid {pid}) told to reload")
