"""The Modbus driver: planned block reads over pymodbus, translated to ``drivers.base``.

This is the only module that imports pymodbus. Its exceptions stop here::

    pymodbus ConnectionException, ModbusIOException (no answer after retries),
    any other ModbusException                     -> DeviceUnavailable, connection dropped
    exception response 10/11 (gateway: path unavailable, target did not answer)
                                                  -> DeviceUnavailable
    any other exception response to a read        -> ``bad`` readings for that block only
    exception response to a write, bad value      -> WriteRefused

We own reconnecting: pymodbus' background reconnect is off, and each ``read()`` or
``write()`` on a dropped connection tries one connect, bounded by ``timeout_s``. The agent's
scheduler decides when to try again, so an unreachable device costs one bounded attempt per
poll instead of a hidden task retrying behind everyone's back. A connection the peer drops
fails the request in flight at once instead of after ``(retries + 1) * timeout_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers.base import DeviceUnavailable, Quality, Reading, Value, WriteRefused

from .codec import decode, decode_bits, encode
from .config import ModbusConnection, ModbusDevice, ModbusPoint
from .plan import ReadBlock, plan_reads, split
from .types import BIT_TABLES, WRITABLE_TABLES

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
ILLEGAL_DATA_ADDRESS = 2
GATEWAY_FAILURES = frozenset({10, 11})
"""A gateway answering for a device it cannot reach means the device is unavailable."""


def exception_reason(code: int) -> str:
    return f"exception {code}: {EXCEPTION_NAMES.get(code, 'unknown')}"


def _make_client(conn: ModbusConnection, on_link: Callable[[bool], None]) -> AsyncModbusTcpClient:
    """The one place a transport is chosen; RTU and RTU-over-TCP will branch here."""
    return AsyncModbusTcpClient(
        conn.host,
        port=conn.port,
        timeout=conn.timeout_s,
        retries=conn.retries,
        reconnect_delay=0,  # no background reconnect: see the module docstring
        trace_connect=on_link,
    )


class _Link:
    """One connection, and a future that resolves when the peer drops it.

    pymodbus notices a dropped connection but lets a request on it wait out its timeout
    and retries; racing each request against ``lost`` reports the drop at once.
    """

    def __init__(self, conn: ModbusConnection) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.client = _make_client(conn, self._on_link)

    def _on_link(self, up: bool) -> None:
        if not up and not self.lost.done():
            self.lost.set_result(None)

    @property
    def up(self) -> bool:
        return self.client.connected and not self.lost.done()

    async def exchange(self, request: Awaitable[ModbusPDU]) -> ModbusPDU:
        """The response to ``request``; ConnectionException if the link drops first."""
        pending = asyncio.ensure_future(request)
        try:
            done, _ = await asyncio.wait((pending, self.lost), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pending.cancel()
            raise
        if pending not in done:
            pending.cancel()
            raise ConnectionException("connection lost")
        return pending.result()

    def close(self) -> None:
        """Close, and fail a request still waiting on this link (pymodbus would not)."""
        self.client.close()
        self._on_link(False)


@dataclass(slots=True)
class ModbusStats:
    """Counters for health data: requests sent, and those that failed or were refused."""

    requests: int = 0
    errors: int = 0


@dataclass(frozen=True, slots=True)
class _Answer:
    """One block's response: its arrival time and its registers, bits or exception code."""

    ts: float
    registers: Sequence[int] = ()
    bits: Sequence[bool] = ()
    exception: int = 0


