"""The OPC-UA driver: keeps one session open to one server, and a new one when it dies.

A background task (started by the first ``read()``) owns the connection::

    connecting ──open──▶ up ──session dead──▶ down ──backoff──▶ open ──▶ up ...
        │                                       ▲
        └──────────────failed──────────────────┘

A session is dead when asyncua sees the transport go, when a call fails with a dead-session
status or times out, when no publish response (data or keep-alive) arrives for
``keepalive_s`` (subscribe), or when a probe read after ``keepalive_s`` of silence fails
(poll). The driver then opens a new session after ``reconnect_min_s``, doubling to
``reconnect_max_s`` between failed attempts, each wait with ±25 % jitter so that a city's
gateways do not reconnect in step. A new session resolves browse paths again and recreates
the subscription and every monitored item.

``read()``:

* poll mode: one Read of every node (split only where the server's MaxNodesPerRead says so),
  stamped when the answer arrives;
* subscribe mode: every data change received since the previous call, stamped with the
  server's SourceTimestamp, plus a ``bad`` reading for each point whose status is bad (a node
  that does not exist, a browse path that does not resolve, a bad data change);
* while no session is up: a ``stale`` reading for every point, reason ``disconnected (...)``.

Changes wait for ``read()`` in a buffer of ``queue_max``; past that the oldest are dropped
and counted (``stats.overflow``), so a stalled agent cannot grow memory without bound.

Errors: ``write()`` raises ``DeviceUnavailable`` while disconnected and ``WriteRefused`` when
the server refuses; ``read()`` never raises for a server problem. asyncua's exceptions are
translated in ``session``, which also silences asyncua's own log: this driver reports each
state change once, in its own words ("opcua pumps: connection lost: ...", "... back after 7 s").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from drivers.base import DeviceUnavailable, Quality, Reading, Value, WriteRefused

from . import pki
from .config import OpcUaDevice, OpcUaPoint
from .session import Session, SessionError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class OpcUaStats:
    """Counters for health data."""

    link: str = "connecting"  # connecting | up | down
    reason: str | None = None
    sessions: int = 0  # sessions opened
    losses: int = 0  # sessions that died under us
    failed_attempts: int = 0
    changes: int = 0  # data changes received (subscribe)
    overflow: int = 0  # changes dropped: more arrived between two reads than queue_max


class OpcUaDriver:
    """Reads and writes one OPC-UA server; see ``drivers.base.Driver`` and the docstring."""

    def __init__(self, device: OpcUaDevice, *, rng: Callable[[], float] = random.random) -> None:
        self.device = device
        self.conn = device.opcua
        self.stats = OpcUaStats()
        self._rng = rng
        self._points = {point.name: point for point in device.points}
        self._changes: deque[Reading] = deque(maxlen=self.conn.queue_max)
        self._overflowing = False
        self._bad: dict[str, Reading] = {}
        self._session: Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._attempted: asyncio.Event | None = None
        self._closed = False
        self._down_since: float | None = None
        self._said: set[str] = set()  # failures logged during this outage: each once
        self._problems: list[str] = []
        self._trust = pki.TrustList(self.conn.pki_dir)
        self._name = f"opcua {device.id}"

    # -- the driver interface -------------------------------------------------------------

    async def read(self) -> list[Reading]:
        if self._closed:
            raise DeviceUnavailable("driver closed")
        attempted = self._start()
        if not attempted.is_set():
            # The first poll waits for the first attempt, so that a healthy server is not
            # reported stale once at every start.
            bound = 4 * self.conn.timeout_s + 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(bound):
                    await attempted.wait()
        session = self._session
        if self.conn.mode == "poll":
            if session is None or session.dead:
                return self._stale(time.time())
            try:
                return await session.read()
            except SessionError as exc:
                return self._stale(time.time(), exc.reason)  # the supervisor logs, reconnects
        readings = list(self._changes)
        self._changes.clear()
        self._overflowing = False
        now = time.time()
        if session is None or session.dead:
            readings.extend(self._stale(now))
            return readings
        changed = {r.point for r in readings}
        for name, bad in self._bad.items():
            if name not in changed:
                readings.append(Reading.bad(bad.device, name, bad.unit, now, bad.reason or "bad"))
        readings.extend(session.unavailable(now))
        return readings

    async def write(self, point: str, value: Value) -> None:
        """Write ``value`` as the node's own data type (read from the node once per session)."""
        if point not in self._points:
            raise WriteRefused(f"{self.device.id} has no point {point!r}")
        self._start()
        session = self._session
        if session is None or session.dead:
            raise DeviceUnavailable(self._stale_reason())
        await session.write(point, value)

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        # asyncua awaits with asyncio.wait_for, which (before Python 3.12) can swallow a
        # cancellation that races a result; the loop also stops on _closed, and this waits
        # a bounded time for it.
        for _ in range(5):
            if task is None or task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=self.conn.timeout_s)
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # retrieved: a bug was logged when it happened
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- the connection -------------------------------------------------------------------

    def _start(self) -> asyncio.Event:
        if self._attempted is None:
            self._attempted = asyncio.Event()
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._supervise(), name=f"opcua:{self.device.id}")
        return self._attempted

    async def _supervise(self) -> None:
        conn = self.conn
        delay = conn.reconnect_min_s
        while not self._closed:
            assert self._attempted is not None
            try:
                session = await self._open()
            except SessionError as exc:
                self._failed(exc)
                self._attempted.set()
            except Exception as exc:  # a bug must not end reconnecting; say it once
                if repr(exc) not in self._said:
                    log.exception("%s: cannot connect", self._name)
                    self._said.add(repr(exc))
                self._failed(SessionError(f"internal error: {exc!r}"), quiet=True)
                self._attempted.set()
            else:
                self._up(session)
                self._attempted.set()
                delay = conn.reconnect_min_s
                reason = await session.watch()
                self._session = None
                self._lost(reason)
                await session.close()
            await asyncio.sleep(delay * (0.75 + 0.5 * self._rng()))
            delay = min(delay * 2, conn.reconnect_max_s)

    async def _open(self) -> Session:
        conn = self.conn
        identity = None
        if conn.security.enabled:
            try:
                identity = pki.agent_identity(conn)
            except (pki.PkiError, OSError, ValueError) as exc:
                reason = exc.reason if isinstance(exc, pki.PkiError) else "agent certificate"
                raise SessionError(f"the agent's certificate: {exc}", reason) from None
            if identity.generated:
                log.warning(
                    "%s: generated the agent's certificate %s (application URI %s); give it "
                    "to the server's administrator to trust",
                    self._name,
                    identity.cert,
                    identity.application_uri,
                )
            elif pki.expires_soon(identity) and self.stats.sessions == 0:
                log.warning(
                    "%s: the agent's certificate %s expires on %s",
                    self._name,
                    identity.cert,
                    f"{identity.expires:%Y-%m-%d}",
                )
        password = None
        if conn.password_file is not None:
            try:
                password = conn.password_file.read_text().rstrip("\r\n")
            except OSError as exc:
                raise SessionError(
                    f"cannot read password_file {conn.password_file}: {exc.strerror}",
                    "password_file unreadable",
                ) from None
        return await Session.open(
            self.device,
            identity=identity,
            trust=self._trust,
            password=password,
            changes=self._on_change,
        )

    def _up(self, session: Session) -> None:
        stats = self.stats
        self._session = session
        stats.sessions += 1
        if self._down_since is not None and stats.sessions > 1:
            log.info("%s: back after %.0f s", self._name, time.monotonic() - self._down_since)
        else:
            log.info(
                "%s: connected to %s (%s mode, security %s)",
                self._name,
                self.conn.endpoint,
                self.conn.mode,
                self.conn.security,
            )
        problems = [f"{t.point.name} ({t.problem})" for t in session.targets if t.problem]
        if problems and problems != self._problems:
            log.warning("%s: points not available: %s", self._name, ", ".join(problems))
        self._problems = problems
        stats.link, stats.reason = "up", None
        self._down_since = None
        self._said.clear()

    def _lost(self, reason: str) -> None:
        if self._closed:
            return
        log.warning("%s: connection lost: %s", self._name, reason)
        self.stats.losses += 1
        self.stats.link, self.stats.reason = "down", reason
        self._down_since = time.monotonic()
        self._said = {reason}

    def _failed(self, exc: SessionError, *, quiet: bool = False) -> None:
        if self._closed:
            return
        stats = self.stats
        stats.failed_attempts += 1
        message = str(exc)
        if self._down_since is None:
            self._down_since = time.monotonic()
        stats.link, stats.reason = "down", exc.reason
        if message not in self._said and not quiet:
            verb = "cannot connect" if stats.sessions == 0 else "still down"
            log.warning("%s: %s: %s", self._name, verb, message)
        self._said.add(message)

    # -- readings -------------------------------------------------------------------------

    def _on_change(self, point: OpcUaPoint, readings: list[Reading]) -> None:
        self.stats.changes += 1
        if readings and readings[0].quality is Quality.BAD:
            self._bad[point.name] = readings[0]
        else:
            self._bad.pop(point.name, None)
        for reading in readings:
            if len(self._changes) == self._changes.maxlen:
                self.stats.overflow += 1  # the deque drops the oldest as this one goes in
                if not self._overflowing:
                    self._overflowing = True
                    log.warning(
                        "%s: more than %d changes between two reads; dropping the oldest",
                        self._name,
                        self.conn.queue_max,
                    )
            self._changes.append(reading)

    def _stale_reason(self, cause: str | None = None) -> str:
        cause = cause or self.stats.reason
        return f"disconnected ({cause})" if cause else "disconnected"

    def _stale(self, ts: float, cause: str | None = None) -> list[Reading]:
        reason = self._stale_reason(cause)
        device = self.device.id
        return [
            Reading(device, p.name, None, p.unit, Quality.STALE, ts, reason)
            for p in self.device.points
        ]
