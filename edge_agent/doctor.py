"""``edge-agent doctor``: the technician's check of a gateway on site, one finding a line.

Each finding is ``ok``, ``warn`` or ``fail``, with what to do about it. What is checked, for
a config that is valid on its own (one that is not is the only finding):

- the host: what the config names is there (files, serial ports; ``edge-agent check``'s
  host pass), each problem a failure;
- the clock: NTP-synchronised by ``timedatectl`` where it exists; a clock not known to be
  synchronised, or one that could not be asked, is a warning, never a failure;
- the disk: room where the outbox lives (a full disk loses readings once the outbox cannot
  grow), and the outbox's backlog;
- each device: one read, the first bad point named;
- the broker: reachable, the TLS handshake and the login accepted, and the gateway's own
  ``ack`` and ``cmd`` subscriptions granted. It connects as the gateway: where the broker
  binds client ids to names, a running agent's connection is taken for that moment (it
  connects again within seconds; its outbox keeps every reading meanwhile).
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from drivers.base import Driver, DriverError, Quality
from edge_agent.config import ConfigError, LoadedConfig, check_host
from edge_agent.contract import Channel
from edge_agent.devices import open_drivers
from mqttlink.session import Session, SessionError, Subscription

Level = Literal["ok", "warn", "fail"]

DISK_FAIL_BYTES = 8 * 1024 * 1024
"""Less room than this where the outbox lives: a failure (a few minutes of readings)."""
DISK_WARN_FRACTION = 0.05
"""Less than this share of the filesystem free: a warning."""


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    level: Level
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" - {self.fix}" if self.fix and self.level != "ok" else ""
        return f"{self.level:<4} {self.check}: {self.detail}{fix}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


async def diagnose(loaded: LoadedConfig, timeout_s: float = 5.0) -> list[Finding]:
    """Every finding for a config valid on its own, in the order of the module docstring."""
    cfg = loaded.config
    findings = [
        Finding(
            "config",
            "ok",
            f"gateway {cfg.gateway.id}, {len(cfg.devices)} device(s), rev {loaded.revision}",
        )
    ]
    findings += host(loaded)
    findings.append(clock())
    findings += disk(cfg.outbox.path)
    findings += await devices(loaded, timeout_s)
    findings += await asyncio.to_thread(broker, loaded, timeout_s)
    return findings


def host(loaded: LoadedConfig) -> list[Finding]:
    try:
        check_host(loaded)
    except ConfigError as exc:
        return [
            Finding("host", "fail", str(p), "connect what it names, or correct the config")
            for p in exc.problems
        ]
    return [Finding("host", "ok", "the files and ports the config names are there")]


def clock() -> Finding:
    if shutil.which("timedatectl") is None:
        return Finding("clock", "warn", "not checked (no timedatectl)", "check the time is right")
    try:
        out = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding("clock", "warn", f"not checked ({exc})", "check the time is right")
    said = out.stdout.strip()
    if out.returncode != 0 or said not in ("yes", "no"):
        why = (out.stderr.strip() or said or "no answer").splitlines()[0]
        return Finding("clock", "warn", f"not checked ({why})", "check the time is right")
    if said == "no":
        return Finding(
            "clock",
            "warn",
            "not synchronised by NTP: readings carry this clock's time",
            "timedatectl set-ntp true, and let the gateway reach an NTP server",
        )
    return Finding("clock", "ok", "synchronised by NTP")


def disk(outbox: Path) -> list[Finding]:
    folder = outbox.parent
    try:
        usage = shutil.disk_usage(folder)
    except OSError as exc:
        return [Finding("disk", "fail", f"{folder}: {exc.strerror or exc}", "make the folder")]
    free_mb = usage.free / 1024 / 1024
    if usage.free < DISK_FAIL_BYTES:
        found = Finding(
            "disk",
            "fail",
            f"{folder}: {free_mb:.1f} MB free: the outbox cannot grow, readings are lost",
            "free space on this filesystem (old logs, core files)",
        )
    elif usage.free < usage.total * DISK_WARN_FRACTION:
        found = Finding("disk", "warn", f"{folder}: {free_mb:.0f} MB free", "free some space")
    else:
        found = Finding("disk", "ok", f"{folder}: {free_mb:.0f} MB free")
    return [found, _backlog(outbox)]


def _backlog(outbox: Path) -> Finding:
    if not outbox.exists():
        return Finding("outbox", "ok", f"{outbox}: not made yet (the first run makes it)")
    try:
        db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=2)
        try:
            (rows,) = db.execute("SELECT count(*) FROM telemetry").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return Finding(
            "outbox",
            "fail",
            f"{outbox}: cannot be read ({exc})",
            "stop the agent, move the file aside, start it (a new outbox is made)",
        )
    return Finding("outbox", "ok", f"{outbox}: {rows} batch(es) not yet acked by the center")


async def devices(loaded: LoadedConfig, timeout_s: float) -> list[Finding]:
    devs = loaded.config.devices
    if not devs:
        return [Finding("devices", "warn", "none configured", "add the devices: edge-agent probe")]
    drivers = open_drivers(devs)
    findings = []
    try:
        for dev in devs:
            findings.append(await _read_once(dev.id, drivers[dev.id], timeout_s))
    finally:
        for driver in drivers.values():
            await driver.aclose()
    return findings


async def _read_once(device: str, driver: Driver, timeout_s: float) -> Finding:
    fix = "check its power, cable or address, and its settings in the config"
    try:
        readings = await asyncio.wait_for(driver.read(), timeout_s)
    except TimeoutError:
        return Finding(f"device {device}", "fail", f"no answer within {timeout_s:g} s", fix)
    except (DriverError, OSError) as exc:
        return Finding(f"device {device}", "fail", f"not answering: {exc}", fix)
    bad = [r for r in readings if r.quality is not Quality.GOOD]
    if not readings:
        return Finding(f"device {device}", "fail", "answered no point", fix)
    if bad:
        first = bad[0]
        return Finding(
            f"device {device}",
            "fail",
            f"{len(bad)} of {len(readings)} point(s) bad, first {first.point}: {first.reason}",
            "check that point's address, type and table in the config",
        )
    return Finding(f"device {device}", "ok", f"{len(readings)} point(s) read")


def broker(loaded: LoadedConfig, timeout_s: float) -> list[Finding]:
    cfg = loaded.config
    url = cfg.central.broker
    gw = cfg.gateway.id
    wanted = {cfg.topics.gw(gw, Channel.ACK), cfg.topics.gw(gw, Channel.CMD)}
    answers: dict[str, str | None] = {}
    granted = threading.Event()

    def on_suback(topic: str, refusal: str | None) -> None:
        answers[topic] = refusal
        if wanted <= answers.keys():
            granted.set()

    session = Session(url, client_id=f"edgefleet-doctor-{gw}", name="doctor", keepalive_s=10)
    for topic in sorted(wanted):
        session.subscribe(Subscription(topic, qos=1), lambda _msg: None)
    session.on_suback(on_suback)
    try:
        session.open(timeout_s)
    except SessionError as exc:
        return [
            Finding(
                "broker",
                "fail",
                f"{url}: {exc}",
                "check the network, the URL, the CA file, and the certificate or password "
                "(a revoked gateway is refused)",
            )
        ]
    try:
        granted.wait(timeout_s)
    finally:
        session.close()
    findings = [Finding("broker", "ok", f"{url}: connected, TLS and login accepted")]
    for topic in sorted(wanted):
        if topic not in answers:
            findings.append(Finding("subscriptions", "fail", f"{topic}: no answer", "again"))
        elif answers[topic] is not None:
            findings.append(
                Finding(
                    "subscriptions",
                    "fail",
                    f"{topic}: refused ({answers[topic]})",
                    "the broker's ACL must let the gateway read it (fleet broker-config)",
                )
            )
    if len(findings) == 1:
        findings.append(Finding("subscriptions", "ok", "its ack and cmd topics granted"))
    return findings
