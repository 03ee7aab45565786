"""Modbus requests per poll cycle on one sparse register map, three ways:

* ``none``: one request per point, what a gateway without coalescing sends (here: one
  device per point, all on one bus, each read by the agent's own driver);
* ``contiguous_only``: points merged only where they touch (``max_gap: 0``, what
  ``no_gap_reads`` does);
* ``gap_filling``: the driver's default, reading through holes up to ``max_gap`` (16).

Requests are counted where they arrive: at the simulated device (pymodbus' server on
127.0.0.1). Registers read (holding and input) are the drivers' planned blocks, holes
included. These are counts, not timings: they do not depend on the machine, so a test can
assert them too.

    .venv/bin/python -m bench.modbus_requests [--cycles 3] [--no-save] [--quick]

Merges its figures into ``bench/results.json`` under ``modbus_requests_per_cycle``.

Settings it relies on: ``gap_filling`` is the driver's defaults on purpose, what a user
gets (``max_gap``, 16 registers today, is read from the config model and reported with
the figures; ``max_registers_per_read`` 125, the Modbus limit for one read);
``contiguous_only`` sets ``max_gap: 0``. One pymodbus server on 127.0.0.1 answers.

``--quick`` is a smoke run (one cycle): it checks that the bench completes and prints its
figures, and writes no results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from bench import results
from drivers.modbus.bus import ModbusBuses
from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.types import REGISTER_TABLES
from drivers.simulated.modbus_bus import SimulatedModbusBus

KEY = "modbus_requests_per_cycle"


def _p(name: str, table: str, address: int, type_name: str = "uint16", **extra: Any) -> ModbusPoint:
    return ModbusPoint.model_validate(
        {"name": name, "table": table, "address": address, "type": type_name, **extra}
    )


PUMP_STATION: tuple[ModbusPoint, ...] = (
    # Holding: settings and counters in the clusters a real register map has, with holes of
    # 0, 1, 2, 3, 5, 6, 10, 17, 28, 44 and 180 registers between them.
    *(_p(f"setpoint_{i}", "holding", i, "int16", scale=0.1) for i in range(6)),
    _p("mode", "holding", 8),
    _p("flow_limit", "holding", 10, "float32"),
    _p("runtime", "holding", 13, "uint32"),
    _p("starts", "holding", 20, "uint32", order="CDAB"),
    _p("status", "holding", 40),
    _p("running", "holding", 40, "bit", bit=0),
    _p("fault", "holding", 40, "bit", bit=1),
    _p("dry_run", "holding", 40, "bit", bit=2),
    _p("alarm_code", "holding", 41),
    _p("serial_no", "holding", 52, "string", length=6),
    _p("energy", "holding", 58, "uint64"),
    _p("volume", "holding", 62, "float64"),
    _p("firmware", "holding", 110, "uint16"),
    _p("config_crc", "holding", 291, "uint16"),
    # Input: measurements
    _p("pressure_in", "input", 0, "float32", order="CDAB"),
    _p("pressure_out", "input", 2, "float32", order="CDAB"),
    _p("flow", "input", 4, "float32", order="CDAB"),
    _p("motor_temp", "input", 9, "int16", scale=0.1),
    _p("bearing_temp", "input", 10, "int16", scale=0.1),
    _p("current", "input", 14, "uint16", scale=0.01),
    _p("voltage", "input", 15, "uint16", scale=0.1),
    _p("frequency", "input", 32, "uint16", scale=0.01),
    _p("vibration", "input", 77, "float32"),
    # Coils and discrete inputs
    _p("pump_1", "coil", 0, "bool"),
    _p("pump_2", "coil", 1, "bool"),
    _p("valve", "coil", 5, "bool"),
    _p("siren", "coil", 40, "bool"),
    _p("door", "discrete", 0, "bool"),
    _p("float_high", "discrete", 3, "bool"),
    _p("float_low", "discrete", 4, "bool"),
    _p("flood", "discrete", 200, "bool"),
)
"""A pump station controller: 37 points over four tables, with the holes real maps have."""


def _device(
    device_id: str, port: int, points: tuple[ModbusPoint, ...], **extra: Any
) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "id": device_id,
            "modbus": {"host": "127.0.0.1", "port": port, "timeout_s": 2.0},
            "points": [p.model_dump() for p in points],
            **extra,
        }
    )


async def _per_cycle(
    sim: SimulatedModbusBus, devices: list[ModbusDevice], cycles: int
) -> dict[str, float]:
    buses = ModbusBuses()
    drivers = [ModbusDriver(d, buses) for d in devices]
    try:
        before = sim.total_requests
        for _ in range(cycles):
            for driver in drivers:
                readings = await driver.read()
                if any(r.quality.value != "good" for r in readings):
                    raise RuntimeError(f"{driver.device.id}: a point read bad: {readings}")
        requests = (sim.total_requests - before) / cycles
        registers = sum(
            block.count for d in drivers for block in d.blocks if block.table in REGISTER_TABLES
        )
    finally:
        for driver in drivers:
            await driver.aclose()
    return {"requests": requests, "registers_read": registers}


async def measure(cycles: int = 3) -> dict[str, Any]:
    points = PUMP_STATION
    async with SimulatedModbusBus({1: points}) as sim:
        port = sim.port
        default_gap = _device("probe", port, points).max_gap
        ways = {
            "none": [_device(f"p{i}", port, (p,)) for i, p in enumerate(points)],
            "contiguous_only": [_device("station", port, points, max_gap=0)],
            "gap_filling": [_device("station", port, points)],
        }
        counted = {name: await _per_cycle(sim, devices, cycles) for name, devices in ways.items()}
    return {
        "points": len(points),
        "tables": sorted({p.table for p in points}),
        "max_gap": default_gap,
        "cycles": cycles,
        **{name: figures["requests"] for name, figures in counted.items()},
        "registers_read": {name: figures["registers_read"] for name, figures in counted.items()},
        "when": results.timestamp(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.modbus_requests", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--cycles", type=int, default=3, help="poll cycles to average over")
    parser.add_argument("--no-save", action="store_true", help="do not touch results.json")
    parser.add_argument("--quick", action="store_true", help="one cycle, nothing saved")
    parser.add_argument("--results", type=Path, default=results.RESULTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    figures = asyncio.run(measure(1 if args.quick else args.cycles))
    print(json.dumps({KEY: figures}, indent=2))
    if not (args.no_save or args.quick):
        results.merge({KEY: figures}, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
