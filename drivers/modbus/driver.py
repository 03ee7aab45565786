"""The Modbus driver: planned block reads and typed writes for one device (one unit on a bus).

The driver plans and decodes (each block of the plan with a decoder compiled when the
plan is made or split, see ``blockcodec``; point by point with ``codec`` for the probe and
for a block holding a point the codec refuses); its bus (``bus.py``) owns the connection,
takes turns with the other devices on the same line, and backs off a unit that stopped
answering; the wire (``transport.py``) is the only module that imports pymodbus. What
reaches the driver::

    DeviceUnavailable (connect failed, timeout, connection lost, exception 10/11,
                       UnitBackedOff)             -> raised on; every point goes ``bad``
    exception response to a read                  -> ``bad`` readings for that block only;
                                                     exception 2 splits the block first
    exception response to a write, bad value      -> WriteRefused
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from drivers.base import DeviceUnavailable, Quality, Reading, Value, WriteRefused

from .blockcodec import BlockDecoder
from .bus import ModbusBus, ModbusBuses, ModbusStats
from .codec import decode, decode_bits, encode
from .config import ModbusDevice, ModbusPoint
from .plan import ReadBlock, plan_reads, split
from .transport import ILLEGAL_DATA_ADDRESS, Answer, Read, Request, Write, exception_reason
from .types import BIT_TABLES, WRITABLE_TABLES

__all__ = ["ModbusDriver", "ModbusStats", "ProbedPoint", "exception_reason"]


@dataclass(frozen=True, slots=True)
class ProbedPoint:
    """A reading with the raw registers (or bits) it was decoded from, for ``probe``."""

    point: ModbusPoint
    reading: Reading
    raw: tuple[int, ...] | tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class _Planned:
    """A block of the plan, its compiled decoder, and where each decoded value goes:
    ``(index in config order, point name, unit)`` in the decoder's order."""

    block: ReadBlock
    decoder: BlockDecoder
    slots: tuple[tuple[int, str, str | None], ...]


