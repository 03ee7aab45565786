"""Real peers for tests: a Mosquitto broker and our own processes, started and stopped
for real. Every server listens on 127.0.0.1 only; every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from central.store import Store, StoredReading, open_store
from central.store.api import ReadingQuery
from central.store.sqlite import SqliteStore
from drivers.simulated.modbus_server import SimulatedModbusDevice
from tests.secret_scan import remember_output, remember_output_text, remember_secret

T = TypeVar("T")
BIN = Path(sys.executable).parent


def secret(value: str) -> str:
    """``value``, a password or token a test makes: remembered, so that the session fails if
    any log or central store of the run holds it (``tests.secret_scan``)."""
    return remember_secret(value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""A scrape: ``(sample name, sorted labels) -> value``."""


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    """The samples a Prometheus endpoint serves now, read over HTTP and parsed as
    Prometheus parses them."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value (None if it is not there)."""
    return samples.get((name, tuple(sorted(labels.items()))))


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def terminate(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None, timeout: float = 5
) -> None:
    """SIGTERM, and SIGKILL if it has not gone within ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError(
        "mosquitto is not installed: run `sudo apt-get install mosquitto` (or .ci/run, which does)"
    )


class Broker:
    """A Mosquitto process on a loopback port; stop() and start() keep the port.

    By default it runs a config of its own (anonymous, no persistence, ``extra_conf``
    appended); with ``config`` (a ``mosquitto.conf`` alone in its folder, whose listener
    is on 127.0.0.1:``port``) it runs that file unchanged. Started as root, Mosquitto
    drops to its own user, which cannot read a test's private files: then a config of two
    lines keeps root and takes ``config`` in with ``include_dir``."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra_conf: str = "",
        config: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        if config is not None:
            if port is None or extra_conf or config.parent == workdir:
                raise ValueError(
                    "a given config names its port, takes nothing more, and "
                    "sits in a folder of its own"
                )
            self.conf = config
            if os.geteuid() == 0:
                self.conf = workdir / "as-root.conf"
                self.conf.write_text(f"user root\ninclude_dir {config.parent}\n")
            return
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # stderr, into a file the test opens: Mosquitto started as root drops to its
            # own user, which may not write into the test's folder
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            f"{extra_conf}"
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=out
            )
        wait_for(lambda: port_open(self.port), 10, what=f"mosquitto on port {self.port}")
        return self

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None


