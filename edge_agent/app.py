"""Wires the agent together; ``runtime.AgentRun`` runs it until asked to stop.

pollers ──▶ committer ──▶ outbox (SQLite, own thread) ──▶ sender ──▶ uplink (paho)
               │  ▲                 ▲                                   │
      rule engine  │                └──────── acks from the center ◀────┤
               │  │                                                     │
               ▼  └── alarm service (clock, actions) ◀── commands ◀─────┘

Each part gets only the interface it needs: the outbox's (``outbox/interfaces.py``) and
the uplink's. Nothing here converts, decides or stops anything: a part's settings are
read by the part, and the order of the stop is ``AgentRun``'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from edge_agent import __version__
from edge_agent.alarms import AlarmService
from edge_agent.commands import CommandChannel
from edge_agent.committer import Committer
from edge_agent.config import ConfigError, LoadedConfig
from edge_agent.contract.commands import load_public_keys
from edge_agent.devices import open_drivers, point_units
from edge_agent.gateway_commands import GatewayCommands
from edge_agent.health import HealthReporter
from edge_agent.outbox import AgentOutbox
from edge_agent.polling import DevicePoller
from edge_agent.renewal import CertFiles, Renewer
from edge_agent.runtime import AgentRun, Presence
from edge_agent.sender import Sender
from edge_agent.service_notify import Notifier
from edge_agent.uplink import Uplink

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from edge_agent.metrics import AgentMetrics

log = logging.getLogger(__name__)


def _command_keys(loaded: LoadedConfig) -> tuple[Ed25519PublicKey, ...]:
    """The center's keys (none without ``central.command_key``), or a ``ConfigError`` at
    ``central.command_key`` (the host pass checked it; this is for a file changed since),
    never a traceback and a restart loop."""
    path = loaded.config.central.command_key
    if path is None:
        return ()
    try:
        return load_public_keys(path)
    except (OSError, ValueError) as exc:
        message = (
            f"{path}: {exc.strerror.lower() if isinstance(exc, OSError) and exc.strerror else exc}"
        )
        raise ConfigError([loaded.problem(("central", "command_key"), message)]) from None


def _metrics(loaded: LoadedConfig) -> AgentMetrics | None:
    """The Prometheus endpoint, bound, if ``health.metrics_port`` asks for one; raises
    ``MetricsUnavailable`` (the port is taken)."""
    health = loaded.config.health
    if health.metrics_port is None:
        return None
    # prometheus_client loads only on a gateway that serves metrics
    from edge_agent.metrics import AgentMetrics  # noqa: PLC0415

    return AgentMetrics(health.metrics_host, health.metrics_port)


async def run_agent(loaded: LoadedConfig, stop: asyncio.Event) -> bool:
    """Run until ``stop`` is set; True when a ``restart`` command set it (the caller exits
    with ``RESTART_EXIT_CODE``, for the service manager to start the agent again)."""
    keys = _command_keys(loaded)  # before anything is opened that would need closing
    metrics = _metrics(loaded)  # likewise: a port taken stops the start here
    try:
        return await _run(loaded, stop, keys, metrics)
    finally:  # the run closed it first thing in its stop; not if the wiring failed
        if metrics is not None:
            await metrics.aclose()


async def _run(
    loaded: LoadedConfig,
    stop: asyncio.Event,
    keys: tuple[Ed25519PublicKey, ...],
    metrics: AgentMetrics | None,
) -> bool:
    cfg = loaded.config
    gw, topics, central = cfg.gateway.id, cfg.topics, cfg.central
    outbox = await AgentOutbox.from_config(cfg.outbox)
    presence = Presence(
        gw,
        topics,
        {
            "agent_version": __version__,
            "config_rev": loaded.revision,
            "started": time.time(),
            "site": cfg.gateway.site,
            "tags": dict(cfg.gateway.tags),
            "stream": outbox.stream_id,
        },
    )
    uplink = Uplink(
        asyncio.get_running_loop(),
        client_id=f"edgefleet-gw-{gw}",
        broker=central.broker,
        keepalive_s=central.keepalive_s,
        will=presence.will,
        reconnect_max_s=central.reconnect_max_s,
    )

    def announce() -> None:
        uplink.publish(presence.topic, presence.online(), retain=True)

    uplink.on_up(announce)
    presence.watch(uplink)
    sender = Sender(
        gateway=gw,
        topics=topics,
        telemetry=outbox.telemetry,
        alarms=outbox.alarms,
        uplink=uplink,
        batch_max=cfg.outbox.batch_max,
        window=cfg.outbox.window,
        ack_timeout_s=cfg.outbox.ack_timeout_s,
        keys=keys,
    )
    drivers = open_drivers(cfg.devices)
    engine = await AlarmService.restore(cfg.compiled_rules(), outbox, cfg.alarms)
    alarms = AlarmService(engine, outbox.alarms, sender, drivers)
    gateway_commands = GatewayCommands(
        version=__version__,
        devices=cfg.devices,
        drivers=drivers,
        outbox=outbox,
        writer=alarms,
        restart=stop.set,
    )
    CommandChannel(
        gateway=gw,
        topics=topics,
        uplink=uplink,
        ledger=outbox,
        keys=keys,
        handlers={
            **dict.fromkeys(AlarmService.COMMANDS, alarms.command),
            **dict.fromkeys(GatewayCommands.COMMANDS, gateway_commands.command),
        },
    )
    committer = Committer(outbox.telemetry, outbox.alarms, sender, alarms)
    pollers = [
        DevicePoller(dev, point_units(dev), drivers[dev.id], committer.put) for dev in cfg.devices
    ]
    health = HealthReporter(
        gateway=gw,
        topics=topics,
        outbox=outbox,
        uplink=uplink,
        sender=sender,
        pollers=pollers,
        interval_s=cfg.health.interval_s,
        sources=[alarms, committer],
        produced=committer,
        alarm_losses=alarms,
    )
    if metrics is not None:
        metrics.expose(asyncio.get_running_loop(), health.figures)
    log.info(
        "gateway %s: %d device(s), %d rule(s), outbox %s (stream %s), central %s",
        gw,
        len(pollers),
        len(engine.instances),
        cfg.outbox.path,
        outbox.stream_id,
        central.broker,
    )
    files = central.files
    more: list[Renewer] = []
    if files.cert_file is not None and files.key_file is not None:
        more.append(
            Renewer(
                gateway=gw,
                topics=topics,
                uplink=uplink,
                files=CertFiles(files.cert_file, files.key_file, files.ca_file),
                renew_before_s=central.renew_before,
            )
        )
    run = AgentRun(
        gateway=gw,
        outbox=outbox,
        uplink=uplink,
        presence=presence,
        pollers=pollers,
        committer=committer,
        sender=sender,
        alarms=alarms,
        health=health,
        first_closed=() if metrics is None else (metrics,),
        more=more,
        service=Notifier.from_env(),
    )
    await run.run(stop)
    return gateway_commands.restart_requested
