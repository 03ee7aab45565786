"""Device profiles: the shipped library passes its schema, devices are built from profiles
with single points overridden, and every mistake is reported with its file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.mqtt.config import MqttPoint
from drivers.opcua.config import OpcUaPoint
from edge_agent.config import ConfigError, load_config
from edge_agent.config.profiles import BUILTIN, ProfileError, ProfileLibrary, load_profile
from tests.support import run_cli

SHIPPED = sorted(BUILTIN.glob("*/*/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(BUILTIN)) for p in SHIPPED])
def test_every_shipped_profile_passes_the_schema(path: Path) -> None:
    profile = load_profile(path).profile
    assert all(isinstance(v, str) for v in profile.firmware)
    assert path.stem in profile.firmware
    assert profile.source.strip() and profile.title.strip()
    # the map is documented and simulated: every point it can serve moves or holds a value
    names = profile.point_names
    assert set(profile.simulation) <= set(names)
    assert profile.simulation, "a profile the simulator cannot serve is not covered end to end"
    point_model = {"modbus": ModbusPoint, "opcua": OpcUaPoint, "mqtt": MqttPoint}
    assert all(type(p) is point_model[profile.protocol] for p in profile.points), names
    assert all(rule.device is None for rule in profile.rules)


def test_the_library_lists_every_shipped_file_once_without_problems() -> None:
    loaded, problems = ProfileLibrary().load_all()
    assert problems == []
    assert sorted(lp.path for lp in loaded) == SHIPPED
    refs = [lp.profile.ref() for lp in loaded]
    assert len(refs) == len(set(refs))
    out = run_cli("edge-agent", "profiles", "list", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert {row["ref"] for row in listed} == set(refs)
    assert {row["protocol"] for row in listed} == {"modbus", "mqtt", "opcua"}


def test_show_names_the_source_and_keeps_versions_as_strings() -> None:
    out = run_cli("edge-agent", "profiles", "show", "acme/pt-420@3.10", "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["firmware"] == ["3.2", "3.10"]  # 3.10 did not become 3.1
    assert "invented for the simulator" in shown["source"]
    assert [p["name"] for p in shown["points"]][:2] == ["pressure", "loop_current"]
    assert shown["file"].endswith("acme/pt-420/3.2.yaml")
    table = run_cli("edge-agent", "profiles", "show", "acme/lift-monitor@2.4")
    assert table.returncode == 0 and "person_in_car" in table.stdout
    missing = run_cli("edge-agent", "profiles", "show", "acme/sd-2000@9.9")
    assert missing.returncode == 2
    assert "no profile of acme/sd-2000 covers firmware 9.9 (known: 1.4, 1.5)" in missing.stderr


# --- devices built from profiles ------------------------------------------------------------

LIFT = """\
gateway: {id: gw-1}
rule_packs: [elevator]
devices:
  - id: lift-7
    profile: acme/lift-monitor@2.3
    modbus: {host: 10.1.2.7, port: 502, unit: 3}
    poll_s: 2
    points:
      - {name: speed, scale: 0.001}
      - {name: floor, unit: level}
"""


def config(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "agent.yaml"
    f.write_text(text)
    return f


def test_a_device_from_a_profile_with_two_points_overridden(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, LIFT)).config
    (dev,) = cfg.devices
    assert isinstance(dev, ModbusDevice)
    assert dev.modbus.host == "10.1.2.7" and dev.modbus.unit == 3
    assert dev.modbus.timeout_s == 1.0  # the profile's connection default
    assert dev.poll_s == 2  # the device's own key wins over the profile's 0.5
    points = {p.name: p for p in dev.points}
    assert len(points) == 18 and next(iter(points)) == "status"  # the profile's order
    assert (points["speed"].scale, points["speed"].address, points["speed"].type) == (
        0.001,
        3,
        "int16",
    )
    assert (points["floor"].unit, points["floor"].address) == ("level", 2)
    assert cfg.device_profiles["lift-7"].ref == "acme/lift-monitor@2.3"
    rules = {c.rule.id for c in cfg.compiled_rules()}
    assert {"lift23.alarm_button", "lift23.speed_abnormal", "lift.trapped"} <= rules


def test_a_profile_can_be_named_by_any_version_it_covers(tmp_path: Path) -> None:
    text = LIFT.replace("acme/lift-monitor@2.3", "acme/lift-monitor@2.4")
    cfg = load_config(config(tmp_path, text)).config
    assert cfg.device_profiles["lift-7"].file.endswith("lift-monitor/2.3.yaml")


BAD_DEVICES = """\
gateway: {id: gw-1}
devices:
  - id: lift-7
    profile: acme/lift-monitor@2.3
    modbus: {host: 10.1.2.7}
    points:
      - {name: floor, unit: level}
      - {name: sped, scale: 0.1}
      - {name: running, type: uint16}
  - id: det-1
    profile: acme/sd-3000@1.0
    modbus: {host: 10.1.2.8}
  - id: det-2
    profile: acme/sd-2000@7.1
    modbus: {host: 10.1.2.9}
  - id: pumps
    profile: acme/ps-plc@1.0
    modbus: {host: 10.1.2.9}
