"""How long ``fleet --help`` and ``edge-agent --help`` take to start, as a ratio to
``python -c pass`` (the interpreter alone) on the same machine in the same run.

Settings:

* each program runs as its console script from this checkout's virtualenv (the
  ``bin/`` beside ``sys.executable``), output to ``/dev/null``, from the repository;
* ``--runs`` (default 15; 5 with ``--quick``) timed runs of each command, after 2
  untimed warm-up runs (the first run after an edit compiles ``.pyc`` files; the OS
  caches the files);
* the runs of the commands are interleaved (pass, fleet, edge-agent, pass, …), so that a
  change in the machine's load hits each the same way;
* reported: median and minimum wall time of each, and the medians' ratio to ``python -c
  pass``; the target is ``fleet --help`` under 0.3 s.

    .venv/bin/python -m bench.cli_start [--quick] [--runs N] [--no-save]

Merges its figures into ``bench/results.json`` under ``cli_start`` (not with ``--quick``:
a smoke run's figures do not replace a full run's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import results

KEY = "cli_start"
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGET_S = 0.3
"""``fleet --help`` should start within this (the issue's figure)."""
TIMEOUT_S = 30
"""One start that takes longer than this is a hang, not a figure."""


def commands() -> dict[str, list[str]]:
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "fleet --help": [str(BIN / "fleet"), "--help"],
        "edge-agent --help": [str(BIN / "edge-agent"), "--help"],
    }


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=REPO,
        timeout=TIMEOUT_S,
    )  # fmt: skip
    return time.perf_counter() - start


def measure(runs: int, warmup: int = 2) -> dict[str, Any]:
    cmds = commands()
    for _ in range(warmup):
        for argv in cmds.values():
            wall(argv)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, argv in cmds.items():
            times[name].append(wall(argv))
    base = statistics.median(times["python -c pass"])
    out: dict[str, Any] = {}
    for name, taken in times.items():
        median = statistics.median(taken)
        out[name] = {
            "median_s": round(median, 4),
            "min_s": round(min(taken), 4),
            "ratio_to_python": round(median / base, 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 runs each, for CI")
    parser.add_argument("--runs", type=int, default=None, help="timed runs of each command")
    parser.add_argument("--no-save", action="store_true", help="do not touch results.json")
    args = parser.parse_args()
    runs = args.runs or (5 if args.quick else 15)
    if runs < 1:
        parser.error("--runs must be at least 1")
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}: the figures are noisy", file=sys.stderr)
    figures = measure(runs)
    fleet = figures["fleet --help"]["median_s"]
    report = {
        "runs": runs,
        "quick": args.quick,
        "target_fleet_help_s": TARGET_S,
        "fleet_help_within_target": fleet < TARGET_S,
        "commands": figures,
        "machine": results.machine(),
        "at": results.timestamp(),
    }
    print(json.dumps(report, indent=2))
    for name, f in figures.items():
        print(
            f"{name:<20} median {f['median_s'] * 1000:6.1f} ms  min {f['min_s'] * 1000:6.1f} ms"
            f"  {f['ratio_to_python']:5.2f} x python -c pass",
            file=sys.stderr,
        )
    if not args.no_save and not args.quick:
        results.merge({KEY: report})


if __name__ == "__main__":
    main()
