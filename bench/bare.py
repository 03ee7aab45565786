"""The bare pipeline: the same libraries as EdgeFleet, with no durability and no design.

``python -m bench.bare poll ...``  a pymodbus async client polling the device as fast as
it answers, ``struct`` decoding, one JSON message per poll (~1,000 readings, the wire
contract's shape), paho-mqtt v5 QoS 1 publishing. At most ``--inflight`` messages are
unacked at the broker, and at most ``--credit`` messages ahead of what the sink reports
stored, so it polls as fast as the sink stores instead of feeding the broker messages it
would drop (on a small machine those would also steal the sink's CPU).

``python -m bench.bare sink ...``  a paho subscriber inserting each message's readings
with ``sqlite3.executemany`` into a table keyed like the central store's ``readings``
(same columns and primary key, no secondary index) from a writer thread, one transaction
for whatever messages are waiting, then publishing the last seq stored (QoS 0).

Nothing is kept on disk before it is published and nothing is acknowledged end to end: a
kill loses what is in memory. That is the point: it is the ceiling a durable pipeline is
measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import queue
import signal
import sqlite3
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import AsyncModbusTcpClient

from bench.points import DEVICE_ID, Block, blocks
from central.migrations import SCHEMA_0_1_0 as CENTRAL_SCHEMA  # readings: unchanged since

# not a bench (python -m bench leaves it out):
HELPER = "the bare pipeline's poller and sink, processes bench.e2e starts"

GATEWAY = "bare-gw"
STREAM = "bare0000"
TOPIC = f"bench/bare/{GATEWAY}/telemetry"
STORED_TOPIC = f"bench/bare/{GATEWAY}/stored"


def readings_table() -> str:
    """The central store's ``readings`` table alone: same columns, same primary key
    ``(gateway, stream, seq)``, WITHOUT ROWID; no secondary index."""
    (table,) = (
        stmt.strip()
        for stmt in CENTRAL_SCHEMA.split(";")
        if stmt.strip().startswith("CREATE TABLE IF NOT EXISTS readings ")
    )
    return table + ";"


INSERT = (
    "INSERT OR IGNORE INTO readings "
    "(gateway, stream, seq, device, point, value, unit, quality, reason, ts, is_bool) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def mqtt_client(client_id: str) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)


def decode_block(block: Block, registers: Sequence[int]) -> Sequence[float | int]:
    if block.floats:
        n = len(registers)
        return struct.unpack(f">{n // 2}f", struct.pack(f">{n}H", *registers))
    return registers


def encode_batch(seq_first: int, readings: list[dict[str, Any]]) -> bytes:
    """One message in the wire contract's telemetry shape."""
    return json.dumps(
        {
            "gw": GATEWAY,
            "stream": STREAM,
            "seq_first": seq_first,
            "seq_last": seq_first + len(readings) - 1,
            "readings": readings,
        },
        separators=(",", ":"),
    ).encode()


