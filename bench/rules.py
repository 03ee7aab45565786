"""Rule engine figures: evaluation cost per reading with 1,000 rules loaded, against the
raw cost of the same comparisons as plain Python; and alarm latency from a simulated
device's change to the alarm's arrival in the central store (p50, p99), against the
poll interval (the target: p99 within poll interval + 100 ms).

    .venv/bin/python -m bench.rules [--changes 40] [--poll-s 0.2] [--quick]

Settings it relies on (``ALARM_SETTINGS``, written into the agent's config): the latency
run toggles one detector every few tenths of a second, an alarm load the gateway's
alarm-load handling exists to damp. With the defaults, the third activation within 60 s
makes the alarm chatter and holds it (no more events), and past 30 new alarms a minute
flood control summarises them; both are switched off here, so every change is an event.

``--quick`` is a smoke run of seconds (a few changes, a few rounds): it checks that the
bench completes and prints its figures, does not judge them and writes no results.
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
from drivers.base import Quality, Reading
from drivers.modbus.config import ModbusPoint
from edge_agent.rules.compile import compile_rules
from edge_agent.rules.engine import RuleEngine
from edge_agent.rules.model import Rule
from tests.support import Agent, Broker, Central, ThreadedDevice, wait_for

DEVICES = 100
RULES_PER_DEVICE = 10
# the gateway's alarm-load handling off: every toggle must be an event at the center
ALARM_SETTINGS = {"chatter_count": 0, "max_new_per_min": 10_000}
QUICK_CHANGES = 6
QUICK_ROUNDS = 2


def evaluation_cost(rounds: int = 20) -> dict[str, Any]:
    """1,000 rules on 100 devices of 10 points; one poll of a device = 10 readings."""
    points = frozenset(f"p{i}" for i in range(RULES_PER_DEVICE))
    devices = {f"d{d}": points for d in range(DEVICES)}
    rules = [
        Rule.model_validate(
            {
                "id": f"r{i}",
                "device": dev,
                "when": f"p{i} > 50 and p{(i + 1) % 10} < 90",
                "clear_when": f"p{i} < 40",
                "off_delay_s": 5,
            }
        )
        for dev in devices
        for i in range(RULES_PER_DEVICE)
    ]
    engine = RuleEngine(compile_rules(devices, rules, []), now=0.0)
    polls = [
        [
            Reading(dev, f"p{i}", float((r * 7 + i * 13) % 100), None, Quality.GOOD, r + 1.0)
            for i in range(RULES_PER_DEVICE)
        ]
        for r in range(rounds)
        for dev in devices
    ]
    t0 = time.perf_counter()
    for poll in polls:
        engine.observe(poll)
    took = time.perf_counter() - t0
    readings = sum(len(p) for p in polls)
    # the raw limit: the same conditions as compiled Python on the same values
    raw = [
        eval(f"lambda v: v['p{i}'] > 50 and v['p{(i + 1) % 10}'] < 90")  # trusted: our own text
        for i in range(RULES_PER_DEVICE)
    ]
    t1 = time.perf_counter()
    for poll in polls:
        values = {r.point: r.value for r in poll}
        for fn in raw:
            fn(values)
    raw_took = time.perf_counter() - t1
    return {
        "rules_loaded": len(rules),
        "readings": readings,
        "us_per_reading": round(took / readings * 1e6, 2),
        "us_per_rule_evaluation": round(took / engine.evaluations * 1e6, 2),
        "raw_python_us_per_reading": round(raw_took / readings * 1e6, 3),
        "ratio_to_raw": round(took / raw_took, 1),
    }


def alarm_latency(changes: int, poll_s: float) -> dict[str, Any]:
    """Toggle a detector across its threshold ``changes`` times; time each alarm event from
    the device's change to its row in the central store."""
    points = [{"name": "smoke", "table": "input", "address": 0, "type": "float32"}]
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = Broker(tmp).start()
        device = ThreadedDevice([ModbusPoint.model_validate(p) for p in points]).start()
        device.set("smoke", 0.5)
        central = Central(tmp, broker.url).start()
        agent = Agent(
            tmp,
            f"""\
gateway: {{id: bench-gw}}
central: {{url: '{broker.url}'}}
outbox: {{path: '{tmp / "outbox.db"}'}}
alarms: {json.dumps(ALARM_SETTINGS)}
devices:
  - id: det
    modbus: {{host: 127.0.0.1, port: {device.port}, timeout_s: 0.5}}
    poll_s: {poll_s}
    points:
      - {json.dumps(points[0])}
rules:
  - {{id: smoke, device: det, when: "smoke >= 2.4", clear_when: "smoke < 2.0"}}
""",
        ).start()
        db: sqlite3.Connection | None = None
        try:
            wait_for(central.db.exists, 20, what="the central store")
            db = sqlite3.connect(central.db)

            def events() -> int:
                assert db is not None
                try:
                    return int(db.execute("SELECT count(*) FROM alarm_events").fetchone()[0])
                except sqlite3.OperationalError:
                    return 0

            time.sleep(2)
            for k in range(changes):
                before = events()
                time.sleep(poll_s * (0.5 + (k % 7) / 7))  # change at every phase of the poll
                changed = time.monotonic()
                device.set("smoke", 3.0 if k % 2 == 0 else 0.5)
                wait_for(
                    lambda b=before: events() > b,
                    10,
                    interval=0.002,
                    what="the alarm event at the center",
                )
                latencies.append(time.monotonic() - changed)
        finally:
            if db is not None:
                db.close()
            agent.stop()
            central.stop()
            device.close()
            broker.stop()
    # inclusive: with a few samples (--quick) p99 stays within what was measured
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "changes": changes,
        "poll_s": poll_s,
        "p50_s": round(statistics.median(latencies), 3),
        "p99_s": round(q[98], 3),
        "max_s": round(max(latencies), 3),
        "target_p99_s": round(poll_s + 0.1, 3),
        "p99_within_target": q[98] <= poll_s + 0.1,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.rules", description=__doc__.split("\n", 1)[0]
    )
    ap.add_argument("--changes", type=int, default=None, help="detector toggles (default 40)")
    ap.add_argument("--poll-s", type=float, default=0.2)
    ap.add_argument("--quick", action="store_true", help="smoke run of seconds, nothing saved")
    args = ap.parse_args(argv)
    changes = args.changes or (QUICK_CHANGES if args.quick else 40)
    cost = evaluation_cost(QUICK_ROUNDS if args.quick else 20)
    print(
        f"rules: {cost['rules_loaded']} loaded, {cost['us_per_reading']} us per reading, "
        f"{cost['us_per_rule_evaluation']} us per rule evaluation "
        f"({cost['ratio_to_raw']} x plain Python)"
    )
    latency = alarm_latency(changes, args.poll_s)
    print(
        f"alarm latency (device change -> central store), poll {args.poll_s} s: "
        f"p50 {latency['p50_s']} s, p99 {latency['p99_s']} s, max {latency['max_s']} s "
        f"(target p99 <= {latency['target_p99_s']} s)"
    )
    if args.quick:
        return
    merge(
        {
            "rules": {
                "at": timestamp(),
                "machine": machine(),
                "evaluation": cost,
                "alarm_latency": latency,
            }
        }
    )


if __name__ == "__main__":
    main()
