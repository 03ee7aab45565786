"""The demo's live view, fitted to the terminal it is drawn on.

A live view taller than the terminal scrolls a copy of itself into the scrollback at every
refresh, so the view is cut to the terminal's height: rows that do not fit are dropped and
summarised (``+12 more``). Alarms come before readings, as an operator needs them first,
and an alarm id is never cut in the middle (it is what ``fleet alarms ack`` takes): when
the width is short, the other alarm columns go first, the message before the state and
the severity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli.output import Cell, Part, Styled, printable, text

DEVICE_COLUMNS = ("gateway", "online", "device", "latest values", "age")
ALARM_COLUMNS = ("gateway", "alarm", "severity", "state", "message")
ALARM_COLUMN_SETS = (
    ALARM_COLUMNS,
    ("gateway", "alarm", "severity", "state"),
    ("gateway", "alarm", "severity"),
    ("gateway", "alarm"),
    ("alarm",),
)
"""The alarm columns to try, widest first: the alarm id stays in every one of them."""


@dataclass(frozen=True, slots=True)
class DeviceRow:
    gateway: str
    online: bool
    device: str
    values: tuple[Part, ...]
    age_s: float


@dataclass(frozen=True, slots=True)
class AlarmRow:
    gateway: str
    alarm_id: str
    severity: str
    state: str
    message: str

    def cells(self, columns: Sequence[str]) -> list[Cell]:
        by_column: dict[str, Cell] = {
            "gateway": self.gateway,
            "alarm": self.alarm_id,
            "severity": self.severity,
            "state": self.state,
            "message": self.message,
        }
        return [by_column[c] for c in columns]


def live_view(
    title: str,
    devices: Sequence[DeviceRow],
    alarms: Sequence[AlarmRow],
    *,
    width: int,
    height: int,
    footer: str = "",
) -> RenderableType:
    """The whole view, at most ``height`` lines of ``width`` columns once drawn."""
    alarm_columns = _alarm_columns(alarms, width)
    shown_devices, shown_alarms = len(devices), len(alarms)

    def build() -> Group:
        parts: list[RenderableType] = [Text(title, no_wrap=True, overflow="ellipsis")]
        if not alarms:
            parts.append(Text("alarms: none raised yet", style="dim"))
        elif shown_alarms:
            parts.append(_alarm_table(alarms, shown_alarms, alarm_columns, width))
        else:  # not even one row fits: the summary alone
            parts.append(_summary(len(alarms), ALARMS_HINT))
        if not devices:
            parts.append(Text("readings: none arrived yet", style="dim"))
        elif shown_devices:
            parts.append(_device_table(devices, shown_devices, width))
        else:
            parts.append(_summary(len(devices), DEVICES_HINT))
        if footer:
            parts.append(Text(footer, no_wrap=True, overflow="ellipsis"))
        return Group(*parts)

    # Drop readings first (down to a few), then alarms, then the rest of the readings:
    # each step one row, so the loop ends after at most len(devices) + len(alarms) steps.
    while _height(build(), width) > height:
        if shown_devices > min(3, len(devices)):
            shown_devices -= 1
        elif shown_alarms > 1:
            shown_alarms -= 1
        elif shown_devices > 0:
            shown_devices -= 1
        elif shown_alarms > 0:
            shown_alarms -= 1
        else:
            break  # only the title, headers and footer: nothing more to drop
    return build()


def _height(renderable: RenderableType, width: int) -> int:
    console = Console(width=width, height=10_000, color_system=None, force_terminal=False)
    return len(console.render_lines(renderable, console.options, pad=False))


ALARMS_HINT = " alarms: fleet alarms list"
DEVICES_HINT = " devices"
MIN_FLEX = 10
"""The narrowest a message or the values may get before their column is dropped."""


def _alarm_columns(alarms: Sequence[AlarmRow], width: int) -> tuple[str, ...]:
    """The widest column set whose fixed columns (the alarm id whole among them) fit in
    ``width``; the message, when kept, has at least ``MIN_FLEX`` characters."""
    fixed = _alarm_widths(alarms)
    for columns in ALARM_COLUMN_SETS:
        flex = 1 if "message" in columns else 0
        needed = sum(fixed[c] for c in columns if c != "message") + flex * MIN_FLEX
        if needed + _borders(len(columns)) <= width:
            return columns
    return ALARM_COLUMN_SETS[-1]


def _summary(hidden: int, hint: str) -> Text:
    return Text(f"+{hidden} more{hint}", style="dim", no_wrap=True, overflow="ellipsis")


def _borders(columns: int) -> int:
    """Characters a table's frame and padding take: one rule and two spaces a column."""
    return 3 * columns + 1


def _drawn_width(sent: str) -> int:
    """Columns ``sent`` takes once drawn: a control character is shown as ``\\xNN``
    (``printable``), a wide character takes two."""
    return cell_len(printable(sent))


def _widest(header: str, cells: Sequence[str], cap: int = 24) -> int:
    return min(cap, max([len(header), *(_drawn_width(c) for c in cells)]))


def _alarm_widths(alarms: Sequence[AlarmRow]) -> dict[str, int]:
    return {
        "gateway": _widest("gateway", [a.gateway for a in alarms]),
        # the id is never cut: its column is as wide as the longest id
        "alarm": max([len("alarm"), *(_drawn_width(a.alarm_id) for a in alarms)]),
        "severity": _widest("severity", [a.severity for a in alarms]),
        "state": _widest("state", [a.state for a in alarms]),
    }


def _table(
    title: str,
    columns: Sequence[tuple[str, int | None]],
    rows: Sequence[Sequence[Cell]],
    hidden: int,
    hint: str,
    width: int,
) -> Table:
    """A table of one-line rows, ``width`` wide: each column as wide as given, the one
    given ``None`` takes what is left; what does not fit is cut with an ellipsis. Cells are
    literal text, as in ``cli.output.table``. The ``hidden`` rows are summarised under it."""
    fixed = sum(w for _, w in columns if w is not None)
    flex = max(1, width - fixed - _borders(len(columns)))
    caption = _summary(hidden, hint) if hidden else None
    out = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for header, column_width in columns:
        out.add_column(
            header,
            no_wrap=True,
            overflow="ellipsis",
            width=flex if column_width is None else column_width,
        )
    for row in rows:
        out.add_row(*(text(*cell) if isinstance(cell, tuple) else text(cell) for cell in row))
    return out


def _alarm_table(
    alarms: Sequence[AlarmRow], shown: int, columns: Sequence[str], width: int
) -> Table:
    widths: dict[str, int | None] = {**_alarm_widths(alarms), "message": None}
    return _table(
        f"alarms ({len(alarms)})",
        [(c, widths[c]) for c in columns],
        [a.cells(columns) for a in alarms[:shown]],
        len(alarms) - shown,
        ALARMS_HINT,
        width,
    )


def _device_table(devices: Sequence[DeviceRow], shown: int, width: int) -> Table:
    rows: list[list[Cell]] = [
        [
            d.gateway,
            Styled("yes", "green") if d.online else Styled("no", "red"),
            d.device,
            d.values,
            f"{d.age_s:.1f} s",
        ]
        for d in devices[:shown]
    ]
    widths = (
        _widest("gateway", [d.gateway for d in devices], cap=16),
        len("online"),
        _widest("device", [d.device for d in devices], cap=16),
        None,
        len("99.9 s"),
    )
    columns = list(zip(DEVICE_COLUMNS, widths, strict=True))
    return _table("readings", columns, rows, len(devices) - shown, DEVICES_HINT, width)
