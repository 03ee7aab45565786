"""Make a central store as an older release wrote it, for the migration tests.

Run it with the older code first on the import path: ``git archive REV | tar -x -C OLD &&
PYTHONPATH=OLD .venv/bin/python tests/data/make_old_store.py OUT``. ``store-0.1.0.db`` was
made with release 0.1.0 (commit 08001e6); ``store-unversioned-main.db`` with the last main
before versioned migrations (commit 0955ebf), whose ad-hoc upgrades had added
``rejected.size`` and ``rejected_bytes``. Everything goes in through that version's
``Store`` API, as its ingest wrote it: telemetry batches (a float, a boolean, a string, a
null, an integer past 64 bits), one alarm with its history, a loss, a dead letter, gateway
state and health.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from central.store import Store
from edge_agent.contract import decode_alarm, decode_telemetry, encode_telemetry

NOW = 1_764_000_000.0
GATEWAYS = ("gw-old-1", "gw-old-2")


def alarm(gw: str, seq: int, **event: object) -> bytes:
    body = {"id": "smoke-1/smoke", "rule": "smoke", "dev": "smoke-1", "severity": "critical"}
    return json.dumps({**body, **event, "gw": gw, "stream": f"a-{gw}", "seq": seq}).encode()


def fill(store: Store) -> None:
    for n, gw in enumerate(GATEWAYS):
        store.begin()
        store.seen([gw], now=NOW)
        store.update_state(
            gw,
            {
                "gw": gw,
                "online": True,
                "site": f"site-{n}",
                "agent_version": "0.1.0",
                "config_rev": "r1",
                "started": NOW - 60,
                "stream": f"s-{gw}",
                "tags": {"district": "north"},
            },
        )
        store.update_health(
            gw,
            {
                "gw": gw,
                "ts": NOW,
                "outbox": {"depth": 3, "oldest_age_s": 1.5},
                "dropped": {"telemetry": 0},
            },
        )
        for b in range(3):
            readings = [
                {
                    "dev": "meter-1",
                    "pt": "flow",
                    "v": 1.25 + b,
                    "u": "m3/h",
                    "q": "good",
                    "ts": NOW + b,
                },
                {
                    "dev": "meter-1",
                    "pt": "valve_open",
                    "v": b % 2 == 0,
                    "u": None,
                    "q": "good",
                    "ts": NOW + b,
                },
                {
                    "dev": "meter-1",
                    "pt": "mode",
                    "v": "auto",
                    "u": None,
                    "q": "good",
                    "ts": NOW + b,
                },
                {
                    "dev": "meter-1",
                    "pt": "counter",
                    "v": 2**64 - 1,
                    "u": None,
                    "q": "bad",
                    "r": "not available",
                    "ts": NOW + b,
                },
                {
                    "dev": "meter-1",
                    "pt": "temp",
                    "v": None,
                    "u": "C",
                    "q": "stale",
                    "r": "timeout",
                    "ts": NOW + b,
                },
            ]
            batch = encode_telemetry(gw, f"s-{gw}", 1 + 5 * b, readings)
            store.insert_telemetry(decode_telemetry(batch))
        store.commit()
    gw = GATEWAYS[0]
    store.begin()
    store.insert_alarm(
        decode_alarm(
            alarm(
                gw,
                1,
                state="active",
                value=True,
                ts=NOW + 10,
                msg="smoke detected",
                occurrence=1,
                since=NOW + 10,
            )
        )
    )
    store.insert_alarm(
        decode_alarm(
            alarm(
                gw,
                2,
                state="acknowledged",
                value=True,
                ts=NOW + 20,
                msg="smoke detected",
                occurrence=1,
                since=NOW + 10,
                acked_by="alice",
            )
        )
    )
    store.insert_alarm(
        decode_alarm(
            alarm(
                gw,
                3,
                state="cleared",
                value=False,
                ts=NOW + 25,
                msg="smoke gone",
                occurrence=1,
                since=NOW + 10,
            )
        )
    )
    dropped = {
        "lane": "telemetry",
        "first": 100,
        "last": 149,
        "count": 50,
        "ts_first": NOW - 500,
        "ts_last": NOW - 400,
        "cause": "cap",
    }
    store.insert_alarm(
        decode_alarm(
            json.dumps(
                {
                    "id": "outbox/dropped",
                    "rule": "outbox.dropped",
                    "dev": "outbox",
                    "severity": "major",
                    "state": "active",
                    "value": 50,
                    "ts": NOW + 30,
                    "msg": "50 readings dropped",
                    "dropped": dropped,
                    "gw": gw,
                    "stream": f"a-{gw}",
                    "seq": 4,
                }
            ).encode()
        )
    )
    store.insert_rejected(
        gw,
        f"edgefleet/gw/{gw}/telemetry",
        b'{"gw": "gw-old-1", "seq_',
        "not JSON: unterminated string",
        None,
    )
    store.commit()


def main(target: Path) -> None:
    target.unlink(missing_ok=True)
    store = Store(target)
    try:
        fill(store)
    finally:
        store.close()
    conn = sqlite3.connect(target)  # one file: the WAL folded in, no -wal or -shm beside it
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("VACUUM")
    conn.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
