"""The README's demo: a broker, the central service, a simulated city of three gateways
(smoke detectors wired and wireless, an underpass, a fire main, a lift, a pump station,
each device from a firmware profile, with a scenario playing) and one agent per gateway,
all on loopback, with readings and alarms shown live as they arrive at the center.

The devices come from ``edge-agent sim run sim/demo-sim.yaml``, which also
writes each gateway's agent config; the agents' logs go to ``agent.log`` in the workdir.
The demo makes the center's signing key (``center.key``, as ``fleet keys init`` does) and
gives the gateways its public half, and prints the ``export EDGEFLEET_...`` lines (also in
``fleet.env``) that point ``fleet`` at its store, broker and key: ``fleet alarms ack``
works against it as the README shows. The live view is cut to the terminal's size.

Run it through ``scripts/demo`` (which installs what is missing first). Ctrl-C stops
everything; ``--duration`` stops by itself (used by the test that keeps this honest).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live

from central.store import Store, open_store
from central.store.api import ReadingQuery
from cli.demo_view import AlarmRow, DeviceRow, live_view
from cli.output import Part, Styled
from edge_agent.contract.commands import generate_keys

if TYPE_CHECKING:
    from central.store import StoredReading

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


SIM_FILE = ROOT / "sim" / "demo-sim.yaml"


def wait_file(path: Path, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: {what} exited early (code {proc.returncode}); see its log")
        if path.exists():
            return
        time.sleep(0.1)
    raise SystemExit(f"demo: {what} did not write {path.name} within {timeout:.0f} s")


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
        """Stop the clients first, the broker (started first) last, so agents can say goodbye."""
        clients, broker = self.procs[1:], self.procs[:1]
        for group in (clients, broker):
            for _, proc in reversed(group):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for _, proc in reversed(group):
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def show(db: Path, duration: float | None, started: float, footer: str) -> int:
    """Render each device's newest readings, and the alarms, until Ctrl-C (or ``duration``),
    fitted to the terminal each time (its size may change while the demo runs)."""
    store: Store | None = None
    seen = 0
    deadline = None if duration is None else time.monotonic() + duration
    console = Console()
    if not console.is_terminal:  # a log or a pipe gets the last view, whole and wide
        console = Console(width=200, height=10_000)
    with Live(
        console=console, auto_refresh=False, transient=False, vertical_overflow="crop"
    ) as live:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(1)
            if store is None:
                if not db.exists():
                    continue
                store = open_store(db)
            seen = store.count_readings()
            title = (
                f"EdgeFleet demo: {seen} readings stored at the center "
                f"({time.monotonic() - started:.0f} s)"
            )
            width, height = live.console.size
            # one line less than the terminal: the cursor's line, so nothing scrolls
            view = live_view(
                title,
                _devices(store),
                _alarms(store),
                width=width,
                height=height - 1,
                footer=footer,
            )
            live.update(view, refresh=True)
    print(f"\ndemo: {seen} readings stored at the center")
    return 0 if seen > 0 else 1


def _devices(store: Store) -> list[DeviceRow]:
    """Each device's newest reading of each point, in gateway and device order."""
    latest: dict[tuple[str, str, str], StoredReading] = {}
    for r in store.readings(ReadingQuery(limit=3000)):
        latest.setdefault((r.gateway, r.device, r.point), r)
    online = {g.id: g.online for g in store.gateways()}
    devices: dict[tuple[str, str], list[StoredReading]] = {}
    for (gw, dev, _), r in sorted(latest.items()):
        devices.setdefault((gw, dev), []).append(r)
    now = time.time()
    return [
        DeviceRow(
            gw, bool(online.get(gw)), dev, _values(readings), now - max(r.ts for r in readings)
        )
        for (gw, dev), readings in devices.items()
    ]


def _values(readings: list[StoredReading]) -> tuple[Part, ...]:
    """``point=value`` for each reading, as the sensor sent it; a bad quality in red."""
    parts: list[Part] = []
    for r in readings:
        value = f"{r.value:.4g}" if isinstance(r.value, float) else str(r.value)
        good = r.quality == "good"
        parts += [" " if parts else "", f"{r.point}=", value if good else Styled(r.quality, "red")]
        parts.append(r.unit or "")
    return tuple(parts)


def _alarms(store: Store) -> list[AlarmRow]:
    """The alarms the gateways raised, newest first (empty until the rules fire)."""
    return [
        AlarmRow(a.gateway, a.alarm_id, a.severity, a.state, a.msg or "") for a in store.alarms()
    ]


