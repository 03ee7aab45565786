"""Central ingest alone: telemetry batches published as fast as the broker takes them
(QoS 1, 1,000 readings each, from several simulated gateways), stored and acknowledged by
`fleet central run`. Reports rows/s into the central store (target 100,000/s) against
the central table's raw insert rate measured in the same run; then the same on a
PostgreSQL server of its own with 1 and with 2 ingest workers (``--workers``: processes on
MQTT v5 shared subscriptions), against raw ``COPY`` into the same schema.

    .venv/bin/python -m bench.ingest [--readings 1000000] [--gateways 10]
        [--backend sqlite|postgresql|both] [--unsigned-acks] [--quick]

Settings it relies on: Mosquitto with ``BROKER_CONF`` (a queue deep enough that the
broker keeps every batch the publisher sends ahead of the center: with its default,
1,000 messages per client, it drops batches once the center falls that far behind), the
publisher with ``INFLIGHT`` unacked messages, and the central service with its defaults
(WAL, ``synchronous=FULL``, a commit per batch) and a signing key (``--key``: every ack
signed, as a fleet whose gateways check acks needs; ``--unsigned-acks`` runs it without,
to see what the signatures cost).

``--quick`` is a smoke run of seconds (``QUICK_READINGS`` from ``QUICK_GATEWAYS``
gateways): it checks that the bench completes and prints its figures, does not judge
them and writes no results.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.drain import raw_insert_rate
from bench.results import machine, merge, timestamp
from drivers.base import Quality, Reading
from edge_agent.contract import Channel, ReadingEncoder, Topics
from edge_agent.contract.commands import generate_keys
from edge_agent.contract.payloads import encode_telemetry_raw
from tests.support import Broker, Central, PgCentral, wait_for

BATCH = 1000
BROKER_CONF = "max_queued_messages 100000\n"
INFLIGHT = 64
QUICK_READINGS = 20_000
QUICK_GATEWAYS = 2


def batches(gateways: int, readings: int, t0: float = 1.7e9) -> list[tuple[str, bytes, int]]:
    """Pre-encoded telemetry messages, so the publisher costs nothing during the run."""
    encoder = ReadingEncoder()
    topics = Topics()
    per_gw = readings // gateways
    out = []
    for g in range(gateways):
        gw = f"bench-{g:03d}"
        for first in range(1, per_gw + 1, BATCH):
            bodies = [
                encoder.encode(
                    Reading("dev", f"p{i % 50}", float(i), "u", Quality.GOOD, t0 + i / 100)
                )
                for i in range(first, min(per_gw, first + BATCH - 1) + 1)
            ]
            payload = encode_telemetry_raw(gw, f"s{g}", first, bodies)
            out.append((topics.gw(gw, Channel.TELEMETRY), payload, len(bodies)))
    return out


def signing_key(tmp: Path, signed: bool) -> Path | None:
    """The center's signing key for the run (made in ``tmp``), or None: acks unsigned."""
    if not signed:
        return None
    key = tmp / "keys" / "center.key"
    generate_keys(key)
    return key


