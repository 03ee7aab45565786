"""The Modbus driver against a real pymodbus server: the simulated device, on 127.0.0.1.

Nothing is mocked: values go onto the wire through the simulator's datastore, requests are
counted where they arrive, failures are real closed ports, silent peers and stopped servers.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.base import DeviceUnavailable, Quality, Reading, Value, WriteRefused
from drivers.modbus import ModbusDevice, ModbusPoint
from drivers.modbus.config import bus_conflicts
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.plan import ReadBlock, plan_reads
from drivers.simulated.modbus_server import (
    SMOKE_DETECTOR,
    SimulatedModbusDevice,
    SmokeDetectorModel,
    animate,
)
from tests.test_modbus_codec import STRINGS, same, string_wire, type_cases, wire
from tests.test_modbus_plan import sparse_map

REPO = Path(__file__).resolve().parent.parent
StartServer = Callable[..., Awaitable[SimulatedModbusDevice]]
MakeDriver = Callable[..., ModbusDriver]


@pytest.fixture
async def modbus_server() -> AsyncIterator[StartServer]:
    """Starts simulated devices on 127.0.0.1, free ports; all stopped after the test."""
    started: list[SimulatedModbusDevice] = []

    async def start(
        points: Sequence[ModbusPoint] = SMOKE_DETECTOR, **options: Any
    ) -> SimulatedModbusDevice:
        device = SimulatedModbusDevice(points, **options)
        await device.start()
        started.append(device)
        return device

    yield start
    for device in started:
        await device.stop()


@pytest.fixture
async def driver() -> AsyncIterator[MakeDriver]:
    """Builds drivers for a port and a point list; all closed after the test."""
    made: list[ModbusDriver] = []

    def make(
        port: int, points: Sequence[ModbusPoint] = SMOKE_DETECTOR, **extra: Any
    ) -> ModbusDriver:
        made.append(ModbusDriver(device_config(port, points, **extra)))
        return made[-1]

    yield make
    for each in made:
        await each.aclose()


def device_config(port: int, points: Sequence[ModbusPoint], **extra: Any) -> ModbusDevice:
    modbus = {"host": "127.0.0.1", "port": port, "timeout_s": 0.5, **extra.pop("modbus", {})}
    return ModbusDevice.model_validate(
        {"id": "dev-1", "modbus": modbus, "points": [p.model_dump() for p in points], **extra}
    )


def by_name(readings: list[Reading]) -> dict[str, Reading]:
    return {r.point: r for r in readings}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def point(name: str, table: str, address: int, type_name: str, **extra: Any) -> ModbusPoint:
    return ModbusPoint.model_validate(
        {"name": name, "table": table, "address": address, "type": type_name, **extra}
    )


# -- values over the wire ------------------------------------------------------------------


async def test_every_type_and_order_reads_known_values(
    modbus_server: StartServer, driver: MakeDriver
) -> None:
    points: list[ModbusPoint] = []
    raw: list[list[int]] = []
    expected: list[Value] = []
    address = 0
    for type_name, order, value in type_cases():
        points.append(point(f"t{len(points)}", "holding", address, type_name, order=order))
        raw.append(wire(type_name, value, order))
        expected.append(value)
        address += len(raw[-1])
    for order in ("ABCD", "BADC"):
        for data, text in STRINGS:
            name = f"t{len(points)}"
            points.append(point(name, "holding", address, "string", length=4, order=order))
            raw.append(string_wire(data, order))
            expected.append(text)
            address += 4
    sim = await modbus_server(points)
    for p, registers in zip(points, raw, strict=True):
        await sim.set_raw("holding", p.address, registers)

    readings = await driver(sim.port, points).read()

    assert [r.point for r in readings] == [p.name for p in points]
    for p, reading, want in zip(points, readings, expected, strict=True):
        assert reading.quality is Quality.GOOD, reading
        assert same(reading.value, want), (p.type, p.order, reading.value, want)
    assert sum(sim.requests.values()) == 3  # 302 registers, 125 per request


async def test_values_set_through_the_codec_read_back(
    modbus_server: StartServer, driver: MakeDriver
) -> None:
    points = [
        point("pressure", "input", 0, "float32", order="CDAB", unit="MPa"),
        point("level", "holding", 103, "uint16", scale=0.001, unit="m"),
        point("temperature", "input", 2, "int16", scale=0.1, offset=-40.0, unit="°C"),
        point("total", "holding", 0, "int64", order="DCBA"),
    ]
    sim = await modbus_server(points)
    values: dict[str, Value] = {"pressure": -1.5, "level": 2.5, "temperature": -12.3}
    for name, value in {**values, "total": -(2**63)}.items():
        await sim.set(name, value)
    assert await sim.get_raw("input", 0, 2) == [0x0000, 0xBFC0]
    assert await sim.get_raw("input", 2, 1) == [277]  # (-12.3 + 40) / 0.1

    got = by_name(await driver(sim.port, points).read())

    assert got["pressure"].value == -1.5 and got["pressure"].unit == "MPa"
    assert got["level"].value == pytest.approx(2.5)
    assert got["temperature"].value == pytest.approx(-12.3)
    assert got["total"].value == -(2**63)


async def test_bits_of_registers_coils_and_discrete_inputs(
    modbus_server: StartServer, driver: MakeDriver
) -> None:
    points = [point(f"bit{b}", "input", 7, "bit", bit=b) for b in (0, 1, 2, 14, 15)]
    points += [point(f"coil{a}", "coil", a, "bool") for a in (0, 3, 9, 17)]
    points += [point(f"in{a}", "discrete", a, "bool") for a in (0, 1, 30)]
    sim = await modbus_server(points)
    await sim.set_raw("input", 7, [0b1000_0000_0000_0101])
    await sim.set_raw("coil", 0, [i in (0, 3, 9) for i in range(10)])
    await sim.set_raw("coil", 17, [False])
    await sim.set_raw("discrete", 0, [False, True])
    await sim.set_raw("discrete", 30, [True])

    got = {r.point: r.value for r in await driver(sim.port, points).read()}

    assert got == {
        "bit0": True, "bit1": False, "bit2": True, "bit14": False, "bit15": True,
        "coil0": True, "coil3": True, "coil9": True, "coil17": False,
        "in0": False, "in1": True, "in30": True,
    }  # fmt: skip
    assert dict(sim.requests) == {4: 1, 1: 1, 2: 2}  # discrete 30 is past max_gap


def same_readings(fast: list[Reading], probed: list[Reading]) -> bool:
    """Equal but for the stamps (two polls), NaN equal to NaN, an int not a float."""

    def key(r: Reading) -> tuple[object, ...]:
        return (r.device, r.point, r.unit, r.quality, r.reason)

    return len(fast) == len(probed) and all(
        key(a) == key(b) and same(a.value, b.value) for a, b in zip(fast, probed, strict=True)
    )


async def test_read_decodes_as_the_probe_does_through_splits_and_refusals(
    modbus_server: StartServer, driver: MakeDriver
) -> None:
    """``read`` decodes whole blocks at once, ``read_raw`` point by point with the codec:
    the same readings, also after a refused block was split and for a point refused."""
    points = [*sparse_map(), point("ghost", "holding", 46, "uint16")]
    sim = await modbus_server(sparse_map(), sparse=True)
    await sim.set("energy", -70000)
    await sim.set("serial", "SN-42")
    await sim.set("fault", True)
    await sim.set("total", float("nan"))
    await sim.set("hours", 123456)
    reader = driver(sim.port, points, max_gap=16)

    first = await reader.read()  # splits as it goes
    probed = await reader.read_raw()

    assert same_readings(first, [each.reading for each in probed])
    assert same_readings(await reader.read(), [each.reading for each in probed])
    assert by_name(first)["ghost"].reason == "exception 2: illegal data address"
    assert [r.point for r in first if r.quality is not Quality.GOOD] == ["ghost"]


async def test_a_point_the_codec_refuses_reads_bad_and_its_block_still_reads(
    modbus_server: StartServer, driver: MakeDriver
) -> None:
    points = [
        point("before", "holding", 0, "uint16"),
        point("label", "holding", 1, "string", length=2),
        point("after", "holding", 3, "float32", order="CDAB", scale=2.0),
    ]
    sim = await modbus_server(points)
    await sim.set_raw("holding", 0, [7, 0x41FF, 0x0000, 0x0000, 0x3FC0])
    reader = driver(sim.port, points)

    got = by_name(await reader.read())

    assert got["label"].quality is Quality.BAD and got["label"].value is None
    assert got["label"].reason == "label: not ASCII: b'A\\xff\\x00\\x00'"
    assert got["before"].value == 7 and type(got["before"].value) is int
    assert got["after"].value == 3.0 and got["after"].quality is Quality.GOOD
    assert same_readings(list(got.values()), [p.reading for p in await reader.read_raw()])
    assert sum(sim.requests.values()) == 2  # one block, once per poll


# -- requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(("max_gap", "expected"), [(0, 17), (16, 11), (125, 6)])
async def test_a_poll_sends_the_planned_minimum_of_requests(
    modbus_server: StartServer, driver: MakeDriver, max_gap: int, expected: int
) -> None:
    points = sparse_map()
    sim = await modbus_server(points)
    reader = driver(sim.port, points, max_gap=max_gap)

    for poll in range(1, 4):
        readings = await reader.read()
        assert all(r.quality is Quality.GOOD for r in readings)
        assert sum(sim.requests.values()) == reader.stats.requests == poll * expected
    plan = plan_reads(points, max_gap=max_gap, max_registers=125)
    per_code = {3: "holding", 4: "input", 1: "coil", 2: "discrete"}
    for code, table in per_code.items():
        assert sim.requests[code] == 3 * sum(b.table == table for b in plan)
    assert reader.stats.errors == 0


async def test_a_device_refusing_reads_over_holes_still_reads_every_point(
    modbus_server: StartServer, driver: MakeDriver
) -> None:
    points = sparse_map()
    sim = await modbus_server(points, sparse=True)
    await sim.set("energy", -70000)
    await sim.set("serial", "SN-42")
    await sim.set("fault", True)
    reader = driver(sim.port, points, max_gap=16)
    planned = plan_reads(points, max_gap=16, max_registers=125)
    refused = [b for b in planned if b.table in ("holding", "input") and has_holes(b)]
    registers = [p for p in points if p.table in ("holding", "input")]
    bits = [p for p in points if p.table in ("coil", "discrete")]
    steady = len(plan_reads(registers, max_gap=0, max_registers=125)) + len(
        plan_reads(bits, max_gap=16, max_registers=125)
    )

    first = by_name(await reader.read())

    assert all(r.quality is Quality.GOOD for r in first.values()), first
    assert first["energy"].value == -70000 and first["serial"].value == "SN-42"
    assert first["fault"].value is True and first["alarm"].value is False
    assert len(refused) == 4
    assert sum(sim.requests.values()) == steady + len(refused)

    sim.requests.clear()
    second = await reader.read()  # the split is remembered: nothing is refused again
    assert all(r.quality is Quality.GOOD for r in second)
    assert sum(sim.requests.values()) == steady == len(reader.blocks)


def has_holes(block: ReadBlock) -> bool:
    used = {p.address + i for p in block.points for i in range(p.count)}
    return len(used) < block.count


async def test_a_point_the_device_lacks_reads_bad_and_the_rest_good(
    modbus_server: StartServer, driver: MakeDriver
) -> None:
    ghost = point("ghost", "holding", 11, "uint16")
    sim = await modbus_server(SMOKE_DETECTOR, sparse=True)
    await sim.set("status", 0b101)

    got = by_name(await driver(sim.port, [*SMOKE_DETECTOR, ghost]).read())

    assert got["ghost"].quality is Quality.BAD and got["ghost"].value is None
    assert got["ghost"].reason == "exception 2: illegal data address"
    assert got["status"].value == 5 and got["smoke_alarm"].value is True
    assert [name for name, r in got.items() if r.quality is not Quality.GOOD] == ["ghost"]


# -- failures ----------------------------------------------------------------------------


async def test_an_exception_response_makes_that_block_bad(
    modbus_server: StartServer, driver: MakeDriver
) -> None:
    sim = await modbus_server()
    reader = driver(sim.port)
    await reader.read()
    sim.fail_with = 6

    readings = await reader.read()

    assert {r.quality for r in readings} == {Quality.BAD}
    assert {r.reason for r in readings} == {"exception 6: server device busy"}
    sim.fail_with = None
    assert {r.quality for r in await reader.read()} == {Quality.GOOD}
    assert reader.stats.errors == 4  # one per block of the busy poll


async def test_a_gateway_that_cannot_reach_the_device_makes_it_unavailable(
    modbus_server: StartServer, driver: MakeDriver
) -> None:
    sim = await modbus_server()
    sim.fail_with = 11
    with pytest.raises(DeviceUnavailable) as caught:
        await driver(sim.port).read()
    assert caught.value.reason == "exception 11: gateway target device failed to respond"


async def test_a_closed_port_is_unavailable_at_once(driver: MakeDriver) -> None:
    reader = driver(closed_port(), modbus={"timeout_s": 1.0})
    for _ in range(2):  # a later poll tries again, and fails as fast
        started = time.monotonic()
        with pytest.raises(DeviceUnavailable) as caught:
            await reader.read()
        assert time.monotonic() - started < 1.0
        assert caught.value.reason == "connect failed"
    assert reader.stats.errors == 2 and reader.stats.requests == 0
    assert not [t for t in asyncio.all_tasks() if "reconnect" in t.get_name()]


async def test_a_silent_device_times_out(driver: MakeDriver) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client hangs up
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader = driver(port, SMOKE_DETECTOR, modbus={"timeout_s": 0.3, "retries": 1})
    try:
        started = time.monotonic()
        with pytest.raises(DeviceUnavailable) as caught:
            await reader.read()
        elapsed = time.monotonic() - started
    finally:
        await reader.aclose()
        server.close()
    assert caught.value.reason == "timeout"
    assert 0.5 < elapsed < 1.5  # two tries of 0.3 s on the first block, and no more blocks
    assert reader.stats.requests == 1


async def test_closing_the_driver_ends_a_read_in_flight(driver: MakeDriver) -> None:
    asked = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        asked.set()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    reader = driver(server.sockets[0].getsockname()[1], modbus={"timeout_s": 5.0})
    try:
        async with asyncio.timeout(2):  # far below the 10 s the request could wait
            polling = asyncio.create_task(reader.read())
            await asyncio.wait_for(asked.wait(), 1)
            await reader.aclose()
            with pytest.raises(DeviceUnavailable, match="connection lost"):
                await polling
    finally:
        server.close()


async def test_a_stopped_device_is_noticed_at_once_and_read_again_after_restart(
    modbus_server: StartServer, driver: MakeDriver
) -> None:
    sim = await modbus_server()
    await sim.set("temperature", 23.4)
    reader = driver(sim.port, modbus={"timeout_s": 2.0})
    assert by_name(await reader.read())["temperature"].value == pytest.approx(23.4)

    await sim.stop()
    started = time.monotonic()
    with pytest.raises(DeviceUnavailable) as lost:
        await reader.read()
    with pytest.raises(DeviceUnavailable) as refused:
        await reader.read()
    assert time.monotonic() - started < 1.0  # far below timeout_s: no request waits it out
    assert (lost.value.reason, refused.value.reason) == ("connection lost", "connect failed")
    assert not [t for t in asyncio.all_tasks() if "reconnect" in t.get_name()]

    back = await modbus_server(SMOKE_DETECTOR, port=sim.port)
    await back.set("temperature", -5.0)
    assert by_name(await reader.read())["temperature"].value == pytest.approx(-5.0)


async def test_each_block_is_stamped_when_its_answer_arrived(
    modbus_server: StartServer, driver: MakeDriver
) -> None:
    sim = await modbus_server()
    reader = driver(sim.port)
    before = time.time()
    readings = await reader.read()
    after = time.time()

    stamps = [{by_name(readings)[p.name].ts for p in block.points} for block in reader.blocks]
    assert all(len(s) == 1 for s in stamps)  # one arrival per block
    order = [s.pop() for s in stamps]
    assert before <= order[0] and order[-1] <= after
    assert order == sorted(order) and len(set(order)) == len(order)


# -- writes ------------------------------------------------------------------------------

WRITABLE = [
    point("siren", "coil", 3, "bool"),
    point("setpoint", "holding", 0, "int16", scale=0.1),
    point("limit", "holding", 1, "float32", order="CDAB"),
    point("reset", "holding", 5, "bit", bit=3),
    point("label", "holding", 6, "string", length=3),
    point("flow", "input", 0, "float32"),
]


async def test_writes_reach_the_device(modbus_server: StartServer, driver: MakeDriver) -> None:
    sim = await modbus_server(WRITABLE)
    await sim.set_raw("holding", 5, [0b1000_0000_0000_0001])
    writer = driver(sim.port, WRITABLE)

    await writer.write("siren", True)
    await writer.write("setpoint", -21.5)
    await writer.write("limit", 1e-3)
    await writer.write("reset", True)
    await writer.write("label", "ok")

    assert await sim.get_raw("coil", 3, 1) == [True]
    assert await sim.get_raw("holding", 0, 1) == [0x10000 - 215]
    assert await sim.get("limit") == pytest.approx(1e-3)
    assert await sim.get_raw("holding", 5, 1) == [0b1000_0000_0000_1001]  # other bits kept
    assert await sim.get("label") == "ok"
    assert dict(sim.requests) == {5: 1, 6: 2, 16: 2, 3: 1}  # the bit: read 3, then write 6


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("flow", 1.0, "read-only input table"),
        ("nope", 1, "has no point 'nope'"),
        ("setpoint", 4000.0, "does not fit int16"),
        ("siren", "on", "not a bool"),
    ],
)
async def test_writes_the_driver_refuses_send_nothing(
    modbus_server: StartServer, driver: MakeDriver, name: str, value: Value, message: str
) -> None:
    sim = await modbus_server(WRITABLE)
    with pytest.raises(WriteRefused, match=message):
        await driver(sim.port, WRITABLE).write(name, value)
    assert sum(sim.requests.values()) == 0


async def test_a_write_the_device_refuses(modbus_server: StartServer, driver: MakeDriver) -> None:
    sim = await modbus_server(WRITABLE[:1], sparse=True)  # holds no registers at all
    writer = driver(sim.port, WRITABLE)
    with pytest.raises(WriteRefused, match="setpoint: exception 2: illegal data address"):
        await writer.write("setpoint", 1.0)
    with pytest.raises(WriteRefused, match="reset: exception 2"):
        await writer.write("reset", True)


# -- the smoke detector ------------------------------------------------------------------


def test_the_sample_config_describes_the_simulated_smoke_detector() -> None:
    entries = yaml.safe_load((REPO / "drivers/modbus/sample.yaml").read_text())
    devices = [ModbusDevice.model_validate(entry) for entry in entries]
    assert tuple(devices[0].points) == SMOKE_DETECTOR
    assert devices[0].modbus.port == 5020
    transports = {(d.modbus.bus, d.modbus.framing) for d in devices}
    assert transports == {
        ("127.0.0.1:5020", "tcp"),
        ("/dev/ttyUSB0", "rtu"),
        ("10.0.0.9:4001", "rtu"),
    }
    assert bus_conflicts(devices) == []


def test_the_smoke_detector_model_is_deterministic_and_plausible() -> None:
    runs = [[SmokeDetectorModel(seed=7).step() for _ in range(5)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert SmokeDetectorModel(seed=8).step() != runs[0][0]

    model = SmokeDetectorModel(seed=7)
    seen_alarm = False
    for _ in range(7200):  # two simulated hours
        values = model.step()
        obscuration, status = values["obscuration"], values["status"]
        assert isinstance(obscuration, float) and isinstance(status, int)
        assert 0.0 <= obscuration < 30.0
        assert 15.0 < values["temperature"] < 60.0  # type: ignore[operator]
        assert bool(status & 1) == (obscuration >= SmokeDetectorModel.ALARM)
        assert bool(status & 2) == (obscuration >= SmokeDetectorModel.PRE_ALARM)
        seen_alarm |= bool(status & 1)
    assert seen_alarm  # this seed has a smoke event in its first two hours


async def test_animated_values_are_what_the_driver_reads(
    modbus_server: StartServer, driver: MakeDriver
) -> None:
    sim = await modbus_server()
    async with asyncio.timeout(5):
        await animate(sim, SmokeDetectorModel(seed=3), period_s=0.01, ticks=3)
    expected = SmokeDetectorModel(seed=3)
    for _ in range(2):
        expected.step()
    last = expected.step()

    got = {r.point: r.value for r in await driver(sim.port).read()}

    assert got["obscuration"] == pytest.approx(last["obscuration"], rel=1e-6)  # float32
    assert got["temperature"] == pytest.approx(last["temperature"])
    assert got["supply_voltage"] == pytest.approx(last["supply_voltage"])
    assert got["operating_hours"] == last["operating_hours"]
    assert got["status"] == last["status"]
    assert got["heat_alarm"] is last["heat_alarm"]


async def test_the_simulator_command_serves_until_interrupted(driver: MakeDriver) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "drivers.simulated.modbus_server", "--port", "0", "--seed", "5",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(15):
            banner = (await proc.stdout.readline()).decode()
            assert banner.startswith("smoke detector on 127.0.0.1:"), banner
            port = int(banner.split(":")[1].split()[0])
            got = by_name(await driver(port).read())
            assert got["model"].value == "SD-2000"
            assert all(r.quality is Quality.GOOD for r in got.values())

            proc.send_signal(signal.SIGINT)
            rest, errors = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert rest.decode().strip() == "stopped"
    assert b"Traceback" not in errors, errors.decode()


async def test_the_simulator_listens_on_loopback_and_reports_its_port() -> None:
    sim = SimulatedModbusDevice()
    assert sim.host == "127.0.0.1" and sim.port == 0
    async with sim:
        assert sim.port > 0
        with socket.create_connection(("127.0.0.1", sim.port), timeout=1):
            pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", sim.port), timeout=1).close()