class ModbusDriver:
    """Reads and writes one Modbus device; see ``drivers.base.Driver``."""

    def __init__(self, device: ModbusDevice) -> None:
        self.device = device
        self.stats = ModbusStats()
        self._points = {point.name: point for point in device.points}
        self._blocks = plan_reads(
            device.points, max_gap=device.read_gap, max_registers=device.max_registers_per_read
        )
        self._link: _Link | None = None
        # Modbus is one request at a time per device; a write from a rule must not
        # interleave its connect with a poll's.
        self._lock = asyncio.Lock()

    @property
    def blocks(self) -> list[ReadBlock]:
        """The requests one poll sends, after any splits the device forced."""
        return list(self._blocks)

    async def read(self) -> list[Reading]:
        async with self._lock:
            link = await self._connected()
            readings: dict[str, Reading] = {}
            kept: list[ReadBlock] = []
            pending = deque(self._blocks)
            while pending:  # ends: each split yields strictly smaller blocks
                block = pending.popleft()
                answer = await self._read_block(link, block)
                if answer.exception == ILLEGAL_DATA_ADDRESS and (pieces := split(block)):
                    pending.extendleft(reversed(pieces))
                    continue
                kept.append(block)
                for reading in self._readings(block, answer):
                    readings[reading.point] = reading
            self._blocks = kept  # remembered: a refused block is not tried again
            return [readings[point.name] for point in self.device.points]

    async def write(self, point: str, value: Value) -> None:
        """Set one point: coil by function 5, one register by 6, several by 16.

        A ``bit`` point is read, changed and written back; another master writing the
        same register in between would be overwritten (Modbus has no lock to prevent it).
        """
        target = self._points.get(point)
        if target is None:
            raise WriteRefused(f"{self.device.id} has no point {point!r}")
        if target.table not in WRITABLE_TABLES:
            raise WriteRefused(f"{point} is in the read-only {target.table} table")
        async with self._lock:
            link = await self._connected()
            current: Sequence[int] = ()
            if target.type == "bit":
                answer = await self._read_block(
                    link, ReadBlock(target.table, target.address, 1, ())
                )
                if answer.exception:
                    raise WriteRefused(f"{point}: {exception_reason(answer.exception)}")
                current = answer.registers
            try:
                registers = encode(target, value, current)
            except ValueError as exc:
                raise WriteRefused(str(exc)) from None
            response = await self._send(
                link, _write_request(link.client, target, registers, self._unit)
            )
            if response.isError():
                raise WriteRefused(f"{point}: {exception_reason(response.exception_code)}")

    async def aclose(self) -> None:
        self._drop()

    @property
    def _unit(self) -> int:
        return self.device.modbus.unit

    async def _connected(self) -> _Link:
        if self._link is not None and self._link.up:
            return self._link
        self._drop()
        link = _Link(self.device.modbus)
        started = time.monotonic()
        if not await link.client.connect():
            link.close()
            self.stats.errors += 1
            # pymodbus reports only success; a failure that took the whole timeout was one.
            slow = time.monotonic() - started >= 0.9 * self.device.modbus.timeout_s
            raise DeviceUnavailable("timeout" if slow else "connect failed")
        self._link = link
        return link

    def _drop(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    async def _send(self, link: _Link, request: Awaitable[ModbusPDU]) -> ModbusPDU:
        """Await one request; a device gone away becomes DeviceUnavailable, link dropped."""
        self.stats.requests += 1
        try:
            response = await link.exchange(request)
        except ModbusException as exc:
            self.stats.errors += 1
            self._drop()
            if isinstance(exc, ModbusIOException):
                raise DeviceUnavailable("timeout") from None
            if isinstance(exc, ConnectionException):
                raise DeviceUnavailable("connection lost") from None
            raise DeviceUnavailable(f"modbus error: {exc}") from None
        if response.isError():
            self.stats.errors += 1
            if response.exception_code in GATEWAY_FAILURES:
                self._drop()
                raise DeviceUnavailable(exception_reason(response.exception_code))
        return response

    async def _read_block(self, link: _Link, block: ReadBlock) -> _Answer:
        response = await self._send(link, _read_request(link.client, block, self._unit))
        ts = time.time()  # when this block's answer arrived, not when it is decoded
        if response.isError():
            return _Answer(ts, exception=response.exception_code)
        return _Answer(ts, registers=response.registers, bits=response.bits[: block.count])

    def _readings(self, block: ReadBlock, answer: _Answer) -> list[Reading]:
        device = self.device.id
        if answer.exception:
            reason = exception_reason(answer.exception)
            return [Reading.bad(device, p.name, p.unit, answer.ts, reason) for p in block.points]
        readings: list[Reading] = []
        for point in block.points:
            start = point.address - block.address
            try:
                if block.table in BIT_TABLES:
                    value: Value = decode_bits(point, answer.bits[start : start + 1])
                else:
                    value = decode(point, answer.registers[start : start + point.count])
            except ValueError as exc:
                readings.append(Reading.bad(device, point.name, point.unit, answer.ts, str(exc)))
                continue
            readings.append(Reading(device, point.name, value, point.unit, Quality.GOOD, answer.ts))
        return readings


def _read_request(
    client: AsyncModbusTcpClient, block: ReadBlock, unit: int
) -> Awaitable[ModbusPDU]:
    read = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }[block.table]
    return read(block.address, count=block.count, device_id=unit)


def _write_request(
    client: AsyncModbusTcpClient, point: ModbusPoint, registers: list[int], unit: int
) -> Awaitable[ModbusPDU]:
    """Coil: function 5. One register: function 6. More: function 16."""
    if point.table == "coil":
        return client.write_coil(point.address, bool(registers[0]), device_id=unit)
    if len(registers) == 1:
        return client.write_register(point.address, registers[0], device_id=unit)
    return client.write_registers(point.address, registers, device_id=unit)
