"""The PostgreSQL store: ingest rows/s through ``Store.round()`` with 1 and 2 writer
processes, next to a raw ``COPY`` into the same schema in the same run; and the queries
the operator waits on (the first page of gateways, one point's day of readings, ``status``)
over a store of ``--gateways`` gateways and ``--readings`` readings.

    .venv/bin/python -m bench.pg_store [--rows 1000000] [--gateways 100000]
        [--readings 10000000] [--quick]

Settings it relies on: a PostgreSQL server of its own (``tests.pg``: ``initdb`` in a
temporary folder, fsync on, ``synchronous_commit = on``, 128 MB shared buffers), rounds of
``ROUND_BATCHES`` batches of ``BATCH`` readings (what one ingest round of the center
holds under load), each writer process with gateways of its own (as shared subscriptions
split them). The query store is filled by SQL (``generate_series``), not by ingest.

``--quick`` is a smoke run of seconds: it checks that the bench completes and prints its
figures, does not judge them and writes no results.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import Any

from bench.results import machine, merge, timestamp
from central.store import open_store
from central.store.api import ReadingQuery, Retention
from edge_agent.contract import TelemetryBatch
from tests.pg import pg_server

BATCH = 1000
ROUND_BATCHES = 20
T0 = 1_764_000_000.0
POINTS = 10


def batches(worker: int, rows: int) -> list[TelemetryBatch]:
    """``rows`` readings of 10 points each from gateways of this worker's own."""
    out = []
    for b in range(rows // BATCH):
        gw = f"w{worker}-gw-{b % 10}"
        first = b // 10 * BATCH + 1
        readings = [
            {
                "dev": "dev-1",
                "pt": f"p{i % POINTS}",
                "v": float(i % 97),
                "u": "C",
                "q": "good",
                "ts": T0 + (first + i) * 0.01,
            }
            for i in range(BATCH)
        ]
        out.append(TelemetryBatch(gw, "s1", first, first + BATCH - 1, readings))
    return out


def ingest(url: str, worker: int, rows: int, ready: Any, go: Any, done: Any) -> None:
    work = batches(worker, rows)
    store = open_store(url)
    # the days of T0 get partitions of their own, as today's do (older days would go to
    # the default partition)
    store.ensure_partitions({int(r["ts"] // 86_400) for b in work for r in b.readings})  # type: ignore[attr-defined]
    ready.set()
    go.wait()
    start = time.perf_counter()
    stored = 0
    for i in range(0, len(work), ROUND_BATCHES):
        with store.round() as rnd:
            for b in work[i : i + ROUND_BATCHES]:
                with rnd.message():
                    rnd.insert_telemetry(b)
            rnd.seen({b.gw for b in work[i : i + ROUND_BATCHES]})
        stored += rnd.counts.readings_stored
    done.put((stored, time.perf_counter() - start))
    store.close()


def ingest_rate(url: str, workers: int, rows: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    results = ctx.Queue()
    procs, readies = [], []
    for w in range(workers):
        ready = ctx.Event()
        p = ctx.Process(target=ingest, args=(url, w, rows // workers, ready, go, results))
        p.start()
        procs.append(p)
        readies.append(ready)
    for ready in readies:
        if not ready.wait(300):
            raise RuntimeError("a writer did not get ready")
    start = time.perf_counter()
    go.set()
    stored = sum(results.get(timeout=900)[0] for _ in procs)
    seconds = time.perf_counter() - start
    for p in procs:
        p.join(30)
    if stored != rows // workers * workers:
        raise RuntimeError(f"stored {stored} of {rows} readings")
    return stored / seconds


def raw_copy_rate(url: str, rows: int) -> float:
    """COPY of the same rows into the same table, one transaction, nothing else."""
    import psycopg  # noqa: PLC0415 (loaded by the command that uses it)

    from central.store.postgres import PostgresStore  # noqa: PLC0415

    work = batches(9, rows)
    store = PostgresStore(url)
    store.ensure_partitions({int(r["ts"] // 86_400) for b in work for r in b.readings})
    store.close()
    data = [
        (
            b.gw,
            b.stream,
            b.seq_first + i,
            r["dev"],
            r["pt"],
            repr(r["v"]),
            3,
            r["u"],
            r["q"],
            None,
            r["ts"],
        )
        for b in work
        for i, r in enumerate(b.readings)
    ]
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY readings (gateway, stream, seq, device, point, value, kind, unit, quality, "
                "reason, ts) FROM STDIN"
            ) as copy,
        ):
            for row in data:
                copy.write_row(row)
        conn.commit()
        return len(data) / (time.perf_counter() - start)


def fill(url: str, gateways: int, readings: int) -> None:
    """``gateways`` gateways, and ``readings`` readings of ten of them, ten points each, a
    reading of each point about every second (one point's day: about 86,400 of them)."""
    import psycopg  # noqa: PLC0415 (loaded by the command that uses it)

    store = open_store(url)
    per_gw = max(1, readings // 10)  # ten gateways hold them, a second apart per point
    days = per_gw / (86_400 * POINTS)  # each point a reading a second: 86,400 a day
    store.maintain(Retention(raw_s=None, rollups_s=None), now=T0)
    store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO gateways (id, site, online, agent_version, tags, last_seen) "
            "SELECT 'gw-' || lpad(i::text, 6, '0'), 'site-' || (i %% 50), i %% 7 <> 0, "
            "'1.' || (i %% 3), jsonb_build_object('district', 'd' || (i %% 20)), %s "
            "FROM generate_series(1, %s) AS i",
            (T0, gateways),
        )
        from central.store.postgres import PostgresStore  # noqa: PLC0415

        ps = PostgresStore(url)
        ps.ensure_partitions({int(T0 // 86_400) + d for d in range(-1, int(days) + 2)})
        ps.close()
        conn.execute(
            "INSERT INTO readings (gateway, stream, seq, device, point, value, kind, unit, "
            "quality, reason, ts) SELECT 'gw-' || lpad((1 + i / %s)::text, 6, '0'), 's1', i, "
            "'dev-1', 'p' || (i %% %s), (i %% 97)::text, 2, 'C', 'good', NULL, "
            "%s + (i %% %s) * (86400.0 * %s / %s) FROM generate_series(0, %s - 1) AS i",
            (per_gw, POINTS, T0, per_gw, days, per_gw, readings),
        )
        conn.execute("ANALYZE")


def timed(what: Any) -> float:
    start = time.perf_counter()
    what()
    return round(time.perf_counter() - start, 4)


def queries(url: str) -> dict[str, float]:
    store = open_store(url)
    try:
        return {
            "gateways_first_page_s": timed(lambda: list(store.gateways(limit=50))),
            "gateways_filtered_page_s": timed(
                lambda: list(store.gateways(limit=50, after="gw-050000"))
            ),
            "point_day_s": timed(
                lambda: sum(
                    1
                    for _ in store.readings(
                        ReadingQuery(
                            gateway="gw-000001",
                            device="dev-1",
                            point="p3",
                            since=T0,
                            until=T0 + 86_400,
                            limit=None,
                        )
                    )
                )
            ),
            "newest_100_fleet_wide_s": timed(lambda: list(store.readings(ReadingQuery(limit=100)))),
            "status_s": timed(lambda: store.status(now=T0)),
        }
    finally:
        store.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.pg_store", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--rows", type=int, default=None, help="ingested per run (default 1,000,000)")
    ap.add_argument("--gateways", type=int, default=None, help="in the query store (100,000)")
    ap.add_argument("--readings", type=int, default=None, help="in the query store (10,000,000)")
    ap.add_argument("--quick", action="store_true", help="smoke run of seconds, nothing saved")
    args = ap.parse_args(argv)
    rows = args.rows or (40_000 if args.quick else 1_000_000)
    gateways = args.gateways or (1_000 if args.quick else 100_000)
    readings = args.readings or (100_000 if args.quick else 10_000_000)
    with pg_server() as server:
        raw = raw_copy_rate(server.create_database(), rows)
        one = ingest_rate(server.create_database(), 1, rows)
        two = ingest_rate(server.create_database(), 2, rows)
        url = server.create_database()
        fill_s = timed(lambda: fill(url, gateways, readings))
        q = queries(url)
    r: dict[str, Any] = {
        "rows": rows,
        "raw_copy_per_s": round(raw),
        "ingest_1_worker_per_s": round(one),
        "ingest_2_workers_per_s": round(two),
        "vs_raw_copy_1_worker": round(one / raw, 2),
        "query_store": {"gateways": gateways, "readings": readings, "fill_s": fill_s},
        **q,
    }
    print(
        f"PostgreSQL ingest of {rows} rows: {r['ingest_1_worker_per_s']} rows/s with 1 worker, "
        f"{r['ingest_2_workers_per_s']} with 2 (raw COPY {r['raw_copy_per_s']}/s)\n"
        f"over {gateways} gateways and {readings} readings: first page of gateways "
        f"{q['gateways_first_page_s']} s, one point's day {q['point_day_s']} s, newest 100 "
        f"{q['newest_100_fleet_wide_s']} s, status {q['status_s']} s"
    )
    if args.quick:
        return
    merge({"pg_store": {"at": timestamp(), "machine": machine(), **r}})


if __name__ == "__main__":
    main()
