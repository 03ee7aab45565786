"""A simulated Modbus device (one unit) for tests, test rigs and the demo.

The device is built from the same ``ModbusPoint`` list a driver is configured with, and
values are set through the driver's own codec, so a test says "pressure is -1.5" instead of
spelling out registers (raw access exists for tests that must pin the wire format).
``SimulatedModbusDevice`` is a ``SimulatedModbusBus`` (``modbus_bus.py``: transports,
layouts, silent units) with one unit, and keeps that unit's API on itself.

``python -m drivers.simulated.modbus_server --port 5020 [--seed N]`` serves the smoke
detector below, values moving every second, until Ctrl-C or SIGTERM; ``--framer rtu``
serves RTU over TCP, ``--serial /dev/pts/N`` RTU on a serial port (one end of a ``socat``
pair), and ``--unit`` may be given several times for several detectors on one bus.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from drivers.base import Value
from drivers.modbus.config import ModbusPoint
from drivers.modbus.types import Table
from drivers.simulated.animate import animate, stop_on_signals, until_stopped

from .modbus_bus import SimulatedModbusBus


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


class SimulatedModbusDevice(SimulatedModbusBus):
    """One Modbus device serving ``points`` as ``unit``; counts the requests it receives.

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
        framer: Literal["tcp", "rtu"] = "tcp",
        serial: str | None = None,
    ) -> None:
        super().__init__(
            {unit: points}, host=host, port=port, sparse=sparse, framer=framer, serial=serial
        )
        self.unit_id = unit
        self.sparse = sparse
        self._unit = self.units[unit]

    @property
    def points(self) -> dict[str, ModbusPoint]:
        return self._unit.points

    @property
    def requests(self) -> Counter[int]:
        return self._unit.requests

    @property
    def fail_with(self) -> int | None:
        return self._unit.fail_with

    @fail_with.setter
    def fail_with(self, code: int | None) -> None:
        self._unit.fail_with = code

    async def set(self, name: str, value: Value) -> None:
        await self._unit.set(name, value)

    async def get(self, name: str) -> Value:
        return await self._unit.get(name)

    async def set_raw(self, table: Table, address: int, values: list[int] | list[bool]) -> None:
        await self._unit.set_raw(table, address, values)

    async def get_raw(self, table: Table, address: int, count: int) -> list[int] | list[bool]:
        return await self._unit.get_raw(table, address, count)


async def _serve(args: argparse.Namespace) -> None:
    stop = stop_on_signals()
    units: list[int] = args.unit or [1]
    bus = SimulatedModbusBus(
        {unit: SMOKE_DETECTOR for unit in units},
        host=args.host,
        port=args.port,
        framer=args.framer,
        serial=args.serial,
        baudrate=args.baudrate,
        parity=args.parity,
        stopbits=args.stopbits,
    )
    async with bus:
        moving = []
        for unit in units:
            await bus.unit(unit).set("model", "SD-2000")
            model = SmokeDetectorModel(args.seed + unit - units[0])
            moving.append(asyncio.create_task(animate(bus.unit(unit), model)))
        where = args.serial or f"{args.host}:{bus.port}"
        framing = "" if bus.framer == "tcp" else " (rtu)"
        listed = ",".join(map(str, units))
        print(f"smoke detector on {where}{framing} unit {listed}; Ctrl-C stops", flush=True)
        await until_stopped(stop, moving)
    print("stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drivers.simulated.modbus_server",
        description="Serve simulated smoke detectors over Modbus until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=5020, help="TCP port; 0 picks a free one")
    parser.add_argument("--framer", choices=("tcp", "rtu"), default="tcp", help="rtu: RTU over TCP")
    parser.add_argument("--serial", help="serve RTU on this serial port instead of TCP")
    parser.add_argument("--baudrate", type=int, default=19200, help="with --serial")
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N", help="with --serial")
    parser.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="with --serial")
    parser.add_argument(
        "--unit", type=int, action="append", help="unit id to answer (repeat for several)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the value dynamics")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