"""


def test_unknown_points_profiles_and_versions_are_errors_at_their_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config(tmp_path, BAD_DEVICES))
    got = {(p.line, p.field): p.message for p in info.value.problems}
    assert got[(8, "devices[0].points[1].name")].startswith(
        "'sped' is not a point of profile acme/lift-monitor@2.3 (its points: status, running"
    )
    # merged with the profile's point, the override leaves `bit: 0` on a uint16: its line
    assert got[(9, "devices[0].points[2].bit")].startswith("only type bit takes bit")
    assert "(profile point" not in got[(9, "devices[0].points[2].bit")]
    assert got[(11, "devices[1].profile")].startswith("no profile acme/sd-3000; known: acme/")
    assert got[(14, "devices[2].profile")] == (
        "no profile of acme/sd-2000 covers firmware 7.1 (known: 1.4, 1.5)"
    )
    assert got[(18, "devices[3].modbus")].startswith("acme/ps-plc@1.0 is a opcua device")
    assert len(got) == 5, got


def test_check_prints_profile_problems_as_file_line_field(tmp_path: Path) -> None:
    f = config(tmp_path, BAD_DEVICES)
    out = run_cli("edge-agent", "check", "-c", str(f))
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert any(
        line.startswith(f"{f}:8: devices[0].points[1].name: 'sped' is not") for line in lines
    )
    assert any(
        line.startswith(f"{f}:11: devices[1].profile: no profile acme/sd-3000") for line in lines
    )
    assert lines[-1] == f"{f}: 5 problems"


def write_profile(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


DETECTOR = """\
vendor: acme
model: det
firmware: {firmware}
title: A test detector
protocol: modbus
source: invented for this test
points:
  - {{name: smoke, table: input, address: 0, type: float32, unit: "%/m"}}
  - {{name: alarm, table: discrete, address: 0, type: bool}}
rules:
  - {{id: det.alarm, when: "alarm", severity: critical}}
