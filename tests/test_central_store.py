"""The center's current-alarm table: what each kind of alarm event does to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from central.store.sqlite import SqliteStore
from edge_agent.contract.alarms import AlarmEvent, AlarmMessage, AlarmState, Severity


def event(seq: int, state: str, ts: float, **fields: Any) -> AlarmMessage:
    alarm = AlarmEvent(
        id="det-3/smoke.alarm",
        rule="smoke.alarm",
        dev="det-3",
        severity=Severity.CRITICAL,
        state=AlarmState(state),
        value=3.0,
        ts=ts,
        msg="smoke",
        **{"occurrence": 1, **fields},
    )
    return AlarmMessage(gw="gw-1", stream="s1", seq=seq, event=alarm)


def test_reminders_and_retriggers_keep_the_time_the_alarm_was_raised(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "central.db")
    try:
        with store.round() as rnd:
            rnd.insert_alarm(event(1, "active", 100.0))
            rnd.insert_alarm(event(2, "active", 400.0, reannounced=1))
            rnd.insert_alarm(event(3, "cleared_unacked", 450.0))
            rnd.insert_alarm(event(4, "active", 460.0, retrigger=True))
        (alarm,) = store.alarms()
        assert alarm.since == 100.0 and alarm.ts == 460.0 and alarm.state == "active"
        assert alarm.events == 4
        assert len(store.alarm_history("gw-1", "det-3/smoke.alarm")) == 4
        with store.round() as rnd:
            rnd.insert_alarm(event(5, "cleared_unacked", 500.0))
            rnd.insert_alarm(event(6, "active", 900.0, occurrence=2))  # a new occurrence
        assert store.alarms()[0].since == 900.0
    finally:
        store.close()


def test_since_comes_from_the_event_when_the_activation_was_never_stored(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "central.db")
    try:  # a fresh center hears a reminder first: the alarm began at 100, not 400
        with store.round() as rnd:
            rnd.insert_alarm(event(2, "active", 400.0, reannounced=1, since=100.0))
        assert store.alarms()[0].since == 100.0
    finally:
        store.close()
