"""Runs the wired agent until asked to stop, and stops it in the one order that loses
nothing; and the gateway's retained presence (``state``) that frames the run.

The order of the stop:

0. what reads the parts from outside closes (the metrics endpoint): no scrape meets a
   part half stopped;
1. the pollers stop: nothing new is read;
2. the committer commits what was polled: it is durable before we go;
3. the sender stops taking acks and lets those under way delete their rows, before
   anything is cancelled or closed (a cancel must not cut their wait short);
4. the other services (committer, sender, health, alarm clock) are cancelled;
5. the uplink says goodbye (a retained offline state) and disconnects;
6. the drivers close, then the outbox file and its thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from edge_agent.alarms import AlarmService
from edge_agent.committer import Committer
from edge_agent.contract import Channel, PayloadError, Topics, encode_state
from edge_agent.contract.payloads import loads
from edge_agent.health import HealthReporter
from edge_agent.outbox import AgentOutbox
from edge_agent.polling import DevicePoller
from edge_agent.sender import Sender
from edge_agent.service_notify import Notifier
from edge_agent.uplink import Inbound

log = logging.getLogger(__name__)


class Presence:
    """The gateway's retained ``state``: online with who it is on every connect, offline
    with a goodbye at a clean stop, and offline as the Last Will otherwise.

    The gateway also listens to its own state topic (``watch``), and puts it right when
    the retained copy is not what it said: a client that can publish there (a lax
    broker) could otherwise leave a running gateway shown offline for good, since its
    state is published only at connect. It answers at most once every
    ``CORRECT_EVERY_S`` (and once more at the end of that, if it was wrong again), so
    that a flood of forged states cannot make it flood in turn."""

    CORRECT_EVERY_S = 5.0

    def __init__(self, gateway: str, topics: Topics, identity: Mapping[str, Any]) -> None:
        self.gateway = gateway
        self.topic = topics.gw(gateway, Channel.STATE)
        self.identity = dict(identity)
        self.corrected = 0
        """Times a wrong retained state was put right."""
        self._last_fix = -float("inf")
        self._pending: asyncio.TimerHandle | None = None
        self._leaving = False

    def watch(self, uplink: StateUplink) -> None:
        """Put the retained state right whenever it is not this gateway's own."""
        mine = loads(self.online())
        echoed = False  # since this connect: what comes before our own is an older copy

        def connected() -> None:
            nonlocal echoed
            echoed = False

        def received(message: Inbound) -> None:
            nonlocal echoed
            try:
                said = loads(message.payload)
            except PayloadError:
                said = None
            if said == mine:
                echoed = True  # our own, as the broker keeps it
                return
            if not echoed or self._leaving:
                return  # the retained copy of before (our Will): ours is on its way
            loop = asyncio.get_running_loop()
            wait = self._last_fix + self.CORRECT_EVERY_S - loop.time()
            if wait <= 0:
                fix()
            elif self._pending is None:
                self._pending = loop.call_later(wait, fix)

        def fix() -> None:
            self._pending = None
            if self._leaving:
                return
            self._last_fix = asyncio.get_running_loop().time()
            if uplink.publish(self.topic, self.online(), retain=True):
                self.corrected += 1
                if self.corrected == 1:
                    log.warning(
                        "the retained state of %s was not its own: published it again "
                        "(someone else can publish on its state topic)",
                        self.gateway,
                    )

        uplink.on_up(connected)
        uplink.subscribe(self.topic, received)

    @property
    def will(self) -> tuple[str, bytes]:
        return self.topic, encode_state(self.gateway, False)

    def online(self) -> bytes:
        return encode_state(self.gateway, True, **self.identity)

    def goodbye(self) -> tuple[str, bytes]:
        """The last words of a clean stop; from now on the state is not put right."""
        self._leaving = True
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        return self.topic, encode_state(self.gateway, False, **self.identity, stopped=time.time())


class StateUplink(Protocol):
    """What ``Presence.watch`` needs of the MQTT session."""

    def on_up(self, fn: Callable[[], None]) -> None: ...

    def subscribe(self, topic: str, handler: Callable[[Inbound], None]) -> None: ...

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> bool: ...


class RunUplink(Protocol):
    """What running and stopping need of the MQTT session."""

    def start(self) -> None: ...

    async def stop(self, last_words: tuple[str, bytes] | None = None) -> None: ...


class Closes(Protocol):
    async def aclose(self) -> None: ...


class Runs(Protocol):
    """A part with a task of its own that runs until cancelled (the certificate renewer)."""

    async def run(self) -> None: ...


class AgentRun:
    """The agent's parts, once wired: runs their tasks, and owns the order of the stop."""

    def __init__(
        self,
        *,
        gateway: str,
        outbox: AgentOutbox,
        uplink: RunUplink,
        presence: Presence,
        pollers: list[DevicePoller],
        committer: Committer,
        sender: Sender,
        alarms: AlarmService,
        health: HealthReporter,
        first_closed: Sequence[Closes] = (),
        more: Sequence[Runs] = (),
        service: Notifier | None = None,
    ) -> None:
        """``first_closed``: what reads the other parts from outside (the metrics
        endpoint), closed before anything else stops. ``service``: the service manager
        to tell (``READY`` once the outbox is open and the polls are scheduled, watchdog
        pings from the loop, ``STOPPING``)."""
        self.gateway = gateway
        self._first_closed = list(first_closed)
        self._outbox = outbox
        self._uplink = uplink
        self._presence = presence
        self._pollers = pollers
        self._committer = committer
        self._sender = sender
        self._alarms = alarms
        self._health = health
        self._more = list(more)
        self._service = service

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set, or a task fails (raised as ``RuntimeError``)."""
        self._uplink.start()
        polls = [asyncio.create_task(p.run(), name=f"poll:{p.device.id}") for p in self._pollers]
        services = [
            asyncio.create_task(self._committer.run(), name="committer"),
            asyncio.create_task(self._sender.run(), name="sender"),
            asyncio.create_task(self._health.run(), name="health"),
            asyncio.create_task(self._alarms.run(), name="alarms"),
            *(asyncio.create_task(part.run(), name=type(part).__name__) for part in self._more),
        ]
        if self._service is not None:
            if self._service.watchdog_s is not None:
                services.append(asyncio.create_task(self._service.keep_alive(), name="watchdog"))
            self._service.ready(f"{len(polls)} device(s) polled")
        stop_task = asyncio.create_task(stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait(
                [stop_task, *polls, *services], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not stop_task and task.exception() is not None:
                    raise RuntimeError(f"{task.get_name()} failed") from task.exception()
        finally:
            await self._stop(polls, [*services, stop_task])

    async def _stop(
        self, polls: list[asyncio.Task[None]], services: list[asyncio.Task[Any]]
    ) -> None:
        if self._service is not None:
            self._service.stopping()
        for part in self._first_closed:
            await part.aclose()
        await cancel_all(polls)
        await self._committer.commit_pending()
        await self._sender.aclose()
        await cancel_all(services)
        await self._uplink.stop(last_words=self._presence.goodbye())
        for p in self._pollers:
            await p.driver.aclose()
        await self._outbox.aclose()
        log.info("gateway %s stopped", self.gateway)


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
