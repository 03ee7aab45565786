"""End-to-end throughput and footprint: EdgeFleet against a bare pipeline, in one run.

    .venv/bin/python -m bench.e2e [--seconds 10] [--quick] [--profile]

Stages, all on 127.0.0.1 against one fresh Mosquitto started here:

1. raw limits of the parts alone (Modbus reads, MQTT publish->receive, SQLite inserts,
   JSON), see ``bench.raw``;
2. ``bare``: pymodbus -> struct -> JSON -> paho QoS 1 -> Mosquitto -> paho -> sqlite3,
   no durability (``bench.bare``); readings/s stored;
3. ``edgefleet``: the simulated device, ``edge-agent run`` and ``fleet central run`` as
   real processes; readings/s arriving in ``central.db``, the agent's RSS and overruns;
4. ``agent``: RSS of an idle gateway (10 points at 1 s) and at ~1,000 readings/s, and
   the time from launching the agent to its first row at the center.

Figures go to the table printed at the end and, read-merge-written, to
``bench/results.json`` under ``e2e`` and ``agent``. ``--profile`` instead runs stage 3
with py-spy attached to the agent and the central service, and writes a summary of
where they spend CPU to ``bench/profiles/``. See ``bench/README.md``.

Settings it relies on, all in ``Settings`` (printed and saved with the figures) and
written into each agent's config by ``Bench.agent``: ``poll_s`` 0.01 (more polls than any
machine here delivers, so the agent runs saturated), ``outbox.batch_max`` 1000 and
``outbox.window`` 64, health every 1 s (the overrun and outbox figures come from it),
``keepalive_s`` 10; the central service with its defaults; the targets are the
``TARGET_*`` constants below.

``--quick`` is a smoke run of under a minute (windows of seconds): it checks that every
stage completes and prints its table, and writes no ``results.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench import raw, results
from bench.bare import GATEWAY as BARE_GATEWAY
from bench.bare import mqtt_client
from bench.parts import run_parts
from bench.points import DEVICE_ID, blocks, device_yaml
from bench.procs import (
    Cleanup,
    CpuMeter,
    Proc,
    raise_on_sigterm,
    read_port,
    rss_mb,
    status_kb,
    wait_until,
)
from bench.profile import summarise
from tests.support import BIN, Broker

TARGET_RATIO = 0.30
TARGET_READINGS_PER_S = 50_000
TARGET_IDLE_MB = 40
TARGET_1K_MB = 60
TARGET_FIRST_ROW_S = 1.0
SAT_GATEWAY = "bench-sat"


@dataclass
class Settings:
    seconds: float
    warmup: float
    raw_seconds: float
    steady: float
    points: int
    poll_s: float
    batch_max: int
    window: int
    quick: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "warmup_s": self.warmup,
            "raw_seconds": self.raw_seconds,
            "agent_steady_s": self.steady,
            "points": self.points,
            "requests_per_poll": len(blocks(self.points)),
            "poll_s": self.poll_s,
            "batch_max": self.batch_max,
            "window": self.window,
            "quick": self.quick,
        }


@dataclass
class Bench:
    settings: Settings
    workdir: Path
    cleanup: Cleanup
    broker: Broker
    out: dict[str, Any] = field(default_factory=dict)

    def dir(self, name: str) -> Path:
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def device(self, name: str, points: int) -> tuple[Proc, int]:
        d = self.dir(name)
        proc = self.cleanup.module(
            "bench.sim_device",
            ["--points", str(points), "--ready-file", str(d / "port")],
            d / "device.log",
        )
        return proc, read_port(d / "port", proc)

    def central(self, name: str) -> tuple[Proc, Path]:
        d = self.dir(name)
        db = d / "central.db"
        proc = self.cleanup.popen(
            [
                str(BIN / "fleet"),
                "central",
                "run",
                "--broker",
                self.broker.url,
                "--db",
                str(db),
                "--log-level",
                "warning",
            ],
            d / "central.log",
        )
        wait_until(lambda: _has_table(db), 20, "the central store")
        return proc, db

    def agent(self, name: str, gateway: str, devices: str) -> Proc:
        d = self.dir(name)
        s = self.settings
        config = d / "agent.yaml"
        config.write_text(
            f"gateway: {{id: {gateway}, site: bench}}\n"
            f"central: {{url: '{self.broker.url}', keepalive_s: 10}}\n"
            f"outbox: {{path: '{d / 'outbox.db'}', batch_max: {s.batch_max}, "
            f"window: {s.window}, ack_timeout_s: 10}}\n"
            "health: {interval_s: 1}\n"
            f"devices:\n{devices}"
        )
        return self.cleanup.popen(
            [str(BIN / "edge-agent"), "run", "-c", str(config), "--log-level", "warning"],
            d / "agent.log",
        )


def _has_table(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return bool(
                conn.execute("SELECT 1 FROM sqlite_master WHERE name='readings'").fetchone()
            )
    except sqlite3.Error:
        return False


# --- measuring ---------------------------------------------------------------------------


class RowCounter:
    """Rows of one gateway in a central-schema store, read from outside the writer."""

    def __init__(self, db: Path, gateway: str) -> None:
        self.db = db
        self.gateway = gateway
        self._conn: sqlite3.Connection | None = None

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self.db, timeout=5, isolation_level=None)
        return self._conn

    def any(self) -> bool:
        if not _has_table(self.db):
            return False
        row = (
            self._c()
            .execute("SELECT 1 FROM readings WHERE gateway = ? LIMIT 1", (self.gateway,))
            .fetchone()
        )
        return row is not None

    def sample(self) -> tuple[float, int, float]:
        """``(time, rows, seconds the count took)``; time is the count's midpoint."""
        t0 = time.monotonic()
        (n,) = (
            self._c()
            .execute("SELECT count(*) FROM readings WHERE gateway = ?", (self.gateway,))
            .fetchone()
        )
        t1 = time.monotonic()
        return (t0 + t1) / 2, int(n), t1 - t0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class Window:
    readings_per_s: float
    per_second: list[float]
    rows: int
    seconds: float
    count_query_ms: float
    cpu_percent: dict[str, float]


