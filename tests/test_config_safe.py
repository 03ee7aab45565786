"""Config parsing is safe for a file from the center, and says every problem in one round.

Aliases, tags other than the plain types, deep nesting and numbers too long to read are
refused at their line, in agent configs, device profiles and sim files alike (one
loader); a bad value in one rule does not hide the mistakes of the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config
from edge_agent.config.profiles import ProfileError, load_profile
from edge_agent.config.yaml_lines import MAX_DEPTH, load_located
from sim.plan import load_sim
from sim.simfile import SimConfigError
from tests.support import run_cli

HEAD = 'gateway: {id: gw-1}\ncentral: {url: "mqtt://127.0.0.1:1883"}\n'


def problems_of(tmp_path: Path, text: str) -> list[tuple[int, str, str]]:
    f = tmp_path / "agent.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    return [(p.line, p.field, p.message) for p in info.value.problems]


def billion_laughs(levels: int) -> str:
    """Each level an anchored list of nine aliases of the one before: 9**levels nodes."""
    text = 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for n in range(1, levels + 1):
        text += f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]\n"
    return text


def test_aliases_are_refused_at_their_line_not_expanded(tmp_path: Path) -> None:
    got = problems_of(tmp_path, HEAD + billion_laughs(9))
    assert got[0] == (4, "l1[0]", "alias *l0 is not allowed: write the value out")
    assert got[-1][2] == "and more refused from here on"  # said, not flooded
    assert len(got) <= 21


def test_an_alias_inside_its_own_anchor_is_a_problem_not_a_recursion_error(
    tmp_path: Path,
) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text("gateway: &g {id: gw-1, self: *g}\n")
    out = run_cli("edge-agent", "check", "-c", str(f))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "RecursionError" not in out.stderr, out.stderr
    assert f"{f}:1: gateway.self: alias *g is not allowed: write the value out" in (
        out.stderr.splitlines()
    )


def test_a_5000_digit_port_is_refused_at_its_line(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(
        HEAD + "devices:\n  - id: tank-1\n"
        f"    modbus: {{host: 127.0.0.1, port: {'9' * 5000}}}\n"
        "    points: [{name: level, table: holding, address: 103, type: uint16}]\n"
    )
    out = run_cli("edge-agent", "check", "-c", str(f))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert (
        f"{f}:5: devices[0].modbus.port: a number of 5000 characters (at most 64)"
        in out.stderr.splitlines()
    )


@pytest.mark.parametrize(
    ("line", "field", "needle"),
    [
        ("  id: !!binary aGVsbG8=\n", "gateway.id", "tag !!binary is not allowed"),
        ("  id: !!python/object:os.system x\n", "gateway.id", "tag !!python/object:os.system"),
        ("  id: !custom gw-1\n", "gateway.id", "tag !custom is not allowed"),
        ("  site: 2024-01-01\n", "gateway.site", "'2024-01-01' reads as a timestamp: quote it"),
        ("  tags: !!set {a, b}\n", "gateway.tags", "tag !!set is not allowed"),
    ],
)
def test_tags_other_than_the_plain_types_are_refused_at_their_line(
    tmp_path: Path, line: str, field: str, needle: str
) -> None:
    got = problems_of(tmp_path, f"gateway:\n{line}")
    assert len(got) == 1 and got[0][:2] == (2, field) and needle in got[0][2], got


def test_plain_types_still_load() -> None:
    text = 'a: text\nb: 12\nc: 1.5\nd: yes\ne: null\nf: !!str 5\ng: "2024-01-01"\nh: [1, {i: j}]\n'
    data = load_located(text).data
    assert data == {
        "a": "text",
        "b": 12,
        "c": 1.5,
        "d": True,
        "e": None,
        "f": "5",
        "g": "2024-01-01",
        "h": [1, {"i": "j"}],
    }


def test_nesting_is_bounded(tmp_path: Path) -> None:
    deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    got = problems_of(tmp_path, f"{HEAD}rules: {deep}\n")
    assert len(got) == 1 and got[0][0] == 3 and "nested more than 64 levels" in got[0][2]
    very_deep = "[" * 100_000 + "]" * 100_000  # libyaml's own limit, said as a YAML error
    got = problems_of(tmp_path, f"{HEAD}rules: {very_deep}\n")
    assert len(got) == 1 and got[0][1] == "(yaml)"


def test_profiles_and_sim_files_use_the_same_safe_loader(tmp_path: Path) -> None:
    profile = tmp_path / "acme" / "det" / "1.0.yaml"
    profile.parent.mkdir(parents=True)
    profile.write_text("vendor: acme\nmodel: &m det\ntitle: *m\n")
    with pytest.raises(ProfileError) as info:
        load_profile(profile)
    assert [(p.line, p.field) for p in info.value.problems] == [(3, "title")]
    assert "alias *m is not allowed" in info.value.problems[0].message
    sim = tmp_path / "sim.yaml"
    sim.write_text("seed: !!binary aGVsbG8=\ngateways: []\n")
    with pytest.raises(SimConfigError) as sim_info:
        load_sim(sim)
    assert [(p.line, p.field) for p in sim_info.value.problems] == [(1, "seed")]


# --- every problem of a file in one round ---------------------------------------------------

RULES = """\
devices:
  - id: tank-1
    modbus: {host: 127.0.0.1, port: 5020, unit: 1}
    points:
      - {name: level, table: holding, address: 103, type: uint16}
