"""Units on one bus: backoff of a unit that stops answering, its probes, its return, the
log lines and health counters it leaves; the bus registry. Against pymodbus' server on
127.0.0.1 (the bus' own bookkeeping, ``UnitState``, also alone with a hand-set clock)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.base import DeviceUnavailable, Quality
from drivers.modbus import ModbusConnection, ModbusDevice
from drivers.modbus.backoff import UnitBackedOff, UnitState
from drivers.modbus.bus import ModbusBuses, rtu_silence_s
from drivers.modbus.driver import ModbusDriver
from drivers.simulated.modbus_bus import SimulatedModbusBus
from edge_agent.devices import open_driver, point_units
from edge_agent.polling import DevicePoller
from tests.test_modbus_rtu import METER, interleavings, meter_values

# -- UnitState, with a clock set by hand -----------------------------------------------------


def test_backoff_doubles_from_one_second_to_a_minute() -> None:
    state = UnitState(7)
    now = 100.0
    waits = []
    for _ in range(9):
        state.failed(now, "timeout")
        waits.append(state.retry_at - now)
        now = state.retry_at
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert state.backoffs == 9


def test_a_backed_off_unit_is_refused_with_its_last_reason_then_probed_once() -> None:
    state = UnitState(7)
    assert state.admit(0.0) is False  # answering: a normal request, with retries
    assert state.failed(10.0, "timeout") is True  # news: log it
    with pytest.raises(UnitBackedOff) as refused:
        state.admit(10.5)
    assert refused.value.reason == "timeout" and refused.value.retry_in == pytest.approx(0.5)
    assert "backed off" in str(refused.value)
    assert state.admit(11.0) is True  # the probe: a single try
    with pytest.raises(UnitBackedOff):
        state.admit(11.0)  # one probe at a time
    assert state.failed(11.3, "timeout") is False  # same reason: nothing new to log
    assert state.retry_at == pytest.approx(13.3)
    assert state.admit(11.5, write=True) is True  # a write is tried anyway, once
    assert state.answered(14.0) == pytest.approx(4.0)  # down since 10.0
    assert state.reason is None and state.admit(14.1) is False
    assert state.answered(15.0) is None


def test_a_new_reason_is_news_and_keeps_the_doubling() -> None:
    state = UnitState(3)
    state.failed(0.0, "timeout")
    assert state.failed(1.0, "exception 11: gateway target device failed to respond") is True
    assert state.backoff_s == 2.0


def test_rtu_silence_is_three_and_a_half_characters() -> None:
    assert rtu_silence_s(9600) == pytest.approx(3.5 * 11 / 9600)  # about 4 ms
    assert rtu_silence_s(115200) == pytest.approx(1.75e-3)  # fixed above 19200 baud


# -- a unit that stops answering, on a real bus ----------------------------------------------


@pytest.fixture
async def tcp_bus() -> AsyncIterator[SimulatedModbusBus]:
    """Units 1 and 2 behind one Modbus TCP endpoint (a gateway to an RTU line)."""
    async with SimulatedModbusBus({1: METER, 2: METER}) as sim:
        for unit in (1, 2):
            for name, value in meter_values(unit).items():
                await sim.unit(unit).set(name, value)
        yield sim


def device(port: int, unit: int, **modbus: Any) -> ModbusDevice:
    conn = {"host": "127.0.0.1", "port": port, "unit": unit, "timeout_s": 0.2, "retries": 1}
    return ModbusDevice.model_validate(
        {
            "id": f"meter-{unit}",
            "modbus": conn | modbus,
            "points": [p.model_dump() for p in METER],
        }
    )


async def test_a_silent_unit_is_backed_off_probed_and_welcomed_back(
    tcp_bus: SimulatedModbusBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="drivers.modbus")
    buses = ModbusBuses()
    healthy = ModbusDriver(device(tcp_bus.port, 1), buses)
    flaky = ModbusDriver(device(tcp_bus.port, 2), buses)
    tcp_bus.unit(2).silent = True
    name = f"127.0.0.1:{tcp_bus.port}"
    try:
        async with asyncio.timeout(15):
            started = time.monotonic()
            with pytest.raises(DeviceUnavailable) as first:
                await flaky.read()
            assert first.value.reason == "timeout"
            assert 0.35 < time.monotonic() - started < 1.0  # two tries of 0.2 s
            assert tcp_bus.received[2] == 2

            for _ in range(5):  # backed off: refused at once, nothing on the wire
                started = time.monotonic()
                with pytest.raises(UnitBackedOff) as refused:
                    await flaky.read()
                assert time.monotonic() - started < 0.15  # below one 0.2 s try: no request
                assert refused.value.reason == "timeout"
                assert {r.quality for r in await healthy.read()} == {Quality.GOOD}
            assert tcp_bus.received[2] == 2

            await asyncio.sleep(1.1)  # the first backoff runs out: one probe, one try
            with pytest.raises(DeviceUnavailable, match="timeout"):
                await flaky.read()
            assert tcp_bus.received[2] == 3

            tcp_bus.unit(2).silent = False
            with pytest.raises(UnitBackedOff):
                await flaky.read()  # backed off for 2 s now, answering or not
            await asyncio.sleep(2.1)
            readings = await flaky.read()
            assert {r.quality for r in readings} == {Quality.GOOD}
            assert {r.point: r.value for r in readings}["energy"] == 200_007
    finally:
        health = flaky.health()
        await healthy.aclose()
        await flaky.aclose()
    lines = [r.getMessage() for r in caplog.records if r.name == "drivers.modbus.bus"]
    assert len(lines) == 2 and lines[0] == f"unit 2 on {name} unavailable: timeout"
    assert lines[1].startswith(f"unit 2 on {name} back after ") and lines[1].endswith(" s")
    assert health["bus"] == name and health["unit"] == 2
    assert health["timeouts"] == 2 and health["backoffs"] == 2 and health["retries"] == 1
    assert health["requests"] == 2 + 3  # two timed out, three made the poll that came back
    assert health["backed_off_s"] == 0
    assert healthy.health()["timeouts"] == 0 and healthy.health()["errors"] == 0
    assert interleavings(tcp_bus.exchanges) == []


async def test_a_write_is_tried_even_while_its_unit_is_backed_off(
    tcp_bus: SimulatedModbusBus,
) -> None:
    writer = ModbusDriver(device(tcp_bus.port, 2))
    tcp_bus.unit(2).silent = True
    try:
        async with asyncio.timeout(10):
            with pytest.raises(DeviceUnavailable):
                await writer.read()
            with pytest.raises(UnitBackedOff):
                await writer.read()
            tcp_bus.unit(2).silent = False  # came back; the backoff has not run out yet
            await writer.write("pump", False)
            assert await tcp_bus.unit(2).get("pump") is False
            assert {r.quality for r in await writer.read()} == {Quality.GOOD}  # back
    finally:
        await writer.aclose()


async def test_a_gateway_that_cannot_reach_a_unit_backs_it_off(
    tcp_bus: SimulatedModbusBus,
) -> None:
    reader = ModbusDriver(device(tcp_bus.port, 1))
    tcp_bus.unit(1).fail_with = 11
    try:
        reason = "exception 11: gateway target device failed to respond"
        with pytest.raises(DeviceUnavailable, match=reason):
            await reader.read()
        with pytest.raises(UnitBackedOff) as refused:
            await reader.read()
        assert refused.value.reason == reason
        assert tcp_bus.received[1] == 1
        assert reader.health()["exceptions"] == 1
    finally:
        await reader.aclose()


async def test_devices_queued_behind_a_dead_endpoint_fail_together() -> None:
    # 192.0.2.0/24 is TEST-NET-1: never routed, so a connect hangs until it times out.
    buses = ModbusBuses()
    conn = {"host": "192.0.2.1", "port": 502, "timeout_s": 0.5}
    drivers = [
        ModbusDriver(
            ModbusDevice.model_validate(
                {"id": f"d{u}", "modbus": conn | {"unit": u}, "points": [METER[0].model_dump()]}
            ),
            buses,
        )
        for u in (1, 2, 3)
    ]
    try:
        started = time.monotonic()
        async with asyncio.timeout(5):
            failures = await asyncio.gather(*(d.read() for d in drivers), return_exceptions=True)
        elapsed = time.monotonic() - started
    finally:
        for d in drivers:
            await d.aclose()
    reasons = [f.reason for f in failures if isinstance(f, DeviceUnavailable)]
    assert len(reasons) == 3 and set(reasons) <= {"timeout", "connect failed"}
    assert elapsed < 1.0  # one connect timeout for all three, not one each


async def test_the_registry_shares_a_bus_and_refuses_conflicting_line_settings() -> None:
    buses = ModbusBuses()
    a = buses.attach(ModbusConnection(serial="/dev/ttyS1", baudrate=9600, unit=1))
    b = buses.attach(ModbusConnection(serial="/dev/ttyS1", baudrate=9600, unit=2))
    c = buses.attach(ModbusConnection(host="10.0.0.9", port=4001, framer="rtu", unit=3))
    assert a is b and a is not c and len(buses) == 2
    with pytest.raises(ValueError, match="/dev/ttyS1 is already in use"):
        buses.attach(ModbusConnection(serial="/dev/ttyS1", baudrate=19200, unit=3))
    buses.detach(a)
    assert len(buses) == 2
    buses.detach(b)
    buses.detach(c)
    assert len(buses) == 0


async def test_the_poller_reports_the_drivers_counters_in_health(
    tcp_bus: SimulatedModbusBus,
) -> None:
    dev = device(tcp_bus.port, 1)
    driver = open_driver(dev, ModbusBuses())
    received: list[int] = []

    async def sink(readings: list[Any]) -> None:
        received.append(len(readings))

    poller = DevicePoller(dev, point_units(dev), driver, sink)
    try:
        async with asyncio.timeout(5):
            await poller._poll_once()  # one poll, as run() does it
        body = poller.health.as_json()
    finally:
        await driver.aclose()
    assert body["link"] == "up"
    assert body["driver"] == {
        "bus": f"127.0.0.1:{tcp_bus.port}",
        "unit": 1,
        "requests": 3,
        "retries": 0,
        "timeouts": 0,
        "exceptions": 0,
        "errors": 0,
        "backoffs": 0,
        "backed_off_s": 0.0,
    }