def measure_window(
    counter: RowCounter, s: Settings, cpu: CpuMeter, first_row_timeout: float = 60
) -> Window:
    """Wait for the first row, warm up, then count rows once a second for the window."""
    wait_until(counter.any, first_row_timeout, f"the first row of {counter.gateway}")
    time.sleep(s.warmup)
    t0, n0, q0 = counter.sample()
    cpu.start()
    samples = [(t0, n0)]
    query_s = [q0]
    steps = max(1, round(s.seconds))
    for i in range(1, steps + 1):
        time.sleep(max(0.0, t0 + i * s.seconds / steps - time.monotonic()))
        t, n, q = counter.sample()
        samples.append((t, n))
        query_s.append(q)
    cpu_pct = cpu.stop()
    (ta, na), (tb, nb) = samples[0], samples[-1]
    per_second = [
        round((n2 - n1) / (t2 - t1), 1) for (t1, n1), (t2, n2) in itertools.pairwise(samples)
    ]
    return Window(
        readings_per_s=round((nb - na) / (tb - ta), 1),
        per_second=per_second,
        rows=nb - na,
        seconds=round(tb - ta, 3),
        count_query_ms=round(1000 * max(query_s), 1),
        cpu_percent=cpu_pct,
    )


class HealthTap:
    """The agents' health messages, latest per gateway, as a central system sees them."""

    def __init__(self, broker: Broker) -> None:
        self._latest: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._client = mqtt_client("bench-health-tap")
        self._client.on_connect = lambda client, *a: client.subscribe(
            "edgefleet/v1/gw/+/health", qos=0
        )
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            self._latest[str(body.get("gw"))] = body

    def latest(self, gateway: str) -> dict[str, Any] | None:
        with self._lock:
            return self._latest.get(gateway)

    def fresh(self, gateway: str, after: float, timeout: float = 3.0) -> dict[str, Any] | None:
        """The first health message of ``gateway`` stamped after ``after`` (or the latest)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.latest(gateway)
            if body is not None and float(body.get("ts", 0)) > after:
                return body
            time.sleep(0.05)
        return self.latest(gateway)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _device_health(body: dict[str, Any] | None) -> dict[str, Any]:
    if body is None:
        return {}
    devices = body.get("devices") or {}
    dev = devices.get(DEVICE_ID) or {}
    return dict(dev) if isinstance(dev, dict) else {}


# --- stages ------------------------------------------------------------------------------


def stage_raw(b: Bench) -> dict[str, Any]:
    s = b.settings
    print("[raw] Modbus, MQTT, SQLite and JSON alone", flush=True)
    dev, port = b.device("raw-device", s.points)
    out: dict[str, Any] = {"modbus": raw.modbus_limit(port, s.points, s.raw_seconds)}
    dev.stop()
    out["mqtt"] = raw.mqtt_limit(
        b.cleanup, b.dir("raw-mqtt"), b.broker.port, s.points, s.raw_seconds
    )
    out["sqlite"] = raw.sqlite_limit(
        b.dir("raw-sqlite"), s.points, s.warmup, s.seconds, s.raw_seconds
    )
    out["json"] = raw.json_limit(s.points, s.raw_seconds)
    return out


def stage_bare(b: Bench) -> dict[str, Any]:
    s = b.settings
    print(f"[bare] warm-up {s.warmup:g} s, window {s.seconds:g} s", flush=True)
    d = b.dir("bare")
    dev, port = b.device("bare-device", s.points)
    db = d / "bare.db"
    ready = d / "sink.ready"
    sink = b.cleanup.module(
        "bench.bare",
        ["sink", "--mqtt-port", str(b.broker.port), "--db", str(db), "--ready-file", str(ready)],
        d / "sink.log",
    )
    wait_until(ready.exists, 20, "the bare sink")
    result = d / "poller.json"
    poller = b.cleanup.module(
        "bench.bare",
        [
            "poll",
            "--modbus-port",
            str(port),
            "--mqtt-port",
            str(b.broker.port),
            "--points",
            str(s.points),
            "--result-file",
            str(result),
        ],
        d / "poller.log",
    )
    cpu = CpuMeter(
        {
            "poller": poller.pid,
            "sink": sink.pid,
            "device": dev.pid,
            "mosquitto": _broker_pid(b.broker),
        }
    )
    counter = RowCounter(db, BARE_GATEWAY)
    started = time.monotonic()
    try:
        w = measure_window(counter, s, cpu)
    finally:
        counter.close()
    poller.stop()
    elapsed = time.monotonic() - started
    produced = json.loads(result.read_text()) if result.exists() else {}
    sink.stop()
    dev.stop()
    out = _window_json(w)
    if produced:
        out["produced_readings"] = produced.get("readings")
        out["produced_readings_per_s_approx"] = round(produced["readings"] / elapsed, 1)
    return out


def stage_edgefleet(b: Bench, profile_dir: Path | None = None) -> dict[str, Any]:
    s = b.settings
    print(
        f"[edgefleet] poll_s {s.poll_s:g}, batch_max {s.batch_max}, window {s.window}; "
        f"warm-up {s.warmup:g} s, window {s.seconds:g} s"
        + (" (py-spy attached)" if profile_dir else ""),
        flush=True,
    )
    dev, port = b.device("edgefleet-device", s.points)
    central, db = b.central("edgefleet-central")
    tap = HealthTap(b.broker)
    b.cleanup.push("health tap", tap.close)
    agent = b.agent("edgefleet-agent", SAT_GATEWAY, device_yaml(s.points, port, s.poll_s))
    cpu = CpuMeter(
        {
            "agent": agent.pid,
            "central": central.pid,
            "device": dev.pid,
            "mosquitto": _broker_pid(b.broker),
        }
    )
    counter = RowCounter(db, SAT_GATEWAY)
    spies: list[Proc] = []
    try:
        wait_until(counter.any, 60, "the agent's first row at the center")
        h0 = tap.fresh(SAT_GATEWAY, time.time() - 2)
        if profile_dir is not None:
            spies = _start_py_spy(b, profile_dir, {"agent": agent, "central": central})
        w = measure_window(counter, s, cpu)
        rss_end = rss_mb(agent.pid)
        hwm = status_kb(agent.pid, "VmHWM")
        h1 = tap.fresh(SAT_GATEWAY, time.time())
    finally:
        counter.close()
        for spy in spies:
            spy.popen.wait(s.seconds + s.warmup + 30)
    for p in (agent, central, dev):
        if not p.running():
            raise RuntimeError(f"{p.popen.args!r} died during the run:\n{p.tail()}")
    out = _window_json(w)
    out["agent_rss_mb_end"] = rss_end
    out["agent_rss_mb_peak"] = None if hwm is None else round(hwm / 1024, 1)
    d0, d1 = _device_health(h0), _device_health(h1)
    if d0 and d1 and h0 is not None and h1 is not None:
        span = float(h1["ts"]) - float(h0["ts"])
        polls = int(d1.get("polls", 0)) - int(d0.get("polls", 0))
        overruns = int(d1.get("overruns", 0)) - int(d0.get("overruns", 0))
        out["agent_health"] = {
            "span_s": round(span, 2),
            "polls_per_s": round(polls / span, 1) if span > 0 else None,
            "polled_readings_per_s": round(polls * s.points / span, 1) if span > 0 else None,
            "overruns_per_s": round(overruns / span, 1) if span > 0 else None,
            "overruns_total": d1.get("overruns"),
            "outbox_depth_start": (h0.get("outbox") or {}).get("depth"),
            "outbox_depth_end": (h1.get("outbox") or {}).get("depth"),
            "inflight_batches_end": (h1.get("uplink") or {}).get("inflight_batches"),
            "resends": (h1.get("uplink") or {}).get("resends"),
            "agent_cpu_percent": h1.get("cpu_percent"),
        }
    agent.stop()
    central.stop()
    dev.stop()
    return out


def stage_agent(b: Bench) -> dict[str, Any]:
    s = b.settings
    print(f"[agent] idle and ~1,000 readings/s, {s.steady:g} s each", flush=True)
    central, db = b.central("agent-central")
    out: dict[str, Any] = {}
    runs = (("idle", 10, 1.0, "bench-idle"), ("1k_per_s", s.points, 1.0, "bench-1k"))
    for name, points, poll_s, gateway in runs:
        dev, port = b.device(f"agent-{name}-device", points)
        counter = RowCounter(db, gateway)
        launched = time.monotonic()
        agent = b.agent(f"agent-{name}", gateway, device_yaml(points, port, poll_s))
        try:
            wait_until(counter.any, 30, f"the first row of {gateway}")
            first_row_s = time.monotonic() - launched
            rss: list[float] = []
            t_end = time.monotonic() + s.steady
            while time.monotonic() < t_end:
                time.sleep(0.5)
                value = rss_mb(agent.pid)
                if value is not None:
                    rss.append(value)
            _, rows, _ = counter.sample()
        finally:
            counter.close()
        if not agent.running():
            raise RuntimeError(f"the agent ({name}) died:\n{agent.tail()}")
        out[name] = {
            "points": points,
            "poll_s": poll_s,
            "first_row_s": round(first_row_s, 3),
            "rss_mb_end": rss[-1] if rss else None,
            "rss_mb_max": max(rss) if rss else None,
            "rows_stored": rows,
        }
        agent.stop()
        dev.stop()
    central.stop()
    out["parameters"] = {"steady_s": s.steady, "health_interval_s": 1, "batch_max": s.batch_max}
    out["first_row_s_max"] = max(out[n]["first_row_s"] for n, *_ in runs)
    out["targets"] = {
        "idle_rss_mb": TARGET_IDLE_MB,
        "1k_per_s_rss_mb": TARGET_1K_MB,
        "first_row_s": TARGET_FIRST_ROW_S,
    }
    out["meets"] = {
        "idle_rss": (out["idle"]["rss_mb_end"] or 1e9) <= TARGET_IDLE_MB,
        "1k_per_s_rss": (out["1k_per_s"]["rss_mb_end"] or 1e9) <= TARGET_1K_MB,
        "first_row": out["first_row_s_max"] < TARGET_FIRST_ROW_S,
    }
    return out


def _broker_pid(broker: Broker) -> int:
    if broker.proc is None:
        raise RuntimeError("the broker is not running")
    return broker.proc.pid


def _window_json(w: Window) -> dict[str, Any]:
    return {
        "readings_per_s": w.readings_per_s,
        "per_second": w.per_second,
        "rows_in_window": w.rows,
        "window_s": w.seconds,
        "count_query_ms_max": w.count_query_ms,
        "cpu_percent": w.cpu_percent,
        "cpu_us_per_reading": {
            name: round(1e6 * pct / 100 / w.readings_per_s, 2) if w.readings_per_s else None
            for name, pct in w.cpu_percent.items()
        },
    }


# --- profiling ---------------------------------------------------------------------------


def _start_py_spy(b: Bench, out_dir: Path, targets: dict[str, Proc]) -> list[Proc]:
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    duration = str(round(b.settings.warmup + b.settings.seconds))
    spies = []
    for name, proc in targets.items():
        spies.append(
            b.cleanup.popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--duration",
                    duration,
                    "--rate",
                    "200",
                    "--nonblocking",
                    "--threads",
                    "--format",
                    "raw",
                    "--output",
                    str(out_dir / f"{name}.collapsed"),
                ],
                out_dir / f"{name}.py-spy.log",
            )
        )
    return spies


# --- report ------------------------------------------------------------------------------


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}{unit}" if abs(v) >= 100 else f"{v:,.2f}{unit}"


def print_table(e2e: dict[str, Any], agent: dict[str, Any] | None) -> None:
    limits = e2e.get("raw", {})
    bare = e2e.get("bare", {})
    ef = e2e.get("edgefleet", {})
    rows: list[tuple[str, str, str]] = []
    machine = e2e["machine"]
    rows.append(("machine", f"{machine['nproc']} CPU, Python {machine['python']}", ""))
    if limits:
        m, q, sq, js = limits["modbus"], limits["mqtt"], limits["sqlite"], limits["json"]
        rows += [
            ("raw Modbus", _fmt(m["readings_per_s"]), f"{_fmt(m['requests_per_s'])} req/s"),
            ("raw MQTT pub->sub", _fmt(q["readings_per_s"]), f"{_fmt(q['msgs_per_s'])} msg/s"),
            ("raw SQLite central", _fmt(sq["central_rows_per_s"]), "rows/s, commit/1,000"),
            (
                "raw SQLite central x10",
                _fmt(sq.get("central_10_per_commit_rows_per_s")),
                "commit/10,000",
            ),
            ("raw SQLite central PK", _fmt(sq.get("central_pk_only_rows_per_s")), "no index"),
            ("raw SQLite outbox", _fmt(sq["outbox_rows_per_s"]), "rows/s, sync FULL"),
            ("raw JSON encode", _fmt(js["encode_readings_per_s"]), ""),
            ("raw JSON decode", _fmt(js["decode_readings_per_s"]), ""),
        ]
    if bare:
        rows.append(("bare pipeline", _fmt(bare["readings_per_s"]), _cpu(bare)))
    if ef:
        rows.append(("edgefleet", _fmt(ef["readings_per_s"]), _cpu(ef)))
        health = ef.get("agent_health") or {}
        rows.append(
            (
                "  agent polled",
                _fmt(health.get("polled_readings_per_s")),
                f"overruns {_fmt(health.get('overruns_per_s'))}/s, "
                f"outbox {health.get('outbox_depth_start')} -> {health.get('outbox_depth_end')}",
            )
        )
        rows.append(("  agent RSS at end", _fmt(ef.get("agent_rss_mb_end"), " MB"), ""))
    for stage in ("bare", "edgefleet"):
        r = e2e.get("ratios_to_raw", {}).get(stage)
        if r:
            rows.append(
                (
                    f"  {stage} / raw limits",
                    "",
                    ", ".join(f"{k} {100 * v:.0f} %" for k, v in r.items()),
                )
            )
    rows += _parts_rows(e2e.get("parts") or {})
    if "ratio" in e2e:
        rows.append(
            (
                "edgefleet / bare",
                f"{100 * e2e['ratio']:.0f} %",
                f"target >= {100 * TARGET_RATIO:.0f} % "
                + ("met" if e2e["meets"]["ratio"] else "NOT met")
                + f"; >= {TARGET_READINGS_PER_S:,}/s "
                + ("met" if e2e["meets"]["absolute"] else "NOT met"),
            )
        )
    if agent:
        for name in ("idle", "1k_per_s"):
            a = agent[name]
            target = TARGET_IDLE_MB if name == "idle" else TARGET_1K_MB
            rows.append(
                (
                    f"agent RSS {name}",
                    _fmt(a["rss_mb_end"], " MB"),
                    f"target <= {target} MB; first row {a['first_row_s']:.2f} s",
                )
            )
    width = max(len(r[0]) for r in rows)
    print()
    for label, value, note in rows:
        print(f"{label:<{width}}  {value:>14}  {note}")
    print()


PARTS = (
    ("modbus", "driver_read", "bare_pymodbus_struct", "ModbusDriver.read"),
    ("agent", "encode_readings", "bare_json_dumps", "ReadingEncoder.encode"),
    ("agent", "outbox_append", None, "Outbox.append (FULL)"),
    ("agent", "outbox_fetch_encode_delete", None, "fetch+batch+delete"),
    ("center", "decode_telemetry", "bare_json_loads", "decode_telemetry"),
    ("center", "store_insert_commit_1000", None, "Store insert+commit"),
)


def _parts_rows(parts: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for group, step, bare, label in PARTS:
        fig = (parts.get(group) or {}).get(step)
        if not fig:
            continue
        note = "CPU µs/reading"
        ref = (parts.get(group) or {}).get(bare) if bare else None
        if ref:
            note += f" (bare {ref['cpu_us_per_reading']:.2f})"
        rows.append((f"  step {label}", f"{fig['cpu_us_per_reading']:.2f}", note))
    return rows


def _cpu(stage: dict[str, Any]) -> str:
    """CPU % of one core, and CPU microseconds per stored reading, of each process."""
    per = stage["cpu_us_per_reading"]
    return "CPU %/µs per reading: " + ", ".join(
        f"{k} {v:.0f}/{per[k]:.1f}" for k, v in stage["cpu_percent"].items()
    )


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10, help="measurement window per stage")
    p.add_argument("--warmup", type=float, default=None, help="seconds before each window")
    p.add_argument("--quick", action="store_true", help="short windows: a smoke run, nothing saved")
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--poll-s", type=float, default=0.01)
    p.add_argument("--batch-max", type=int, default=1000)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--profile", action="store_true", help="py-spy the edgefleet stage only")
    p.add_argument("--no-parts", action="store_true", help="skip the per-step CPU costs")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results.json")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seconds = 3.0 if args.quick and args.seconds == 10 else args.seconds
    s = Settings(
        seconds=seconds,
        warmup=args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0),
        raw_seconds=1.0 if args.quick else 3.0,
        steady=3.0 if args.quick else 10.0,
        points=args.points,
        poll_s=args.poll_s,
        batch_max=args.batch_max,
        window=args.window,
        quick=args.quick,
    )
    raise_on_sigterm()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(
            f"warning: load average {load:.2f} before the run: other work shares the CPUs, "
            "the figures will be noisy",
            file=sys.stderr,
        )
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    e2e: dict[str, Any] = {
        "timestamp": results.timestamp(),
        "machine": results.machine(),
        "parameters": s.as_json(),
    }
    agent: dict[str, Any] | None = None
    try:
        with Cleanup() as cleanup:
            (workdir / "broker").mkdir()
            broker = Broker(workdir / "broker").start()
            cleanup.push("mosquitto", broker.stop)
            b = Bench(s, workdir, cleanup, broker)
            if args.profile:
                return _profile(b)
            e2e["raw"] = stage_raw(b)
            if not args.no_parts:
                print("[parts] CPU per reading of each step, in process", flush=True)
                e2e["parts"] = run_parts(cleanup, b.dir("parts"), s.points, s.raw_seconds / 2)
            e2e["bare"] = stage_bare(b)
            e2e["edgefleet"] = stage_edgefleet(b)
            agent = {
                "timestamp": e2e["timestamp"],
                "machine": e2e["machine"],
                **stage_agent(b),
            }
    except KeyboardInterrupt:
        print("interrupted: every process was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    e2e["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    _summarise(e2e)
    print_table(e2e, agent)
    if not (args.no_save or args.quick):
        results.merge({"e2e": e2e, "agent": agent})
        print(f"written: {results.RESULTS} (keys e2e, agent)")
    return 0


def _summarise(e2e: dict[str, Any]) -> None:
    bare = e2e["bare"]["readings_per_s"]
    ef = e2e["edgefleet"]["readings_per_s"]
    lim = e2e["raw"]
    e2e["ratio"] = round(ef / bare, 3) if bare else None
    e2e["targets"] = {"ratio": TARGET_RATIO, "readings_per_s": TARGET_READINGS_PER_S}
    e2e["meets"] = {
        "ratio": bool(bare) and ef / bare >= TARGET_RATIO,
        "absolute": ef >= TARGET_READINGS_PER_S,
    }
    parts = {
        "modbus": lim["modbus"]["readings_per_s"],
        "mqtt": lim["mqtt"]["readings_per_s"],
        "sqlite_central": lim["sqlite"]["central_rows_per_s"],
        "sqlite_outbox": lim["sqlite"]["outbox_rows_per_s"],
        "json_decode": lim["json"]["decode_readings_per_s"],
    }
    e2e["ratios_to_raw"] = {
        stage: {k: round(e2e[stage]["readings_per_s"] / v, 3) for k, v in parts.items() if v}
        for stage in ("bare", "edgefleet")
    }
    e2e["ceiling"] = min(parts, key=lambda k: parts[k])


def _profile(b: Bench) -> int:
    out_dir = Path(__file__).with_name("profiles")
    out_dir.mkdir(exist_ok=True)
    figures = stage_edgefleet(b, profile_dir=out_dir)
    print(f"edgefleet with py-spy attached: {figures['readings_per_s']:,.0f} readings/s")
    for name in ("agent", "central"):
        path = out_dir / f"{name}.collapsed"
        if path.exists():
            text = summarise(path)
            (out_dir / f"{name}.summary.txt").write_text(text)
            print(f"\n=== {name} ===\n{text}")
    print(f"profiles in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
