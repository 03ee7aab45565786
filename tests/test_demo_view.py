"""The demo's live view fits an 80x24 terminal: no copy of it scrolls into the scrollback
at each refresh, what does not fit is summarised, and an alarm id is never cut."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from cli.demo_view import AlarmRow, DeviceRow, live_view

RULES = ("smoke.alarm", "lift.trapped_at_landing", "fire_water.pressure_lost", "water.leak")


def devices(n: int) -> list[DeviceRow]:
    return [
        DeviceRow(
            f"demo-{i % 3:04d}",
            i % 2 == 0,
            f"det-{i}",
            ("obscuration=", f"{0.04 * i:.2f}", "%/m", " temperature=", "21.5", "°C") * 3,
            i / 10,
        )
        for i in range(n)
    ]


def alarms(n: int) -> list[AlarmRow]:
    return [
        AlarmRow(
            "riverside-tower-0002",
            f"lift-monitor-{i}/{RULES[i % len(RULES)]}",
            "critical",
            "cleared_unacked",
            "Passenger trapped in a lift at a landing, doors closed, for over a minute",
        )
        for i in range(n)
    ]


def draw(
    width: int, height: int, n_devices: int, n_alarms: int
) -> tuple[list[str], list[AlarmRow]]:
    rows = alarms(n_alarms)
    view = live_view(
        "EdgeFleet demo: 1234 readings stored at the center (61 s)",
        devices(n_devices),
        rows,
        width=width,
        height=height - 1,
        footer="fleet in another shell: . .demo/fleet.env; fleet alarms list",
    )
    console = Console(width=width, height=height, color_system=None, force_terminal=False)
    with console.capture() as captured:
        console.print(view)
    return captured.get().splitlines(), rows


def hidden(lines: list[str], what: str) -> int:
    found = [int(m.group(1)) for line in lines if (m := re.search(rf"\+(\d+) more {what}", line))]
    return found[0] if found else 0


@pytest.mark.parametrize(("width", "height"), [(80, 24), (60, 24), (120, 40), (80, 12)])
def test_the_view_fits_the_terminal_and_keeps_alarm_ids_whole(width: int, height: int) -> None:
    lines, rows = draw(width, height, n_devices=30, n_alarms=40)
    assert len(lines) <= height - 1, "\n".join(lines)
    assert all(len(line) <= width for line in lines)
    text = "\n".join(lines)
    shown = len(rows) - hidden(lines, "alarms")
    assert 1 <= shown < len(rows), text  # some alarms shown, the rest summarised
    for row in rows[:shown]:
        assert row.alarm_id in text, f"{row.alarm_id} cut:\n{text}"
    for row in rows:  # never the start of an id and an ellipsis
        for cut in range(4, len(row.alarm_id)):
            assert row.alarm_id[:cut] + "…" not in text, text
    assert hidden(lines, "devices") > 0, text
    assert "fleet alarms list" in lines[-1]


def test_a_short_list_is_shown_whole_with_its_messages() -> None:
    lines, rows = draw(120, 40, n_devices=5, n_alarms=3)
    text = "\n".join(lines)
    assert hidden(lines, "alarms") == 0 and hidden(lines, "devices") == 0
    assert all(r.alarm_id in text for r in rows)
    assert text.count("Passenger trapped") == 3
    assert all(f"det-{i}" in text for i in range(5))


def test_escape_sequences_in_what_gateways_send_are_shown_and_the_id_stays_whole() -> None:
    """An ESC in an alarm's id or message is drawn as ``\\x1b`` (four columns, counted as
    such, so the id still is not cut), never sent to the terminal."""
    sent = AlarmRow("gw\x1b[2J", "det-1/\x1b]0;x\x07smoke", "critical", "active", "m\x1b[31m")
    view = live_view(
        "t", devices(1), [sent, *alarms(2)], width=80, height=23, footer="fleet alarms list"
    )
    console = Console(width=80, height=24, color_system=None, force_terminal=False)
    with console.capture() as captured:
        console.print(view)
    text = captured.get()
    assert "\x1b" not in text and "\x07" not in text, repr(text)
    assert "det-1/\\x1b]0;x\\x07smoke" in text, text
    assert all(len(line) <= 80 for line in text.splitlines())
