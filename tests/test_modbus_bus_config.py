"""Where a Modbus device is: TCP, RTU on a serial port, RTU over TCP; and the devices that
share a bus agreeing on it. Checked through the agent's own loader, so every problem comes
with the file's line, as a technician sees it from ``edge-agent check``."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.modbus import ModbusDevice
from edge_agent.config import ConfigError, load_config
from tests.support import run_cli

HEAD = "gateway: {id: gw-1}\ndevices:\n"
POINTS = "    points: [{name: p, table: holding, address: 0, type: uint16}]\n"


def device(dev_id: str, modbus: str) -> str:
    return f"  - id: {dev_id}\n    modbus: {modbus}\n{POINTS}"


def write(tmp_path: Path, *devices: str) -> Path:
    f = tmp_path / "agent.yaml"
    f.write_text(HEAD + "".join(devices))
    return f


def test_the_three_transports_load(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        device("tcp", "{host: 10.0.4.17, port: 502, unit: 1}"),
        device("rtu", "{serial: /dev/ttyUSB0, baudrate: 9600, parity: E, stopbits: 1, unit: 7}"),
        device("gateway", "{host: 10.0.0.9, port: 4001, framer: rtu, unit: 3}"),
        device("defaults", "{serial: /dev/ttyS1, parity: none, unit: 2}"),
    )
    devices = load_config(f).config.devices
    assert all(isinstance(d, ModbusDevice) for d in devices)
    conns = [d.modbus for d in devices if isinstance(d, ModbusDevice)]
    assert [(c.bus, c.framing) for c in conns] == [
        ("10.0.4.17:502", "tcp"),
        ("/dev/ttyUSB0", "rtu"),
        ("10.0.0.9:4001", "rtu"),
        ("/dev/ttyS1", "rtu"),
    ]
    assert conns[1].bus_settings == {"baudrate": 9600, "parity": "E", "stopbits": 1, "bytesize": 8}
    # Unsaid, the serial-line specification's defaults: 19200 baud, 1 stop bit, 8 bits.
    assert (conns[3].baudrate, conns[3].parity, conns[3].stopbits) == (19200, "N", 1)
    # serial ports of a gateway, not of this host: the file on its own
    result = run_cli("edge-agent", "check", "--schema-only", "-c", str(f))
    assert result.returncode == 0, result.stderr
    assert "4 device(s)" in result.stdout


@pytest.mark.parametrize(
    ("modbus", "field", "needle"),
    [
        ("{unit: 1}", "host", "give host (Modbus TCP) or serial"),
        ("{host: h, serial: /dev/ttyS0}", "serial", "exclude each other"),
        ("{serial: /dev/ttyS0, port: 502}", "port", "a serial device has none"),
        ("{serial: /dev/ttyS0, framer: tcp}", "framer", "framer tcp needs host"),
        ("{host: h, baudrate: 9600}", "baudrate", "applies to a serial line"),
        ("{host: h, parity: E}", "parity", "applies to a serial line"),
        ("{serial: /dev/ttyS0, parity: X}", "parity", "'N', 'E' or 'O'"),
        ("{serial: /dev/ttyS0, stopbits: 3}", "stopbits", "1 or 2"),
        ("{serial: /dev/ttyS0, bytesize: 7}", "bytesize", "8 data bits"),
        ("{serial: /dev/ttyS0, unit: 0}", "unit", "broadcast"),
        ("{host: h, framer: rtu, unit: 0}", "unit", "broadcast"),
        ("{host: h, framer: ascii}", "framer", "'tcp' or 'rtu'"),
        ("{serial: /dev/ttyS0, baud: 9600}", "baud", "unknown key"),
    ],
)
def test_a_wrong_connection_is_reported_at_its_field_and_line(
    tmp_path: Path, modbus: str, field: str, needle: str
) -> None:
    f = write(tmp_path, device("ok", "{host: h}"), device("bad", modbus))
    with pytest.raises(ConfigError) as info:
        load_config(f)
    problem = info.value.problems[0]
    assert (problem.line, problem.field) == (7, f"devices[1].modbus.{field}"), str(info.value)
    assert needle in problem.message, problem.message


def test_devices_on_one_serial_line_must_agree_on_its_settings(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        device("a", "{serial: /dev/ttyS1, baudrate: 9600, parity: E, unit: 1}"),
        device("b", "{serial: /dev/ttyS1, baudrate: 9600, parity: E, unit: 2}"),
        device("c", "{serial: /dev/ttyS1, baudrate: 19200, parity: N, unit: 3}"),
        device("d", "{serial: /dev/ttyS2, baudrate: 19200, parity: N, unit: 3}"),
    )
    with pytest.raises(ConfigError) as info:
        load_config(f)
    got = [(p.line, p.field, p.message) for p in info.value.problems]
    assert got == [
        (
            10,
            "devices[2].modbus.baudrate",
            "/dev/ttyS1 has baudrate 9600 in devices[0]; devices on one bus must agree",
        ),
        (
            10,
            "devices[2].modbus.parity",
            "/dev/ttyS1 has parity E in devices[0]; devices on one bus must agree",
        ),
    ]
    result = run_cli("edge-agent", "check", "-c", str(f))
    assert result.returncode == 2
    assert f"{f}:10: devices[2].modbus.baudrate: /dev/ttyS1 has baudrate 9600" in result.stderr


def test_one_tcp_endpoint_speaks_one_framer(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        device("a", "{host: 10.0.0.9, port: 4001, framer: rtu, unit: 1}"),
        device("b", "{host: 10.0.0.9, port: 4001, unit: 2}"),
        device("c", "{host: 10.0.0.9, port: 502, unit: 2}"),
    )
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert [(p.field, p.message) for p in info.value.problems] == [
        (
            "devices[1].modbus.framer",
            "10.0.0.9:4001 has framer rtu in devices[0]; devices on one bus must agree",
        )
    ]
