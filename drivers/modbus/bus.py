"""One owner per bus: the devices on one serial port, or one TCP endpoint, share a connection.

Modbus is one request at a time per line: on RS-485 two masters' frames would collide, and
many TCP devices and serial servers allow one or two connections. So each bus has one
``Link``, and requests from every device on it pass one ``asyncio.Lock`` (FIFO, so a
device waits for at most the requests queued before its own). A request holds the bus for
its tries only, not for a device's whole poll: devices on one bus take turns request by
request.

Per unit (``backoff.UnitState``) the bus remembers who stopped answering, so one dead unit
costs the others one probe now and then instead of its timeout at every poll.

Failures, and what they mean::

    connect refused, port missing -> DeviceUnavailable("connect failed" | "cannot open
                                     serial port"), every device on the bus
    connect slower than timeout_s -> DeviceUnavailable("timeout")
    connection dropped            -> DeviceUnavailable("connection lost"), at once
    no answer after all tries     -> DeviceUnavailable("timeout"); the unit is backed off
    (a wrong or malformed answer is no answer: ``WrongAnswer``, see ``transport.py``)
    exception 10/11 (gateway)     -> DeviceUnavailable("exception 11: …"); backed off
    unit backed off               -> UnitBackedOff(last reason), without touching the bus

A connect that failed while a device waited for its turn is not tried again for it: the
devices queued behind a dead endpoint fail at once instead of one timeout each. On Modbus
TCP, a timeout also drops the connection when no unit answered on it since the previous
timeout (a half-open socket); while other units answer, the connection is fine and stays.

RTU (a serial line, or ``framer: rtu`` over TCP) has no transaction id, so an answer that
comes after its request timed out would pass for the answer to the next request.
``Link.send`` refuses answers of the wrong shape (``WrongAnswer``); beyond that, a timeout
or a wrong answer makes an RTU line *stale*, and before its next frame the bus lets the
line settle: it waits until nothing has come in for ``stale_guard_s`` (a quarter of the
``timeout_s`` that ran out, at least the 3.5-character silence, at most 1 s; never more
than four guards in all), so a late answer arrives while no request waits for it and is
dropped, and pymodbus' receive buffer is cleared. RTU over TCP also drops the connection
at once and connects again, so that a serial server or gateway that queues requests
forgets the ones it still holds for us. A wrong answer on Modbus TCP drops the connection
as well.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from drivers.base import DeviceUnavailable

from .backoff import UnitState
from .config import ModbusConnection
from .transport import (
    GATEWAY_FAILURES,
    Answer,
    Link,
    LinkError,
    LinkLost,
    NoAnswer,
    Request,
    WrongAnswer,
    exception_reason,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ModbusStats:
    """A device's counters for health data; ``errors`` is every failure of any kind."""

    requests: int = 0
    retries: int = 0
    timeouts: int = 0
    exceptions: int = 0
    errors: int = 0


def rtu_silence_s(baudrate: int) -> float:
    """The silent interval RTU needs between frames: 3.5 characters of 11 bits each, and
    1.75 ms above 19200 baud (as the serial-line specification fixes it)."""
    return 1.75e-3 if baudrate > 19200 else 3.5 * 11 / baudrate


STALE_GUARD_FRACTION = 0.25
STALE_GUARD_MAX_S = 1.0
STALE_LIMIT_GUARDS = 4


def stale_guard_s(timeout_s: float, silence_s: float) -> float:
    """How long a stale RTU line must stay quiet before the next frame: a quarter of the
    timeout that ran out, at least the inter-frame silence, at most 1 s."""
    return min(max(silence_s, STALE_GUARD_FRACTION * timeout_s), STALE_GUARD_MAX_S)


