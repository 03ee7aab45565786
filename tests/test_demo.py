"""The README's demo command really shows readings arriving at the center."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from tests.support import BIN, run_cli, terminate, wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_whole_stack_and_shows_readings(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "demo.py"),
            "--duration",
            "6",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    m = re.search(r"demo: (\d+) readings stored at the center", result.stdout)
    assert m and int(m.group(1)) >= 11, result.stdout  # one poll of all 11 points at least
    assert "obscuration" in result.stdout
    # Ctrl-C / the end of the demo stops every process it started
    for log in ("agent.log", "central.log"):
        assert "Traceback" not in (tmp_path / "demo" / log).read_text()
    assert "stopped" in (tmp_path / "demo" / "agent.log").read_text()


def test_the_secure_demo_runs_over_tls_with_a_certificate_per_gateway(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    demo = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--secure"]
    result = subprocess.run(
        [*demo, "--duration", "8", "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    m = re.search(r"demo: (\d+) readings stored at the center", result.stdout)
    assert m and int(m.group(1)) >= 11, result.stdout
    assert "center behind TLS at mqtts://" in result.stdout
    # each gateway connected as its certificate's name, the center as its own
    broker_log = (work / "mosquitto-tls.log").read_text()
    for gw in ("demo-0001", "demo-0002", "demo-0003"):
        assert f"u'{gw}'" in broker_log, broker_log
        assert not (work / "configs" / f"{gw}.bundle").exists()  # the key's copy is gone
    assert "u'edgefleet-central'" in broker_log
    env = printed_env(result.stdout.splitlines())
    assert env["EDGEFLEET_BROKER"].startswith("mqtts://")
    assert Path(env["EDGEFLEET_BROKER_CERT_FILE"]).name == "central.crt"
    for log in ("agent.log", "central.log"):
        text = (work / log).read_text()
        assert "Traceback" not in text and "not the center's" not in text, text


def printed_env(lines: list[str]) -> dict[str, str]:
    """The ``export NAME=value`` lines the demo printed, as a shell would read them."""
    env = {}
    for line in lines:
        if line.startswith("export EDGEFLEET_"):
            name, _, value = line.removeprefix("export ").partition("=")
            (env[name],) = shlex.split(value)
    return env


def test_fleet_acks_an_alarm_of_the_demo_through_the_printed_environment(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [
            *(sys.executable, str(ROOT / "scripts" / "demo.py")),
            *("--duration", "150", "--workdir", str(tmp_path / "demo")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert demo.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout or ()), daemon=True)
    reader.start()
    try:

        def environment() -> dict[str, str]:
            return printed_env(lines) if any("fleet alarms ack" in x for x in lines) else {}

        env = wait_for(environment, 60, what="the demo's environment lines")
        assert set(env) == {"EDGEFLEET_DB", "EDGEFLEET_BROKER", "EDGEFLEET_KEY"}, lines

        def active() -> list[dict[str, Any]]:
            out = run_cli("fleet", "alarms", "list", "--state", "active", "--json", env=env)
            return list(json.loads(out.stdout)) if out.returncode == 0 else []

        # the scenarios raise their first alarms some 20 s in (the fire's pre-alarm)
        alarm = wait_for(active, 90, interval=1, what="an active alarm in the demo")[0]
        ack = run_cli(
            "fleet",
            "alarms",
            "ack",
            alarm["alarm_id"],
            "-g",
            alarm["gateway"],
            "--by",
            "li.wei",
            env=env,
        )
        assert ack.returncode == 0, ack.stdout + ack.stderr
        # acknowledged; or cleared, if its condition went between the list and the ack
        # (a demo sensor's offline alarm comes and goes): acked either way
        assert "state: acknowledged" in ack.stdout or "state: cleared\n" in ack.stdout

        def acked() -> bool:
            out = run_cli("fleet", "alarms", "list", "-g", alarm["gateway"], "--json", env=env)
            rows = json.loads(out.stdout) if out.returncode == 0 else []
            return any(
                r["alarm_id"] == alarm["alarm_id"] and r["acked_by"] == "li.wei" for r in rows
            )

        wait_for(acked, 20, interval=0.5, what="the acknowledgement at the center")
    finally:
        terminate(demo, timeout=30)
        reader.join(10)


def test_the_printed_environment_puts_fleet_on_a_newcomers_path(tmp_path: Path) -> None:
    """A newcomer has not activated .venv: the lines the demo prints must find `fleet`
    there, in a shell whose PATH has only the system's folders."""
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    env_file = tmp_path / "fleet.env"
    env_file.write_text(demo.fleet_env(tmp_path / "central.db", "mqtt://127.0.0.1:1", Path("k")))
    shell = subprocess.run(
        ["/bin/sh", "-c", f". {shlex.quote(str(env_file))} && command -v fleet && fleet --version"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert shell.returncode == 0, shell.stderr
    found, version = shell.stdout.splitlines()
    assert Path(found) == BIN / "fleet" and version.startswith("fleet ")