class ModbusDriver:
    """Reads and writes one Modbus device; see ``drivers.base.Driver``.

    ``buses``: the agent's registry, so that devices on one bus share it. Without one the
    driver has a bus of its own.
    """

    def __init__(self, device: ModbusDevice, buses: ModbusBuses | None = None) -> None:
        self.device = device
        self.stats = ModbusStats()
        self._points = {point.name: point for point in device.points}
        self._index = {point.name: i for i, point in enumerate(device.points)}
        self._plan = [
            self._compiled(block)
            for block in plan_reads(
                device.points, max_gap=device.read_gap, max_registers=device.max_registers_per_read
            )
        ]
        self._buses = buses if buses is not None else ModbusBuses()
        self._bus: ModbusBus | None = self._buses.attach(device.modbus)
        # A poll and a write of this device each take several requests (a split, a
        # read-modify-write); they must not interleave with each other.
        self._lock = asyncio.Lock()

    @property
    def bus(self) -> ModbusBus:
        if self._bus is None:
            raise DeviceUnavailable("driver closed")
        return self._bus

    @property
    def blocks(self) -> list[ReadBlock]:
        """The requests one poll sends, after any splits the device forced."""
        return [planned.block for planned in self._plan]

    async def read(self) -> list[Reading]:
        """Every point once, in config order; decoded block by block (see ``blockcodec``)."""
        device = self.device.id
        good = Quality.GOOD
        out: list[Reading | None] = [None] * len(self._index)
        async with self._lock:
            for planned, ts, answer in await self._poll():
                if answer.exception:
                    reason = exception_reason(answer.exception)
                    for i, name, unit in planned.slots:
                        out[i] = Reading.bad(device, name, unit, ts, reason)
                    continue
                try:
                    values = planned.decoder.decode(answer.registers, answer.bits)
                except ValueError:  # the codec refuses a point: it says which, and why
                    for each in self._decoded(planned.block, ts, answer):
                        out[self._index[each.point.name]] = each.reading
                    continue
                for (i, name, unit), value in zip(planned.slots, values, strict=True):
                    out[i] = Reading(device, name, value, unit, good, ts)
        return cast("list[Reading]", out)  # every point is in exactly one block of the plan

    async def read_raw(self) -> list[ProbedPoint]:
        """Every point once, in config order, each with the raw data it was decoded from."""
        async with self._lock:
            probed: dict[str, ProbedPoint] = {}
            for planned, ts, answer in await self._poll():
                for each in self._decoded(planned.block, ts, answer):
                    probed[each.point.name] = each
            return [probed[point.name] for point in self.device.points]

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
        registers = _encoded(target, value, [0])  # refuse a bad value before any request
        async with self._lock:
            if target.type == "bit":
                answer = await self._send(Read(target.table, target.address, 1), write=True)
                if answer.exception:
                    raise WriteRefused(f"{point}: {exception_reason(answer.exception)}")
                registers = _encoded(target, value, answer.registers)
            answer = await self._send(
                Write(target.table, target.address, tuple(registers)), write=True
            )
            if answer.exception:
                raise WriteRefused(f"{point}: {exception_reason(answer.exception)}")

    def health(self) -> dict[str, object]:
        """Counters and backoff state of this device's unit, for the agent's health data."""
        conn = self.device.modbus
        body: dict[str, object] = {"bus": conn.bus, "unit": conn.unit}
        body.update(dataclasses.asdict(self.stats))
        if self._bus is not None:
            state = self._bus.unit(conn.unit)
            body["backoffs"] = state.backoffs
            body["backed_off_s"] = round(state.backed_off_for(time.monotonic()), 1)
        return body

    async def aclose(self) -> None:
        """Leave the bus; the last device to leave closes it (failing a request in flight)."""
        if self._bus is not None:
            bus, self._bus = self._bus, None
            self._buses.detach(bus)

    async def _poll(self) -> list[tuple[_Planned, float, Answer]]:
        """One request per block of the plan: each kept block, when it was answered, and how.

        A block refused with exception 2 is split and its pieces asked in its place; the
        plan keeps the pieces, so a refused block is not tried again, also when the poll
        ends early (the unit stops answering, the poll is cancelled).
        """
        answered: list[tuple[_Planned, float, Answer]] = []
        pending = deque(self._plan)
        try:
            while pending:  # ends: each split yields strictly smaller blocks
                block = pending[0].block  # stays pending until answered
                answer = await self._send(Read(block.table, block.address, block.count))
                ts = time.time()  # when this block's answer arrived, not when it is decoded
                planned = pending.popleft()
                if answer.exception == ILLEGAL_DATA_ADDRESS and (pieces := split(block)):
                    pending.extendleft(reversed([self._compiled(piece) for piece in pieces]))
                    continue
                answered.append((planned, ts, answer))
        finally:  # remembered, splits and all, however the poll ended
            self._plan = [planned for planned, _, _ in answered] + list(pending)
        return answered

    def _compiled(self, block: ReadBlock) -> _Planned:
        decoder = BlockDecoder(block)
        slots = tuple((self._index[p.name], p.name, p.unit) for p in decoder.points)
        return _Planned(block, decoder, slots)

    async def _send(self, request: Request, *, write: bool = False) -> Answer:
        return await self.bus.exchange(self.device.modbus, request, self.stats, write=write)

    def _decoded(self, block: ReadBlock, ts: float, answer: Answer) -> list[ProbedPoint]:
        """Point by point through the codec, with each point's raw data: for the probe,
        and for a block whose fast decode found a point the codec refuses."""
        device = self.device.id
        if answer.exception:
            reason = exception_reason(answer.exception)
            return [
                ProbedPoint(p, Reading.bad(device, p.name, p.unit, ts, reason), ())
                for p in block.points
            ]
        out: list[ProbedPoint] = []
        for point in block.points:
            start = point.address - block.address
            raw: tuple[int, ...] | tuple[bool, ...]
            try:
                if block.table in BIT_TABLES:
                    raw = answer.bits[start : start + 1]
                    value: Value = decode_bits(point, raw)
                else:
                    raw = answer.registers[start : start + point.count]
                    value = decode(point, raw)
            except ValueError as exc:
                reading = Reading.bad(device, point.name, point.unit, ts, str(exc))
            else:
                reading = Reading(device, point.name, value, point.unit, Quality.GOOD, ts)
            out.append(ProbedPoint(point, reading, raw))
        return out


def _encoded(point: ModbusPoint, value: Value, current: Sequence[int]) -> list[int]:
    try:
        return encode(point, value, current)
    except ValueError as exc:
        raise WriteRefused(str(exc)) from None
