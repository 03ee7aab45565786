"""The host pass: ``edge-agent check`` refuses what ``run`` would refuse, the same way.

Every file a config names is there, readable, and what it should be; ``run`` says the same
problems as ``file:line: field: message`` and exits 2 (never a traceback, which systemd
would restart in a loop); ``check --schema-only`` checks the file on its own."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from edge_agent.app import run_agent
from edge_agent.config import ConfigError, check_host, load_config
from edge_agent.contract.commands import generate_keys
from tests.pki import Authority
from tests.support import free_port, run_cli

DEVICE = """\
devices:
  - id: tank-1
    modbus: {host: 127.0.0.1, port: 5020, unit: 1}
    points:
      - {name: level, table: holding, address: 103, type: uint16}
"""


def write_config(tmp_path: Path, central: str, devices: str = DEVICE) -> Path:
    """An agent config whose ``central:`` section holds ``central`` (lines 3 on)."""
    f = tmp_path / "agent.yaml"
    f.write_text(
        f"gateway: {{id: gw-1}}\ncentral:\n{central}outbox: {{path: ./outbox.db}}\n{devices}"
    )
    return f


def broker_url() -> str:
    return f"mqtt://127.0.0.1:{free_port()}"


def check(f: Path, *args: str) -> tuple[int, list[str]]:
    out = run_cli("edge-agent", "check", "-c", str(f), *args)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, out.stderr.splitlines()


def run(f: Path) -> tuple[int, list[str]]:
    out = run_cli("edge-agent", "run", "-c", str(f), timeout=30)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, out.stderr.splitlines()


def test_the_readme_example_password_file_missing_is_refused_by_check_and_run(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "broker.pass"
    f = write_config(
        tmp_path,
        f'  url: "{broker_url()}"\n  username: gw-1\n  password_file: {missing}\n',
    )
    expected = f"{f}:5: central.password_file: {missing}: no such file or directory"
    code, lines = check(f)
    assert code == 2 and expected in lines, lines
    code, lines = run(f)
    assert code == 2 and expected in lines, lines
    assert not (tmp_path / "outbox.db").exists()  # refused before anything started
    # written away from the gateway: the file on its own is fine
    code, lines = check(f, "--schema-only")
    assert code == 0, lines


def test_a_password_file_that_is_a_folder_or_empty_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "pass.d"
    folder.mkdir()
    f = write_config(
        tmp_path, f'  url: "{broker_url()}"\n  username: gw-1\n  password_file: {folder}\n'
    )
    code, lines = check(f)
    assert code == 2 and f"{f}:5: central.password_file: {folder} is a folder, not a file" in lines
    empty = tmp_path / "empty.pass"
    empty.write_text("\n")
    f.write_text(f.read_text().replace(str(folder), str(empty)))
    code, lines = check(f)
    assert code == 2 and f"{f}:5: central.password_file: {empty} is empty" in lines


def test_the_command_key_must_be_the_centers_ed25519_public_key(tmp_path: Path) -> None:
    private = tmp_path / "center.key"
    public = generate_keys(private)
    hostname = tmp_path / "hostname"
    hostname.write_text("gw-1\n")
    missing = tmp_path / "nope.pub"
    field = "central.command_key"
    cases = {
        missing: f"{missing}: no such file or directory",
        hostname: f"{hostname} is not a PEM public key",
        private: f"{private} is a private key: give the center's public key",
    }
    for key, message in cases.items():
        f = write_config(tmp_path, f'  url: "{broker_url()}"\n  command_key: {key}\n')
        for command in (check, run):
            code, lines = command(f)
            assert code == 2, (command, lines)
            assert any(line.startswith(f"{f}:4: {field}: {message}") for line in lines), lines
    f = write_config(tmp_path, f'  url: "{broker_url()}"\n  command_key: {public}\n')
    code, lines = check(f)
    assert code == 0, lines


def test_tls_files_are_checked_again_missing_ca_not_pem_and_a_key_of_another_cert(
    tmp_path: Path,
) -> None:
    ca = Authority(tmp_path / "ca")
    gw, other = ca.client("gw-1"), ca.client("other")
    url = f"mqtts://127.0.0.1:{free_port()}"
    missing = tmp_path / "missing-ca.pem"
    f = write_config(tmp_path, f'  url: "{url}"\n  ca_file: {missing}\n')
    code, lines = check(f)
    assert code == 2 and f"{f}:4: central.ca_file: {missing}: no such file or directory" in lines
    f = write_config(tmp_path, f'  url: "{url}"\n  ca_file: {gw.key}\n')
    code, lines = check(f)
    assert code == 2
    assert any(line.startswith(f"{f}:4: central.ca_file: {gw.key} is not a PEM") for line in lines)
    f = write_config(
        tmp_path,
        f'  url: "{url}"\n  ca_file: {ca.ca_file}\n'
        f"  cert_file: {gw.cert}\n  key_file: {other.key}\n",
    )
    code, lines = check(f)
    assert code == 2
    assert f"{f}:6: central.key_file: {other.key} is not the key of the certificate {gw.cert}" in (
        lines
    )
    f = write_config(
        tmp_path,
        f'  url: "{url}"\n  ca_file: {ca.ca_file}\n  cert_file: {gw.cert}\n  key_file: {gw.key}\n',
    )
    code, lines = check(f)
    assert code == 0, lines


def test_a_serial_port_must_be_a_character_device(tmp_path: Path) -> None:
    plain = tmp_path / "ttyUSB0"
    plain.write_text("")

    def serial_config(port: str) -> Path:
        devices = DEVICE.replace("host: 127.0.0.1, port: 5020", f"serial: {port}")
        return write_config(tmp_path, f'  url: "{broker_url()}"\n', devices)

    f = serial_config("/dev/ttyEDGEFLEET9")
    code, lines = check(f)
    field = "devices[0].modbus.serial"
    assert code == 2 and f"{f}:7: {field}: /dev/ttyEDGEFLEET9: no such file or directory" in lines
    f = serial_config(str(plain))
    code, lines = check(f)
    assert f"{f}:7: {field}: {plain} is not a serial port (not a character device)" in lines
    controller, line = os.openpty()  # a real serial line's end: a pseudo-terminal
    try:
        f = serial_config(os.ttyname(line))
        code, lines = check(f)
        assert code == 0, lines
    finally:
        os.close(controller)
        os.close(line)


@pytest.mark.parametrize(
    ("section", "field", "needle"),
    [
        (
            "    opcua: {endpoint: 'opc.tcp://127.0.0.1:4840', username: u, "
            "password_file: /nonexistent/opc.pass}\n",
            "devices[0].opcua.password_file",
            "/nonexistent/opc.pass: no such file or directory",
        ),
        (
            "    opcua: {endpoint: 'opc.tcp://127.0.0.1:4840', "
            "certificate: {cert: /etc/hostname, key: /etc/hostname}}\n",
            "devices[0].opcua.certificate.cert",
            "/etc/hostname is not an X.509 certificate",
        ),
        (
            "    mqtt: {url: 'mqtt://127.0.0.1:1883', topic: s/+/up, username: u, "
            "password_file: /nonexistent/mqtt.pass}\n",
            "devices[0].mqtt.password_file",
            "/nonexistent/mqtt.pass: no such file or directory",
        ),
    ],
)
def test_each_driver_names_its_own_files(
    tmp_path: Path, section: str, field: str, needle: str
) -> None:
    points = (
        "      - {name: level, node: 'ns=2;s=level'}\n"
        if "opcua" in section
        else "      - {name: level, path: level}\n"
    )
    f = write_config(
        tmp_path,
        f'  url: "{broker_url()}"\n',
        f"devices:\n  - id: dev-1\n{section}    points:\n{points}",
    )
    code, lines = check(f)
    assert code == 2
    assert any(line.startswith(f"{f}:7: {field}: {needle}") for line in lines), lines
    assert check(f, "--schema-only")[0] == 0


def test_every_host_problem_comes_in_one_round(tmp_path: Path) -> None:
    f = write_config(
        tmp_path,
        f'  url: "{broker_url()}"\n  username: gw-1\n'
        f"  password_file: {tmp_path / 'a.pass'}\n  command_key: {tmp_path / 'c.pub'}\n",
        DEVICE.replace("host: 127.0.0.1, port: 5020", "serial: /dev/ttyEDGEFLEET9"),
    )
    code, lines = check(f)
    assert code == 2
    fields = [line.split(": ")[1] for line in lines[:-1]]
    assert fields == ["central.password_file", "central.command_key", "devices[0].modbus.serial"]
    assert lines[-1] == f"{f}: 3 problems"


async def test_a_command_key_broken_after_the_check_stops_run_as_a_config_problem(
    tmp_path: Path,
) -> None:
    """The host pass ran, then the file changed: the agent still says it as a problem at
    its line (run prints it and exits 2), before it opens anything."""
    key = tmp_path / "center.pub"
    generate_keys(tmp_path / "center.key")
    f = write_config(tmp_path, f'  url: "{broker_url()}"\n  command_key: {key}\n')
    loaded = check_host(load_config(f))
    key.write_text("not a key any more\n")
    with pytest.raises(ConfigError) as info:
        await run_agent(loaded, asyncio.Event())
    (problem,) = info.value.problems
    assert (problem.line, problem.field) == (4, "central.command_key")
    assert not (tmp_path / "outbox.db").exists()


def test_an_opcua_certificate_and_its_key_are_checked_for_what_they_are(tmp_path: Path) -> None:
    issued = Authority(tmp_path / "ca").client("agent")

    def opcua_config(cert: Path, key: Path) -> Path:
        section = (
            "    opcua: {endpoint: 'opc.tcp://127.0.0.1:4840', "
            f"certificate: {{cert: '{cert}', key: '{key}'}}}}\n"
        )
        points = "      - {name: level, node: 'ns=2;s=level'}\n"
        return write_config(
            tmp_path,
            f'  url: "{broker_url()}"\n',
            f"devices:\n  - id: plc-1\n{section}    points:\n{points}",
        )

    assert check(opcua_config(issued.cert, issued.key))[0] == 0
    f = opcua_config(issued.cert, issued.cert)  # the certificate where the key goes
    code, lines = check(f)
    assert code == 2
    field = "devices[0].opcua.certificate.key"
    assert f"{f}:7: {field}: {issued.cert} is not a private key (PEM or DER)" in lines, lines