def sample_batch(n_points: int) -> bytes:
    """A message like the poller's, for the MQTT and JSON limits."""
    readings: list[dict[str, Any]] = []
    ts = time.time()
    for block in blocks(n_points):
        regs = [0x4123, 0x4567] * (block.count // 2) if block.floats else [12345] * block.count
        for name, value in zip(block.names, decode_block(block, regs), strict=True):
            readings.append(
                {"dev": DEVICE_ID, "pt": name, "v": value, "u": block.unit, "q": "good", "ts": ts}
            )
    return encode_batch(1, readings)


# --- poller ------------------------------------------------------------------------------


async def poll(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    plan = blocks(args.points)
    client = AsyncModbusTcpClient("127.0.0.1", port=args.modbus_port, timeout=2, retries=0)
    if not await client.connect():
        raise SystemExit("bare poller: cannot connect to the device")
    room = asyncio.Semaphore(args.inflight)
    connected = threading.Event()
    stored = [0]  # the last seq the sink says it has stored
    more_stored = asyncio.Event()
    pub = mqtt_client("bench-bare-poller")
    pub.max_inflight_messages_set(args.inflight)

    def on_connect(client: mqtt.Client, *_: object) -> None:
        client.subscribe(STORED_TOPIC, qos=0)
        connected.set()

    def on_publish(*_: object) -> None:
        loop.call_soon_threadsafe(room.release)

    def got_stored(seq: int) -> None:
        stored[0] = max(stored[0], seq)
        more_stored.set()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        loop.call_soon_threadsafe(got_stored, int(msg.payload))

    pub.on_connect = on_connect
    pub.on_publish = on_publish
    pub.on_message = on_message
    pub.connect("127.0.0.1", args.mqtt_port)
    pub.loop_start()
    if not connected.wait(10):
        raise SystemExit("bare poller: no broker")
    reads = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
    }
    seq, polls = 1, 0
    deadline = time.monotonic() + args.max_seconds
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            readings: list[dict[str, Any]] = []
            for block in plan:
                rr = await reads[block.table](block.address, count=block.count, device_id=1)
                ts = time.time()
                values = decode_block(block, rr.registers)
                unit = block.unit
                readings += [
                    {"dev": DEVICE_ID, "pt": name, "v": v, "u": unit, "q": "good", "ts": ts}
                    for name, v in zip(block.names, values, strict=True)
                ]
            payload = encode_batch(seq, readings)
            # Credit: stay at most ``--credit`` messages ahead of what the sink stored, so
            # the poller does not burn CPU on readings the broker would drop.
            while seq - 1 - stored[0] >= args.credit * len(readings) and not stop.is_set():
                more_stored.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(more_stored.wait(), 1.0)
            await room.acquire()
            pub.publish(TOPIC, payload, qos=1)
            seq += len(readings)
            polls += 1
    finally:
        client.close()
        pub.disconnect()
        pub.loop_stop()
        if args.result_file:
            result = json.dumps({"polls": polls, "readings": seq - 1})
            await asyncio.to_thread(Path(args.result_file).write_text, result)


# --- sink --------------------------------------------------------------------------------


def sink(args: argparse.Namespace) -> None:
    db = sqlite3.connect(args.db, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(readings_table())
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    ready = Path(args.ready_file)

    def on_connect(client: mqtt.Client, *_: object) -> None:
        client.subscribe(TOPIC, qos=1)

    def on_subscribe(*_: object) -> None:
        ready.write_text("0")

    inbox: queue.Queue[bytes | bytearray] = queue.Queue()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        inbox.put(msg.payload)

    def writer() -> None:
        """Everything waiting goes in one transaction: one commit per round, not per
        message (SQLite's commit and WAL checkpoint cost more than 1,000 rows do)."""
        while not stop.is_set():
            try:
                payloads = [inbox.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(payloads) < 500:
                try:
                    payloads.append(inbox.get_nowait())
                except queue.Empty:
                    break
            last = 0
            for payload in payloads:
                batch = json.loads(payload)
                gw, stream, seq = batch["gw"], batch["stream"], batch["seq_first"]
                rows = [
                    (
                        gw,
                        stream,
                        seq + i,
                        r["dev"],
                        r["pt"],
                        r["v"],
                        r["u"],
                        r["q"],
                        None,
                        r["ts"],
                        0,
                    )
                    for i, r in enumerate(batch["readings"])
                ]
                db.executemany(INSERT, rows)
                last = max(last, seq + len(rows) - 1)
            db.commit()
            sub.publish(STORED_TOPIC, str(last), qos=0)

    sub = mqtt_client("bench-bare-sink")
    sub.on_connect = on_connect
    sub.on_subscribe = on_subscribe
    sub.on_message = on_message
    sub.connect("127.0.0.1", args.mqtt_port)
    sub.loop_start()
    thread = threading.Thread(target=writer, name="writer", daemon=True)
    thread.start()
    stop.wait(args.max_seconds)
    stop.set()
    thread.join(5)
    sub.disconnect()
    sub.loop_stop()
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("poll")
    p.add_argument("--modbus-port", type=int, required=True)
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--inflight", type=int, default=100, help="unacked PUBLISHes (broker)")
    p.add_argument("--credit", type=int, default=8, help="messages ahead of the sink")
    p.add_argument("--max-seconds", type=float, default=300)
    p.add_argument("--result-file", default="")
    s = sub.add_parser("sink")
    s.add_argument("--mqtt-port", type=int, required=True)
    s.add_argument("--db", required=True)
    s.add_argument("--ready-file", required=True)
    s.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args()
    if args.role == "poll":
        asyncio.run(poll(args))
    else:
        sink(args)


if __name__ == "__main__":
    main()
