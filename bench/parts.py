"""CPU cost per reading of each step of EdgeFleet's pipeline, measured in one process.

    .venv/bin/python -m bench.parts [--points 1000] [--seconds 1]

Each step runs alone, back to back, for ``--seconds``; the figure is CPU microseconds of
this process per reading (``time.process_time``), so a device or a disk in another
process or in the kernel's background does not count, and wall time is given beside it.
The steps are the agent's and the center's own functions, called the way the pipeline
calls them; next to them, the same work done bare (pymodbus + struct, ``json.loads``),
so each step reads as "x µs, of which the libraries need y".

A step whose API changed under it is reported as skipped, not as a failure.

Settings it relies on: the agent's and the center's own defaults, as shipped (the outbox
file with its fsync per commit, the central store with ``synchronous=FULL``), 1,000
points in the shape of ``bench.points``, and one simulated device on 127.0.0.1; nothing
is tuned for the bench.

``--quick`` is a smoke run (each step for ``QUICK_SECONDS``): it checks that every step
still runs and prints its figures, and does not judge them. This bench writes no results
file in any mode (``bench.e2e`` saves its figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from bench.bare import decode_block
from bench.points import DEVICE_ID, blocks, point_dicts
from bench.procs import Cleanup, read_port

Step = Callable[[], int]
"""Does one unit of work; returns how many readings it handled."""


def _measure(step: Step, seconds: float) -> dict[str, float]:
    step()  # warm-up: caches, connections, first-call costs
    n = 0
    w0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - w0 < seconds:
        n += step()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {
        "cpu_us_per_reading": round(1e6 * cpu / n, 3),
        "wall_us_per_reading": round(1e6 * wall / n, 3),
        "readings_per_cpu_s": round(n / cpu, 0) if cpu > 0 else 0.0,
    }


async def _ameasure(step: Callable[[], Awaitable[int]], seconds: float) -> dict[str, float]:
    await step()
    n = 0
    w0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - w0 < seconds:
        n += await step()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {
        "cpu_us_per_reading": round(1e6 * cpu / n, 3),
        "wall_us_per_reading": round(1e6 * wall / n, 3),
        "readings_per_cpu_s": round(n / cpu, 0) if cpu > 0 else 0.0,
    }


# --- Modbus ------------------------------------------------------------------------------


async def _modbus_steps(port: int, n_points: int, seconds: float) -> dict[str, Any]:
    # imported per step: a step whose API changed is reported skipped, not fatal
    from drivers.modbus.config import ModbusDevice  # noqa: PLC0415
    from drivers.modbus.driver import ModbusDriver  # noqa: PLC0415

    out: dict[str, Any] = {}
    device = ModbusDevice.model_validate(
        {
            "id": DEVICE_ID,
            "modbus": {"host": "127.0.0.1", "port": port, "unit": 1, "timeout_s": 2},
            "poll_s": 1.0,
            "points": point_dicts(n_points),
        }
    )
    driver = ModbusDriver(device)

    async def driver_read() -> int:
        return len(await driver.read())

    try:
        out["driver_read"] = await _ameasure(driver_read, seconds)
    finally:
        await driver.aclose()

    plan = blocks(n_points)
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await client.connect()
    reads = {"holding": client.read_holding_registers, "input": client.read_input_registers}

    async def bare_read() -> int:
        n = 0
        for block in plan:
            rr = await reads[block.table](block.address, count=block.count, device_id=1)
            n += len(decode_block(block, rr.registers))
        return n

    try:
        out["bare_pymodbus_struct"] = await _ameasure(bare_read, seconds)
    finally:
        client.close()
    return out


# --- encode, outbox, center --------------------------------------------------------------


def _readings(n_points: int) -> list[Any]:
    # imported per step: a step whose API changed is reported skipped, not fatal
    from drivers.base import Quality, Reading  # noqa: PLC0415

    ts = time.time()
    out: list[Any] = []
    for block in blocks(n_points):
        regs = [0x4123, 0x4567] * (block.count // 2) if block.floats else [12345] * block.count
        for name, value in zip(block.names, decode_block(block, regs), strict=True):
            out.append(Reading(DEVICE_ID, name, value, block.unit, Quality.GOOD, ts))
    return out


def _agent_steps(workdir: Path, n_points: int, seconds: float) -> dict[str, Any]:
    # imported per step: a step whose API changed is reported skipped, not fatal
    from edge_agent.contract import ReadingEncoder  # noqa: PLC0415
    from edge_agent.contract.payloads import encode_telemetry_raw  # noqa: PLC0415
    from edge_agent.outbox import Lane, Outbox  # noqa: PLC0415

    out: dict[str, Any] = {}
    readings = _readings(n_points)
    encoder = ReadingEncoder()

    def encode() -> int:
        rows = [(r.ts, encoder.encode(r)) for r in readings]
        return len(rows)

    out["encode_readings"] = _measure(encode, seconds)
    dicts = [
        {"dev": r.device, "pt": r.point, "v": r.value, "u": r.unit, "q": "good", "ts": r.ts}
        for r in readings
    ]

    def dumps() -> int:
        json.dumps(dicts, separators=(",", ":"))
        return len(dicts)

    out["bare_json_dumps"] = _measure(dumps, seconds)
    rows = [(r.ts, encoder.encode(r)) for r in readings]
    outbox = Outbox(workdir / "outbox.db", max_bytes=10**10)
    try:

        def append() -> int:
            outbox.append(Lane.TELEMETRY, rows)
            return len(rows)

        out["outbox_append"] = _measure(append, seconds)
        start = [outbox.first_seq(Lane.TELEMETRY) or 1]

        def fetch_publish_delete() -> int:
            got = outbox.fetch(Lane.TELEMETRY, start[0], None, len(rows))
            if not got:
                return 0
            encode_telemetry_raw("gw", outbox.stream_id, got[0][0], [b for _, b in got])
            outbox.delete(Lane.TELEMETRY, [(got[0][0], got[-1][0])])
            start[0] = got[-1][0] + 1
            return len(got)

        out["outbox_fetch_encode_delete"] = _measure(fetch_publish_delete, seconds / 2)
    finally:
        outbox.close()
    return out


def _center_steps(workdir: Path, n_points: int, seconds: float) -> dict[str, Any]:
    # imported per step: a step whose API changed is reported skipped, not fatal
    from central.store import open_store  # noqa: PLC0415
    from edge_agent.contract import ReadingEncoder, decode_telemetry  # noqa: PLC0415
    from edge_agent.contract.payloads import encode_telemetry_raw  # noqa: PLC0415

    out: dict[str, Any] = {}
    encoder = ReadingEncoder()
    bodies = [encoder.encode(r) for r in _readings(n_points)]
    payload = encode_telemetry_raw("bench-gw", "s", 1, bodies)
    out["bare_json_loads"] = _measure(lambda: len(json.loads(payload)["readings"]), seconds)
    out["decode_telemetry"] = _measure(lambda: len(decode_telemetry(payload).readings), seconds)
    store = open_store(workdir / "central.db")
    seq = [1]

    def insert(per_commit: int) -> int:
        with store.round() as rnd:
            for _ in range(per_commit):
                batch = decode_telemetry(encode_telemetry_raw("bench-gw", "s", seq[0], bodies))
                with rnd.message():
                    rnd.insert_telemetry(batch)
                seq[0] += len(bodies)
        return rnd.counts.readings_stored

    try:
        out["store_insert_commit_1000"] = _measure(lambda: insert(1), seconds)
        out["store_insert_commit_10000"] = _measure(lambda: insert(10), seconds)
    finally:
        store.close()
    return out


def run_parts(cleanup: Cleanup, workdir: Path, n_points: int, seconds: float) -> dict[str, Any]:
    """Every step; a step that fails (an API moved) is recorded as skipped."""
    out: dict[str, Any] = {}
    dev = cleanup.module(
        "bench.sim_device",
        ["--points", str(n_points), "--ready-file", str(workdir / "parts.port")],
        workdir / "parts-device.log",
    )
    port = read_port(workdir / "parts.port", dev)
    groups: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("modbus", lambda: asyncio.run(_modbus_steps(port, n_points, seconds))),
        ("agent", lambda: _agent_steps(workdir, n_points, seconds)),
        ("center", lambda: _center_steps(workdir, n_points, seconds)),
    ]
    for name, group in groups:
        try:
            out[name] = group()
        except Exception as exc:  # an API moved under the bench: say so, go on
            out[name] = {"skipped": repr(exc)}
    dev.stop()
    return out


QUICK_SECONDS = 0.1


def skipped(figures: dict[str, Any]) -> list[str]:
    """The groups that did not run: in a smoke run, a bench that has rotted."""
    return [name for name, group in figures.items() if "skipped" in group]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.parts", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=None, help="per step (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: every step briefly")
    args = parser.parse_args(argv)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else 1.0)
    with tempfile.TemporaryDirectory(prefix="edgefleet-parts-") as d, Cleanup() as cleanup:
        figures = run_parts(cleanup, Path(d), args.points, seconds)
    print(json.dumps(figures, indent=2))
    if args.quick and skipped(figures):
        print(f"error: skipped: {', '.join(skipped(figures))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
