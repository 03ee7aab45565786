"""``scripts/demo --secure``: the demo's center behind TLS and per-gateway certificates,
made on the fly the way an operator makes them (``fleet ca init``, ``fleet broker-config``,
``fleet provision``, ``edge-agent enroll``).

The central broker runs on the generated config (its gateways' listener takes only
certificates of the demo's CA, the ACL confines each gateway to its topics); the
simulated sensors keep a plain broker of their own, as a gateway's local bus would be.
Each gateway's config, written by the simulator, is pointed at the gateways' listener
with the files its enrollment installed.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

BIN_NAMES = ("fleet", "edge-agent")


@dataclass(frozen=True)
class SecureCenter:
    ca: Path
    conf: Path
    gateway_url: str
    center_url: str
    center_tls: list[str]
    """The ``fleet`` options for the center's certificate (central run, cmd, ...)."""
    key: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(bin_dir: Path, *args: str) -> str:
    done = subprocess.run(
        [str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"demo: {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def make_center(workdir: Path, bin_dir: Path) -> SecureCenter:
    """The CA, the broker's config and what the center connects with."""
    ca = workdir / "fleet-ca"
    run(bin_dir, "fleet", "ca", "init", "--dir", str(ca))
    port, center_port = free_port(), free_port()
    conf, data = workdir / "broker-config", workdir / "broker-data"
    data.mkdir()
    run(
        bin_dir, "fleet", "broker-config", "--out", str(conf), "--ca-dir", str(ca),
        "--port", str(port), "--center-port", str(center_port), "--data-dir", str(data),
    )  # fmt: skip
    config = conf / "mosquitto.conf"
    if os.geteuid() == 0:
        # Mosquitto started as root drops to its own user, which cannot read the demo's
        # broker key (0600, root's): keep root, and take the config in whole
        run_dir = workdir / "broker-run"
        run_dir.mkdir()
        config = run_dir / "as-root.conf"
        config.write_text(f"user root\ninclude_dir {conf}\n")
    tls = ["--ca-file", str(ca / "ca.crt"), "--cert-file", str(ca / "central.crt")]
    tls += ["--key-file", str(ca / "central.key")]
    return SecureCenter(
        ca,
        config,
        f"mqtts://127.0.0.1:{port}",
        f"mqtts://127.0.0.1:{center_port}",
        tls,
        ca / "command.key",
    )


def enroll_gateways(center: SecureCenter, configs: Path, db: Path, bin_dir: Path) -> None:
    """Each config the simulator wrote: its gateway provisioned and enrolled into a folder
    of its own, and its ``central:`` pointed at the gateways' listener with those files."""
    for path in sorted(configs.glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        gw = config["gateway"]["id"]
        bundle = configs / f"{gw}.bundle"
        run(
            bin_dir, "fleet", "provision", gw, "--ca-dir", str(center.ca), "--db", str(db),
            "--broker", center.gateway_url, "--out", str(bundle),
            "--site", config["gateway"].get("site", ""),
        )  # fmt: skip
        folder = configs / gw
        run(bin_dir, "edge-agent", "enroll", str(bundle), "--dir", str(folder))
        bundle.unlink()  # it holds the gateway's key: gone once enrolled, as the README says
        central = dict(config.get("central", {}))
        central["url"] = center.gateway_url
        central["tls"] = {
            "ca": str(folder / "ca.crt"),
            "cert": str(folder / "gateway.crt"),
            "key": str(folder / "gateway.key"),
        }
        central["command_key"] = str(folder / "command.pub")
        config["central"] = central
        path.write_text(yaml.safe_dump(config, sort_keys=False))