class Process:
    """One of our console scripts run as a real process, output kept in a log file."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = args
        self.log = remember_output(log)
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        exe = BIN / self.name
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(exe), *self.args], stdout=out, stderr=out, env=self.env, cwd=self.cwd
            )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def run_cli(
    name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """One of our commands run to its end, its output captured: searched for secrets too
    (its ``--json`` output and its messages), for the session's check."""
    done = subprocess.run(
        [str(BIN / name), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    remember_output_text(" ".join([name, *args[:2]]), done.stdout + done.stderr)
    return done


def agent_config(
    *,
    gateway: str,
    broker_url: str,
    outbox: Path,
    devices_yaml: str,
    ack_timeout_s: float = 2,
    health_s: float = 1,
    keepalive_s: int = 2,
    metrics_port: int | None = None,
) -> str:
    """An agent config for tests: short timeouts so that outages in tests stay short."""
    metrics = "" if metrics_port is None else f", metrics_port: {metrics_port}"
    return (
        f"gateway: {{id: {gateway}, site: test bench}}\n"
        f"central: {{url: '{broker_url}', keepalive_s: {keepalive_s}}}\n"
        f"outbox: {{path: '{outbox}', ack_timeout_s: {ack_timeout_s}}}\n"
        f"health: {{interval_s: {health_s}{metrics}}}\n"
        f"devices:\n{devices_yaml}"
    )


class Central(Process):
    """``fleet central run`` as a real process with its own store file."""

    def __init__(
        self, workdir: Path, broker_url: str, db: Path | None = None, key: Path | None = None
    ) -> None:
        """``key``: the center's signing key (``--key``), for gateways that check acks."""
        self.db = db or workdir / "central.db"
        signing = [] if key is None else ["--key", str(key)]
        super().__init__(
            "fleet",
            ["central", "run", "--broker", broker_url, "--db", str(self.db), *signing],
            workdir / "central.log",
        )

    def start(self) -> Central:
        super().start()
        wait_for(self._store_made, 15, what="the central store")
        return self

    def _store_made(self) -> bool:
        """The service has made its store: the file and, last of its schema, ``gateways``."""
        if not self.db.exists():
            return False
        db = sqlite3.connect(self.db)
        try:
            found = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'gateways'").fetchone()
            return found is not None
        except sqlite3.OperationalError:  # locked while the service sets it up
            return False
        finally:
            db.close()

    def store(self) -> SqliteStore:
        """The service's store, opened beside it (SQLite: ``conn`` for what tests ask)."""
        return SqliteStore(self.db)


class PgCentral(Process):
    """``fleet central run`` as a real process on a PostgreSQL store (``--workers N``: a
    supervisor and its worker processes), its log in ``central.log``."""

    def __init__(self, workdir: Path, broker_url: str, url: str, *args: str) -> None:
        self.url = url
        super().__init__(
            "fleet",
            ["central", "run", "--broker", broker_url, "--db", url, *args],
            workdir / "central.log",
        )

    def start(self, sessions: int = 2) -> PgCentral:
        """Start, and wait until ``sessions`` MQTT sessions are connected (two a worker)."""
        super().start()
        wait_for(
            lambda: self.output().count(" connected to ") >= sessions,
            20,
            what=f"{sessions} central sessions connected",
        )
        return self

    def worker_pids(self) -> dict[int, int]:
        """Each worker's latest pid, from the supervisor's ``worker K started (pid P)``."""
        found = re.findall(r"worker (\d+) started \(pid (\d+)\)", self.output())
        return {int(k): int(pid) for k, pid in found}

    @contextlib.contextmanager
    def store(self) -> Iterator[Store]:
        """The service's store, opened beside it, closed after."""
        store = open_store(self.url)
        try:
            yield store
        finally:
            store.close()


def stored_readings(
    store: Store,
    gateway: str | None = None,
    device: str | None = None,
    point: str | None = None,
    since: float | None = None,
    limit: int | None = 100,
) -> list[StoredReading]:
    """The store's readings, newest first, as a list (the store streams them)."""
    return list(store.readings(ReadingQuery(gateway, device, point, since=since, limit=limit)))


class Agent(Process):
    """``edge-agent run`` as a real process."""

    def __init__(self, workdir: Path, config_text: str) -> None:
        self.config = workdir / "agent.yaml"
        self.config.write_text(config_text)
        super().__init__("edge-agent", ["run", "-c", str(self.config)], workdir / "agent.log")

    @classmethod
    def for_devices(
        cls,
        workdir: Path,
        broker_url: str,
        devices_yaml: str,
        gateway: str,
        outbox: Path | None = None,
    ) -> Agent:
        """An agent with the test config (short timeouts) for these devices."""
        text = agent_config(
            gateway=gateway,
            broker_url=broker_url,
            outbox=outbox or workdir / "outbox.db",
            devices_yaml=devices_yaml,
        )
        return cls(workdir, text)


def produced_keys(outbox: Path) -> set[tuple[str, int]]:
    """Every telemetry ``(stream, seq)`` an agent ever committed to this outbox file.

    Sequence numbers come from AUTOINCREMENT without gaps (a rolled-back insert rolls
    its numbers back too), so 1..last is exactly what was produced.
    """
    db = sqlite3.connect(outbox)
    try:
        (stream,) = db.execute("SELECT value FROM meta WHERE key='stream_id'").fetchone()
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='telemetry'").fetchone()
    finally:
        db.close()
    last = row[0] if row else 0
    return {(stream, s) for s in range(1, last + 1)}


class ThreadedDevice:
    """A simulated Modbus device served from its own thread and event loop, so that
    synchronous tests (driving real processes) can change its values as they go."""

    def __init__(self, points: Any, **kwargs: Any) -> None:
        self.device = SimulatedModbusDevice(points, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def port(self) -> int:
        return self.device.port

    def start(self) -> ThreadedDevice:
        self._call(self.device.start())
        return self

    def stop(self) -> None:
        self._call(self.device.stop())

    def set(self, name: str, value: Any) -> None:
        self._call(self.device.set(name, value))

    def get(self, name: str) -> Any:
        return self._call(self.device.get(name))

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


def fill_disk(path: Path) -> None:
    """Write ``path`` until the filesystem refuses: a disk with no room left. Smaller and
    smaller writes take the last blocks too; bounded by the filesystem's size."""
    with path.open("wb", buffering=0) as f:
        for size in (65536, 4096, 512, 64, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                continue


def rtu_crc(frame: bytes) -> bytes:
    """The Modbus RTU CRC of ``frame`` (polynomial 0xA001), low byte first, as the
    serial-line specification gives it: written here, not taken from a Modbus library."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str = "4m") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted on ``mnt`` (made here) for the test, unmounted after
    it: a disk that fills up, or one remounted read-only. Needs root, as CI runs."""
    mnt.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (these tests need root): {result.stderr}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def asked_id(name: str) -> str:
    """The client id a test client asks the fleet's broker for, for ``name``: in the
    broker's prefix (``clientid_prefixes``), which it refuses every other id without."""
    from edge_agent.contract.topics import CLIENT_ID_PREFIX  # noqa: PLC0415

    return name if name.startswith(CLIENT_ID_PREFIX) else CLIENT_ID_PREFIX + name
