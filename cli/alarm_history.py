"""How ``fleet alarms`` names an alarm's state and draws its history, in the contract's
words (``AlarmState``, ISA-18.2's states): the same names as the events, the replies to
commands and the store.

An alarm row of the store keeps its lifecycle state and, apart, ``shelved_until``; a
person reads it as one state, so a shelved alarm is listed ``shelved`` until its shelving
ends. History rows come from events a gateway sent: they are decoded by the contract
again, and every field is shown as text, whatever its type.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cli.output import Cell, Column, Styled, shown, utc
from edge_agent.contract import AlarmEvent, AlarmState, PayloadError

LIFECYCLE = (
    AlarmState.ACTIVE,
    AlarmState.ACKNOWLEDGED,
    AlarmState.CLEARED_UNACKED,
    AlarmState.CLEARED,
)
LISTED_STATES = tuple(s.value for s in (*LIFECYCLE, AlarmState.SHELVED))
"""What ``fleet alarms list --state`` accepts: the states an alarm can be in now."""

HISTORY_COLUMNS: Sequence[str | Column] = (
    Column("time (UTC)", no_wrap=True),
    "state",
    Column("value", justify="right"),
    "by",
    "message",
    "detail",
)


def listed_alarm(row: Mapping[str, Any], now: float) -> dict[str, Any]:
    """A row of the store's ``alarms`` table as ``fleet alarms list`` shows it at ``now``:
    while shelved, ``state`` is ``shelved`` and ``current`` the lifecycle state, as in the
    reply to a command."""
    until = _time(row.get("shelved_until"))
    if until is not None and now < until:
        return {**row, "state": AlarmState.SHELVED.value, "current": row["state"]}
    return dict(row)


def history_rows(events: Sequence[Mapping[str, Any]]) -> Iterator[Sequence[Cell]]:
    for body in events:
        try:
            event = AlarmEvent.from_json(dict(body))
        except PayloadError as exc:  # stored before a stricter contract: show what it is
            yield (utc(_time(body.get("ts"))), shown(body.get("state")), "", "", "", str(exc))
            continue
        yield (
            utc(event.ts),
            event.state.value,
            shown(event.value),
            _by(event),
            event.msg,
            _detail(event),
        )


def _time(ts: object) -> float | None:
    return float(ts) if type(ts) in (int, float) else None  # type: ignore[arg-type]


def _by(event: AlarmEvent) -> Cell:
    """Who acted, on the events of an action (an ack, a shelving); not on a clear that
    follows an ack, which the process did, though the event still names the acker."""
    if event.state is AlarmState.SHELVED:
        return event.shelved_by or ""
    if event.action is None and (
        event.state is AlarmState.ACKNOWLEDGED
        or (event.state is AlarmState.CLEARED and event.acknowledged)
    ):
        return event.acked_by or ""
    return ""


def _detail(event: AlarmEvent) -> Cell:
    """What else the event says: an action's results, a shelving's end and reason, a
    retrigger or a reminder; each a segment, joined by ``; ``."""
    segments: list[tuple[str | Styled, ...]] = []
    if event.action is not None:
        phase = event.action.phase
        for r in event.action.results:
            w = r.write
            outcome = Styled("ok", "green") if r.ok else Styled(f"failed: {r.error}", "red")
            segments.append((f"{phase}: {w.device}.{w.point}={shown(w.value)} ", outcome))
        if not event.action.results:
            segments.append((f"{phase}: no action",))
    if event.state is AlarmState.SHELVED:
        reason = f": {event.reason}" if event.reason else ""
        segments.append((f"until {utc(event.shelved_until)} UTC{reason}",))
    elif event.state is AlarmState.UNSHELVED:
        segments.append((f"{event.reason or 'unshelved'}; now {shown(event.current)}",))
    if event.retrigger:
        segments.append(("condition back before the ack",))
    if event.reannounced:
        segments.append((f"reminder {event.reannounced}",))
    joined: list[str | Styled] = []
    for i, segment in enumerate(segments):
        joined += [*(("; ",) if i else ()), *segment]
    return tuple(joined)
