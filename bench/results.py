"""``bench/results.json``: each bench owns its keys; writers read, merge and write back
under a lock, so one bench never drops another's figures."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS_ENV = "EDGEFLEET_BENCH_RESULTS"
# the figures of record; ``python -m bench --quick`` points smoke runs elsewhere with the
# variable, so a bench that saves in its smoke run is caught and the tree stays clean
RESULTS = Path(os.environ.get(RESULTS_ENV) or Path(__file__).with_name("results.json"))


def machine() -> dict[str, Any]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count() or 0
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                "",
            )
    except OSError:
        pass
    return {
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "nproc": affinity,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def merge(updates: dict[str, Any], path: Path = RESULTS) -> None:
    """Set ``updates``' top-level keys in ``path``, keeping every other key as it was."""
    lock = path.with_name(f".{path.name}.lock")
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            current: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError:
            current = {}
        current.update(updates)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
