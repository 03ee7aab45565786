"""Raw limits of the parts, each measured alone on this machine.

* Modbus: back-to-back block reads against the simulated device (pymodbus client and
  server, one request at a time, as Modbus TCP to one device is);
* MQTT: QoS 1 publish of poll-sized JSON messages through Mosquitto to a subscriber in
  another process (``python -m bench.raw mqtt-sink``);
* SQLite: ``executemany`` of 1,000-row batches into the central ``readings`` table
  (WAL, synchronous=NORMAL, one commit per batch), and into an outbox-like table (WAL,
  synchronous=FULL: the agent's durability cost);
* JSON: encoding and decoding a 1,000-reading message (CPU only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from bench.bare import INSERT, decode_block, mqtt_client, readings_table, sample_batch
from bench.points import blocks
from bench.procs import Cleanup, wait_until
from central.migrations import SCHEMA_0_1_0 as CENTRAL_SCHEMA  # readings: unchanged since

# not a bench (python -m bench leaves it out):
HELPER = "the raw limits' parts, run by bench.e2e (its MQTT sink a process it starts)"

OUTBOX_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS telemetry "
    "(seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, body TEXT NOT NULL)"
)
RAW_TOPIC = "bench/raw/mqtt"


def _rate(n: float, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


# --- Modbus ------------------------------------------------------------------------------


async def _modbus(port: int, n_points: int, seconds: float, decode: bool) -> dict[str, Any]:
    plan = blocks(n_points)
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    if not await client.connect():
        raise RuntimeError("raw modbus: cannot connect to the device")
    reads = {"holding": client.read_holding_registers, "input": client.read_input_registers}
    requests = polls = 0
    try:
        for block in plan:  # warm-up: one poll
            await reads[block.table](block.address, count=block.count, device_id=1)
        t0 = time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            for block in plan:
                rr = await reads[block.table](block.address, count=block.count, device_id=1)
                if decode:
                    decode_block(block, rr.registers)
                requests += 1
            polls += 1
    finally:
        client.close()
    return {
        "requests_per_s": _rate(requests, elapsed),
        "polls_per_s": _rate(polls, elapsed),
        "readings_per_s": _rate(polls * n_points, elapsed),
        "requests_per_poll": len(plan),
    }


def modbus_limit(port: int, n_points: int, seconds: float) -> dict[str, Any]:
    return asyncio.run(_modbus(port, n_points, seconds, decode=True))


# --- MQTT --------------------------------------------------------------------------------


def mqtt_limit(
    cleanup: Cleanup, workdir: Path, mqtt_port: int, n_points: int, seconds: float
) -> dict[str, Any]:
    """Publisher here, subscriber in its own process; rate as the subscriber saw it."""
    payload = sample_batch(n_points)
    ready = workdir / "mqtt-sink.ready"
    result = workdir / "mqtt-sink.json"
    sink = cleanup.module(
        "bench.raw",
        [
            "mqtt-sink",
            "--mqtt-port",
            str(mqtt_port),
            "--ready-file",
            str(ready),
            "--result-file",
            str(result),
            "--max-seconds",
            str(seconds + 30),
        ],
        workdir / "mqtt-sink.log",
    )
    wait_until(ready.exists, 15, "the MQTT sink")
    room = threading.Semaphore(100)
    connected = threading.Event()
    pub = mqtt_client("bench-raw-pub")
    pub.max_inflight_messages_set(100)
    pub.on_connect = lambda *a: connected.set()
    pub.on_publish = lambda *a: room.release()
    pub.connect("127.0.0.1", mqtt_port)
    pub.loop_start()
    sent = 0
    try:
        if not connected.wait(10):
            raise RuntimeError("raw mqtt: no broker")
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            if room.acquire(timeout=5):
                pub.publish(RAW_TOPIC, payload, qos=1)
                sent += 1
        pub.publish(RAW_TOPIC, b"", qos=1).wait_for_publish(10)  # the end marker
    finally:
        pub.disconnect()
        pub.loop_stop()
    wait_until(result.exists, 30, "the MQTT sink's result")
    sink.stop()
    got = json.loads(result.read_text())
    span = got["t_last"] - got["t_first"]
    msgs = max(got["received"] - 1, 0)
    return {
        "msgs_per_s": _rate(msgs, span),
        "readings_per_s": _rate(msgs * n_points, span),
        "mb_per_s": round(msgs * len(payload) / span / 1e6, 1) if span > 0 else 0.0,
        "payload_bytes": len(payload),
        "sent": sent,
        "received": got["received"],
    }


def mqtt_sink(args: argparse.Namespace) -> None:
    """Count messages until the empty end marker; write the count and the times."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    state: dict[str, Any] = {"received": 0, "t_first": 0.0, "t_last": 0.0}

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if not msg.payload:
            done.set()
            return
        now = time.perf_counter()
        if state["received"] == 0:
            state["t_first"] = now
        state["received"] += 1
        state["t_last"] = now

    sub = mqtt_client("bench-raw-sink")
    sub.on_connect = lambda client, *a: client.subscribe(RAW_TOPIC, qos=1)

    def on_subscribe(*_: object) -> None:
        Path(args.ready_file).write_text("0")

    sub.on_subscribe = on_subscribe
    sub.on_message = on_message
    sub.connect("127.0.0.1", args.mqtt_port)
    sub.loop_start()
    done.wait(args.max_seconds)
    sub.disconnect()
    sub.loop_stop()
    tmp = Path(args.result_file + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(args.result_file)


# --- SQLite ------------------------------------------------------------------------------


def sqlite_limit(
    workdir: Path, n_points: int, warmup: float, seconds: float, short: float
) -> dict[str, Any]:
    """Rows/s into SQLite alone, in 1,000-row ``executemany`` batches.

    The central ``readings`` table slows as it grows (its secondary index takes inserts
    all over), so it is measured like the pipelines are: from empty, ``warmup`` seconds,
    then a ``seconds`` window. The outbox (rows are deleted as acked) and the
    primary-key-only variant do not slow down, and get ``short`` seconds.
    """
    batch = json.loads(sample_batch(n_points))["readings"]

    def central_rows(seq: int) -> list[tuple[Any, ...]]:
        ts = time.time()
        return [
            ("gw", "s", seq + i, r["dev"], r["pt"], r["v"], r["u"], r["q"], None, ts, 0)
            for i, r in enumerate(batch)
        ]

    bodies = [json.dumps(r, separators=(",", ":")) for r in batch]

    def outbox_rows(seq: int) -> list[tuple[Any, ...]]:
        ts = time.time()
        return [(ts, b) for b in bodies]

    pk_schema = readings_table()
    outbox_sql = "INSERT INTO telemetry(ts, body) VALUES (?, ?)"
    return {
        "central_rows_per_s": _insert_rate(
            workdir / "central.db",
            "NORMAL",
            CENTRAL_SCHEMA,
            central_rows,
            INSERT,
            1,
            warmup,
            seconds,
        ),
        "central_10_per_commit_rows_per_s": _insert_rate(
            workdir / "central10.db",
            "NORMAL",
            CENTRAL_SCHEMA,
            central_rows,
            INSERT,
            10,
            warmup,
            seconds,
        ),
        "central_pk_only_rows_per_s": _insert_rate(
            workdir / "central-pk.db", "NORMAL", pk_schema, central_rows, INSERT, 1, short, short
        ),
        "outbox_rows_per_s": _insert_rate(
            workdir / "outbox.db", "FULL", OUTBOX_SCHEMA, outbox_rows, outbox_sql, 1, short, short
        ),
    }


def _insert_rate(
    path: Path,
    sync: str,
    schema: str,
    make_rows: Callable[[int], list[tuple[Any, ...]]],
    sql: str,
    batches_per_commit: int,
    warmup: float,
    seconds: float,
) -> float:
    """Rows/s over the ``seconds`` that follow ``warmup`` seconds of the same inserts."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={sync}")
        db.executescript(schema)
        seq = 1
        start = time.perf_counter()
        t0, seq0 = start + warmup, 0
        while (now := time.perf_counter()) < t0 + seconds:
            if seq0 == 0 and now >= t0:
                t0, seq0 = now, seq
            db.execute("BEGIN")
            for _ in range(batches_per_commit):
                rows = make_rows(seq)
                db.executemany(sql, rows)
                seq += len(rows)
            db.execute("COMMIT")
    finally:
        db.close()
    return _rate(seq - seq0, now - t0) if seq0 else 0.0


# --- JSON --------------------------------------------------------------------------------


def json_limit(n_points: int, seconds: float) -> dict[str, Any]:
    payload = sample_batch(n_points)
    readings = json.loads(payload)["readings"]
    n = 0
    t0 = time.perf_counter()
    while (enc_s := time.perf_counter() - t0) < seconds / 2:
        json.dumps({"readings": readings}, separators=(",", ":"))
        n += 1
    encode = _rate(n * len(readings), enc_s)
    n = 0
    t0 = time.perf_counter()
    while (dec_s := time.perf_counter() - t0) < seconds / 2:
        json.loads(payload)
        n += 1
    decode = _rate(n * len(readings), dec_s)
    return {"encode_readings_per_s": encode, "decode_readings_per_s": decode}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw")
    sub = parser.add_subparsers(dest="role", required=True)
    s = sub.add_parser("mqtt-sink")
    s.add_argument("--mqtt-port", type=int, required=True)
    s.add_argument("--ready-file", required=True)
    s.add_argument("--result-file", required=True)
    s.add_argument("--max-seconds", type=float, default=60)
    args = parser.parse_args()
    mqtt_sink(args)


if __name__ == "__main__":
    main()
