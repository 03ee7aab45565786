"""A gateway loads only the protocol libraries its devices need: a real ``edge-agent run``
process polls a real simulated device, is stopped as systemd stops it (SIGTERM), and says
at exit which modules it had loaded."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig import devices_yaml
from tests.support import ThreadedDevice, agent_config, free_port, terminate, wait_for
from tests.test_opcua_hil import PlcProcess

pytestmark = pytest.mark.hil
REPO = Path(__file__).resolve().parent.parent

# The agent's own entry point, as the edge-agent console script runs it; at exit (after
# the clean stop that SIGTERM starts) it prints the names of every module it loaded.
DRIVER = """\
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), flush=True))
sys.argv = ["edge-agent", "run", "-c", sys.argv[1]]
from cli.agent import main
main()
"""


@pytest.fixture
def plc(tmp_path: Path) -> Iterator[PlcProcess]:
    process = PlcProcess(tmp_path).start()
    yield process
    process.stop()


def good_readings(outbox: Path, device: str) -> int:
    if not outbox.exists():
        return 0
    db = sqlite3.connect(outbox)
    try:
        rows = db.execute("SELECT body FROM telemetry").fetchall()
    except sqlite3.Error:
        return 0
    finally:
        db.close()
    readings = [json.loads(body) for (body,) in rows]
    return sum(1 for r in readings if r["dev"] == device and r["q"] == "good")


def loaded_by_agent(tmp_path: Path, devices: str, device: str) -> set[str]:
    """Top-level packages a real agent process had loaded once it had polled ``device``."""
    outbox = tmp_path / "outbox.db"
    config = tmp_path / "agent.yaml"
    # no broker: nothing in the agent waits for one, and the libraries are the same
    broker = f"mqtt://127.0.0.1:{free_port()}"
    config.write_text(
        agent_config(gateway="gw-lazy", broker_url=broker, outbox=outbox, devices_yaml=devices)
    )
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(config)],
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=REPO,
    )
    try:
        wait_for(lambda: good_readings(outbox, device) >= 3, 30, what=f"readings of {device}")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        terminate(proc)
        log.close()
    assert proc.returncode == 0, (tmp_path / "agent.log").read_text()[-3000:]
    return {name.split(".")[0] for name in json.loads(out)}


def test_an_opcua_only_agent_never_loads_pymodbus(tmp_path: Path, plc: PlcProcess) -> None:
    devices = (
        "  - id: pumps\n"
        f"    opcua: {{endpoint: '{plc.endpoint}'}}\n"
        "    poll_s: 0.2\n"
        "    points:\n"
        "      - {name: level, node: 'ns=2;s=Pump1.Level', unit: mm}\n"
    )
    loaded = loaded_by_agent(tmp_path, devices, "pumps")
    assert "asyncua" in loaded  # the check below is about a process that did the work
    assert "pymodbus" not in loaded


def test_a_modbus_only_agent_never_loads_asyncua(
    tmp_path: Path, modbus_server: ThreadedDevice
) -> None:
    loaded = loaded_by_agent(tmp_path, devices_yaml(modbus_server.port), "tank-1")
    assert "pymodbus" in loaded
    assert "asyncua" not in loaded
    assert "prometheus_client" not in loaded  # no health.metrics_port: no metrics
