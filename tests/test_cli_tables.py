"""What the commands print, table and ``--json``, run in process with Typer's CliRunner
against a real central store (a SQLite file in ``tmp_path``), real profile files and a
simulated Modbus device.

The store is filled the way ingest fills it: wire payloads, decoded by the contract. The
tables are read back cell by cell, so a cell drawn wrong fails: the program's own words
(``yes``/``no``) are drawn in colour, never as ``[green]yes[/]`` text, and text that a
gateway or a device sent (``[red]x[/]``, ``:fire:``) is printed literally, never as
markup or emoji.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from rich.console import Console
from typer.testing import CliRunner

from central.store.sqlite import SqliteStore
from cli import output
from cli.agent import app as agent_app
from cli.alarm_history import LISTED_STATES
from cli.fleet import app as fleet_app
from cli.output import Styled, utc
from drivers.modbus import ModbusPoint
from edge_agent.contract import (
    decode_alarm,
    decode_health,
    decode_state,
    decode_telemetry,
    named_rows,
)
from edge_agent.durations import CALENDAR_HINT, DURATION_FORMS
from tests.support import ThreadedDevice
from tests.test_opcua_driver import ThreadedStation

WIDE = {"COLUMNS": "200", "FORCE_COLOR": None, "NO_COLOR": None}
"""A wide terminal, so that rich neither truncates nor wraps a cell; no colour codes."""

SENT = "[red]x[/] :fire:"
"""Text a gateway sends that rich would read as markup and an emoji if it were let."""

NOW = time.time()
FLOAT32_4_499 = struct.unpack("<f", struct.pack("<f", 4.499))[0]
"""4.499 as a float32 register holds it, widened to a double: 4.499000072479248."""


def run(app: Any, *args: str, env: Mapping[str, str | None] = WIDE) -> Result:
    return CliRunner().invoke(app, list(args), env=dict(env))


def fleet(*args: str) -> Result:
    result = run(fleet_app, *args)
    assert result.exit_code == 0, result.output
    return result


def agent(*args: str) -> Result:
    result = run(agent_app, *args)
    assert result.exit_code == 0, result.output
    return result


@dataclass
class Drawn:
    """One rich table as printed: its title, headers and body rows, cell by cell."""

    title: str | None
    headers: list[str]
    rows: list[list[str]]


def _cells(line: str, sep: str) -> list[str]:
    return [cell.strip() for cell in line.strip()[1:-1].split(sep)]


def tables(output: str) -> list[Drawn]:
    """Every table in ``output`` (rich's default box: ┏ top, ┃ header, │ rows, └ bottom)."""
    found: list[Drawn] = []
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("┏"):
            above = lines[i - 1].strip() if i and not lines[i - 1].startswith("└") else ""
            found.append(Drawn(above or None, [], []))
        elif line.startswith("┃"):
            found[-1].headers = _cells(line, "┃")
        elif line.startswith("│"):
            found[-1].rows.append(_cells(line, "│"))
    return found


def table(output: str) -> Drawn:
    (only,) = tables(output)
    return only


def test_a_cell_of_parts_keeps_sent_text_literal_and_styles_the_programs_words() -> None:
    console = Console(width=80, force_terminal=True, color_system="standard")
    with console.capture() as captured:
        console.print(output.table(("values",), [(("label=", SENT, " ", Styled("bad", "red")),)]))
    drawn = captured.get()
    assert f"label={SENT} \x1b[31mbad\x1b[0m" in drawn


# --- a central store, filled as ingest fills it --------------------------------------------


def wire(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def alarm_event(seq: int, alarm: str, state: str, ts: float, **fields: Any) -> bytes:
    dev, rule = alarm.split("/")
    event = {
        "gw": "gw-1",
        "stream": "s1",
        "seq": seq,
        "id": alarm,
        "rule": rule,
        "dev": dev,
        "severity": "critical",
        "state": state,
        "value": 2.75,
        "ts": ts,
        "msg": "smoke",
    }
    return wire(event | fields)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "central.db"
    store = SqliteStore(path)
    try:
        with store.round() as rnd:
            # gateways: one online, whose site is text that looks like markup; one gone offline
            gw1 = {"gw": "gw-1", "online": True, "site": SENT, "agent_version": "0.1.0"}
            gw1 |= {"tags": {"district": "jingan", "label": SENT}}
            rnd.update_state("gw-1", decode_state(wire(gw1 | {"config_rev": "r7"})))
            rnd.update_health("gw-1", decode_health(wire({"ts": NOW, "outbox": {"depth": 42}})))
            # "last seen" is drawn relative to the clock when the command runs, not to NOW
            rnd.seen(["gw-1"], now=time.time() - 600)
            gw2 = {"gw": "gw-2", "online": True, "site": "pump room", "agent_version": "0.1.0"}
            rnd.update_state("gw-2", decode_state(wire(gw2 | {"tags": ["not", "a", "mapping"]})))
            rnd.update_state("gw-2", decode_state(wire({"gw": "gw-2", "online": False})))
            rnd.seen(["gw-2"], now=time.time() - 3 * 3600)

            # readings: a float, a bool, sent text, a bad one with its reason, and an old one
            readings = [
                {
                    "dev": "det-3",
                    "pt": "smoke",
                    "v": 0.1 + 0.2,
                    "u": "%/m",
                    "q": "good",
                    "ts": NOW - 3,
                },
                {
                    "dev": "det-3",
                    "pt": "temp",
                    "v": FLOAT32_4_499,
                    "u": "°C",
                    "q": "good",
                    "ts": NOW - 4,
                },
                {"dev": "det-3", "pt": "door", "v": True, "q": "good", "ts": NOW - 2},
                {"dev": "det-3", "pt": "label", "v": SENT, "q": "good", "ts": NOW - 1},
                {"dev": "det-3", "pt": "temp", "v": None, "q": "bad", "r": "timeout", "ts": NOW},
                {
                    "dev": "det-3",
                    "pt": "smoke",
                    "v": 1.5,
                    "u": "%/m",
                    "q": "good",
                    "ts": NOW - 3600,
                },
            ]
            batch = {"gw": "gw-1", "stream": "s1", "seq_first": 1, "seq_last": 6}
            rnd.insert_telemetry(decode_telemetry(wire(batch | {"readings": readings})))

            # alarms: active, acknowledged and cleared; a message and an action from the edge
            rnd.insert_alarm(decode_alarm(alarm_event(1, "det-3/smoke.alarm", "active", NOW - 300)))
            action = {"phase": "on_active", "results": []}
            rnd.insert_alarm(
                decode_alarm(
                    alarm_event(2, "det-3/smoke.alarm", "active", NOW - 299, action=action)
                )
            )
            rnd.insert_alarm(
                decode_alarm(
                    alarm_event(
                        3,
                        "det-3/smoke.alarm",
                        "acknowledged",
                        NOW - 200,
                        msg=SENT,
                        acked_by="li.wei",
                    )
                )
            )
            rnd.insert_alarm(
                decode_alarm(
                    alarm_event(
                        4, "wl-1/water.high", "active", NOW - 150, severity="major", value=31
                    )
                )
            )
            rnd.insert_alarm(
                decode_alarm(
                    alarm_event(
                        5, "wl-1/water.high", "cleared", NOW - 100, severity="major", value=12
                    )
                )
            )
            rnd.insert_alarm(
                decode_alarm(
                    alarm_event(
                        6, "lift-1/lift.trapped", "active", NOW - 50, value=3, msg="trapped"
                    )
                )
            )

            # a loss the gateway reported, and two dead letters
            dropped = {"first": 10, "last": 19, "count": 10, "ts_first": NOW - 7200}
            dropped |= {"ts_last": NOW - 7100, "cause": "disk full"}
            loss = alarm_event(
                7,
                "agent/outbox.dropped",
                "active",
                NOW,
                severity="warning",
                value=10,
                dropped=dropped,
            )
            rnd.insert_alarm(decode_alarm(loss))
            bad = wire(batch | {"seq_first": 20, "seq_last": 20, "readings": [{"dev": SENT}]})
            rnd.insert_rejected(
                "gw-1", "edgefleet/v1/gw/gw-1/telemetry", bad, SENT, named_rows(bad, alarm=False)
            )
            rnd.insert_rejected("gw-1", "edgefleet/v1/gw/gw-1/alarms", b"\xff", "not JSON", None)
    finally:
        store.close()
    yield path


# --- fleet ---------------------------------------------------------------------------------


def test_gateways_list_draws_online_as_words_and_the_site_as_it_was_sent(db: Path) -> None:
    drawn = table(fleet("gateways", "list", "--db", str(db)).stdout)
    assert drawn.headers == [
        "gateway",
        "site",
        "tags",
        "online",
        "since",
        "agent",
        "config",
        "last seen",
        "backlog",
        "alarms",
    ]
    assert [row[:4] + row[5:] for row in drawn.rows] == [
        [
            *("gw-1", SENT, f"district=jingan, label={SENT}", "yes"),
            *("0.1.0", "r7", "10 min ago", "42", "3"),  # smoke, trapped, outbox.dropped
        ],
        [
            *("gw-2", "pump room", '["not", "a", "mapping"]', "no"),
            *("0.1.0", "", "3.0 h ago", "", "0"),
        ],
    ]  # gw-2's tags outlive its going offline; what is not a mapping is shown as it came

    listed = json.loads(fleet("gateways", "list", "--db", str(db), "--json").stdout)
    assert [(g["id"], g["site"], g["online"]) for g in listed] == [
        ("gw-1", SENT, True),
        ("gw-2", "pump room", False),
    ]
    assert listed[0]["outbox_depth"] == 42
    assert listed[0]["tags"] == {"district": "jingan", "label": SENT}
    assert listed[1]["tags"] == ["not", "a", "mapping"]


def test_gateways_list_in_colour_draws_yes_green_and_no_red(db: Path) -> None:
    coloured = run(fleet_app, "gateways", "list", "--db", str(db), env={**WIDE, "FORCE_COLOR": "1"})
    assert coloured.exit_code == 0, coloured.output
    out = coloured.stdout
    assert "\x1b[32myes\x1b[0m" in out and "\x1b[31mno\x1b[0m" in out
    assert SENT in out  # literal even on a colour terminal: no markup, no emoji
    assert "[green]" not in out and "[red]no" not in out


def test_readings_table_shows_values_units_and_reasons_newest_first(db: Path) -> None:
    drawn = table(fleet("readings", "-g", "gw-1", "--db", str(db)).stdout)
    assert drawn.headers == ["time (UTC)", "gateway", "device", "point", "value", "unit", "quality"]
    assert drawn.rows == [
        [utc(NOW), "gw-1", "det-3", "temp", "", "", "bad: timeout"],
        [utc(NOW - 1), "gw-1", "det-3", "label", SENT, "", "good"],
        [utc(NOW - 2), "gw-1", "det-3", "door", "True", "", "good"],
        [utc(NOW - 3), "gw-1", "det-3", "smoke", "0.3", "%/m", "good"],
        [utc(NOW - 4), "gw-1", "det-3", "temp", "4.499", "°C", "good"],
        [utc(NOW - 3600), "gw-1", "det-3", "smoke", "1.5", "%/m", "good"],
    ]
    assert utc(NOW).startswith(time.strftime("%Y-%m-%d %H:%M", time.gmtime(NOW)))

    recent = json.loads(fleet("readings", "--since", "10m", "--db", str(db), "--json").stdout)
    assert [(r["point"], r["value"]) for r in recent] == [
        ("temp", None),
        ("label", SENT),
        ("door", True),
        ("smoke", 0.1 + 0.2),
        ("temp", 4.499000072479248),
    ]  # the reading of an hour ago is older than 10 minutes; JSON keeps every digit
    assert recent[0]["reason"] == "timeout" and recent[3]["unit"] == "%/m"
    one = table(fleet("readings", "-p", "smoke", "--limit", "1", "--db", str(db)).stdout)
    assert [row[3:5] for row in one.rows] == [["smoke", "0.3"]]


def test_a_wrong_duration_names_the_option_it_was_given_to(db: Path) -> None:
    since = run(fleet_app, "readings", "--since", "soon", "--db", str(db))
    assert since.exit_code == 2
    assert f"Invalid value for --since: 'soon' is not {DURATION_FORMS}" in since.output
    for length, problem in (
        ("a while", DURATION_FORMS),
        ("2y", f"{DURATION_FORMS}; {CALENDAR_HINT}"),
        ("0s", "a length above 0 s"),
    ):
        shelve = run(
            fleet_app, "alarms", "shelve", "det-3/smoke.alarm", "-g", "gw-1", "--reason", "drill",
            "--for", length, "--key", str(db.parent / "no.key"),
        )  # fmt: skip
        assert shelve.exit_code == 2, length
        assert f"Invalid value for --for: {length!r} is not {problem}" in shelve.output
        assert "--since" not in shelve.output and "Traceback" not in shelve.output


def test_losses_table_shows_which_readings_were_dropped_and_why(db: Path) -> None:
    drawn = table(fleet("losses", "--db", str(db)).stdout)
    assert drawn.headers == ["gateway", "stream", "seq", "count", "taken from (UTC)", "to", "cause"]
    assert drawn.rows == [
        ["gw-1", "s1", "10..19", "10", utc(NOW - 7200), utc(NOW - 7100), "disk full"]
    ]
    (loss,) = json.loads(fleet("losses", "-g", "gw-1", "--db", str(db), "--json").stdout)
    assert (loss["first_seq"], loss["last_seq"], loss["cause"]) == (10, 19, "disk full")
    assert json.loads(fleet("losses", "-g", "gw-2", "--db", str(db), "--json").stdout) == []


def test_rejected_table_shows_the_error_as_sent_and_the_rows_acked(db: Path) -> None:
    drawn = table(fleet("rejected", "--db", str(db)).stdout)
    assert drawn.headers == ["gateway", "topic", "outbox rows", "times", "last seen (UTC)", "error"]
    by_topic = {row[1]: row for row in drawn.rows}
    telemetry = by_topic["edgefleet/v1/gw/gw-1/telemetry"]
    assert telemetry[2:4] == ["s1 20..20 (acked)", "1"] and telemetry[5] == SENT
    alarms = by_topic["edgefleet/v1/gw/gw-1/alarms"]
    assert alarms[2:4] == ["unknown (not acked)", "1"] and alarms[5] == "not JSON"
    assert len(drawn.rows) == 2

    dead = json.loads(fleet("rejected", "--db", str(db), "--json").stdout)
    payloads = {r["topic"].rsplit("/", 1)[1]: r["payload"] for r in dead}
    assert payloads["alarms"] == "\\xff"  # undecodable bytes escaped, as text
    assert json.loads(payloads["telemetry"])["readings"] == [{"dev": SENT}]
    assert all("digest" not in r for r in dead)


def test_alarms_list_table_shows_each_alarm_as_its_latest_transition_left_it(db: Path) -> None:
    drawn = table(fleet("alarms", "list", "--db", str(db)).stdout)
    assert drawn.headers == [
        "since (UTC)",
        "gateway",
        "alarm",
        "severity",
        "state",
        "value",
        "message",
    ]
    by_alarm = {row[2]: row for row in drawn.rows}
    assert by_alarm["det-3/smoke.alarm"] == [
        utc(NOW - 300),
        "gw-1",
        "det-3/smoke.alarm",
        "critical",
        "acknowledged",
        "2.75",
        SENT,
    ]
    assert by_alarm["wl-1/water.high"][3:6] == ["major", "cleared", "12"]
    assert by_alarm["lift-1/lift.trapped"][3:] == ["critical", "active", "3", "trapped"]
    # newest first
    assert [row[2] for row in drawn.rows][:3] == [
        "agent/outbox.dropped",
        "lift-1/lift.trapped",
        "wl-1/water.high",
    ]

    active = json.loads(
        fleet("alarms", "list", "--state", "active", "--db", str(db), "--json").stdout
    )
    assert {a["alarm_id"] for a in active} == {"lift-1/lift.trapped", "agent/outbox.dropped"}


def test_alarms_history_prints_every_transition_and_action_in_order(db: Path) -> None:
    args = ("alarms", "history", "det-3/smoke.alarm", "-g", "gw-1", "--db", str(db))
    drawn = table(fleet(*args).stdout)
    action = {"phase": "on_active", "results": []}
    assert drawn.headers == ["time (UTC)", "state", "value", "by", "message", "detail"]
    assert drawn.rows == [
        [utc(NOW - 300), "active", "2.75", "", "smoke", ""],
        [utc(NOW - 299), "active", "2.75", "", "smoke", "on_active: no action"],
        [utc(NOW - 200), "acknowledged", "2.75", "li.wei", SENT, ""],
    ]
    events = json.loads(fleet(*args, "--json").stdout)
    assert [(e["seq"], e["state"]) for e in events] == [
        (1, "active"),
        (2, "active"),
        (3, "acknowledged"),
    ]
    assert events[1]["action"] == action


def test_a_state_that_does_not_exist_is_a_usage_error_listing_the_states(db: Path) -> None:
    result = run(
        fleet_app, "alarms", "list", "--state", "bogus", "--state", "active", "--db", str(db)
    )
    assert result.exit_code == 2 and result.stdout == ""
    assert (
        "Invalid value for --state: 'bogus': an alarm's state is one of active, acknowledged, "
        "cleared_unacked, cleared, shelved"
    ) in result.output


def test_the_help_of_state_names_every_state_the_filter_takes() -> None:
    helped = " ".join(fleet("alarms", "list", "--help").stdout.split())
    assert "active, acknowledged, cleared_unacked, cleared or shelved" in helped
    assert LISTED_STATES == ("active", "acknowledged", "cleared_unacked", "cleared", "shelved")


def test_the_history_of_an_alarm_the_store_does_not_have_is_an_error(db: Path) -> None:
    for alarm, gateway in (("det-3/no.such", "gw-1"), ("det-3/smoke.alarm", "gw-9")):
        result = run(fleet_app, "alarms", "history", alarm, "-g", gateway, "--db", str(db))
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.startswith(f"error: no such alarm: {alarm} on gateway {gateway}")
        as_json = run(
            fleet_app, "alarms", "history", alarm, "-g", gateway, "--db", str(db), "--json"
        )
        assert as_json.exit_code == 1 and as_json.stdout == ""


def test_a_shelved_alarm_is_listed_shelved_and_its_history_says_who_and_why(
    tmp_path: Path,
) -> None:
    path = tmp_path / "central.db"
    store = SqliteStore(path)
    alarm = "det-3/smoke.alarm"
    until = NOW + 7200
    siren = {"write": {"device": "det-3", "point": "siren", "value": True}}
    events = [
        alarm_event(1, alarm, "active", NOW - 60),
        alarm_event(
            2, alarm, "active", NOW - 59,
            action={"phase": "on_active", "results": [
                {**siren, "ok": True, "error": None},
                {**siren, "ok": False, "error": SENT},
            ]},
        ),
        alarm_event(
            3, alarm, "shelved", NOW - 30, shelved_until=until, reason=SENT, shelved_by="li.wei"
        ),
        alarm_event(4, alarm, "active", NOW - 20, acked_by=["not", "a", "name"], reannounced=1),
    ]  # fmt: skip
    with store.round() as rnd:
        for event in events:
            rnd.insert_alarm(decode_alarm(event))
    store.close()

    listed = table(fleet("alarms", "list", "--db", str(path)).stdout)
    assert [row[4] for row in listed.rows] == ["shelved"]
    (only,) = json.loads(
        fleet("alarms", "list", "--state", "shelved", "--db", str(path), "--json").stdout
    )
    assert (only["state"], only["current"], only["shelved_until"]) == ("shelved", "active", until)
    assert (
        json.loads(fleet("alarms", "list", "--state", "active", "--db", str(path), "--json").stdout)
        == []
    )

    drawn = table(fleet("alarms", "history", alarm, "-g", "gw-1", "--db", str(path)).stdout)
    assert drawn.rows == [
        [utc(NOW - 60), "active", "2.75", "", "smoke", ""],
        [
            utc(NOW - 59), "active", "2.75", "", "smoke",
            f"on_active: det-3.siren=True ok; on_active: det-3.siren=True failed: {SENT}",
        ],
        [utc(NOW - 30), "shelved", "2.75", "li.wei", "smoke", f"until {utc(until)} UTC: {SENT}"],
        [utc(NOW - 20), "active", "2.75", "", "smoke", "reminder 1"],
    ]  # fmt: skip


def test_settings_are_shown_as_key_value_with_nested_keys_dotted() -> None:
    fields = {"unit": 3, "scale": {"factor": 0.1, "offset": None}, "ids": [1, "a"], "none": {}}
    assert output.inline(fields) == (
        'unit: 3, scale.factor: 0.1, scale.offset: , ids: [1, "a"], none: {}'
    )


def test_a_reply_prints_as_key_value_lines_that_a_gateway_cannot_forge_or_recolour(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A gateway writes the reply: its text is printed, but not its control characters."""
    output.print_fields(
        {
            "alarm": "det-3/smoke.alarm\nstate: cleared",  # a forged second line
            "state": "shelved\x1b[2J",  # would clear the screen
            "shelved_until": NOW,
            "later": {"current": "active", "value": FLOAT32_4_499},
        },
        times=("shelved_until", "later"),
    )
    assert capsys.readouterr().out.splitlines() == [
        "alarm: det-3/smoke.alarm\\x0astate: cleared",
        "state: shelved\\x1b[2J",
        f"shelved_until: {utc(NOW)} UTC",
        "later.current: active",
        "later.value: 4.499",
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (FLOAT32_4_499, "4.499"),  # float32 noise: 4.499000072479248
        (struct.unpack("<f", struct.pack("<f", 3.14159265))[0], "3.141593"),  # 7 digits
        (0.1 + 0.2, "0.3"),  # a double's own noise: 15 digits
        (123456.7, "123456.7"),  # a double with 7 digits keeps them all
        (16777216.0, "16777216"),  # whole numbers whole, float32 or not
        (-1.5, "-1.5"),
        (1e300, "1e+300"),  # beyond float32's range
        (float("nan"), "nan"),
    ],
)
def test_a_number_is_shown_to_the_precision_it_has(value: float, text: str) -> None:
    assert output.number(value) == text


def test_a_query_of_a_store_that_is_not_there_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    for args in (
        ("gateways", "list"),
        ("readings",),
        ("losses",),
        ("rejected",),
        ("alarms", "list"),
        ("alarms", "history", "a/b", "-g", "gw-1"),
    ):
        result = run(fleet_app, *args, "--db", str(missing))
        assert result.exit_code == 1, args
        assert f"error: no central store at {missing}" in result.stderr, args
    assert not missing.exists()


# --- edge-agent ----------------------------------------------------------------------------


DETECTOR = """\
vendor: acme
model: det
firmware: ["2.0"]
title: A [bold]test[/] detector
protocol: modbus
source: "invented for this test: [link=x]y[/link]"
connection: {unit: 3}
device: {poll_s: 2.5}
points:
  - {name: smoke, table: input, address: 0, type: float32, unit: "%/m"}
  - {name: alarm, table: discrete, address: 0, type: bool}
rules:
  - {id: det.alarm, when: "alarm", severity: critical, off_delay_s: 30}
"""


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    folder = tmp_path / "profiles"
    (folder / "acme" / "det").mkdir(parents=True)
    (folder / "acme" / "det" / "2.0.yaml").write_text(DETECTOR)
    return folder


def test_profiles_list_table_has_a_row_per_profile_with_its_title_as_written(
    profiles: Path,
) -> None:
    drawn = table(agent("profiles", "list", "--dir", str(profiles)).stdout)
    assert drawn.headers == ["profile", "protocol", "firmware", "points", "rules", "title"]
    by_ref = {row[0]: row for row in drawn.rows}
    assert by_ref["acme/det@2.0"] == [
        "acme/det@2.0",
        "modbus",
        "2.0",
        "2",
        "1",
        "A [bold]test[/] detector",
    ]
    assert by_ref["acme/sd-2000@1.4"][1:3] == ["modbus", "1.4, 1.5"]  # the shipped ones too
    assert by_ref["acme/ps-plc@1.0"][1] == "opcua"

    listed = json.loads(agent("profiles", "list", "--dir", str(profiles), "--json").stdout)
    assert len(listed) == len(drawn.rows)


def test_profiles_list_with_a_broken_file_prints_the_table_then_its_problems(
    profiles: Path,
) -> None:
    broken = profiles / "acme" / "det" / "2.1.yaml"
    broken.write_text(
        DETECTOR.replace('["2.0"]', '["2.1"]').replace("protocol: modbus", "protocol: x")
    )
    result = run(agent_app, "profiles", "list", "--dir", str(profiles))
    assert result.exit_code == 2
    assert "acme/det@2.0" in {row[0] for row in table(result.stdout).rows}
    problems = result.stderr.splitlines()
    assert problems[0].startswith(f"{broken}:5: protocol: ")
    assert problems[-1].startswith(f"{profiles}, ") and problems[-1].endswith(": 1 problem")
    assert len(problems) == 2


def test_profiles_show_prints_the_profile_and_its_points_and_rules_tables(
    profiles: Path,
) -> None:
    out = agent("profiles", "show", "acme/det@2.0", "--dir", str(profiles)).stdout
    assert "{" not in out and "'" not in out  # no Python dict repr
    assert out.splitlines()[:6] == [
        "acme/det@2.0 A [bold]test[/] detector",
        "protocol modbus; firmware 2.0",
        "source: invented for this test: [link=x]y[/link]",
        f"file: {profiles / 'acme' / 'det' / '2.0.yaml'}",
        "modbus defaults: unit: 3",
        "device defaults: poll_s: 2.5",
    ]
    points, rules = tables(out)
    assert (points.title, points.headers) == ("points", ["point", "unit", "where"])
    assert points.rows == [
        ["smoke", "%/m", "table: input, address: 0, type: float32"],
        ["alarm", "", "table: discrete, address: 0, type: bool"],
    ]
    assert (rules.title, rules.headers) == (
        "default rules",
        ["rule", "severity", "condition", "delays"],
    )
    assert rules.rows == [["det.alarm", "critical", "alarm", "on 0 s, off 30 s"]]

    shown = json.loads(
        agent("profiles", "show", "acme/det@2.0", "--dir", str(profiles), "--json").stdout
    )
    assert shown["ref"] == "acme/det@2.0" and shown["title"] == "A [bold]test[/] detector"


def test_profiles_show_of_an_unknown_version_prints_the_problem_and_exits_2() -> None:
    result = run(agent_app, "profiles", "show", "acme/sd-2000@9.9")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "no profile of acme/sd-2000 covers firmware 9.9 (known: 1.4, 1.5)",
        "acme/sd-2000@9.9: 1 problem",
    ]


def test_probe_table_shows_raw_registers_and_values_as_the_device_sent_them(
    tmp_path: Path,
) -> None:
    points = [
        ModbusPoint.model_validate(p)
        for p in (
            {"name": "pressure", "table": "input", "address": 0, "type": "float32", "unit": "bar"},
            {"name": "label", "table": "holding", "address": 20, "type": "string", "length": 3},
            {"name": "pump", "table": "coil", "address": 4, "type": "bool"},
        )
    ]
    device = ThreadedDevice(points, sparse=True).start()
    try:
        device.set("pressure", 4.499)  # a float32: 4.499000072479248 as a double
        device.set("label", "[b]P-7")  # a device's text that is markup to rich
        device.set("pump", True)
        config = tmp_path / "agent.yaml"
        config.write_text(
            "gateway: {id: gw-1}\ndevices:\n  - id: panel-1\n"
            f"    modbus: {{host: 127.0.0.1, port: {device.port}}}\n    points:\n"
            + "".join(
                f"      - {json.dumps(p.model_dump(exclude_defaults=True))}\n" for p in points
            )
            + "      - {name: ghost, table: holding, address: 11, type: uint16}\n"
        )
        out = agent("probe", "modbus", "-c", str(config), "--device", "panel-1").stdout
    finally:
        device.close()
    drawn = table(out)
    assert drawn.title == f"panel-1: unit 1 on 127.0.0.1:{device.port}"
    assert drawn.headers == [
        "point",
        "table",
        "address",
        "hex",
        "decimal",
        "value",
        "unit",
        "quality",
    ]
    assert drawn.rows == [
        ["pressure", "input", "0", "408F F7CF", "16527 63439", "4.499", "bar", "good"],
        ["label", "holding", "20", "5B62 5D50 2D37", "23394 23888 11575", "'[b]P-7'", "", "good"],
        ["pump", "coil", "4", "1", "1", "True", "", "good"],
        ["ghost", "holding", "11", "", "", "", "", "bad: exception 2: illegal data address"],
    ]


def test_browse_tree_shows_names_and_values_as_the_server_sent_them() -> None:
    station = ThreadedStation()
    try:
        asyncio.run(station.set("Station.Name", SENT))  # a PLC's text that is markup to rich
        out = agent("browse", station.endpoint, "--node", "ns=2;s=Station").stdout
    finally:
        station.close()
    lines = out.splitlines()
    assert lines[0] == "Station  ns=2;s=Station"
    assert f"├── Name  ns=2;s=Station.Name  String = {SENT!r}" in lines
    assert lines[-1] == f"{len(lines) - 1} node(s) on {station.endpoint}"


def test_a_config_with_problems_is_reported_the_same_way_by_every_command(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text("gateway: {id: gw-1}\ndevices:\n  - {id: a, modbus: {hots: h}, points: []}\n")
    replay = tmp_path / "series.csv"
    replay.write_text("ts,device,point,value\n")
    outputs = []
    for args in (
        ("check", "-c", str(bad)),
        ("rules", "test", "-c", str(bad), "--replay", str(replay)),
        ("probe", "modbus", "-c", str(bad), "--device", "a"),
    ):
        result = run(agent_app, *args)
        assert result.exit_code == 2, args
        outputs.append(result.stderr)
    lines = outputs[0].splitlines()
    assert lines[0].startswith(f"{bad}:3: devices[0].modbus.hots: unknown key")
    assert lines[-1] == f"{bad}: {len(lines) - 1} problem{'s' if len(lines) > 2 else ''}"
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0]


def test_sim_timeline_prints_a_line_per_tick_with_the_values_and_effects(
    tmp_path: Path,
) -> None:
    sim_file = tmp_path / "sim.yaml"
    sim_file.write_text(
        "seed: 7\ngateways:\n  - id: gw\n    devices:\n"
        "      - {id: ws-1, profile: acme/ws-100@2.1, scenario: garbage}\n"
        "      - {id: det-1, profile: acme/sd-2000@1.4, scenario: silent}\n"
    )
    garbage = agent("sim", "timeline", str(sim_file), "-d", "ws-1", "--ticks", "10").stdout
    ticks = json.loads(
        agent("sim", "timeline", str(sim_file), "-d", "ws-1", "--ticks", "10", "--json").stdout
    )
    lines = garbage.splitlines()
    assert len(lines) == len(ticks) == 10
    for line, tick in zip(lines, ticks, strict=True):
        shown = dict(pair.split("=", 1) for pair in line.split("  [")[0].split()[1:])
        assert list(shown) == list(tick["values"])
        for point, value in tick["values"].items():
            assert shown[point] == (f"{value:.4g}" if isinstance(value, float) else str(value))
        assert line.startswith(f"{tick['t']:>8g} ")
    assert ticks[9]["effects"] == ["garbage: not_json, truncated, wrong_type, empty, binary"]
    assert lines[9].endswith("  [garbage: not_json, truncated, wrong_type, empty, binary]")
    assert not any("[" in line for line in lines[:9])

    silent = agent("sim", "timeline", str(sim_file), "-d", "det-1", "--ticks", "61").stdout
    assert silent.splitlines()[59].startswith("      60 (silent) obscuration=")
    assert "(silent)" not in silent.splitlines()[58]


def test_sim_scenarios_prints_a_line_per_shipped_scenario_with_what_it_moves() -> None:
    lines = agent("sim", "scenarios").stdout.splitlines()
    listed = json.loads(agent("sim", "scenarios", "--json").stdout)
    assert [line.split()[0] for line in lines] == [s["name"] for s in listed]
    by_name = {line.split()[0]: line for line in lines}
    assert by_name["fire"] == (
        f"{'fire':<20} {next(s['title'] for s in listed if s['name'] == 'fire')}"
        "  (moves: obscuration, temperature)"
    )


def test_the_command_modules_load_without_rich() -> None:
    """``fleet --help`` stays quick: rich is imported only where a table is drawn."""
    code = (
        "import sys, cli.agent, cli.fleet\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'central', 'asyncua',"
        " 'pymodbus', 'sqlite_utils'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


# --- text a terminal would obey --------------------------------------------------------------

CLEAR = "\x1b[2J\x1b]0;owned\x07"
"""An escape sequence that clears the screen and one that retitles the terminal."""


def test_escape_sequences_a_gateway_sends_are_shown_in_tables_not_obeyed(tmp_path: Path) -> None:
    """Rich passes an ESC in a cell to the terminal as it is: every sent cell is escaped."""
    path = tmp_path / "central.db"
    store = SqliteStore(path)
    try:
        with store.round() as rnd:
            state = {"gw": "gw-1", "online": True, "site": f"a{CLEAR}b", "agent_version": "1"}
            state |= {"tags": {"label": f"\u202e{CLEAR}"}}
            rnd.update_state("gw-1", decode_state(wire(state)))
            rnd.insert_alarm(
                decode_alarm(alarm_event(1, "det-3/smoke.alarm", "active", NOW, msg=f"fire{CLEAR}"))
            )
    finally:
        store.close()
    shown_as = "\\x1b[2J\\x1b]0;owned\\x07"
    for args in (
        ("gateways", "list"),
        ("alarms", "list"),
        ("alarms", "history", "det-3/smoke.alarm", "-g", "gw-1"),
    ):
        colour = run(fleet_app, *args, "--db", str(path), env={**WIDE, "FORCE_COLOR": "1"})
        assert colour.exit_code == 0, colour.output
        assert "\x1b[2J" not in colour.stdout and "\x07" not in colour.stdout, args
        assert shown_as in colour.stdout, colour.stdout
    listed = table(fleet("gateways", "list", "--db", str(path)).stdout)
    assert listed.rows[0][1] == f"a{shown_as}b"
    assert listed.rows[0][2] == f"label=\\u202e{shown_as}"


def strict_json(out: str) -> Any:
    """``out`` parsed as RFC 8259 JSON: NaN, Infinity and -Infinity are refused, as
    ``jq`` and ``JSON.parse`` refuse them (Python's ``json`` would read them)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(out, parse_constant=refuse)
