"""A simulated Modbus TCP device on pymodbus' own server, for tests, test rigs and the demo.

The device is built from the same ``ModbusPoint`` list a driver is configured with, and
values are set through the driver's own codec, so a test says "pressure is -1.5" instead of
spelling out registers (raw access exists for tests that must pin the wire format).

It is built on ``SimDevice``/``SimData``: in pymodbus 3.16 the older
``ModbusDeviceContext``/``ModbusSequentialDataBlock``/``ModbusSparseDataBlock`` are deprecated
shims that build exactly that, log a warning each, and disagree about addresses (the
sequential block is 1-based, the sparse one 0-based).

Two layouts:

* dense (default): each table holds every address from 0 to the end of its last point, so
  coalesced reads across holes succeed, as on most devices;
* sparse: registers hold only the addresses points use; any read touching another one is
  answered with exception 2, as some devices do. pymodbus' bit blocks have no holes, so
  coils and discrete inputs read ``False`` between points in both layouts.

``python -m drivers.simulated.modbus_server --port 5020 [--seed N]`` serves the smoke
detector below, values moving every second, until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Self, cast

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.base import Value
from drivers.modbus.codec import decode, decode_bits, encode
from drivers.modbus.config import ModbusPoint
from drivers.modbus.types import BIT_TABLES, Table

_FUNCTION_CODE: dict[Table, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
"""pymodbus' datastore picks a table by function code; the read code names each table."""


def _p(**fields: object) -> ModbusPoint:
    return ModbusPoint.model_validate(fields)


SMOKE_DETECTOR: tuple[ModbusPoint, ...] = (
    _p(name="obscuration", table="input", address=0, type="float32", unit="%/m"),
    _p(name="temperature", table="input", address=2, type="int16", scale=0.1, unit="°C"),
    _p(name="supply_voltage", table="input", address=3, type="uint16", scale=0.01, unit="V"),
    _p(name="operating_hours", table="input", address=4, type="uint32", order="CDAB", unit="h"),
    _p(name="status", table="holding", address=10, type="uint16"),
    _p(name="smoke_alarm", table="holding", address=10, type="bit", bit=0),
    _p(name="pre_alarm", table="holding", address=10, type="bit", bit=1),
    _p(name="fault", table="holding", address=10, type="bit", bit=2),
    _p(name="model", table="holding", address=20, type="string", length=4),
    _p(name="heat_alarm", table="discrete", address=0, type="bool"),
    _p(name="siren", table="coil", address=0, type="bool"),
)
"""An optical smoke detector with a heat element: what the demo and test rigs poll."""


class SmokeDetectorModel:
    """How a smoke detector's readings move: slow drift, noise, and now and then some smoke.

    Seeded, so a demo or test run is the same every time. ``step()`` is one second.
    """

    PRE_ALARM = 1.5  # %/m obscuration, as EN 54-7 detectors report it
    ALARM = 3.0
    HEAT_ALARM = 57.0  # °C, a class A1 heat element
    DIRTY = 0.4  # %/m of baseline the detector can no longer compensate: a fault

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._baseline = 0.05  # dust in the chamber, drifting slowly
        self._smoke = 0.0
        self._smoke_left = 0  # seconds the current smoke event keeps growing
        self._temperature = 21.0
        self._seconds = 0

    def step(self) -> dict[str, Value]:
        """The next second's values, by point name of ``SMOKE_DETECTOR``."""
        rng = self._rng
        self._seconds += 1
        self._baseline = min(max(self._baseline + rng.gauss(0, 0.002), 0.0), 0.5)
        if self._smoke_left == 0 and rng.random() < 1 / 600:
            self._smoke_left = rng.randint(30, 120)
        if self._smoke_left:
            self._smoke_left -= 1
            self._smoke += rng.uniform(0.02, 0.15)
            self._temperature += rng.uniform(0.0, 0.1)
        else:
            self._smoke *= 0.9
        self._temperature += 0.02 * (21.0 - self._temperature) + rng.gauss(0, 0.05)
        obscuration = max(self._baseline + self._smoke + rng.gauss(0, 0.01), 0.0)
        status = (
            (obscuration >= self.ALARM) << 0
            | (obscuration >= self.PRE_ALARM) << 1
            | (self._baseline >= self.DIRTY) << 2
        )
        return {
            "obscuration": obscuration,
            "temperature": round(self._temperature, 1),
            "supply_voltage": round(24.0 + rng.gauss(0, 0.1), 2),
            "operating_hours": 17_520 + self._seconds // 3600,
            "status": status,
            "heat_alarm": self._temperature >= self.HEAT_ALARM,
        }


