"""How long ``edge-agent check`` takes on a big, valid agent config, in one process.

    .venv/bin/python -m bench.config_check [--quick] [--devices 20000] [--profile]

The config is written to a temporary folder: ``--devices`` Modbus devices, each with three
points (a level, a float pressure, a smoke bit), the smoke and water rule packs, and one
inline rule per hundred devices. The figures are the wall and CPU time of the schema pass
(YAML, validation, rules), of the host pass, and of the whole ``edge-agent check`` process
(imports included), each best of three: on a shared machine the CPU time is the figure
that does not depend on the neighbours. ``--profile`` prints the top of a cProfile of one
schema pass instead, to see where the time goes. ``--quick`` (CI's smoke run): 1,000
devices, one run of each, to see that it completes and prints its figures. It writes no
results file.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edge_agent.config import host_problems, load_config


def big_config(devices: int) -> str:
    """An agent config with ``devices`` Modbus devices, every one of them valid."""
    lines = [
        "gateway: {id: bench-0001, site: bench}",
        'central: {url: "mqtt://127.0.0.1:1883"}',
        "outbox: {path: ./outbox.db}",
        "rule_packs: [smoke, water]",
        "devices:",
    ]
    for i in range(devices):
        lines += [
            f"  - id: dev-{i}",
            f"    modbus: {{host: 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}, unit: 1}}",
            "    points:",
            "      - {name: level, table: holding, address: 103, type: uint16, scale: 0.001}",
            "      - {name: pressure, table: input, address: 0, type: float32, order: CDAB}",
            "      - {name: smoke_alarm, table: holding, address: 110, type: bit, bit: 0}",
        ]
    lines.append("rules:")
    for i in range(0, devices, 100):
        lines.append(f"  - {{id: high-level, device: dev-{i}, when: level > 2.5}}")
    return "\n".join(lines) + "\n"


def _best_of(runs: int, step: Callable[[], object]) -> tuple[float, float]:
    """Best wall and best CPU seconds of ``step`` in this process, over ``runs``."""
    wall, cpu = float("inf"), float("inf")
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return wall, cpu


def _command(runs: int, path: Path) -> tuple[float, float]:
    """Best wall and CPU seconds of the real ``edge-agent check`` process (imports too)."""
    wall, cpu = float("inf"), float("inf")
    command = [str(Path(sys.executable).parent / "edge-agent"), "check", "-c", str(path)]
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        w0 = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, used)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=None, help="default 20,000")
    parser.add_argument("--profile", action="store_true", help="cProfile one schema pass")
    parser.add_argument("--quick", action="store_true", help="1,000 devices, one run: for CI")
    args = parser.parse_args()
    devices = args.devices or (1_000 if args.quick else 20_000)
    runs = 1 if args.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agent.yaml"
        path.write_text(big_config(devices))
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(load_config, path)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
            return
        loaded = load_config(path)
        schema = _best_of(runs, lambda: load_config(path))
        host = _best_of(runs, lambda: host_problems(loaded))
        command = _command(runs, path)
        figures = {
            "devices": devices,
            "bytes": path.stat().st_size,
            "schema_pass": schema,
            "host_pass": host,
            "edge_agent_check_command": command,
        }
        print(json.dumps({k: _seconds(v) for k, v in figures.items()}))


def _seconds(value: object) -> object:
    if isinstance(value, tuple):
        return {"wall_s": round(value[0], 3), "cpu_s": round(value[1], 3)}
    return value


if __name__ == "__main__":
    main()
