"""Wires the agent together and runs it until asked to stop.

pollers ──▶ committer ──▶ outbox (SQLite, own thread) ──▶ sender ──▶ uplink (paho)
               │  ▲                 ▲                                   │
      rule engine  │                └──────── acks from the center ◀────┤
               │  │                                                     │
               ▼  └── alarm service (clock, actions) ◀── commands ◀─────┘
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from drivers.modbus.bus import ModbusBuses
from edge_agent import __version__
from edge_agent.alarms import AlarmService
from edge_agent.commands import CommandChannel
from edge_agent.committer import Committer
from edge_agent.config import LoadedConfig
from edge_agent.contract import Channel, encode_state
from edge_agent.contract.commands import load_public_key
from edge_agent.devices import open_driver, point_units
from edge_agent.health import HealthReporter
from edge_agent.outbox import Outbox
from edge_agent.polling import DevicePoller
from edge_agent.sender import Sender
from edge_agent.uplink import Uplink

log = logging.getLogger(__name__)
# Drivers report every device failure once, in their own words, and count the rest;
# pymodbus would log each retry and failed connect again, at every poll.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
T = TypeVar("T")


async def run_agent(loaded: LoadedConfig, stop: asyncio.Event) -> None:
    cfg = loaded.config
    gw = cfg.gateway.id
    topics = cfg.topics
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")

    def in_db(fn: Callable[[], T]) -> asyncio.Future[T]:
        return loop.run_in_executor(executor, fn)

    ob = cfg.outbox
    outbox = await in_db(
        lambda: Outbox(
            ob.path,
            max_bytes=int(ob.max_mb * 1e6),
            max_age_s=ob.max_age,
            ballast_bytes=int(min(ob.ballast_mb, ob.max_mb / 4) * 1e6),
        )
    )
    state_topic = topics.gw(gw, Channel.STATE)
    started = time.time()
    identity = {
        "agent_version": __version__,
        "config_rev": loaded.revision,
        "started": started,
        "site": cfg.gateway.site,
        "tags": dict(cfg.gateway.tags),
        "stream": outbox.stream_id,
    }
    uplink = Uplink(
        loop,
        client_id=f"edgefleet-gw-{gw}",
        broker=cfg.central.broker,
        keepalive_s=cfg.central.keepalive_s,
        will=(state_topic, encode_state(gw, False)),
        reconnect_max_s=cfg.central.reconnect_max_s,
    )

    def announce() -> None:
        uplink.publish(state_topic, encode_state(gw, True, **identity), retain=True)

    uplink.on_up(announce)
    sender = Sender(
        gateway=gw,
        topics=topics,
        outbox=outbox,
        uplink=uplink,
        in_db=in_db,
        batch_max=cfg.outbox.batch_max,
        window=cfg.outbox.window,
        ack_timeout_s=cfg.outbox.ack_timeout_s,
    )
    modbus_buses = ModbusBuses()  # devices on one serial line or endpoint share it
    ids = [dev.id for dev in cfg.devices]  # an id taken from a topic must not be one of these
    drivers = {dev.id: open_driver(dev, modbus_buses, gateway_ids=ids) for dev in cfg.devices}
    engine = await AlarmService.restore(cfg.compiled_rules(), outbox, in_db, cfg.alarms)
    alarms = AlarmService(engine, outbox, in_db, sender, drivers)
    command_key = (
        load_public_key(cfg.central.command_key) if cfg.central.command_key is not None else None
    )
    CommandChannel(
        gateway=gw,
        topics=topics,
        uplink=uplink,
        outbox=outbox,
        in_db=in_db,
        public_key=command_key,
        handlers={
            name: alarms.command
            for name in ("alarm.ack", "alarm.reset", "alarm.shelve", "alarm.unshelve")
        },
    )
    committer = Committer(outbox, in_db, sender, alarms)
    pollers = [
        DevicePoller(dev, point_units(dev), drivers[dev.id], committer.put) for dev in cfg.devices
    ]
    health = HealthReporter(
        gateway=gw,
        topics=topics,
        outbox=outbox,
        in_db=in_db,
        uplink=uplink,
        sender=sender,
        pollers=pollers,
        interval_s=cfg.health.interval_s,
        extra=lambda: {
            "alarms": {
                "rules": len(engine.instances),
                "engine_errors": alarms.engine_errors,
                "actions_run": alarms.actions_run,
                "events_lost_disk_full": alarms.lost_disk_full,
            },
            "lost_disk_full": committer.lost_disk_full,
        },
    )
    log.info(
        "gateway %s: %d device(s), %d rule(s), outbox %s (stream %s), central %s",
        gw,
        len(pollers),
        len(engine.instances),
        cfg.outbox.path,
        outbox.stream_id,
        cfg.central.broker,
    )
    uplink.start()
    poll_tasks = [asyncio.create_task(p.run(), name=f"poll:{p.device.id}") for p in pollers]
    service_tasks = [
        asyncio.create_task(committer.run(), name="committer"),
        asyncio.create_task(sender.run(), name="sender"),
        asyncio.create_task(health.run(), name="health"),
        asyncio.create_task(alarms.run(), name="alarms"),
    ]
    stop_task = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait(
            [stop_task, *poll_tasks, *service_tasks], return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if task is not stop_task and task.exception() is not None:
                raise RuntimeError(f"{task.get_name()} failed") from task.exception()
    finally:
        await cancel_all(poll_tasks)
        await committer.commit_pending()  # what was polled is durable before we go
        # acks under way delete their rows now, before anything cancels or closes: a
        # cancel (or cancel_all's second one) must not cut their wait short
        await sender.aclose()
        await cancel_all([*service_tasks, stop_task])
        goodbye = encode_state(gw, False, **identity, stopped=time.time())
        await uplink.stop(last_words=(state_topic, goodbye))
        for p in pollers:
            await p.driver.aclose()
        await in_db(outbox.close)
        executor.shutdown(wait=True)
        log.info("gateway %s stopped", gw)


async def cancel_all(tasks: Iterable[asyncio.Task[Any]], *, grace_s: float = 5.0) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again those that swallowed it.

    Before Python 3.12, ``asyncio.wait_for`` (which pymodbus and asyncua use inside) drops
    a cancellation that meets its result in one loop turn: such a task runs on to its next
    wait, where a second cancel, a second later, stops it. After ``grace_s`` the stop goes
    on without the stragglers and names them, rather than hang the agent's shutdown.
    """
    tasks = list(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    pending = {t for t in tasks if not t.done()}
    while pending:
        left = deadline - loop.time()
        if left <= 0:
            names = sorted(t.get_name() for t in pending)
            log.error("stopping without %s: cancelled, and still running", ", ".join(names))
            return
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(1.0, left))
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: a task that failed was reported when it failed
