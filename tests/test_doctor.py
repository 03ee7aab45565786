"""``edge-agent doctor`` through its real entry point, against a real Mosquitto and a
simulated Modbus device: a healthy site is all ok (the clock may only warn: a container
cannot say whether NTP runs), and each fault a technician meets is named with a fix."""

from __future__ import annotations

import json
from pathlib import Path

from tests.rig import devices_yaml
from tests.support import Broker, ThreadedDevice, agent_config, fill_disk, free_port, run_cli

SERIAL_MISSING = "/dev/ttyEDGEFLEETdoctor9"


def doctor(config: Path, *args: str) -> tuple[int, list[str]]:
    out = run_cli("edge-agent", "doctor", "-c", str(config), "--timeout", "2", *args)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, out.stdout.splitlines()


def write(tmp_path: Path, broker_url: str, devices: str, outbox: Path | None = None) -> Path:
    config = tmp_path / "agent.yaml"
    config.write_text(
        agent_config(
            gateway="gw-doctor",
            broker_url=broker_url,
            outbox=outbox or tmp_path / "outbox.db",
            devices_yaml=devices,
        )
    )
    return config


def named(lines: list[str], level: str, check: str) -> list[str]:
    return [line for line in lines if line.startswith(f"{level:<4} {check}:")]


def test_a_healthy_site_is_all_ok(
    tmp_path: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice
) -> None:
    config = write(tmp_path, mqtt_broker.url, devices_yaml(modbus_server.port))
    rc, lines = doctor(config)
    assert rc == 0, lines
    checks = lines[:-1]
    assert not [line for line in checks if line.startswith("fail")], lines
    # only the clock may warn, and only that it could not be checked or is not synced
    assert [line for line in checks if line.startswith("warn")] in (
        [],
        named(lines, "warn", "clock"),
    )
    for check in ("config", "host", "disk", "outbox", "device tank-1", "broker", "subscriptions"):
        assert named(lines, "ok", check), (check, lines)
    assert lines[-1].startswith("0 failed"), lines
    rc, out = doctor(config, "--json")
    found = json.loads("\n".join(out))
    assert rc == 0 and {f["level"] for f in found} <= {"ok", "warn"}
    assert {"check", "level", "detail", "fix"} <= found[0].keys()


def test_the_broker_down_a_dead_device_a_missing_port_and_a_full_disk_are_each_named(
    tmp_path: Path, small_fs: Path
) -> None:
    devices = devices_yaml(free_port()) + (
        "  - id: rtu-1\n"
        f"    modbus: {{serial: {SERIAL_MISSING}, unit: 2}}\n"
        "    points:\n"
        "      - {name: level, table: holding, address: 1, type: uint16}\n"
    )
    fill_disk(small_fs / "ballast")
    config = write(tmp_path, f"mqtt://127.0.0.1:{free_port()}", devices, small_fs / "outbox.db")
    rc, lines = doctor(config)
    assert rc == 1, lines
    host = named(lines, "fail", "host")
    assert host and SERIAL_MISSING in host[0] and " - " in host[0], lines
    dead = named(lines, "fail", "device tank-1")
    assert dead and " - check its power" in dead[0], lines
    assert named(lines, "fail", "device rtu-1"), lines
    disk = named(lines, "fail", "disk")
    assert disk and "free space" in disk[0], lines
    broker = named(lines, "fail", "broker")
    assert broker and "check the network" in broker[0], lines
    assert lines[-1].startswith("5 failed"), lines


def test_a_config_that_is_not_valid_is_the_one_finding(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("gateway: {id: 'no spaces allowed'}\n")
    rc, lines = doctor(config)
    assert rc == 1, lines
    assert all(line.startswith("fail config:") for line in lines[:-1]), lines
    assert "edge-agent check" in lines[0], lines
