"""The benchmark device in a process of its own: ``python -m bench.sim_device``.

It is the project's ``SimulatedModbusDevice`` (pymodbus' server) serving the layout of
``bench.points``; it writes its port to ``--ready-file`` once it listens, and serves until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
from pathlib import Path

from bench.points import initial_values, modbus_points, split_counts
from drivers.simulated.modbus_server import SimulatedModbusDevice

# not a bench (python -m bench leaves it out):
HELPER = "the simulated device, a process the benches start"


async def serve(n_points: int, port: int, ready_file: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    n_u16, n_f32 = split_counts(n_points)
    values = initial_values(n_points)
    holding = [int(values[f"u{i:05d}"]) for i in range(n_u16)]
    packed = struct.pack(f">{n_f32}f", *(float(values[f"f{i:05d}"]) for i in range(n_f32)))
    inputs = list(struct.unpack(f">{2 * n_f32}H", packed))
    async with SimulatedModbusDevice(modbus_points(n_points), port=port) as device:
        if holding:
            await device.set_raw("holding", 0, holding)
        if inputs:
            await device.set_raw("input", 0, inputs)
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(str(device.port))
        tmp.replace(ready_file)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_device")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.points, args.port, args.ready_file))


if __name__ == "__main__":
    main()
