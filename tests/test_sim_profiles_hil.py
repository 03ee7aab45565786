"""Every shipped profile, read end to end from its simulator: `edge-agent sim run` serves one
device per profile over its real protocol and writes the agent config, a real agent reads
them all, and every point arrives at the center. Parametrised over the profile folder, so
a new profile is covered as soon as it is added."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.config.profiles import BUILTIN, LoadedProfile, load_profile
from tests.support import Agent, Broker, Central, Process, free_port, run_cli, wait_for

pytestmark = pytest.mark.hil

SHIPPED = sorted(BUILTIN.glob("*/*/*.yaml"))
GW = "profiles-0001"


def device_id(profile: LoadedProfile) -> str:
    return f"{profile.profile.model}-1"


@dataclass
class Bench:
    broker: Broker
    central: Central
    agent: Agent
    sim: Process
    config: str


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    work = tmp_path_factory.mktemp("profiles")
    (work / "broker").mkdir()
    broker = Broker(work / "broker").start()
    devices = "\n".join(
        f"      - {{id: {device_id(lp)}, profile: {lp.profile.ref()}, publish_s: 1}}"
        for lp in map(load_profile, SHIPPED)
    )
    # Modbus RTU: two detectors on one RTU-over-TCP gateway, a depth sensor on a serial line
    socat = shutil.which("socat")
    assert socat, "socat is needed for the serial line (scripts/setup installs it)"
    ends = (work / "sim-end", work / "agent-end")
    line = subprocess.Popen(
        [socat, f"pty,raw,echo=0,link={ends[0]}", f"pty,raw,echo=0,link={ends[1]}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: ends[0].exists() and ends[1].exists(), 10, what="socat's pty pair")
    devices += (
        f'\n      - {{id: "rtu-{{n}}", count: 2, unit: 5, profile: acme/sd-2000@1.4,'
        f" port: {free_port()}, framer: rtu}}"
        f"\n      - {{id: line-1, profile: acme/wl-300@1.0, serial: '{ends[0]}',"
        f" agent_serial: '{ends[1]}', baudrate: 38400}}"
    )
    sim_file = work / "sim.yaml"
    sim_file.write_text(
        f"seed: 11\nbroker: {broker.url}\ncentral: {broker.url}\n"
        "rule_packs: [smoke, water, elevator]\nhealth_s: 1\n"
        f"gateways:\n  - id: {GW}\n    devices:\n{devices}\n"
    )
    configs = work / "configs"
    sim = Process(
        "edge-agent",
        ["sim", "run", str(sim_file), "--write-configs", str(configs)],
        work / "sim.log",
    ).start()
    central = Central(work, broker.url).start()
    agent: Agent | None = None
    try:
        endpoints = configs / "endpoints.json"
        wait_for(endpoints.exists, 30, what="the simulators")
        assert sim.running(), sim.output()
        config = (configs / f"{GW}.yaml").read_text()
        agent = Agent(configs, config)
        agent.start()
        yield Bench(broker, central, agent, sim, config)
    finally:
        if agent is not None:
            agent.stop()
        sim.stop()
        central.stop()
        broker.stop()
        line.terminate()
        line.wait(5)


def test_the_written_config_passes_check(bench: Bench) -> None:
    out = run_cli("edge-agent", "check", "-c", str(bench.agent.config))
    assert out.returncode == 0, out.stderr
    assert f"gateway {GW}, {len(SHIPPED) + 3} device(s)" in out.stdout


def good_points(bench: Bench, dev: str) -> set[str]:
    out = run_cli("fleet", "readings", "--db", str(bench.central.db), "-d", dev, "--json")
    return {r["point"] for r in json.loads(out.stdout or "[]") if r["quality"] == "good"}


def test_modbus_rtu_units_share_a_bus_and_a_serial_line_works(bench: Bench) -> None:
    config = yaml.safe_load(bench.config)
    modbus = {d["id"]: d["modbus"] for d in config["devices"] if "modbus" in d}
    assert modbus["rtu-1"]["port"] == modbus["rtu-2"]["port"]
    assert (modbus["rtu-1"]["unit"], modbus["rtu-2"]["unit"]) == (5, 6)
    assert modbus["rtu-1"]["framer"] == "rtu"
    line = modbus["line-1"]
    assert line["serial"].endswith("agent-end") and line["baudrate"] == 38400
    for dev, point in (("rtu-1", "obscuration"), ("rtu-2", "model"), ("line-1", "depth")):
        wait_for(lambda d=dev, p=point: p in good_points(bench, d), 30, what=f"{dev}.{point}")


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(BUILTIN)) for p in SHIPPED])
def test_every_point_of_the_profile_arrives_at_the_center(bench: Bench, path: Path) -> None:
    loaded = load_profile(path)
    profile = loaded.profile
    dev = device_id(loaded)
    names = set(profile.point_names)

    def latest() -> dict[str, dict[str, Any]] | None:
        out = run_cli(
            "fleet",
            "readings",
            "--db",
            str(bench.central.db),
            "-d",
            dev,
            "--limit",
            "2000",
            "--json",
        )
        rows: dict[str, dict[str, Any]] = {}
        for r in json.loads(out.stdout or "[]"):
            if r["quality"] == "good":
                rows.setdefault(r["point"], r)
        return rows if set(rows) >= names else None

    rows = wait_for(latest, 30, interval=0.3, what=f"every point of {dev} ({profile.ref()})")
    assert {r["gateway"] for r in rows.values()} == {GW}
    for name, spec in profile.simulation.items():
        value = rows[name]["value"]
        if spec.expr is not None:
            assert isinstance(value, bool | int | float), (name, value)
        elif not (spec.noise or spec.drift):  # a constant: decoded exactly as served
            expected = spec.value
            if isinstance(expected, float):
                assert math.isclose(value, expected, rel_tol=1e-6), (name, value, expected)
            else:
                assert value == expected and type(value) is type(expected), (name, value)
        else:
            lo = spec.min if spec.min is not None else -math.inf
            hi = spec.max if spec.max is not None else math.inf
            assert lo - 1e-6 <= value <= hi + 1e-6, (name, value)
    units = {p.name: p.unit for p in profile.points}
    assert all(rows[n]["unit"] == units[n] for n in names)
    assert "Traceback" not in bench.agent.output()