"""


def test_a_float_firmware_version_is_an_error_in_the_profile_and_at_the_device(
    tmp_path: Path,
) -> None:
    profile = write_profile(
        tmp_path / "profiles", "acme/det/2.10.yaml", DETECTOR.format(firmware="[2.10]")
    )
    f = config(
        tmp_path,
        "gateway: {id: gw-1}\nprofile_dirs: [profiles]\ndevices:\n"
        "  - id: det-1\n    profile: acme/det@2.10\n    modbus: {host: 10.0.0.1}\n",
    )
    out = run_cli("edge-agent", "check", "-c", str(f))
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    expected = f"{profile}:3: firmware[0]: a firmware version must be a quoted string, not "
    assert any(line.startswith(expected + "the number 2.1") for line in lines), lines
    assert f"{f}:5: devices[0].profile: profile acme/det@2.10 has problems in {profile}" in lines
    # the same file, listed on its own: exit 2 and the same line
    listed = run_cli("edge-agent", "profiles", "list", "--dir", str(tmp_path / "profiles"))
    assert listed.returncode == 2
    assert any(
        line.startswith(f"{profile}:3: firmware[0]: ") for line in listed.stderr.splitlines()
    )


def test_profile_dirs_come_first_so_a_site_can_correct_a_map(tmp_path: Path) -> None:
    text = DETECTOR.format(firmware='["1.4"]').replace("model: det", "model: sd-2000")
    write_profile(tmp_path / "site", "acme/sd-2000/1.4.yaml", text)
    f = config(
        tmp_path,
        "gateway: {id: gw-1}\nprofile_dirs: [site]\ndevices:\n"
        "  - id: det-1\n    profile: acme/sd-2000@1.4\n    modbus: {host: 10.0.0.1}\n"
        "  - id: det-2\n    profile: acme/sd-2000@1.5\n    modbus: {host: 10.0.0.2}\n",
    )
    cfg = load_config(f).config
    assert [p.name for p in cfg.devices[0].points] == ["smoke", "alarm"]  # the site's
    assert len(cfg.devices[1].points) == 11  # 1.5: only the shipped profile covers it


@pytest.mark.parametrize(
    ("rel", "change", "line", "field", "needle"),
    [
        ("acme/det/1.0.yaml", {"firmware": '["1.1"]'}, 3, "firmware", "named 1.0.yaml"),
        ("acme/dot/1.0.yaml", {}, 2, "model", "'det' is not the model folder 'dot'"),
        ("acme/det/1.0.yaml", {"firmware": '["1.0", "1.0"]'}, 3, "firmware", "listed twice"),
        ("acme/det/1.0.yaml", {"firmware": "[1]"}, 3, "firmware[0]", "not the number 1"),
        (
            "acme/det/1.0.yaml",
            {"smoke, table": "smoke, tabel"},
            8,
            "points[0].tabel",
            "unknown key",
        ),
        (
            "acme/det/1.0.yaml",
            {"address: 0, type: float32": "address: 0, type: bit"},
            8,
            "points[0].bit",
            "needs bit",
        ),
        (
            "acme/det/1.0.yaml",
            {'when: "alarm"': 'when: "alarn"'},
            11,
            "rules[0].when",
            "unknown point alarn",
        ),
        (
            "acme/det/1.0.yaml",
            {"{id: det.alarm,": "{id: det.alarm, device: d1,"},
            11,
            "rules[0].device",
            "leave device out",
        ),
        ("acme/det/1.0.yaml", {"protocol: modbus": "protocol: bacnet"}, 5, "protocol", "'modbus'"),
        ("acme/det/1.0.yaml", {"source: invented for this test\n": ""}, 1, "source", "required"),
    ],
)
def test_profile_mistakes_are_reported_at_their_line(
    tmp_path: Path, rel: str, change: dict[str, str], line: int, field: str, needle: str
) -> None:
    text = DETECTOR.format(firmware='["1.0"]')
    for old, new in change.items():
        if old == "firmware":
            text = text.replace('firmware: ["1.0"]', f"firmware: {new}")
        else:
            assert old in text, old
            text = text.replace(old, new)
    path = write_profile(tmp_path, rel, text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    got = [(p.line, p.field, p.message) for p in info.value.problems]
    assert any((ln, fd) == (line, field) and needle in msg for ln, fd, msg in got), got


def test_simulation_and_defaults_are_checked_against_the_points(tmp_path: Path) -> None:
    text = DETECTOR.format(firmware='["1.0"]') + (
        "device: {id: x, poll_s: 0}\n"
        "simulation:\n"
        "  smoke: {value: 0.1, noise: 0.01}\n"
        "  alarm: {expr: 'smok > 3'}\n"
        "  heat: {value: 20}\n"
    )
    path = write_profile(tmp_path, "acme/det/1.0.yaml", text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    got = {(p.line, p.field): p.message for p in info.value.problems}
    assert "not a default a profile can give" in got[(12, "device.id")]
    assert "greater than 0" in got[(12, "device.poll_s")]
    assert got[(15, "simulation.alarm")] == "'smok' is not a point of this device"
    assert got[(16, "simulation.heat")] == "'heat' is not a point of this device"


def test_two_files_covering_one_version_in_one_folder(tmp_path: Path) -> None:
    write_profile(tmp_path, "acme/det/1.0.yaml", DETECTOR.format(firmware='["1.0", "1.1"]'))
    write_profile(tmp_path, "acme/det/1.1.yaml", DETECTOR.format(firmware='["1.1"]'))
    _, problems = ProfileLibrary([tmp_path], builtin=False).load_all()
    assert [(p.field, p.message) for p in problems] == [
        ("firmware", f"acme/det@1.1 is also covered by {tmp_path / 'acme/det/1.0.yaml'}")
    ]


def test_an_mqtt_profile_makes_one_entry_for_every_detector(tmp_path: Path) -> None:
    f = config(
        tmp_path,
        "gateway: {id: gw-1}\nrule_packs: [smoke]\ndevices:\n"
        '  - id: "{id}"\n    profile: acme/ws-100@2.1\n'
        "    mqtt: {url: 'mqtt://127.0.0.1:1884'}\n    heartbeat_s: 7200\n",
    )
    cfg = load_config(f).config
    dev: Any = cfg.devices[0]
    assert dev.mqtt.topic == "ws100/+/up" and dev.mqtt.id_from == 1
    assert dev.heartbeat_s == 7200 and dev.templated
    assert cfg.device_profiles["{id}"].ref == "acme/ws-100@2.1"