class ModbusBus:
    """One serial line or TCP endpoint, its connection, and the state of each unit on it."""

    def __init__(self, conn: ModbusConnection) -> None:
        self.conn = conn
        self.name = conn.bus
        self.settings = conn.bus_settings
        self.users = 0
        self._units: dict[int, UnitState] = {}
        self._lock = asyncio.Lock()
        self._link: Link | None = None
        self._answered = False  # since the last connect or timeout: see the module docstring
        self._connect_failed: tuple[float, str] | None = None
        self._quiet_s = rtu_silence_s(conn.baudrate) if conn.serial is not None else 0.0
        self._last_frame = 0.0
        self._rtu = conn.framing == "rtu"  # no transaction id: see the module docstring
        self._stale: tuple[float, float] | None = None  # (since, guard_s) on a stale RTU line
        self._wrong: str | None = None  # what was wrong with the last try's answer, if any

    def unit(self, unit: int) -> UnitState:
        return self._units.setdefault(unit, UnitState(unit))

    async def exchange(
        self, conn: ModbusConnection, request: Request, stats: ModbusStats, *, write: bool = False
    ) -> Answer:
        """Send ``request`` to ``conn.unit`` in its turn; its answer or an exception answer.

        ``write``: part of a write (the read of a read-modify-write too), let through even
        while the unit is backed off. Raises DeviceUnavailable (or its UnitBackedOff) as
        the module docstring says.
        """
        unit = self.unit(conn.unit)
        probe = unit.admit(time.monotonic(), write=write)
        owns_probe = probe and not write
        asked = time.monotonic()
        try:
            async with self._lock:
                await self._connected(conn, asked, stats)
                stats.requests += 1
                tries = 1 if probe else conn.retries + 1
                answer = await self._tries(conn, request, tries, stats, asked)
                if answer is None:
                    stats.timeouts += 1
                    stats.errors += 1
                    if not self._answered and self.conn.serial is None:
                        self._drop()  # nothing answered since the last timeout: half-open?
                    self._answered = False
                else:
                    self._answered = True
        finally:
            if owns_probe:
                unit.probing = False
        now = time.monotonic()
        if answer is None:
            self._unit_failed(unit, now, "timeout", self._wrong)
            raise DeviceUnavailable("timeout")
        if answer.exception:
            stats.exceptions += 1
            stats.errors += 1
            if answer.exception in GATEWAY_FAILURES:
                reason = exception_reason(answer.exception)
                self._unit_failed(unit, now, reason)
                raise DeviceUnavailable(reason)
        down_for = unit.answered(now)
        if down_for is not None:
            log.info("unit %d on %s back after %.0f s", unit.unit, self.name, down_for)
        return answer

    def close(self) -> None:
        """Close the connection; a request waiting on it fails with "connection lost"."""
        self._drop()

    async def _tries(
        self,
        conn: ModbusConnection,
        request: Request,
        tries: int,
        stats: ModbusStats,
        asked: float,
    ) -> Answer | None:
        """The answer within ``tries`` of ``timeout_s`` each, or None if the unit is silent."""
        self._wrong = None
        for attempt in range(tries):
            if attempt:
                stats.retries += 1
            link = await self._connected(conn, asked, stats)  # again, if a stale line dropped it
            await self._settle(link)
            await self._keep_quiet()
            try:
                async with asyncio.timeout(conn.timeout_s):
                    return await link.send(request, conn.unit)
            except (TimeoutError, NoAnswer) as exc:
                self._wrong = str(exc) if isinstance(exc, WrongAnswer) else None
                self._went_stale(conn, wrong=self._wrong is not None)
                continue
            except LinkLost:
                self._drop()
                raise DeviceUnavailable("connection lost") from None
            except LinkError as exc:
                self._drop()
                raise DeviceUnavailable(f"modbus error: {exc}") from None
            finally:
                self._last_frame = time.monotonic()
        return None

    def _went_stale(self, conn: ModbusConnection, *, wrong: bool) -> None:
        """A try got no answer, or a wrong one: on RTU an answer may still be on its way."""
        if self._rtu:
            self._stale = (time.monotonic(), stale_guard_s(conn.timeout_s, self._quiet_s))
        if (self._rtu or wrong) and self.conn.serial is None:
            self._drop()  # a gateway may still hold our requests: make it forget them

    async def _settle(self, link: Link) -> None:
        """Before the first frame on a stale RTU line: let a late answer come and go."""
        if self._stale is not None:
            since, guard_s = self._stale
            await link.settle(since, guard_s, STALE_LIMIT_GUARDS * guard_s)
            self._stale = None

    async def _keep_quiet(self) -> None:
        """RTU devices tell frames apart by silence: keep it before sending the next one."""
        wait = self._last_frame + self._quiet_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _connected(self, conn: ModbusConnection, asked: float, stats: ModbusStats) -> Link:
        if self._link is not None and self._link.up:
            return self._link
        self._drop()
        failed = self._connect_failed
        if failed is not None and failed[0] >= asked:
            stats.errors += 1
            raise DeviceUnavailable(failed[1])  # it failed while we queued: do not wait again
        link = Link(self.conn)
        try:
            async with asyncio.timeout(conn.timeout_s):
                reason = await link.open()
        except TimeoutError:
            reason = "timeout"
        if reason is not None:
            link.close()
            stats.errors += 1
            self._connect_failed = (time.monotonic(), reason)
            raise DeviceUnavailable(reason)
        self._link, self._answered, self._connect_failed = link, False, None
        return link

    def _drop(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def _unit_failed(
        self, unit: UnitState, now: float, reason: str, wrong: str | None = None
    ) -> None:
        """Back the unit off; log when that is news, with what was wrong with its last
        answer when it gave one (a wrong answer counts as none, but the log says so)."""
        if unit.failed(now, reason):
            detail = f" (its last answer was wrong: {wrong})" if wrong else ""
            log.warning("unit %d on %s unavailable: %s%s", unit.unit, self.name, reason, detail)


class ModbusBuses:
    """The buses of one agent run, shared by the devices on each; the last to leave closes it.

    Build one per agent run and hand it to every Modbus driver. A driver built without one
    gets a bus of its own (a probe, a test).
    """

    def __init__(self) -> None:
        self._buses: dict[tuple[bool, str], ModbusBus] = {}

    def attach(self, conn: ModbusConnection) -> ModbusBus:
        """The bus of ``conn``; ValueError if its settings disagree with the bus' users."""
        key = (conn.serial is not None, conn.bus)
        bus = self._buses.get(key)
        if bus is None:
            bus = self._buses[key] = ModbusBus(conn)
        elif bus.settings != conn.bus_settings:
            raise ValueError(f"{conn.bus} is already in use with {bus.settings}")
        bus.users += 1
        return bus

    def detach(self, bus: ModbusBus) -> None:
        bus.users -= 1
        if bus.users <= 0:
            bus.close()
            self._buses.pop((bus.conn.serial is not None, bus.name), None)

    def __len__(self) -> int:
        return len(self._buses)
