"""The outbox's interfaces, the same tests against the agent's SQLite facade and against
the in-memory implementations that tests use in its place: they must not disagree."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.contract import AlarmEvent, AlarmState, Severity
from edge_agent.outbox import (
    AgentOutbox,
    AlarmJournal,
    CommandLedger,
    OutboxFull,
    OutboxGauge,
    RuleState,
    TelemetryLog,
)
from edge_agent.outbox.memory import (
    MemoryAlarmJournal,
    MemoryCommandLedger,
    MemoryGauge,
    MemoryRuleState,
    MemoryTelemetryLog,
)


@dataclass
class Parts:
    telemetry: TelemetryLog
    alarms: AlarmJournal
    commands: CommandLedger
    rule_state: RuleState
    gauge: OutboxGauge


@pytest.fixture(params=["sqlite", "memory"])
async def parts(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Parts]:
    if request.param == "sqlite":
        outbox = await AgentOutbox.open(tmp_path / "outbox.db", max_bytes=10**8)
        yield Parts(outbox.telemetry, outbox.alarms, outbox, outbox, outbox)
        await outbox.aclose()
    else:
        state = MemoryRuleState()
        telemetry = MemoryTelemetryLog()
        alarms = MemoryAlarmJournal(state, stream_id=telemetry.stream_id)  # one file, one stream
        gauge = MemoryGauge(telemetry, alarms, tmp_path)
        yield Parts(telemetry, alarms, MemoryCommandLedger(), state, gauge)


def event(alarm_id: str, ts: float) -> AlarmEvent:
    return AlarmEvent(
        id=alarm_id,
        rule="smoke.alarm",
        dev="det-3",
        severity=Severity.CRITICAL,
        state=AlarmState.ACTIVE,
        value=2.6,
        ts=ts,
        msg="smoke",
        occurrence=1,
        since=ts,
        values={"smoke": 2.6},
    )


async def test_telemetry_is_numbered_read_in_runs_and_forgotten_when_acked(parts: Parts) -> None:
    log = parts.telemetry
    assert await log.span() == (None, 0)
    assert await log.append([(1.0, '{"i":1}'), (2.0, '{"i":2}'), (3.0, '{"i":3}')]) == 3
    assert await log.append([(4.0, '{"i":4}')]) == 4
    assert await log.fetch(2, None, 2) == [(2, '{"i":2}'), (3, '{"i":3}')]
    assert await log.fetch(1, 3, 10) == [(1, '{"i":1}'), (2, '{"i":2}')]
    assert await log.forget([(2, 3)]) == (2, True)
    assert await log.fetch(1, None, 10) == [(1, '{"i":1}')]  # cut at the gap
    assert await log.forget([(2, 3)]) == (0, True)  # an ack applied twice does no harm
    assert await log.span() == (1, 4)
    await log.forget([(1, 4)])
    assert await log.span() == (None, 4)  # numbers are never reused
    assert await log.append([(5.0, "{}")]) == 5
    stats = await parts.gauge.stats()
    assert (stats.depth, stats.alarms_depth, stats.oldest_ts) == (1, 0, 5.0)


async def test_alarm_events_and_their_states_are_kept_together(parts: Parts) -> None:
    journal = parts.alarms
    state = {"state": "active", "occurrence": 1}
    last = await journal.record(
        [event("det-3/smoke.alarm", 10.0)], [("det-3/smoke.alarm", json.dumps(state))]
    )
    assert last == await journal.last_seq() == 1
    assert await journal.record([event("det-3/other", 11.0)], []) == 2
    assert [(seq, e.id) for seq, e in await journal.fetch(1, 10)] == [
        (1, "det-3/smoke.alarm"),
        (2, "det-3/other"),
    ]
    (_, first), _ = await journal.fetch(1, 10)
    assert first == event("det-3/smoke.alarm", 10.0)  # the same typed event back
    assert await parts.rule_state.load() == {"det-3/smoke.alarm": state}
    assert await journal.forget([(1, 1)]) == (1, True)
    assert await journal.span() == (2, 2)
    assert journal.stream_id == parts.telemetry.stream_id


async def test_a_command_id_is_refused_a_second_time_until_it_expires(parts: Parts) -> None:
    ledger = parts.commands
    assert await ledger.remember("c-1", expires=100.0, now=50.0) is True
    assert await ledger.remember("c-1", expires=100.0, now=60.0) is False
    assert await ledger.remember("c-1", expires=300.0, now=200.0) is True  # forgotten


async def test_a_full_memory_journal_refuses_like_a_full_disk() -> None:
    journal = MemoryAlarmJournal()
    journal.full = "database or disk is full"
    with pytest.raises(OutboxFull):
        await journal.record([event("a", 1.0)], [])
    assert await journal.span() == (None, 0) and await journal.rule_state.load() == {}
