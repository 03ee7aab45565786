"""Backlog drain: an outbox holding 1,000,000 readings (an outage's worth) meets the
center again, while a live device keeps being polled. Reports the drain time (target
under 60 s) and how far behind live readings are at the center meanwhile (target under
1 s), against the central store's raw insert rate measured in the same run.

    .venv/bin/python -m bench.drain [--backlog 1000000] [--live-poll-s 0.5] [--quick]

Settings it relies on (``AGENT_OUTBOX``, written into the agent's config): an outbox
that drops nothing of the backlog (``max_mb`` 2000, ``max_age`` 30d, well above the
backlog's size and age), and the uplink's batching as shipped (``batch_max`` 1000
readings per message, ``window`` 64 batches in flight), stated so that a change of the
defaults does not move the figures unseen. The central service runs with its defaults.

``--quick`` is a smoke run of seconds (a backlog of ``QUICK_BACKLOG`` readings): it checks
that the bench completes and prints its figures, does not judge them and writes no results.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results import machine, merge, timestamp
from central.store.sqlite import SqliteStore
from drivers.base import Quality, Reading
from drivers.modbus.config import ModbusPoint
from edge_agent.contract import ReadingEncoder
from edge_agent.outbox import Lane, Outbox
from tests.support import Agent, Broker, Central, ThreadedDevice

GW = "drain-gw"
LIVE = {"name": "level", "table": "holding", "address": 0, "type": "uint16"}
AGENT_OUTBOX = {"max_mb": 2000, "max_age": "30d", "batch_max": 1000, "window": 64}
DRAIN_LIMIT_S = 300
QUICK_BACKLOG = 20_000
RAW_INSERT_ROWS = 200_000


def fill_outbox(path: Path, n: int, start: float) -> None:
    """What an agent would have committed during an outage: n readings, 100 points."""
    encoder = ReadingEncoder()
    ob = Outbox(path, max_bytes=10**10)
    chunk = 50_000
    for first in range(0, n, chunk):
        rows = []
        for i in range(first, min(n, first + chunk)):
            r = Reading("backlog", f"p{i % 100}", float(i), "u", Quality.GOOD, start + i / 1000)
            rows.append((r.ts, encoder.encode(r)))
        ob.append(Lane.TELEMETRY, rows)
    ob.close()


def raw_insert_rate(tmp: Path, n: int = RAW_INSERT_ROWS) -> float:
    """Rows/s the central table takes from plain executemany, 1,000-row commits."""
    store = SqliteStore(tmp / "raw.db")
    rows = [
        ("g", "s", i, "d", f"p{i % 100}", 1.0, "u", "good", None, float(i), 0) for i in range(n)
    ]
    t0 = time.perf_counter()
    for k in range(0, n, 1000):
        store.conn.executemany(
            "INSERT INTO readings (gateway, stream, seq, device, point, value, unit, quality, "
            "reason, ts, is_bool) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows[k : k + 1000],
        )
        store.conn.commit()
    rate = n / (time.perf_counter() - t0)
    store.close()
    return rate


def run(backlog: int, live_poll_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        raw = raw_insert_rate(tmp, min(RAW_INSERT_ROWS, backlog))
        outage_start = time.time() - 3600
        fill_outbox(tmp / "outbox.db", backlog, outage_start)
        broker = Broker(tmp).start()
        device = ThreadedDevice([ModbusPoint.model_validate(LIVE)]).start()
        central = Central(tmp, broker.url).start()
        agent = Agent(
            tmp,
            f"""\
gateway: {{id: {GW}}}
central: {{url: '{broker.url}'}}
outbox: {json.dumps({"path": str(tmp / "outbox.db"), **AGENT_OUTBOX})}
devices:
  - id: live
    modbus: {{host: 127.0.0.1, port: {device.port}, timeout_s: 0.5}}
    poll_s: {live_poll_s}
    points:
      - {json.dumps(LIVE)}
""",
        )
        db = sqlite3.connect(central.db)
        behind: list[float] = []
        try:
            started = time.monotonic()
            agent.start()
            done_at = None
            deadline = started + DRAIN_LIMIT_S
            while time.monotonic() < deadline:
                time.sleep(0.25)
                try:
                    (n_backlog,) = db.execute(
                        "SELECT count(*) FROM readings WHERE device = 'backlog'"
                    ).fetchone()
                    (newest,) = db.execute(
                        "SELECT max(ts) FROM readings WHERE device = 'live'"
                    ).fetchone()
                except sqlite3.OperationalError:
                    continue
                if newest is not None:
                    behind.append(time.time() - newest)
                if n_backlog >= backlog:
                    done_at = time.monotonic()
                    break
            if done_at is None:
                raise SystemExit(
                    f"the backlog did not drain within {DRAIN_LIMIT_S} s ({n_backlog} rows)"
                )
        finally:
            db.close()
            agent.stop()
            central.stop()
            device.close()
            broker.stop()
    drain_s = done_at - started
    live = behind[len(behind) // 10 :] or behind  # after the agent's start-up
    return {
        "backlog_readings": backlog,
        "drain_s": round(drain_s, 1),
        "drain_rate_per_s": round(backlog / drain_s),
        "central_raw_insert_per_s": round(raw),
        "drain_vs_raw_insert": round(backlog / drain_s / raw, 2),
        "live_poll_s": live_poll_s,
        "live_behind_p50_s": round(statistics.median(live), 3),
        "live_behind_max_s": round(max(live), 3),
        "targets": {"drain_s": 60, "live_behind_s": 1},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.drain", description=__doc__.split("\n", 1)[0]
    )
    ap.add_argument("--backlog", type=int, default=None, help="readings (default 1,000,000)")
    ap.add_argument("--live-poll-s", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true", help="smoke run of seconds, nothing saved")
    args = ap.parse_args(argv)
    backlog = args.backlog or (QUICK_BACKLOG if args.quick else 1_000_000)
    r = run(backlog, args.live_poll_s)
    print(
        f"drain: {r['backlog_readings']} readings in {r['drain_s']} s "
        f"({r['drain_rate_per_s']}/s; central raw insert {r['central_raw_insert_per_s']}/s); "
        f"live readings behind: p50 {r['live_behind_p50_s']} s, max {r['live_behind_max_s']} s "
        f"(poll {args.live_poll_s} s)"
    )
    if args.quick:
        return
    merge({"drain": {"at": timestamp(), "machine": machine(), **r}})


if __name__ == "__main__":
    main()
