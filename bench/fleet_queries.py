"""What an operator waits for at the terminal, on both backends: ``fleet`` run through its
real entry point (a new process each time, as a person runs it) over a store of
``--gateways`` gateways and ``--readings`` readings.

    .venv/bin/python -m bench.fleet_queries [--gateways 100000] [--readings 10000000]
        [--backend sqlite|postgresql|both] [--quick]

It times, per backend: the first page of ``fleet gateways list`` (a table), the first
row and the whole of ``fleet gateways list --all --jsonl``, one point's day of
``fleet readings`` (``--jsonl``, about 86,400 readings), and ``fleet status``. Each figure
is the best of ``REPEATS`` runs, next to ``fleet --help`` in the same run (the start of the
program, which every command pays).

Settings it relies on: the stores are filled by SQL, not by ingest (``bench.pg_store``'s
``fill`` for PostgreSQL, the same shape here for SQLite: ten gateways hold the readings,
ten points each, a reading of each point about every second); PostgreSQL is a server of
its own (``tests.pg``). ``--quick`` is a smoke run of seconds: it checks that the bench
completes and prints its figures, does not judge them and writes no results.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.pg_store import POINTS, T0
from bench.pg_store import fill as fill_postgres
from bench.results import machine, merge, timestamp
from central.store import Retention, open_store
from tests.pg import pg_server

REPEATS = 3
FLEET = str(Path(sys.executable).with_name("fleet"))


def fill_sqlite(path: Path, gateways: int, readings: int) -> None:
    """The shape of ``bench.pg_store.fill``, in an SQLite store."""
    store = open_store(str(path))
    store.maintain(Retention(raw_s=None, rollups_s=None), now=T0)
    store.close()
    per_gw = max(1, readings // 10)
    days = per_gw / (86_400 * POINTS)  # each point a reading a second: 86,400 a day
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        with db:
            db.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                "INSERT INTO gateways (id, site, online, agent_version, tags, last_seen) "
                "SELECT printf('gw-%06d', i), 'site-' || (i % 50), i % 7 <> 0, '1.' || (i % 3), "
                "json_object('district', 'd' || (i % 20)), ? FROM n",
                (gateways, T0),
            )
        with db:
            db.execute(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ? - 1) "
                "INSERT INTO readings (gateway, stream, seq, device, point, value, unit, "
                "quality, reason, ts, is_bool) SELECT printf('gw-%06d', 1 + i / ?), 's1', i, "
                "'dev-1', 'p' || (i % ?), CAST(i % 97 AS REAL), 'C', 'good', NULL, "
                "? + (i % ?) * (86400.0 * ? / ?), 0 FROM n",
                (readings, per_gw, POINTS, T0, per_gw, days, per_gw),
            )
        db.execute("ANALYZE")
    finally:
        db.close()


def run(*args: str) -> tuple[float, float, int]:
    """``fleet args``: seconds to its first line of output, to its end, and the lines."""
    env = {**os.environ, "COLUMNS": "120"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [FLEET, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    assert proc.stdout is not None
    first = None
    lines = 0
    for _ in proc.stdout:
        if first is None:
            first = time.perf_counter() - start
        lines += 1
    if proc.wait() != 0:
        raise RuntimeError(f"fleet {' '.join(args)} exited {proc.returncode}")
    end = time.perf_counter() - start
    return (end if first is None else first), end, lines


def best(*args: str) -> tuple[float, float, int]:
    runs = [run(*args) for _ in range(REPEATS)]
    return (
        round(min(r[0] for r in runs), 3),
        round(min(r[1] for r in runs), 3),
        runs[-1][2],
    )


def timings(db: str) -> dict[str, Any]:
    first_page = best("gateways", "list", "--db", db)
    first_row, all_rows, rows = best("gateways", "list", "--db", db, "--all", "--jsonl")
    day = best(
        "readings", "--db", db, "-g", "gw-000001", "-d", "dev-1", "-p", "p3",
        "--from", str(T0), "--to", str(T0 + 86_400), "--all", "--jsonl",
    )  # fmt: skip
    status = best("status", "--db", db)
    return {
        "gateways_first_page_s": first_page[1],
        "gateways_jsonl_first_row_s": first_row,
        "gateways_jsonl_all_s": all_rows,
        "gateways_jsonl_rows": rows,
        "point_day_s": day[1],
        "point_day_readings": day[2],
        "status_s": status[1],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.fleet_queries", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--gateways", type=int, default=None, help="in the store (100,000)")
    ap.add_argument("--readings", type=int, default=None, help="in the store (10,000,000)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--quick", action="store_true", help="smoke run of seconds, nothing saved")
    args = ap.parse_args(argv)
    gateways = args.gateways or (1_000 if args.quick else 100_000)
    readings = args.readings or (100_000 if args.quick else 10_000_000)
    help_s = best("--help")[1]
    out: dict[str, Any] = {
        "gateways": gateways,
        "readings": readings,
        "fleet_help_s": help_s,
    }
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "central.db"
            started = time.perf_counter()
            fill_sqlite(path, gateways, readings)
            out["sqlite"] = {
                "fill_s": round(time.perf_counter() - started, 1),
                **timings(str(path)),
            }
    if args.backend in ("postgresql", "both"):
        with pg_server() as server:
            url = server.create_database()
            started = time.perf_counter()
            fill_postgres(url, gateways, readings)
            out["postgresql"] = {"fill_s": round(time.perf_counter() - started, 1), **timings(url)}
    print(f"fleet over {gateways} gateways and {readings} readings (fleet --help {help_s} s):")
    for backend in ("sqlite", "postgresql"):
        if backend in out:
            r = out[backend]
            print(
                f"  {backend}: gateways list first page {r['gateways_first_page_s']} s; "
                f"--all --jsonl first row {r['gateways_jsonl_first_row_s']} s, all "
                f"{r['gateways_jsonl_rows']} in {r['gateways_jsonl_all_s']} s; one point's day "
                f"({r['point_day_readings']} readings) {r['point_day_s']} s; status "
                f"{r['status_s']} s"
            )
    if args.quick:
        return
    merge({"fleet_queries": {"at": timestamp(), "machine": machine(), **out}})


if __name__ == "__main__":
    main()