def fleet_env(
    db: Path, broker_url: str, key: Path, bin_dir: Path = BIN, tls: list[str] | None = None
) -> str:
    """The shell lines that point `fleet` at the demo: `fleet` itself on the PATH (it is
    in .venv, which a newcomer has not activated), and the variables that
    cli/store_options.py and cli/broker_options.py (and `--key`) read; with ``tls`` (the
    ``--ca-file F --cert-file F --key-file F`` of the center), those files too."""
    values = {"EDGEFLEET_DB": str(db), "EDGEFLEET_BROKER": broker_url, "EDGEFLEET_KEY": str(key)}
    for option, value in zip((tls or [])[::2], (tls or [])[1::2], strict=True):
        name = option.removeprefix("--").replace("-", "_").upper()
        values[f"EDGEFLEET_BROKER_{name}"] = value
    path = f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"\n'
    return path + "".join(f"export {n}={shlex.quote(v)}\n" for n, v in values.items())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    ap.add_argument("--workdir", type=Path, default=ROOT / ".demo")
    ap.add_argument("--speed", type=float, help="simulated seconds per second (default 4)")
    ap.add_argument(
        "--secure",
        action="store_true",
        help="the center behind TLS, with a CA and a certificate per gateway made on the fly",
    )
    args = ap.parse_args()
    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    broker_port = free_port()
    broker_url = f"mqtt://127.0.0.1:{broker_port}"
    (workdir / "mosquitto.conf").write_text(
        f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
    )
    # The center's signing key, as `fleet keys init` makes it: the gateways trust its .pub,
    # so `fleet alarms ack` works against the demo as the README shows, and they take only
    # the acks the center signs with it.
    db = workdir / "central.db"
    secure = None
    if args.secure:
        # beside this file, which Python runs with its folder first on sys.path
        from demo_secure import make_center  # noqa: PLC0415

        secure = make_center(workdir, BIN)
    if secure is None:
        center_key = workdir / "center.key"
        center_pub = generate_keys(center_key)
        center_url, center_tls = broker_url, []
    else:  # the CA folder's command key, the center's listener and certificate
        center_key, center_pub = secure.key, secure.key.with_suffix(".pub")
        center_url, center_tls = secure.center_url, secure.center_tls
    env_file = workdir / "fleet.env"
    env_file.write_text(fleet_env(db, center_url, center_key, tls=center_tls))
    stack = Stack(workdir)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        broker = stack.spawn("mosquitto", [mosquitto(), "-c", "mosquitto.conf"])
        wait_port(broker_port, broker, "mosquitto")
        if secure is not None:  # the center's broker: the config fleet broker-config wrote
            tls_broker = stack.spawn("mosquitto-tls", [mosquitto(), "-c", str(secure.conf)])
            wait_port(int(secure.center_url.rsplit(":", 1)[1]), tls_broker, "mosquitto (TLS)")
        stack.spawn(
            "central",
            [
                *(str(BIN / "fleet"), "central", "run", "--broker", center_url, *center_tls),
                *("--db", str(db), "--key", str(center_key)),
            ],
        )
        # The simulated devices: one broker plays the central one and the gateways' local one.
        configs = workdir / "configs"
        speed = [] if args.speed is None else ["--speed", str(args.speed)]
        sim = stack.spawn(
            "devices",
            [
                *(str(BIN / "edge-agent"), "sim", "run", str(SIM_FILE), *speed),
                *("--broker", broker_url, "--central", broker_url),
                *("--command-key", str(center_pub)),
                *("--write-configs", str(configs)),
            ],
        )
        wait_file(configs / "endpoints.json", sim, "the device simulator")
        if secure is not None:
            from demo_secure import enroll_gateways  # noqa: PLC0415

            enroll_gateways(secure, configs, db, BIN)
        for config in sorted(configs.glob("*.yaml")):
            stack.spawn("agent", [str(BIN / "edge-agent"), "run", "-c", str(config)])
        if secure is not None:
            print(f"demo: center behind TLS at {secure.gateway_url}, CA in {secure.ca}")
        print(f"demo: broker {broker_url}, logs and databases in {workdir}")
        print(f"demo: try `mosquitto_sub -p {broker_port} -t 'edgefleet/v1/#' -v` in another shell")
        print("demo: to point `fleet` at this demo, paste these lines in another shell:")
        print(env_file.read_text(), end="")
        print("demo: then `fleet alarms list`, and `fleet alarms ack ALARM -g GATEWAY --by NAME`")
        sys.stdout.flush()
        footer = f"fleet in another shell: . {shlex.quote(str(env_file))}; fleet alarms list"
        return show(db, args.duration, started, footer)
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
