"""Modbus RTU for real: a ``socat`` pseudo-terminal pair is the RS-485 line, pymodbus' RTU
server on one end serves three units, the agent's drivers on the other end share one bus.
RTU over TCP runs against pymodbus' TCP server with the RTU framer.

Linux pseudo-terminals refuse parity bits (tcsetattr answers EINVAL), so the lines here
run 8N1; the serial settings themselves are checked in ``test_modbus_bus_config.py``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DeviceUnavailable, Quality, Reading
from drivers.modbus import ModbusDevice, ModbusPoint
from drivers.modbus.bus import ModbusBuses
from drivers.modbus.driver import ModbusDriver
from drivers.simulated.modbus_bus import Exchange, SimulatedModbusBus
from tests.support import terminate, wait_for

UNITS = (1, 2, 7)


def _p(**fields: Any) -> ModbusPoint:
    return ModbusPoint.model_validate(fields)


METER = [
    _p(name="temperature", table="input", address=0, type="int16", scale=0.1, unit="°C"),
    _p(name="flow", table="input", address=1, type="float32", order="CDAB", unit="m3/h"),
    _p(name="energy", table="holding", address=10, type="uint32", unit="kWh"),
    _p(name="status", table="holding", address=12, type="uint16"),
    _p(name="fault", table="holding", address=12, type="bit", bit=3),
    _p(name="setpoint", table="holding", address=13, type="int16", scale=0.1),
    _p(name="limit", table="holding", address=14, type="float32"),
    _p(name="pump", table="coil", address=2, type="bool"),
]
"""A small meter: three tables, so a poll of one unit is three requests."""


def meter_values(unit: int) -> dict[str, Any]:
    """Values that differ from unit to unit, so a crossed answer cannot pass."""
    return {
        "temperature": -2.5 * unit,
        "flow": 1.25 * unit,
        "energy": 100_000 * unit + 7,
        "status": 0b1000 if unit % 2 else 0,
        "setpoint": 20.0 + unit,
        "limit": 0.5 * unit,
        "pump": unit % 2 == 1,
    }


# -- the line --------------------------------------------------------------------------------


def socat() -> str:
    """socat's path; installs it with apt-get when missing, or fails saying what to do."""
    found = shutil.which("socat")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.fail("socat is missing and there is no apt-get here: install socat to run RTU tests")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [[*sudo, "apt-get", "update", "-qq"], [*sudo, "apt-get", "install", "-y", "socat"]]
    for step in steps:
        done = subprocess.run(
            step, capture_output=True, text=True, timeout=600, check=False, env=env
        )
        if done.returncode != 0:
            pytest.fail(f"socat is missing and `{' '.join(step)}` failed: {done.stderr[-500:]}")
    return shutil.which("socat") or pytest.fail("apt-get installed socat but it is not on PATH")