def run(readings: int, gateways: int, signed: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        raw = raw_insert_rate(tmp, min(200_000, readings))
        messages = batches(gateways, readings)
        total = sum(n for _, _, n in messages)
        broker = Broker(tmp, extra_conf=BROKER_CONF).start()
        central = Central(tmp, broker.url, key=signing_key(tmp, signed)).start()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(INFLIGHT)
        client.max_queued_messages_set(0)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        db: sqlite3.Connection | None = None
        try:
            time.sleep(1)  # central subscribed
            db = sqlite3.connect(central.db)
            t0 = time.monotonic()
            for topic, payload, _ in messages:
                client.publish(topic, payload, qos=1)

            def stored() -> bool:
                assert db is not None
                (n,) = db.execute("SELECT count(*) FROM readings").fetchone()
                return bool(n >= total)

            wait_for(stored, 300, interval=0.1, what=f"{total} rows at the center")
            took = time.monotonic() - t0
        finally:
            if db is not None:
                db.close()
            client.loop_stop()
            client.disconnect()
            central.stop()
            broker.stop()
    return {
        "readings": total,
        "gateways": gateways,
        "batch": BATCH,
        "seconds": round(took, 2),
        "rows_per_s": round(total / took),
        "central_raw_insert_per_s": round(raw),
        "vs_raw_insert": round(total / took / raw, 2),
        "target_rows_per_s": 100_000,
        "acks_signed": signed,
    }


def run_postgresql(
    readings: int, gateways: int, workers: int, url: str, signed: bool = True
) -> float:
    """Rows/s through ``fleet central run --workers N`` into a fresh PostgreSQL database;
    the readings are of the last hour (their day's partition made ahead by the service)."""
    import psycopg  # noqa: PLC0415 (loaded by the bench that uses it)

    messages = batches(gateways, readings, t0=time.time() - 3600)
    total = sum(n for _, _, n in messages)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        broker = Broker(tmp, extra_conf=BROKER_CONF).start()
        key = signing_key(tmp, signed)
        signing = [] if key is None else ["--key", str(key)]
        central = PgCentral(tmp, broker.url, url, "--workers", str(workers), *signing)
        central.start(sessions=2 * workers)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(INFLIGHT)
        client.max_queued_messages_set(0)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                t0 = time.monotonic()
                for topic, payload, _ in messages:
                    client.publish(topic, payload, qos=1)

                def stored() -> bool:
                    row = conn.execute("SELECT count(*) FROM readings").fetchone()
                    return row is not None and int(row[0]) >= total

                wait_for(stored, 300, interval=0.1, what=f"{total} rows at the center")
                took = time.monotonic() - t0
        finally:
            client.loop_stop()
            client.disconnect()
            central.stop()
            broker.stop()
    return total / took


def run_pg(readings: int, gateways: int, signed: bool = True) -> dict[str, Any]:
    # loaded by the bench that uses them
    from bench.pg_store import raw_copy_rate  # noqa: PLC0415
    from tests.pg import pg_server  # noqa: PLC0415

    with pg_server() as server:
        raw = raw_copy_rate(server.create_database(), min(200_000, readings))
        one = run_postgresql(readings, gateways, 1, server.create_database(), signed)
        two = run_postgresql(readings, gateways, 2, server.create_database(), signed)
    return {
        "readings": readings,
        "gateways": gateways,
        "batch": BATCH,
        "rows_per_s_1_worker": round(one),
        "rows_per_s_2_workers": round(two),
        "raw_copy_per_s": round(raw),
        "vs_raw_copy_1_worker": round(one / raw, 2),
        "vs_raw_copy_2_workers": round(two / raw, 2),
        "target_rows_per_s": 100_000,
        "acks_signed": signed,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.ingest", description=__doc__.split("\n", 1)[0]
    )
    ap.add_argument("--readings", type=int, default=None, help="in all (default 1,000,000)")
    ap.add_argument("--gateways", type=int, default=None, help="publishing (default 10)")
    ap.add_argument("--quick", action="store_true", help="smoke run of seconds, nothing saved")
    ap.add_argument(
        "--backend",
        choices=("sqlite", "postgresql", "both"),
        default="both",
        help="SQLite (one worker), PostgreSQL (1 and 2 workers), or both",
    )
    ap.add_argument(
        "--unsigned-acks",
        action="store_true",
        help="run the center without a signing key (to compare: by default it signs)",
    )
    args = ap.parse_args(argv)
    signed = not args.unsigned_acks
    readings = args.readings or (QUICK_READINGS if args.quick else 1_000_000)
    gateways = args.gateways or (QUICK_GATEWAYS if args.quick else 10)
    if args.backend in ("postgresql", "both"):
        p = run_pg(readings, gateways, signed)
        print(
            f"central ingest on PostgreSQL: {p['readings']} readings from {p['gateways']} "
            f"gateways: {p['rows_per_s_1_worker']} rows/s with 1 worker, "
            f"{p['rows_per_s_2_workers']} with 2 (raw COPY {p['raw_copy_per_s']}/s)"
        )
        if not args.quick:
            merge({"ingest_postgresql": {"at": timestamp(), "machine": machine(), **p}})
    if args.backend == "postgresql":
        return
    r = run(readings, gateways, signed)
    print(
        f"central ingest: {r['readings']} readings from {r['gateways']} gateways in "
        f"{r['seconds']} s = {r['rows_per_s']} rows/s "
        f"(raw insert {r['central_raw_insert_per_s']}/s, ratio {r['vs_raw_insert']}; "
        f"acks {'signed' if signed else 'unsigned'})"
    )
    if args.quick:
        return
    merge({"ingest": {"at": timestamp(), "machine": machine(), **r}})


if __name__ == "__main__":
    main()
