"""OPC-UA with real processes: the simulated PLC as its own process (killed with SIGKILL and
restarted on the same port), ``edge-agent browse`` and ``check`` as console scripts, and one
gateway end to end: simulator -> edge-agent -> Mosquitto -> fleet central -> fleet readings."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.base import Quality, Reading
from drivers.opcua import OpcUaDevice
from drivers.opcua.driver import OpcUaDriver
from tests.support import (
    Agent,
    Broker,
    Central,
    free_port,
    port_open,
    run_cli,
    terminate,
    wait_for,
)

pytestmark = pytest.mark.hil
GW = "riverside-0007"
REPO = Path(__file__).resolve().parent.parent


class PlcProcess:
    """``python -m drivers.simulated.opcua_server`` as a process of its own, on one port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = workdir / "plc.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/edgefleet/sim"

    def start(self) -> PlcProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "drivers.simulated.opcua_server", "--port", str(self.port)],
                stdout=out,
                stderr=out,
                cwd=REPO,
            )
        wait_for(lambda: port_open(self.port), 20, what=f"the simulated PLC on {self.port}")
        return self

    def kill(self) -> None:
        """SIGKILL: no goodbye on any connection, as when a PLC loses power."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None


@pytest.fixture(scope="module")
def plc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlcProcess]:
    """The simulated PLC, values moving every second, for tests that do not kill it."""
    process = PlcProcess(tmp_path_factory.mktemp("plc")).start()
    yield process
    process.stop()


# -- technicians' commands ------------------------------------------------------------------


def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node["children"]:
        yield from walk(child)


def test_browse_lists_the_plc_variables_as_json(plc: PlcProcess) -> None:
    result = run_cli("edge-agent", "browse", plc.endpoint, "--depth", "3", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["endpoint"] == plc.endpoint and out["truncated"] is False
    nodes = {n["node_id"]: n for n in walk(out["tree"])}
    assert out["tree"]["node_id"] == "i=85" and out["nodes"] == len(nodes)
    level = nodes["ns=2;s=Pump1.Level"]
    assert (level["class"], level["data_type"], level["path"]) == (
        "Variable",
        "Double",
        "0:Objects/2:Pump1/2:Level",
    )
    assert isinstance(level["value"], float) and level["status"] is None
    expected = {
        "ns=2;i=1042": ("Running", "Boolean", False),
        "ns=2;s=Pump1.Speed": ("Speed", "Int16", 0),
        "ns=2;s=Station.Name": ("Name", "String", "PS-07 Riverside"),
        "ns=2;s=Station.LastService": ("LastService", "DateTime", "2024-03-18T07:30:00.000000Z"),
        "ns=2;g=5b0e8b6a-1f3c-4c7e-9a55-0d1c2f3e4a5b": ("Mode", "Int32", 1),
        "ns=2;b=U0VSSUFM": ("Serial", "String", "PS07-2291"),
    }
    for node_id, (name, data_type, value) in expected.items():
        node = nodes[node_id]
        assert (node["display_name"], node["data_type"], node["value"]) == (name, data_type, value)
    wells = nodes["ns=2;s=Station.WellLevels"]
    assert wells["data_type"] == "Double" and len(wells["value"]) == 4
    assert "i=2253" not in nodes  # the standard Server object is left out

    below = run_cli("edge-agent", "browse", plc.endpoint, "--node", "ns=2;s=Pump1", "--json")
    assert below.returncode == 0, below.stderr
    tree = json.loads(below.stdout)["tree"]
    assert [c["browse_name"] for c in tree["children"]] == [
        "2:Level",
        "2:Running",
        "2:Pressure",
        "2:Speed",
        "2:RunHours",
    ]
    assert tree["path"] is None  # not walked from the Root: no path to offer


def test_browse_renders_a_tree_and_reports_failures_in_one_line(plc: PlcProcess) -> None:
    result = run_cli("edge-agent", "browse", plc.endpoint, "--node", "ns=2;s=Station")
    assert result.returncode == 0, result.stderr
    assert "Name  ns=2;s=Station.Name  String = 'PS-07 Riverside'" in result.stdout
    assert "7 node(s) on" in result.stdout

    down = f"opc.tcp://127.0.0.1:{free_port()}/x"
    refused = run_cli("edge-agent", "browse", down)
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"error: {down}: connection refused"
    bad = run_cli("edge-agent", "browse", plc.endpoint, "--node", "ns=2;q=1")
    assert bad.returncode == 2 and bad.stderr.startswith("error: bad node id 'ns=2;q=1'")
    insecure = run_cli("edge-agent", "browse", plc.endpoint, "--security", "Basic256Sha256,None")
    assert insecure.returncode == 2 and "policy None goes with mode None" in insecure.stderr


# -- the PLC process killed and restarted ---------------------------------------------------


def test_readings_resume_after_the_plc_process_is_killed_and_restarted(tmp_path: Path) -> None:
    plc = PlcProcess(tmp_path).start()
    device = OpcUaDevice.model_validate(
        {
            "id": "pumps",
            "poll_s": 0.1,
            "opcua": {
                "endpoint": plc.endpoint,
                "mode": "poll",
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1.0,
                "timeout_s": 1.0,
            },
            "points": [
                {"name": "level", "node": "ns=2;s=Pump1.Level", "unit": "mm"},
                {"name": "station", "node": "ns=2;s=Station.Name"},
            ],
        }
    )

    async def run() -> list[tuple[float, str, list[Reading]]]:
        pumps = OpcUaDriver(device)
        timeline: list[tuple[float, str, list[Reading]]] = []
        phase = "before"
        killed_at = restarted_at = resumed_at = 0.0
        try:
            for _ in range(400):  # 0.1 s apart: bounded to about 40 s
                now = time.monotonic()
                readings = await pumps.read()
                timeline.append((now, phase, readings))
                good = all(r.quality is Quality.GOOD for r in readings)
                if phase == "before" and good and len(timeline) >= 5:
                    plc.kill()
                    phase, killed_at = "killed", time.monotonic()
                elif phase == "killed" and now - killed_at > 1.5:
                    plc.start()  # blocks while the new process starts: as a real outage
                    phase, restarted_at = "restarted", time.monotonic()
                elif phase == "restarted" and good:
                    phase, resumed_at = "resumed", now
                    assert now - restarted_at < 10
                elif phase == "resumed" and now - resumed_at > 2:
                    break
                await asyncio.sleep(0.1)
        finally:
            await pumps.aclose()
        return timeline

    try:
        timeline = asyncio.run(run())
    finally:
        plc.stop()
    phases = [phase for _, phase, _ in timeline]
    assert phases[-1] == "resumed", phases
    while_down = [r for _, phase, rs in timeline if phase in ("killed", "restarted") for r in rs]
    assert while_down and {r.quality for r in while_down} <= {Quality.STALE, Quality.GOOD}
    stale = [r for r in while_down if r.quality is Quality.STALE]
    assert stale and all((r.reason or "").startswith("disconnected") for r in stale)
    assert {r.point for r in stale} == {"level", "station"}
    after = [rs for _, phase, rs in timeline if phase == "resumed"]
    assert 15 <= len(after) <= 22  # it kept polling, at about the poll rate, to the end
    assert all(r.quality is Quality.GOOD for rs in after for r in rs)
    assert after[-1][1].value == "PS-07 Riverside"


# -- end to end -----------------------------------------------------------------------------


def readings_at_center(db: Path, *args: str) -> list[dict[str, Any]]:
    result = run_cli("fleet", "readings", "--db", str(db), "--gateway", GW, *args, "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_opcua_readings_reach_the_center_across_a_plc_restart(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    plc = PlcProcess(tmp_path).start()
    devices = (
        "  - id: pumps\n"
        f"    opcua: {{endpoint: '{plc.endpoint}', mode: subscribe, reconnect_min_s: 0.2,"
        " reconnect_max_s: 1, timeout_s: 2, keepalive_s: 2}\n"
        "    poll_s: 0.5\n"
        "    points:\n"
        "      - {name: level, node: 'ns=2;s=Pump1.Level', unit: mm}\n"
        "      - {name: running, node: 'ns=2;i=1042'}\n"
        "      - {name: station, node: 'ns=2;s=Station.Name'}\n"
        "      - {name: serviced, path: '0:Objects/2:Station/2:LastService'}\n"
        "      - {name: ghost, node: 'ns=2;s=Pump9.Level'}\n"
    )
    central = Central(tmp_path, mqtt_broker.url).start()
    agent = Agent.for_devices(tmp_path, mqtt_broker.url, devices, GW)
    try:
        agent.start()

        def current(point: str, after: float) -> dict[str, Any]:
            """The newest reading of ``point`` if it is good and not older than ``after``."""
            rows = readings_at_center(central.db, "--point", point, "--limit", "1")
            if rows and rows[0]["ts"] >= after and rows[0]["quality"] == "good":
                return rows[0]
            return {}

        station = wait_for(lambda: current("station", 0), 30, 0.3, "station name at the center")
        assert (station["device"], station["value"]) == ("pumps", "PS-07 Riverside")
        serviced = wait_for(lambda: current("serviced", 0), 10, 0.3, "LastService")
        assert serviced["value"] == "2024-03-18T07:30:00.000000Z"
        level = wait_for(lambda: current("level", 0), 10, 0.3, "level")
        assert isinstance(level["value"], float) and level["unit"] == "mm"
        ghost = readings_at_center(central.db, "--point", "ghost", "--limit", "1")
        assert ghost and ghost[0]["quality"] == "bad" and ghost[0]["reason"] == "BadNodeIdUnknown"

        plc.kill()
        killed = time.time()

        def stale_seen() -> list[dict[str, Any]]:
            rows = readings_at_center(central.db, "--device", "pumps", "--since", "1m")
            return [r for r in rows if r["quality"] == "stale" and r["ts"] >= killed]

        stale = wait_for(stale_seen, 15, 0.3, "stale readings while the PLC is down")
        assert all(r["value"] is None and r["reason"].startswith("disconnected") for r in stale)
        restarted = time.time()  # before its variables get their (source) timestamps
        plc.start()  # the same port, a new process: new server, new subscriptions needed
        back = wait_for(lambda: current("station", restarted), 10, 0.3, "readings after restart")
        assert back["value"] == "PS-07 Riverside"
        assert current("level", restarted)
        assert agent.running()  # nothing restarted the agent
    finally:
        agent.stop()
        central.stop()
        plc.stop()
    log = agent.output()
    assert log.count("opcua pumps: connection lost: connection closed") == 1
    assert "opcua pumps: back after" in log
    assert "asyncua" not in log  # the driver speaks for itself, once per state change