rules:
  - {id: r1, device: tank-1, when: "level > 1", severity: urgent}
  - {id: r2, device: tank-1, when: "levle > 2"}
  - {id: r3, device: tank-9, when: "level > 3"}
  - {id: r4, device: tank-1, when: "level >", severity: minor}
  - {id: r5, device: tank-1, stuck_s: 60, point: depth}
"""


def test_a_bad_severity_does_not_hide_the_other_rule_errors(tmp_path: Path) -> None:
    got = problems_of(tmp_path, HEAD + RULES)
    assert [(line, field) for line, field, _ in got] == [
        (9, "rules[0].severity"),
        (10, "rules[1].when"),
        (11, "rules[2].device"),
        (12, "rules[3].when"),
        (13, "rules[4].point"),
    ], got
    assert "unknown point levle" in got[1][2]
    assert "no device 'tank-9'" in got[2][2]


def test_a_misspelt_key_does_not_hide_a_bad_scenario_in_a_sim_file(tmp_path: Path) -> None:
    f = tmp_path / "sim.yaml"
    f.write_text(
        "gateways:\n  - id: gw-1\n    devices:\n"
        "      - {id: wl-1, profile: acme/wl-300@1.0, scenaro: flood}\n"
        "      - {id: wl-2, profile: acme/wl-300@1.0, scenario: flod}\n"
        "      - {id: det-1, profile: acme/sd-9000@1.4}\n"
    )
    with pytest.raises(SimConfigError) as info:
        load_sim(f)
    got = [(p.line, p.field, p.message) for p in info.value.problems]
    assert [(line, field) for line, field, _ in got] == [
        (4, "gateways[0].devices[0].scenaro"),
        (5, "gateways[0].devices[1].scenario"),
        (6, "gateways[0].devices[2].profile"),
    ], got
    assert got[1][2].startswith("no scenario 'flod'; shipped: ")


def test_the_firmware_advice_quotes_the_version_as_the_file_writes_it(tmp_path: Path) -> None:
    profile = tmp_path / "acme" / "det" / "2.10.yaml"
    profile.parent.mkdir(parents=True)
    profile.write_text("vendor: acme\nmodel: det\nfirmware: [2.10, 3.0]\n")
    with pytest.raises(ProfileError) as info:
        load_profile(profile)
    messages = {p.field: p.message for p in info.value.problems}
    assert 'write "2.10" with the quotes' in messages["firmware[0]"], messages
    assert "not the number 2.1:" in messages["firmware[0]"]
    assert 'write "3.0" with the quotes' in messages["firmware[1]"], messages


def test_a_config_path_to_an_endless_file_gets_an_answer_not_a_hang() -> None:
    out = run_cli("edge-agent", "check", "-c", "/dev/zero", timeout=60)
    assert out.returncode == 2, out.stderr
    assert "/dev/zero:1: (file): bigger than 64 MB; not a config" in out.stderr.splitlines()


def test_a_nul_character_in_a_path_is_a_problem_at_its_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(
        'gateway: {id: gw-1}\ncentral: {url: "mqtt://127.0.0.1:1883", username: u,\n'
        '  password_file: "/etc/edgefleet/a\\0b"}\n'
    )
    out = run_cli("edge-agent", "check", "-c", str(f))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert (
        f"{f}:3: central.password_file: text with a NUL character (\\0): no name or path has one"
        in out.stderr.splitlines()
    )
