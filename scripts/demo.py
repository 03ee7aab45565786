"""The README's demo: a broker, the central service, a simulated smoke detector and one
agent, all on loopback, with the readings shown live as they arrive at the center.

Run it through ``scripts/demo`` (which installs what is missing first). Ctrl-C stops
everything; ``--duration`` stops by itself (used by the test that keeps this honest).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: {what} exited early (code {proc.returncode}); see its log")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"demo: {what} did not open port {port} within {timeout:.0f} s")


def mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("demo: mosquitto is not installed (scripts/setup installs it with apt-get)")


AGENT_YAML = """\
# Written by the demo: one gateway reading one simulated smoke detector.
gateway: {{id: demo-0001, site: "Demo street 1", tags: {{district: demo}}}}
central: {{url: "mqtt://127.0.0.1:{broker}", topic_root: edgefleet/v1, keepalive_s: 5}}
outbox: {{path: ./outbox.db, max_mb: 64}}
health: {{interval_s: 5}}
devices:
  - id: det-1
    modbus: {{host: 127.0.0.1, port: {modbus}, unit: 1, timeout_s: 0.5}}
    poll_s: 1
    points:
{points}
"""


def agent_yaml(broker: int, modbus: int) -> str:
    from drivers.simulated.modbus_server import SMOKE_DETECTOR

    lines = []
    for p in SMOKE_DETECTOR:
        fields = p.model_dump(exclude_defaults=True, exclude_none=True)
        fields.setdefault("type", p.type)
        body = ", ".join(
            f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in fields.items()
        )
        lines.append(f"      - {{{body}}}")
    return AGENT_YAML.format(broker=broker, modbus=modbus, points="\n".join(lines))


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args, stdout=log, stderr=log, cwd=self.workdir, start_new_session=True
        )
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def show(db: Path, duration: float | None, started: float) -> int:
    """Render the newest reading of every point until Ctrl-C (or ``duration``)."""
    from rich.live import Live
    from rich.table import Table

    from central.store import Store

    store: Store | None = None
    seen = 0
    deadline = None if duration is None else time.monotonic() + duration
    with Live(auto_refresh=False, transient=False) as live:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(1)
            if store is None:
                if not db.exists():
                    continue
                store = Store(db)
            latest: dict[tuple[str, str, str], object] = {}
            for r in store.readings(limit=500):
                latest.setdefault((r.gateway, r.device, r.point), r)
            (seen,) = store.db.execute("SELECT count(*) FROM readings").fetchone()
            gateways = store.gateways()
            table = Table(
                title=f"EdgeFleet demo: {seen} readings stored at the center "
                f"({time.monotonic() - started:.0f} s)"
            )
            for col in ("gateway", "online", "device", "point", "value", "unit", "quality", "age"):
                table.add_column(col)
            online = {g["id"]: g["online"] for g in gateways}
            for (gw, dev, pt), r in sorted(latest.items()):
                value = r.value  # type: ignore[attr-defined]
                text = f"{value:.4g}" if isinstance(value, float) else str(value)
                table.add_row(
                    gw,
                    "yes" if online.get(gw) else "no",
                    dev,
                    pt,
                    text,
                    r.unit or "",
                    r.quality,  # type: ignore[attr-defined]
                    f"{time.time() - r.ts:.1f} s",
                )  # type: ignore[attr-defined]
            live.update(table, refresh=True)
    print(f"\ndemo: {seen} readings stored at the center")
    return 0 if seen > 0 else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    ap.add_argument("--workdir", type=Path, default=ROOT / ".demo")
    args = ap.parse_args()
    workdir: Path = args.workdir
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    broker_port, modbus_port = free_port(), free_port()
    (workdir / "mosquitto.conf").write_text(
        f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
    )
    (workdir / "agent.yaml").write_text(agent_yaml(broker_port, modbus_port))
    stack = Stack(workdir)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        broker = stack.spawn("mosquitto", [mosquitto(), "-c", "mosquitto.conf"])
        wait_port(broker_port, broker, "mosquitto")
        env_db = str(workdir / "central.db")
        stack.spawn(
            "central",
            [
                str(BIN / "fleet"),
                "central",
                "run",
                "--broker",
                f"mqtt://127.0.0.1:{broker_port}",
                "--db",
                env_db,
            ],
        )
        sim = stack.spawn(
            "device",
            [
                sys.executable,
                "-m",
                "drivers.simulated.modbus_server",
                "--port",
                str(modbus_port),
                "--seed",
                "1",
            ],
        )
        wait_port(modbus_port, sim, "the simulated smoke detector")
        stack.spawn("agent", [str(BIN / "edge-agent"), "run", "-c", "agent.yaml"])
        print(f"demo: broker mqtt://127.0.0.1:{broker_port}, logs and databases in {workdir}")
        print(f"demo: try `mosquitto_sub -p {broker_port} -t 'edgefleet/v1/#' -v` in another shell")
        return show(Path(env_db), args.duration, started)
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