class SimulatedModbusDevice:
    """One Modbus TCP device serving ``points``; counts the requests it receives.

    ``requests`` counts received requests by function code (3 = read holding registers).
    Setting ``fail_with`` to an exception code makes the device answer every request with
    it (6: busy, 11: a gateway whose target does not answer) until set back to ``None``.
    """

    def __init__(
        self,
        points: Sequence[ModbusPoint] = SMOKE_DETECTOR,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit: int = 1,
        sparse: bool = False,
    ) -> None:
        self.points = {point.name: point for point in points}
        self.host = host
        self.unit = unit
        self.sparse = sparse
        self.requests: Counter[int] = Counter()
        self.fail_with: int | None = None
        self._port = port
        self._server: ModbusTcpServer | None = None
        self._local = False  # our own get/set run through the datastore too; never fail them

    @property
    def port(self) -> int:
        """The port listened on; the one the OS picked when constructed with port 0."""
        return self._port

    async def start(self) -> None:
        device = SimDevice(
            id=self.unit,
            simdata=_layout(list(self.points.values()), self.sparse),
            action=self._action,
        )
        self._server = ModbusTcpServer(
            device, address=(self.host, self._port), trace_pdu=self._count
        )
        await self._server.serve_forever(background=True)
        listener = cast(asyncio.Server, self._server.transport)
        self._port = listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every client connection."""
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]  # unannotated upstream
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def set(self, name: str, value: Value) -> None:
        """Make point ``name`` read as ``value``, encoded by the driver's codec."""
        point = self.points[name]
        current = await self.get_raw(point.table, point.address, 1) if point.type == "bit" else []
        registers = encode(point, value, [int(word) for word in current])
        if point.table in BIT_TABLES:
            await self.set_raw(point.table, point.address, [bool(registers[0])])
        else:
            await self.set_raw(point.table, point.address, registers)

    async def get(self, name: str) -> Value:
        """What point ``name`` holds now, e.g. after a driver wrote it."""
        point = self.points[name]
        raw = await self.get_raw(point.table, point.address, point.count)
        if point.table in BIT_TABLES:
            return decode_bits(point, [bool(bit) for bit in raw])
        return decode(point, [int(word) for word in raw])

    async def set_raw(self, table: Table, address: int, values: list[int] | list[bool]) -> None:
        """Store registers (or bits) as they go on the wire, bypassing the codec."""
        with self._own_access():
            await self._running().async_setValues(self.unit, _FUNCTION_CODE[table], address, values)

    async def get_raw(self, table: Table, address: int, count: int) -> list[int] | list[bool]:
        with self._own_access():
            return await self._running().async_getValues(
                self.unit, _FUNCTION_CODE[table], address, count
            )

    def _running(self) -> ModbusTcpServer:
        if self._server is None:
            raise RuntimeError("the simulated device is not started")
        return self._server

    @contextmanager
    def _own_access(self) -> Iterator[None]:
        """Our own reads and writes pass ``_action`` too; ``fail_with`` must not hit them.

        A flag is enough: pymodbus' datastore path has no real suspension point, so no
        client request is served between setting and clearing it.
        """
        self._local = True
        try:
            yield
        finally:
            self._local = False

    def _count(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests[pdu.function_code] += 1
        return pdu

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this for every access that passed its address check."""
        if self.fail_with is None or self._local:
            return None
        return ExcCodes(self.fail_with)


def _layout(
    points: Sequence[ModbusPoint], sparse: bool
) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
    """pymodbus' four separate tables, in its order: coils, discrete inputs, holding, input."""
    return (
        _table(points, "coil", sparse),
        _table(points, "discrete", sparse),
        _table(points, "holding", sparse),
        _table(points, "input", sparse),
    )


def _table(points: Sequence[ModbusPoint], table: Table, sparse: bool) -> list[SimData]:
    spans = _spans(point for point in points if point.table == table)
    bits = table in BIT_TABLES
    if not spans:
        # pymodbus needs at least one entry per table: a bit word of zeros, or a register
        # that refuses every access.
        return [SimData(0, values=[False], datatype=DataType.BITS)] if bits else [SimData(0)]
    if not sparse:
        spans = [(0, spans[-1][1])]
    if bits:
        return [SimData(a, values=[False] * (b - a), datatype=DataType.BITS) for a, b in spans]
    return [SimData(a, values=[0] * (b - a), datatype=DataType.REGISTERS) for a, b in spans]


def _spans(points: Iterable[ModbusPoint]) -> list[tuple[int, int]]:
    """The address ranges points occupy, merged where they touch or overlap."""
    spans: list[tuple[int, int]] = []
    for point in sorted(points, key=lambda p: p.address):
        start, end = point.address, point.address + point.count
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


async def animate(
    device: SimulatedModbusDevice,
    model: SmokeDetectorModel,
    *,
    period_s: float = 1.0,
    ticks: int | None = None,
) -> None:
    """Apply ``model.step()`` to ``device`` every ``period_s``, ``ticks`` times or forever."""
    done = 0
    while ticks is None or done < ticks:
        for name, value in model.step().items():
            await device.set(name, value)
        done += 1
        await asyncio.sleep(period_s)


async def _serve(host: str, port: int, unit: int, seed: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with SimulatedModbusDevice(SMOKE_DETECTOR, host=host, port=port, unit=unit) as device:
        await device.set("model", "SD-2000")
        moving = asyncio.create_task(animate(device, SmokeDetectorModel(seed)))
        print(f"smoke detector on {host}:{device.port} unit {unit}; Ctrl-C stops", flush=True)
        await stop.wait()
        moving.cancel()
        with suppress(asyncio.CancelledError):
            await moving
    print("stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drivers.simulated.modbus_server",
        description="Serve a simulated smoke detector over Modbus TCP until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=5020, help="TCP port; 0 picks a free one")
    parser.add_argument("--unit", type=int, default=1, help="Modbus unit id to answer")
    parser.add_argument("--seed", type=int, default=0, help="seed of the value dynamics")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.unit, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
