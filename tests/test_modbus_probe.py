"""``edge-agent probe modbus`` through the real console script, against simulated devices
on 127.0.0.1 and on a pseudo-terminal serial line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus import ModbusPoint
from tests.support import ThreadedDevice, free_port, run_cli
from tests.test_modbus_rtu import serial_line


def _p(**fields: Any) -> ModbusPoint:
    return ModbusPoint.model_validate(fields)


PANEL = [
    _p(name="pressure", table="input", address=0, type="float32", order="CDAB", unit="bar"),
    _p(name="flow", table="input", address=2, type="float32", order="CDAB", unit="m3/h"),
    _p(name="temperature", table="holding", address=10, type="int16", scale=0.1, unit="°C"),
    _p(name="label", table="holding", address=20, type="string", length=3),
    _p(name="pump", table="coil", address=4, type="bool"),
]


@pytest.fixture
def panel() -> Iterator[ThreadedDevice]:
    device = ThreadedDevice(PANEL, sparse=True).start()
    device.set("pressure", -1.5)
    device.set("flow", 12.25)
    device.set("temperature", -12.3)
    device.set("label", "P-7")
    device.set("pump", True)
    yield device
    device.close()


def probe(*args: str) -> tuple[int, Any, str]:
    # A wide terminal, so that rich keeps each row on one line.
    result = run_cli("edge-agent", "probe", "modbus", *args, timeout=30, env={"COLUMNS": "200"})
    out = (
        json.loads(result.stdout) if "--json" in args and result.returncode == 0 else result.stdout
    )
    return result.returncode, out, result.stderr


def test_a_register_range_decodes_as_the_type_and_order_given(panel: ThreadedDevice) -> None:
    code, out, err = probe(
        "--host", "127.0.0.1", "--port", str(panel.port), "--table", "input",
        "--address", "0", "--count", "4", "--type", "float32", "--order", "CDAB", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert out["bus"] == f"127.0.0.1:{panel.port}" and out["unit"] == 1
    rows = [(p["address"], p["registers"], p["value"], p["quality"]) for p in out["points"]]
    assert rows == [(0, [0x0000, 0xBFC0], -1.5, "good"), (2, [0x0000, 0x4144], 12.25, "good")]


def test_a_register_range_prints_hex_decimal_and_value(panel: ThreadedDevice) -> None:
    code, out, err = probe(
        "--host", "127.0.0.1", "--port", str(panel.port), "--table", "holding",
        "--address", "20", "--count", "3", "--type", "string",
    )  # fmt: skip
    assert code == 0, err
    assert f"unit 1 on 127.0.0.1:{panel.port}" in out
    row = next(line for line in out.splitlines() if "r20" in line)
    assert "502D 3700 0000" in row and "20525 14080 0" in row  # "P-", "7" NUL, NUL NUL
    assert "'P-7'" in row and "good" in row


def test_a_configured_device_prints_every_point(panel: ThreadedDevice, tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    points = [p.model_dump(exclude_defaults=True) for p in PANEL]
    points.append({"name": "ghost", "table": "holding", "address": 11, "type": "uint16"})
    device = {"id": "panel-1", "modbus": {"host": "127.0.0.1", "port": panel.port}}
    config.write_text(
        "gateway: {id: gw-1}\ndevices:\n  - " + json.dumps({**device, "points": points}) + "\n"
    )

    code, out, err = probe("-c", str(config), "--device", "panel-1", "--json")

    assert code == 0, err
    got = {p["name"]: p for p in out["points"]}
    assert list(got) == [p["name"] for p in points]  # config order
    assert got["temperature"]["registers"] == [0x10000 - 123]
    assert got["temperature"]["value"] == pytest.approx(-12.3)
    assert got["temperature"]["unit"] == "°C" and got["temperature"]["address"] == 10
    assert got["pressure"]["value"] == -1.5 and got["label"]["value"] == "P-7"
    assert got["pump"] == got["pump"] | {"registers": [1], "value": True, "quality": "good"}
    assert got["ghost"]["quality"] == "bad" and got["ghost"]["registers"] == []
    assert got["ghost"]["reason"] == "exception 2: illegal data address"

    code, table, err = probe("-c", str(config), "--device", "panel-1")
    assert code == 0, err
    assert "exception 2" in table and "ghost" in table and "°C" in table


def test_probing_over_an_rtu_serial_line(tmp_path: Path) -> None:
    with serial_line(tmp_path) as (devices_end, master_end):
        device = ThreadedDevice(PANEL, serial=devices_end, unit=5).start()
        try:
            device.set("temperature", 21.5)
            code, out, err = probe(
                "--serial", master_end, "--baudrate", "19200", "--parity", "N", "--unit", "5",
                "--address", "10", "--type", "int16", "--json",
            )  # fmt: skip
        finally:
            device.close()
    assert code == 0, err
    assert out["bus"] == master_end and out["unit"] == 5
    assert [(p["registers"], p["value"]) for p in out["points"]] == [([215], 215)]


def test_an_unreachable_device_is_one_line_and_exit_1(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    code, out, err = probe("--host", "127.0.0.1", "--port", str(port), "--json")
    assert code == 1
    assert out == ""
    assert err.strip() == f"error: cannot read unit 1 on 127.0.0.1:{port}: connect failed"


def test_a_silent_unit_is_a_timeout_and_exit_1(panel: ThreadedDevice) -> None:
    code, _, err = probe("--host", "127.0.0.1", "--port", str(panel.port), "--unit", "9",
                         "--timeout", "0.3")  # fmt: skip
    assert code == 1
    assert err.strip() == f"error: cannot read unit 9 on 127.0.0.1:{panel.port}: timeout"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give --host (Modbus TCP) or --serial"),
        (("--host", "h", "--serial", "/dev/ttyS0"), "--host or --serial, not both"),
        (("--host", "h", "--type", "float32", "--count", "3"), "--count 3 is not a whole number"),
        (("--host", "h", "--order", "XYZW"), "--order: Input should be"),
        (("--host", "h", "--table", "coils"), "--table: Input should be"),
        (("-c", "agent.yaml"), "-c/--config and --device go together"),
        (("-c", "x.yaml", "--device", "d", "--host", "h"), "not both"),
    ],
)
def test_a_wrong_command_line_is_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    code, _, err = probe(*args)
    assert code == 2
    assert err.startswith("error: ") and message in err, err


def test_an_unknown_device_names_the_known_ones(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "gateway: {id: gw-1}\ndevices:\n"
        "  - {id: a, modbus: {host: h}, points: [{name: p, table: coil, address: 0, type: bool}]}\n"
    )
    code, _, err = probe("-c", str(config), "--device", "b")
    assert code == 2
    assert err.strip() == f"error: no device 'b' in {config} (devices: a)"


def test_probe_is_listed_in_the_agents_help() -> None:
    result = run_cli("edge-agent", "--help")
    assert "probe" in result.stdout
    result = run_cli("edge-agent", "probe", "--help")
    assert "modbus" in result.stdout and "raw and decoded" in result.stdout
