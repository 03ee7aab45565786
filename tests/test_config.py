from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config
from tests.support import run_cli

DATA = Path(__file__).parent / "data"

GOOD = """\
gateway: {id: jingan-0001, site: "Jing'an / West Nanjing Rd 1266", tags: {district: jingan}}
central: {url: "mqtt://127.0.0.1:1883", topic_root: edgefleet/v1}
outbox: {path: ./outbox.db, max_mb: 256}
devices:
  - id: tank-1
    modbus: {host: 127.0.0.1, port: 5020, unit: 1}
    poll_s: 1
    points:
      - {name: level, table: holding, address: 103, type: uint16, scale: 0.001, unit: m}
      - {name: pressure, table: input, address: 0, type: float32, order: CDAB, unit: MPa}
      - {name: smoke_alarm, table: holding, address: 110, type: bit, bit: 0}
      - {name: door_closed, table: discrete, address: 0, type: bool}
"""


def test_the_documented_example_loads(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(GOOD)
    loaded = load_config(f)
    cfg = loaded.config
    assert cfg.gateway.id == "jingan-0001"
    assert cfg.central.broker.port == 1883
    assert cfg.outbox.path == tmp_path / "outbox.db"  # relative to the file, not the cwd
    assert [p.name for p in cfg.devices[0].points] == [
        "level",
        "pressure",
        "smoke_alarm",
        "door_closed",
    ]
    assert len(loaded.revision) == 12


def test_unknown_key_wrong_type_and_bad_address_all_reported_with_lines() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DATA / "agent-bad.yaml")
    got = [(p.line, p.field) for p in info.value.problems]
    assert got == [
        (5, "devices[0].modbus.hots"),
        (9, "devices[0].points[1].scale"),
        (10, "devices[0].points[2].address"),
    ]
    assert "unknown key" in info.value.problems[0].message


def test_check_command_prints_file_line_field_and_exits_2() -> None:
    bad = DATA / "agent-bad.yaml"
    result = run_cli("edge-agent", "check", "-c", str(bad))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert f"{bad}:5: devices[0].modbus.hots: unknown key (misspelt, or not valid here)" in lines
    assert any(line.startswith(f"{bad}:9: devices[0].points[1].scale: ") for line in lines)
    assert any(line.startswith(f"{bad}:10: devices[0].points[2].address: ") for line in lines)


def test_agent_refuses_to_start_on_a_bad_file(tmp_path: Path) -> None:
    result = run_cli("edge-agent", "run", "-c", str(DATA / "agent-bad.yaml"), timeout=20)
    assert result.returncode == 2
    assert "devices[0].modbus.hots" in result.stderr
    assert not (tmp_path / "outbox.db").exists()


def test_check_command_accepts_a_good_file(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(GOOD)
    result = run_cli("edge-agent", "check", "-c", str(f))
    assert result.returncode == 0, result.stderr
    assert "ok - gateway jingan-0001, 1 device(s), 4 point(s)" in result.stdout


DEVICE_D = (
    "  - {id: d, modbus: {host: h}, points: [{name: p, table: holding, address: 1, type: int16}]}\n"
)


@pytest.mark.parametrize(
    ("text", "line", "field", "needle"),
    [
        ("gateway: {id: a/b}\n", 1, "gateway.id", "String should match pattern"),
        ("gateway: {id: g}\ngateway: {id: h}\n", 2, "gateway", "appears twice"),
        ("gateway: {id: g}\ncentral: {url: 'http://x'}\n", 2, "central.url", "mqtt://"),
        (
            "gateway: {id: g}\ndevices:\n  - {id: d, poll_s: 1, points: []}\n",
            3,
            "devices[0]",
            "exactly one protocol section",
        ),
        ("gateway: [\n", 2, "(yaml)", ""),
        ("devices: []\n", 1, "gateway", "required key is missing"),
        (
            "gateway: {id: g}\ndevices:\n" + DEVICE_D + DEVICE_D,
            4,
            "devices[1].id",
            "already used",
        ),
    ],
)
def test_problem_locations(tmp_path: Path, text: str, line: int, field: str, needle: str) -> None:
    f = tmp_path / "a.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    first = info.value.problems[0]
    assert (first.line, first.field) == (line, field), str(info.value)
    assert needle in first.message
