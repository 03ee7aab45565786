"""The host pass of config checking: what a valid config names on this gateway is there,
readable, and what it should be.

``load_config`` is the schema pass: the file on its own, as the center could check a
config it is about to push. A config can be right and still not run here: the password
file is missing, the command key is the private one, the serial port is ``/dev/ttyUSB1``
on a gateway that has ``ttyUSB0``. ``edge-agent check`` runs both passes (``--schema-only``
the first), and ``run`` runs both before it starts anything, so a file ``check`` passes
is a file ``run`` starts with, and one it refuses is refused the same way (``file:line:
field: message``, exit 2, which systemd does not restart on).

Each device's own files are its config model's to know (``DeviceBase.host_problems``); the
gateway's (``central:``, ``profile_dirs``, ``outbox:``, ``health.metrics_host``) are
checked here.
"""

from __future__ import annotations

import time

from drivers.host_files import (
    client_certificate_problems,
    ed25519_public_key_problem,
    folder_problem,
)
from drivers.mqtt.config import broker_file_problems
from edge_agent.bind_address import local_address_problem
from edge_agent.config.loader import ConfigError, LoadedConfig
from edge_agent.config.models import AgentConfig
from edge_agent.config.problems import Loc, Problem


def host_problems(loaded: LoadedConfig) -> list[Problem]:
    """Every problem of this host with what the config names, at its line."""
    return [loaded.problem(loc, message) for loc, message in host_violations(loaded.config)]


def check_host(loaded: LoadedConfig) -> LoadedConfig:
    """``loaded``, if the host has what it names; ``ConfigError`` with every problem."""
    problems = host_problems(loaded)
    if problems:
        raise ConfigError(problems)
    return loaded


def certificate_time_problems(loaded: LoadedConfig, now: float | None = None) -> list[Problem]:
    """The gateway's client certificate expired (or not valid yet, by this clock), at its
    line. ``check`` refuses it; ``run`` only logs it and starts: a gateway whose
    certificate ran out still polls, buffers every reading and raises its alarms locally
    until it is renewed."""
    central = loaded.config.central
    cert = central.files.cert_file
    if cert is None:
        return []
    _, when = client_certificate_problems(
        cert, loaded.config.gateway.id, time.time() if now is None else now
    )
    return [] if when is None else [loaded.problem(("central", *central.loc("cert_file")), when)]


def host_violations(cfg: AgentConfig) -> list[tuple[Loc, str]]:
    """The host pass as ``(loc, message)``: for a caller with its own way to say where."""
    found: list[tuple[Loc, str]] = []
    central = cfg.central
    for loc, message, _ in broker_file_problems(central.files):
        found.append((("central", *central.loc(*loc)), message))
    cert, cert_loc = central.files.cert_file, ("central", *central.loc("cert_file"))
    if cert is not None and all(loc != cert_loc for loc, _ in found):
        # its name is the gateway's identity at the broker (use_identity_as_username)
        identity, _ = client_certificate_problems(cert, cfg.gateway.id, time.time())
        if identity is not None:
            found.append((cert_loc, identity))
    if central.command_key is not None:
        problem = ed25519_public_key_problem(central.command_key)
        if problem is not None:
            found.append((("central", "command_key"), problem))
    for i, folder in enumerate(cfg.profile_dirs):
        problem = folder_problem(folder)
        if problem is not None:
            found.append((("profile_dirs", i), problem))
    for i, device in enumerate(cfg.devices):
        for loc, message, _ in device.host_problems():
            found.append((("devices", i, *loc), message))
    if cfg.health.metrics_port is not None:
        # the port itself is not tried: the agent already running would hold it
        problem = local_address_problem(cfg.health.metrics_host)
        if problem is not None:
            found.append((("health", "metrics_host"), problem))
    return found