@contextmanager
def serial_line(workdir: Path) -> Iterator[tuple[str, str]]:
    """Two pseudo-terminals joined by socat: (the devices' end, the master's end)."""
    devices, master = workdir / "line-devices", workdir / "line-master"
    log = (workdir / "socat.log").open("wb")
    proc = subprocess.Popen(
        [socat(), "-d", "-d", f"pty,raw,echo=0,link={devices}", f"pty,raw,echo=0,link={master}"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        wait_for(lambda: devices.exists() and master.exists(), 10, what="socat's pty pair")
        yield str(devices), str(master)
    finally:
        terminate(proc)
        log.close()


@pytest.fixture
async def rtu_line(tmp_path: Path) -> AsyncIterator[tuple[SimulatedModbusBus, str]]:
    """The simulated meters as units 1, 2 and 7 on one serial line; the master's end."""
    with serial_line(tmp_path) as (devices_end, master_end):
        async with SimulatedModbusBus({u: METER for u in UNITS}, serial=devices_end) as sim:
            for unit in UNITS:
                for name, value in meter_values(unit).items():
                    await sim.unit(unit).set(name, value)
            yield sim, master_end


def rtu_device(device_id: str, master_end: str, unit: int, **extra: Any) -> ModbusDevice:
    modbus = {"serial": master_end, "baudrate": 19200, "parity": "N", "unit": unit}
    return ModbusDevice.model_validate(
        {
            "id": device_id,
            "modbus": {**modbus, "timeout_s": 0.5, "retries": 1, **extra.pop("modbus", {})},
            "points": [p.model_dump() for p in METER],
            **extra,
        }
    )


def interleavings(exchanges: Iterable[Exchange]) -> list[str]:
    """Answers the server sent while a later request was already out: requests interleaved.

    A request that is never answered (a silent unit) is simply followed by the next one.
    """
    problems: list[str] = []
    pending: int | None = None
    for _, what, unit in exchanges:
        if what == "request":
            pending = unit
        elif pending != unit:
            problems.append(f"answer from unit {unit} while a request to {pending} was out")
        else:
            pending = None
    return problems


def values(readings: list[Reading]) -> dict[str, Any]:
    assert all(r.quality is Quality.GOOD for r in readings), readings
    return {r.point: r.value for r in readings}


def expected(unit: int) -> dict[str, Any]:
    want = meter_values(unit)
    want["fault"] = bool(want["status"] & 0b1000)
    return want


def same_values(got: dict[str, Any], want: dict[str, Any]) -> bool:
    return got.keys() == want.keys() and all(
        got[k] == pytest.approx(want[k]) if isinstance(want[k], float) else got[k] == want[k]
        for k in want
    )


# -- tests -----------------------------------------------------------------------------------


async def test_three_units_on_one_serial_line_share_one_owner_and_never_interleave(
    rtu_line: tuple[SimulatedModbusBus, str],
) -> None:
    sim, master_end = rtu_line
    buses = ModbusBuses()
    drivers = [ModbusDriver(rtu_device(f"meter-{u}", master_end, u), buses) for u in UNITS]
    try:
        async with asyncio.timeout(20):
            for _ in range(5):  # all three poll at once: the bus must take them in turns
                polls = await asyncio.gather(*(d.read() for d in drivers))
                for unit, readings in zip(UNITS, polls, strict=True):
                    assert same_values(values(readings), expected(unit)), unit
        assert len({id(d.bus) for d in drivers}) == 1 and len(buses) == 1
        assert interleavings(sim.exchanges) == []
        assert {u: sim.received[u] for u in UNITS} == {u: 5 * 3 for u in UNITS}
        assert all(d.stats.requests == 15 and d.stats.errors == 0 for d in drivers)
    finally:
        for driver in drivers:
            await driver.aclose()
    assert len(buses) == 0  # the last device to leave closed the line


async def test_the_line_has_one_owner_until_its_last_device_leaves(
    rtu_line: tuple[SimulatedModbusBus, str],
) -> None:
    _, master_end = rtu_line
    buses = ModbusBuses()
    first, second = (ModbusDriver(rtu_device(f"m{u}", master_end, u), buses) for u in (1, 2))
    async with asyncio.timeout(10):
        await first.read()
        await second.read()
        stranger = ModbusDriver(rtu_device("stranger", master_end, 7))  # its own registry
        try:
            with pytest.raises(DeviceUnavailable, match="cannot open serial port"):
                await stranger.read()  # the port is opened exclusively, by one owner
            await first.aclose()
            assert values(await second.read())["energy"] == 200_007  # still open for it
            with pytest.raises(DeviceUnavailable, match="cannot open serial port"):
                await stranger.read()
            await second.aclose()
            assert values(await stranger.read())["energy"] == 700_007  # closed: free now
        finally:
            await stranger.aclose()


async def test_writes_over_rtu_read_back_from_the_device(
    rtu_line: tuple[SimulatedModbusBus, str],
) -> None:
    sim, master_end = rtu_line
    unit = sim.unit(2)
    await unit.set_raw("holding", 12, [0b1000_0000_0000_0001])
    unit.requests.clear()
    writer = ModbusDriver(rtu_device("meter-2", master_end, 2))
    try:
        async with asyncio.timeout(10):
            await writer.write("setpoint", -21.5)  # one register: function 6
            await writer.write("limit", 1e-3)  # two registers: function 16
            await writer.write("pump", True)  # a coil: function 5
            await writer.write("fault", True)  # a bit: read (3), change, write back (6)
            got = values(await writer.read())
    finally:
        await writer.aclose()
    assert await unit.get_raw("holding", 13, 1) == [0x10000 - 215]
    assert await unit.get("limit") == pytest.approx(1e-3)
    assert await unit.get("pump") is True
    assert await unit.get_raw("holding", 12, 1) == [0b1000_0000_0000_1001]  # other bits kept
    assert got["setpoint"] == pytest.approx(-21.5) and got["fault"] is True
    assert {code: unit.requests[code] for code in (5, 6, 16)} == {5: 1, 6: 2, 16: 1}
    assert sim.received[1] == sim.received[7] == 0  # nothing went to the other units


async def test_rtu_over_tcp_reads_three_units_through_one_connection() -> None:
    async with SimulatedModbusBus({u: METER for u in UNITS}, framer="rtu") as sim:
        for unit in UNITS:
            for name, value in meter_values(unit).items():
                await sim.unit(unit).set(name, value)
        buses = ModbusBuses()
        drivers = [
            ModbusDriver(
                ModbusDevice.model_validate(
                    {
                        "id": f"meter-{u}",
                        "modbus": {"host": "127.0.0.1", "port": sim.port, "framer": "rtu"}
                        | {"unit": u, "timeout_s": 0.5},
                        "points": [p.model_dump() for p in METER],
                    }
                ),
                buses,
            )
            for u in UNITS
        ]
        try:
            async with asyncio.timeout(10):
                for _ in range(3):
                    polls = await asyncio.gather(*(d.read() for d in drivers))
                    for unit, readings in zip(UNITS, polls, strict=True):
                        assert same_values(values(readings), expected(unit)), unit
        finally:
            for driver in drivers:
                await driver.aclose()
        assert interleavings(sim.exchanges) == []
        assert {u: sim.received[u] for u in UNITS} == {u: 9 for u in UNITS}


async def test_tcp_framing_against_an_rtu_server_is_a_timeout_not_garbage() -> None:
    async with SimulatedModbusBus({1: METER}, framer="rtu") as sim:
        device = ModbusDevice.model_validate(
            {
                "id": "wrong-framer",
                "modbus": {"host": "127.0.0.1", "port": sim.port, "timeout_s": 0.3, "retries": 0},
                "points": [p.model_dump() for p in METER],
            }
        )
        driver = ModbusDriver(device)
        try:
            async with asyncio.timeout(5):
                with pytest.raises(DeviceUnavailable, match="timeout"):
                    await driver.read()
        finally:
            await driver.aclose()
