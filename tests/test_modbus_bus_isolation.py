"""One dead unit never stalls the rest: the agent's own poll loops, with the agent's own
drivers, poll three units on one serial line (a ``socat`` pty pair, pymodbus' RTU server)
for 30 s while one of them never answers.

The numbers are chosen so that the test measures the backoff and nothing else: a dead unit
costs 2 × 0.25 s per poll without backoff, as much as the 0.5 s poll period, so the bus
would be busy with it all the time and each healthy poll (three requests) would queue
behind it three times. Backed off, it costs one 0.25 s probe now and then, and a healthy
poll delayed by one probe still ends within its period, so no poll is skipped (but the
very first, before anyone knows the unit is dead).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import statistics
from pathlib import Path

import pytest

from drivers.base import Quality, Reading
from drivers.modbus.bus import ModbusBuses
from drivers.simulated.modbus_bus import SimulatedModbusBus
from edge_agent.devices import open_driver, point_units
from edge_agent.polling import DevicePoller
from tests.test_modbus_rtu import METER, interleavings, meter_values, rtu_device, serial_line

POLL_S = 0.5
TIMEOUT_S = 0.25
RETRIES = 1
WINDOW_S = 30.0
HEALTHY, DEAD = (1, 2), 3


async def test_a_dead_unit_does_not_slow_the_healthy_ones_on_its_bus(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="drivers.modbus")
    polls: dict[int, list[tuple[float, list[Reading]]]] = {u: [] for u in (*HEALTHY, DEAD)}
    loop = asyncio.get_running_loop()
    with serial_line(tmp_path) as (devices_end, master_end):
        sim = SimulatedModbusBus({u: METER for u in (*HEALTHY, DEAD)}, serial=devices_end)
        async with sim:
            for unit in HEALTHY:
                for name, value in meter_values(unit).items():
                    await sim.unit(unit).set(name, value)
            sim.unit(DEAD).silent = True  # wired, powered off: requests arrive, nothing comes back
            buses = ModbusBuses()
            pollers: list[DevicePoller] = []
            for unit in (*HEALTHY, DEAD):
                config = rtu_device(
                    f"meter-{unit}",
                    master_end,
                    unit,
                    poll_s=POLL_S,
                    modbus={"timeout_s": TIMEOUT_S, "retries": RETRIES},
                )

                async def sink(readings: list[Reading], unit: int = unit) -> None:
                    polls[unit].append((loop.time(), readings))

                pollers.append(
                    DevicePoller(config, point_units(config), open_driver(config, buses), sink)
                )
            tasks = [asyncio.create_task(p.run()) for p in pollers]
            try:
                await asyncio.sleep(WINDOW_S + POLL_S)
                health = {
                    u: p.health.as_json() for u, p in zip((*HEALTHY, DEAD), pollers, strict=True)
                }
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for p in pollers:
                    await p.driver.aclose()

    for unit in HEALTHY:
        times = [t for t, _ in polls[unit]]
        window = [t for t in times if t - times[0] <= WINDOW_S]
        gaps = [b - a for a, b in itertools.pairwise(window)]
        mean = statistics.fmean(gaps)
        summary = f"unit {unit}: {len(window)} polls, mean {mean:.3f} s, max {max(gaps):.3f} s"
        assert abs(mean - POLL_S) <= 0.2 * POLL_S, summary
        assert len(window) >= 0.8 * WINDOW_S / POLL_S, summary
        # At most the very first poll runs over: nobody knows yet that the unit is dead, and
        # its first poll takes both tries (0.5 s) with the healthy ones queued behind.
        overruns = health[unit]["overruns"]
        assert isinstance(overruns, int) and overruns <= 1, (summary, health[unit])
        assert all(r.quality is Quality.GOOD for _, rs in polls[unit] for r in rs)
        assert {r.point: r.value for r in polls[unit][-1][1]}["energy"] == 100_000 * unit + 7

    dead = [r for _, rs in polls[DEAD] for r in rs]
    assert len(polls[DEAD]) >= 0.8 * WINDOW_S / POLL_S  # its loop kept its pace too
    assert {(r.quality, r.reason) for r in dead} == {(Quality.BAD, "timeout")}
    # 1 s, 2, 4, 8, 16: the first poll's two tries and then about one probe each, never a
    # request at every poll
    assert 4 <= sim.received[DEAD] <= 8, sim.received
    driver_health = health[DEAD]["driver"]
    assert isinstance(driver_health, dict)
    assert driver_health["timeouts"] == sim.received[DEAD] - RETRIES
    assert driver_health["backoffs"] == driver_health["timeouts"]

    assert interleavings(sim.exchanges) == []
    exchanges = list(sim.exchanges)
    waits = [
        b[0] - a[0]
        for a, b in itertools.pairwise(exchanges)
        if a[1] == "request" and a[2] == DEAD and b[1] == "request"
    ]
    assert waits and min(waits) >= 0.9 * TIMEOUT_S  # nobody talked over the dead unit's turn

    bus_log = [r.getMessage() for r in caplog.records if r.name == "drivers.modbus.bus"]
    assert bus_log == [f"unit {DEAD} on {master_end} unavailable: timeout"]  # once, not per poll
