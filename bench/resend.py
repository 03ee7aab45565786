"""What a resend costs the store: rounds of new batches, then the same batches sent again
as they were (what a gateway does after a lost ack: every seq a plain duplicate), through
``Store.round()`` on SQLite and on a PostgreSQL server of its own (``tests.pg``). Reports
rows/s of each, and the resend's rate as a ratio of the new rows' in the same run: a
duplicate must stay cheap (``central.store.conflicts`` compares each resent seq's content
with the stored one before calling it a duplicate).

    .venv/bin/python -m bench.resend [--readings 200000] [--backend sqlite|postgresql|both]
        [--quick]

Rounds of ``ROUND_BATCHES`` batches of ``BATCH`` readings, one writer, 50 points of one
device per gateway. ``--quick`` is a smoke run of seconds that writes no results.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results import machine, merge, timestamp
from central.store import open_store
from edge_agent.contract import TelemetryBatch

BATCH = 1000
ROUND_BATCHES = 10
QUICK_READINGS = 40_000


def make_batches(readings: int, t0: float = 1.7e9) -> list[TelemetryBatch]:
    out = []
    for first in range(1, readings + 1, BATCH):
        rows: list[dict[str, Any]] = [
            {"dev": "dev", "pt": f"p{i % 50}", "v": float(i), "u": "u", "q": "good", "ts": t0 + i}
            for i in range(first, first + BATCH)
        ]
        out.append(TelemetryBatch(f"gw-{first % 4}", "s1", first, first + BATCH - 1, rows))
    return out


def rounds(address: str, batches: list[TelemetryBatch]) -> tuple[float, int, int]:
    """Seconds to store ``batches`` in rounds; readings stored, duplicates."""
    store = open_store(address)
    stored = dups = 0
    try:
        started = time.perf_counter()
        for i in range(0, len(batches), ROUND_BATCHES):
            with store.round() as rnd:
                for b in batches[i : i + ROUND_BATCHES]:
                    with rnd.message():
                        rnd.insert_telemetry(b)
            stored += rnd.counts.readings_stored
            dups += rnd.counts.duplicates
        return time.perf_counter() - started, stored, dups
    finally:
        store.close()


def measure(address: str, readings: int) -> dict[str, Any]:
    batches = make_batches(readings)
    n = len(batches) * BATCH
    new_s, stored, _ = rounds(address, batches)
    again_s, again, dups = rounds(address, batches)
    assert (stored, again, dups) == (n, 0, n), (stored, again, dups)
    return {
        "readings": n,
        "new_rows_per_s": round(n / new_s),
        "resent_rows_per_s": round(n / again_s),
        "resent_vs_new": round(new_s / again_s, 2),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.resend", description=__doc__.split("\n")[0])
    ap.add_argument("--readings", type=int, default=None, help="in all (default 200,000)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--quick", action="store_true", help="smoke run of seconds, nothing saved")
    args = ap.parse_args(argv)
    readings = args.readings or (QUICK_READINGS if args.quick else 200_000)
    results: dict[str, Any] = {}
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as folder:
            results["sqlite"] = measure(str(Path(folder) / "central.db"), readings)
    if args.backend in ("postgresql", "both"):
        from tests.pg import pg_server  # noqa: PLC0415 (only for a server)

        with pg_server() as server:
            results["postgresql"] = measure(server.create_database(), readings)
    for backend, r in results.items():
        print(
            f"resend on {backend}: {r['readings']} readings: new {r['new_rows_per_s']} rows/s, "
            f"resent as they were {r['resent_rows_per_s']} rows/s "
            f"(resend {r['resent_vs_new']}x the new rows' rate)"
        )
    if not args.quick:
        merge({"resend": {"at": timestamp(), "machine": machine(), **results}})


if __name__ == "__main__":
    main()
