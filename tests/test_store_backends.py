"""The Store contract (``central.store.api``) on both backends: each test runs on an SQLite
file and on a real PostgreSQL database (``store_address``), and some only on PostgreSQL
(its partitions, several writer processes, its migrations' lock)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from central.inbox import Lane
from central.rounds import store_round
from central.store import (
    REJECTED_WHOLE_BYTES,
    MessageRejected,
    NotACentralStore,
    StoreTooNew,
    StoreUnavailable,
    open_store,
)
from central.store.api import (
    AlarmQuery,
    GatewayFilter,
    ReadingQuery,
    Retention,
    Store,
)
from central.store.rows import CommandRecord, Identity
from edge_agent.contract import Ack, Channel, TelemetryBatch, Topics
from edge_agent.contract.alarms import AlarmEvent, AlarmMessage, AlarmState, Severity
from mqttlink.session import Message
from tests.support import free_port, secret

DAY = 86_400
T0 = 1_764_000_000.0  # 2025-11-24, a day's start + 38 400 s
BIG = 2**64 - 1  # a uint64 "not available" marker: past 64 signed bits


def reading(
    ts: float, v: Any = 1.0, dev: str = "d1", pt: str = "temp", **more: Any
) -> dict[str, Any]:
    return {"dev": dev, "pt": pt, "v": v, "q": "good", "ts": ts, **more}


def batch(gw: str, stream: str, first: int, readings: list[dict[str, Any]]) -> TelemetryBatch:
    return TelemetryBatch(gw, stream, first, first + len(readings) - 1, readings)


def numbered(gw: str, first: int, last: int, stream: str = "s1", ts: float = T0) -> TelemetryBatch:
    return batch(gw, stream, first, [reading(ts + i, float(i)) for i in range(first, last + 1)])


def store_batches(store: Store, *batches: TelemetryBatch) -> tuple[int, int]:
    with store.round() as rnd:
        for b in batches:
            with rnd.message():
                rnd.insert_telemetry(b)
        rnd.seen({b.gw for b in batches})
    return rnd.counts.readings_stored, rnd.counts.duplicates


@pytest.fixture
def store(store_address: str) -> Iterator[Store]:
    s = open_store(store_address)
    yield s
    s.close()


def event(seq: int, state: str, ts: float, gw: str = "gw-1", **fields: Any) -> AlarmMessage:
    alarm = AlarmEvent(
        id="det-3/smoke.alarm",
        rule="smoke.alarm",
        dev="det-3",
        severity=Severity(fields.pop("severity", "critical")),
        state=AlarmState(state),
        value=fields.pop("value", 3.0),
        ts=ts,
        msg=fields.pop("msg", "smoke"),
        **{"occurrence": 1, **fields},
    )
    return AlarmMessage(gw=gw, stream="s1", seq=seq, event=alarm)


def store_alarms(store: Store, *messages: AlarmMessage) -> int:
    with store.round() as rnd:
        for m in messages:
            with rnd.message():
                rnd.insert_alarm(m)
    return rnd.counts.alarms_stored


# --- exactly-once ------------------------------------------------------------------------


def test_duplicates_and_overlapping_batches_are_stored_once(store: Store) -> None:
    assert store_batches(store, numbered("gw-1", 1, 10)) == (10, 0)
    assert store_batches(store, numbered("gw-1", 1, 10)) == (0, 10)  # resent as it was
    # overlapping on both sides, and a second stream of the same gateway with the same seqs
    assert store_batches(store, numbered("gw-1", 5, 15), numbered("gw-1", 1, 3, "s2")) == (8, 6)
    # within one round: the same batch twice, and a batch inside another
    assert store_batches(
        store, numbered("gw-2", 1, 4), numbered("gw-2", 1, 4), numbered("gw-2", 2, 3)
    ) == (4, 6)
    # a gap, then what fills it
    assert store_batches(store, numbered("gw-1", 20, 25)) == (6, 0)
    assert store_batches(store, numbered("gw-1", 14, 21)) == (4, 4)
    keys = store.sequence_keys("gw-1")
    assert keys == {("s1", q) for q in range(1, 26)} | {("s2", q) for q in (1, 2, 3)}
    assert store.count_readings() == 25 + 3 + 4
    newest = list(store.readings(ReadingQuery(gateway="gw-1", limit=3)))
    assert [(r.stream, r.seq) for r in newest] == [("s1", 25), ("s1", 24), ("s1", 23)]


def test_a_rolled_back_round_keeps_nothing_and_its_batch_is_stored_later(store: Store) -> None:
    with pytest.raises(RuntimeError), store.round() as rnd:
        with rnd.message():
            rnd.insert_telemetry(numbered("gw-1", 1, 5))
        raise RuntimeError("the round fails before its commit")
    assert store.count_readings() == 0
    assert store_batches(store, numbered("gw-1", 1, 5)) == (5, 0)


def test_alarm_events_are_kept_once_and_set_the_current_state(store: Store) -> None:
    assert store_alarms(store, event(1, "active", T0), event(1, "active", T0)) == 1
    assert store_alarms(store, event(2, "active", T0 + 300, reannounced=1)) == 1
    assert (
        store_alarms(
            store,
            event(3, "cleared_unacked", T0 + 350),
            event(4, "active", T0 + 360, retrigger=True),
        )
        == 2
    )
    assert store_alarms(store, event(2, "active", T0 + 300, reannounced=1)) == 0
    (alarm,) = store.alarms()
    assert (alarm.since, alarm.ts, alarm.state, alarm.events) == (T0, T0 + 360, "active", 4)
    assert store.alarm("gw-1", "det-3/smoke.alarm") == alarm
    history = store.alarm_history("gw-1", "det-3/smoke.alarm")
    assert [h["seq"] for h in history] == [1, 2, 3, 4]
    # an older event arriving late is history, not the current state
    store_alarms(store, event(5, "cleared", T0 + 100))
    assert store.alarms()[0].state == "active"
    store_alarms(
        store, event(6, "cleared_unacked", T0 + 500), event(7, "active", T0 + 900, occurrence=2)
    )
    assert store.alarms()[0].since == T0 + 900
    store_alarms(store, event(8, "shelved", T0 + 950, shelved_until=T0 + 4000))
    assert store.alarms()[0].shelved_until == T0 + 4000
    assert store.alarms(AlarmQuery(states=("cleared",))) == []
    assert len(store.alarms(AlarmQuery(severities=("critical",), gateway="gw-1"))) == 1
    assert store.alarms(AlarmQuery(where=GatewayFilter(site="elsewhere"))) == []


# --- conflicts: a resent seq whose content is not the stored one ---------------------------


def store_conflicts(store: Store, *batches: TelemetryBatch) -> list[tuple[int, int]]:
    with store.round() as rnd:
        for b in batches:
            with rnd.message():
                rnd.insert_telemetry(b)
    assert rnd.counts.conflicts == sum(c.count for c in rnd.conflicts)
    for c in rnd.conflicts:
        assert any(c.source is b for b in batches) and not c.alarm
    return [r for c in rnd.conflicts for r in c.seqs]


def test_a_resend_of_every_kind_of_value_as_it_was_is_a_duplicate(store: Store) -> None:
    values: list[Any] = [True, False, BIG, -(2**70), 0, 1, 1.0, 0.1, "42", "", None, "ünï"]
    sent = batch("gw-1", "s1", 1, [reading(T0 + i, v) for i, v in enumerate(values)])
    units = batch("gw-1", "s1", 20, [reading(T0, 1.0, u="kWh"), reading(T0, 1.0, q="bad", r="x")])
    store_batches(store, sent, units)
    assert store_conflicts(store, sent, units) == []
    assert store_batches(store, sent, units) == (0, len(values) + 2)


def test_a_resend_that_differs_is_a_conflict_and_the_stored_rows_stay(store: Store) -> None:
    stored = [reading(T0, 1.0), reading(T0 + 1, 1, u="kWh"), reading(T0 + 2, True)]
    stored += [reading(T0 + 3, BIG), reading(T0 + 4, "on", q="bad", r="e")]
    store_batches(store, batch("gw-1", "s1", 1, stored))
    # each field in turn differs, seq by seq; seq 6 and 7 are new
    resent = [
        reading(T0, 1),  # an integer, not the float 1.0
        reading(T0 + 1, 1, u="Wh"),
        reading(T0 + 2, 1),  # the number 1, not true
        reading(T0 + 3, BIG - 1),
        reading(T0 + 4, "on", q="bad", r="f"),
        reading(T0 + 5),
        reading(T0 + 6),
    ]
    assert store_conflicts(store, batch("gw-1", "s1", 1, resent)) == [(1, 5)]
    others = [reading(T0 + 10, 1.0, dev="d2"), reading(T0 + 1.5, 1, u="kWh")]
    assert store_conflicts(store, batch("gw-1", "s1", 1, others)) == [(1, 2)]
    assert store.count_readings() == 7
    got = [r.value for r in store.readings(ReadingQuery(gateway="gw-1", oldest_first=True))]
    assert got == [1.0, 1, True, BIG, "on", 1.0, 1.0]
    # partly the same: a duplicate where it is, a conflict where it is not
    with store.round() as rnd, rnd.message():
        rnd.insert_telemetry(batch("gw-1", "s1", 1, [reading(T0, 1.0), reading(T0 + 1, 2)]))
    assert (rnd.counts.duplicates, rnd.counts.conflicts, rnd.counts.readings_stored) == (1, 1, 0)
    assert [c.seqs for c in rnd.conflicts] == [((2, 2),)]


def test_a_conflict_within_one_round_keeps_the_first_and_flags_the_second(store: Store) -> None:
    first = numbered("gw-1", 1, 4)
    other = batch("gw-1", "s1", 3, [reading(T0 + 3, 3.0), reading(T0 + 4, 9.0), reading(T0 + 9)])
    assert store_conflicts(store, first, other, numbered("gw-1", 2, 3)) == [(4, 4)]
    assert store.count_readings() == 5
    assert store_conflicts(store, numbered("gw-1", 1, 4), other) == [(4, 4)]


def test_a_message_undone_takes_its_conflicts_with_it(store: Store) -> None:
    store_batches(store, numbered("gw-1", 1, 2))
    store_alarms(store, event(1, "active", T0))
    with store.round() as rnd:
        with pytest.raises(MessageRejected), rnd.message():
            rnd.insert_alarm(event(1, "cleared", T0))
            raise MessageRejected("the rest of the message was bad")
        with rnd.message():
            rnd.insert_alarm(event(1, "active", T0))
    assert (rnd.counts.conflicts, rnd.conflicts) == (0, [])


def test_a_resent_alarm_event_with_other_fields_is_a_conflict(store: Store) -> None:
    real = event(1, "active", T0, value=3.0)
    store_alarms(store, real)
    resent = [
        event(1, "active", T0, value=3.0),
        event(1, "active", T0, value=3),  # the same number, spelt as an integer
        event(1, "cleared", T0),
        event(1, "active", T0, severity="warning"),
        event(1, "active", T0, value=True),
        event(1, "active", T0, msg="all is well"),
        event(1, "active", T0, extra={"note": "x"}),
    ]
    with store.round() as rnd:
        for m in resent:
            with rnd.message():
                rnd.insert_alarm(m)
    assert [resent.index(c.source) for c in rnd.conflicts] == [2, 3, 4, 5, 6]  # type: ignore[arg-type]
    assert all(c.alarm and c.seqs == ((1, 1),) for c in rnd.conflicts)
    assert (rnd.counts.alarms_stored, rnd.counts.conflicts) == (0, 5)
    (alarm,) = store.alarms()
    assert (alarm.state, alarm.severity, alarm.events) == ("active", "critical", 1)


def test_a_conflict_is_kept_whole_as_a_dead_letter(store: Store) -> None:
    payload = b"x" * 100_000
    with store.round() as rnd:
        rnd.insert_rejected("gw-1", "t/gw/gw-1/telemetry", payload, "CONFLICT: seqs 1", None, True)
        rnd.insert_rejected("gw-1", "t/gw/gw-1/telemetry", b"y" * 9000, "bad", None)
    kept = {r.error: r for r in store.rejected("gw-1")}
    assert kept["CONFLICT: seqs 1"].payload == payload and kept["CONFLICT: seqs 1"].conflict
    assert len(kept["bad"].payload) == 4096 and not kept["bad"].conflict
    # whole while the gateway's dead letters hold at most REJECTED_WHOLE_BYTES, then a head
    mib = 1024 * 1024
    with store.round() as rnd:
        for i in range(REJECTED_WHOLE_BYTES // mib):
            rnd.insert_rejected("gw-2", "t", bytes([i]) * mib, f"CONFLICT: {i}", None, True)
    with store.round() as rnd:
        rnd.insert_rejected("gw-2", "t", b"z" * mib, "CONFLICT: more", None, True)
        rnd.insert_rejected("gw-1", "t", b"z" * mib, "CONFLICT: gw-1's", None, True)
    kept = {r.error: r for r in store.rejected(limit=100)}
    assert len(kept["CONFLICT: 7"].payload) == mib == kept["CONFLICT: more"].size
    assert len(kept["CONFLICT: more"].payload) == 4096
    assert len(kept["CONFLICT: gw-1's"].payload) == mib  # another gateway's budget


# --- hostile content -----------------------------------------------------------------------


def test_a_message_the_store_cannot_take_is_rejected_alone(store: Store) -> None:
    """PostgreSQL text cannot hold a NUL: such a message is rejected alone, its writes
    undone, the round goes on. SQLite holds any text, so there it is stored as it came."""
    bad = batch("gw-1", "s1", 100, [reading(T0, "smoke\x00detector")])
    refused = store.backend == "postgresql"
    with store.round() as rnd:
        with rnd.message():
            rnd.insert_telemetry(numbered("gw-1", 1, 3))
        with contextlib.ExitStack() as guard:
            if refused:
                guard.enter_context(pytest.raises(MessageRejected))
            with rnd.message():
                rnd.insert_alarm(event(1, "active", T0))  # written, then undone with the rest
                rnd.insert_telemetry(bad)
        with contextlib.ExitStack() as guard:
            if refused:
                guard.enter_context(pytest.raises(MessageRejected))
            with rnd.message():
                rnd.insert_alarm(event(2, "active", T0, msg="nul \x00 in a message"))
        with rnd.message():
            rnd.insert_telemetry(numbered("gw-1", 4, 5))
        rnd.seen(["gw-1"])
    if not refused:
        assert (rnd.counts.readings_stored, rnd.counts.alarms_stored) == (6, 2)
        (kept,) = [r for r in store.readings(ReadingQuery(gateway="gw-1")) if r.seq == 100]
        assert kept.value == "smoke\x00detector"
        return
    assert (rnd.counts.readings_stored, rnd.counts.alarms_stored) == (5, 0)
    assert store.sequence_keys("gw-1") == {("s1", q) for q in range(1, 6)}
    assert store.alarms() == []
    assert store.alarm_history("gw-1", "det-3/smoke.alarm") == []


def test_values_read_back_exactly_as_they_came(store: Store) -> None:
    values: list[Any] = [
        True,
        False,
        BIG,
        -(2**70),
        2**63 - 1,
        0,
        1,
        1.0,
        0.1,
        -2.5e-300,
        "42",
        "",
        None,
        "ünïcödé",
    ]
    store_batches(store, batch("gw-1", "s1", 1, [reading(T0 + i, v) for i, v in enumerate(values)]))
    got = [
        r.value for r in store.readings(ReadingQuery(gateway="gw-1", limit=None, oldest_first=True))
    ]
    assert got == values
    assert [type(v) for v in got] == [type(v) for v in values]
    store_alarms(store, event(1, "active", T0, value=BIG, occurrence=BIG))
    (alarm,) = store.alarms()
    assert alarm.value == BIG and alarm.occurrence == BIG and type(alarm.value) is int
    store_alarms(store, event(2, "active", T0 + 1, value=True))
    assert store.alarms()[0].value is True


def test_dead_letters_count_repeats_and_are_capped_per_gateway(store: Store) -> None:
    with store.round() as rnd:
        assert (
            rnd.insert_rejected("gw-1", "t/gw/gw-1/telemetry", b"\x00garbage\xff", "bad \x00", None)
            == 0
        )
        assert (
            rnd.insert_rejected("gw-1", "t/gw/gw-1/telemetry", b"\x00garbage\xff", "bad \x00", None)
            == 0
        )
    (letter,) = store.rejected("gw-1")
    assert letter.times == 2 and letter.payload == b"\x00garbage\xff" and letter.size == 9
    pruned = 0
    with store.round() as rnd:
        for i in range(1005):
            pruned += rnd.insert_rejected("gw-2", "t/gw/gw-2/telemetry", b"%d" % i, "bad", None)
    assert pruned == 5
    assert len(store.rejected("gw-2", limit=5000)) == 1000
    assert len(store.rejected("gw-1")) == 1  # another gateway's flood pushed out none of it


# --- the registry ------------------------------------------------------------------------


def online_state(site: str, version: str, **tags: str) -> dict[str, Any]:
    return {
        "online": True,
        "site": site,
        "agent_version": version,
        "config_rev": "r1",
        "started": T0,
        "stream": "s1",
        "tags": tags,
    }


def test_gateways_page_by_id_and_filter_in_the_store(store: Store) -> None:
    with store.round() as rnd:
        for i in range(30):
            gw = f"gw-{i:02d}"
            with rnd.message():
                rnd.update_state(
                    gw,
                    online_state(
                        "north" if i % 2 else "south",
                        "1.1" if i < 10 else "1.2",
                        district=f"d{i % 3}",
                    ),
                    now=T0,
                )
        rnd.seen([f"gw-{i:02d}" for i in range(30)], now=T0 + 5)
    with store.round() as rnd, rnd.message():
        rnd.update_state("gw-03", {"online": False}, now=T0 + 10)
    first = list(store.gateways(limit=10))
    assert [g.id for g in first] == [f"gw-{i:02d}" for i in range(10)]
    second = list(store.gateways(after=first[-1].id, limit=10))
    assert [g.id for g in second] == [f"gw-{i:02d}" for i in range(10, 20)]
    north_d1 = list(store.gateways(GatewayFilter(site="north", tags=(("district", "d1"),))))
    assert [g.id for g in north_d1] == [f"gw-{i:02d}" for i in range(30) if i % 2 and i % 3 == 1]
    offline = list(store.gateways(GatewayFilter(online=False)))
    assert [g.id for g in offline] == ["gw-03"]
    assert offline[0].online_since == T0 + 10 and offline[0].last_seen == T0 + 5
    assert len(list(store.gateways(GatewayFilter(version="1.1")))) == 10
    assert [g.id for g in store.gateways(GatewayFilter(ids=("gw-07", "gw-29", "nope")))] == [
        "gw-07",
        "gw-29",
    ]
    gw = store.gateway("gw-04")
    assert gw is not None and gw.tags == {"district": "d1"} and gw.site == "south"
    assert gw.online and gw.online_since == T0 and gw.agent_version == "1.1"
    assert store.gateway("gw-99") is None


def test_online_since_changes_only_when_online_flips(store: Store) -> None:
    for now, online in (
        (T0, True),
        (T0 + 60, True),
        (T0 + 120, False),
        (T0 + 180, False),
        (T0 + 240, True),
    ):
        with store.round() as rnd, rnd.message():
            rnd.update_state(
                "gw-1", online_state("x", "1") if online else {"online": False}, now=now
            )
        gw = store.gateway("gw-1")
        assert gw is not None and gw.online is online
        assert (
            gw.online_since
            == {True: {T0: T0, T0 + 60: T0, T0 + 240: T0 + 240}.get(now), False: T0 + 120}[online]
        )


def test_health_reports_backlog_drops_and_devices(store: Store) -> None:
    health = {
        "outbox": {"depth": 5000, "oldest_age_s": 12.5},
        "dropped": {"telemetry": 7},
        "devices": {
            "pump-1": {"link": "up", "reason": None},
            "meter": {"link": "down", "reason": "timeout"},
            "junk": 3,
        },
    }
    with store.round() as rnd:
        with rnd.message():
            rnd.update_state("gw-1", online_state("x", "2.0"), now=T0)
        with rnd.message():
            rnd.update_health("gw-1", health, now=T0 + 1)
        with rnd.message():
            rnd.update_state("gw-2", online_state("y", "2.0"), now=T0)
    gw = store.gateway("gw-1")
    assert gw is not None
    assert (gw.outbox_depth, gw.outbox_oldest_age_s, gw.dropped_telemetry) == (5000, 12.5, 7)
    devices = list(store.devices("gw-1"))
    assert [(d.device, d.link, d.error, d.updated) for d in devices] == [
        ("meter", "down", "timeout", T0 + 1),
        ("pump-1", "up", None, T0 + 1),
    ]
    assert list(store.devices(where=GatewayFilter(site="y"))) == []
    store_alarms(store, event(1, "active", T0), event(1, "active", T0, gw="gw-2"))
    status = store.status(now=T0 + 30)
    assert (status.gateways, status.online, status.offline) == (2, 2, 0)
    assert status.alarms_by_severity == {"critical": 2} and status.unacked == 2
    assert status.with_backlog == 1 and status.with_losses == 1
    assert status.versions == {"2.0": 2}
    assert store.gateway("gw-1").alarms_active == 1  # type: ignore[union-attr]


def test_the_command_ledger(store: Store) -> None:
    store.record_command(CommandRecord("c1", "gw-1", "ping", {}, "ops", T0))
    store.record_command(
        CommandRecord("c2", "gw-1", "write", {"pt": "valve", "v": BIG}, None, T0 + 1)
    )
    store.record_command(CommandRecord("c3", "gw-2", "ping", {}, "ops", T0 + 2))
    store.command_result("c2", "ok", {"written": True}, replied=T0 + 3)
    c2, c1 = store.commands("gw-1")
    assert (c2.id, c2.result, c2.detail, c2.replied, c2.args["v"]) == (
        "c2",
        "ok",
        {"written": True},
        T0 + 3,
        BIG,
    )
    assert (c1.id, c1.result) == ("c1", None)
    assert [c.id for c in store.commands(limit=2)] == ["c3", "c2"]


# --- aggregates and retention ------------------------------------------------------------


def test_buckets_aggregate_numbers_and_booleans_from_the_rollups(store: Store) -> None:
    start = 1_764_000_000 - 1_764_000_000 % 3600  # an hour's start
    rows = [
        reading(start + 10, 1.0),
        reading(start + 20, 3),
        reading(start + 70, 8.0),
        reading(start + 3700, True),
        reading(start + 3710, "text"),
        reading(start + 3720, BIG),
        reading(start + 30, 5.0, pt="other"),
    ]
    store_batches(store, batch("gw-1", "s1", 1, rows[:3]), batch("gw-1", "s1", 4, rows[3:]))
    minutes = list(store.buckets(ReadingQuery(gateway="gw-1", point="temp"), 60))
    assert [(b.start, b.count, b.avg, b.min, b.max) for b in minutes] == [
        (start, 2, 2.0, 1.0, 3.0),
        (start + 60, 1, 8.0, 8.0, 8.0),
        (start + 3660, 1, 1.0, 1.0, 1.0),
    ]
    hours = list(store.buckets(ReadingQuery(gateway="gw-1", point="temp"), 3600))
    assert [(b.start, b.count, b.min, b.max) for b in hours] == [
        (start, 3, 1.0, 8.0),
        (start + 3600, 1, 1.0, 1.0),
    ]
    assert len(list(store.buckets(ReadingQuery(gateway="gw-1"), 3600))) == 3
    with pytest.raises(ValueError):
        list(store.buckets(ReadingQuery(), 90))


def test_retention_drops_old_readings_and_keeps_their_rollups(store: Store) -> None:
    now = time.time()
    old, recent = now - 40 * DAY, now - 3600
    store_batches(
        store,
        batch("gw-1", "s1", 1, [reading(old, 2.0), reading(old + 1, 4.0), reading(recent, 6.0)]),
    )
    done = store.maintain(Retention(raw_s=30 * DAY, rollups_s=400 * DAY), now=now)
    assert done.readings_deleted == 2
    assert [r.seq for r in store.readings(ReadingQuery(limit=None))] == [3]
    kept = list(store.buckets(ReadingQuery(gateway="gw-1", since=old - 120, until=old + 120), 60))
    assert sum(b.count for b in kept) == 2 and min(b.min or 0 for b in kept) == 2.0
    # a resent old batch does not come back as new readings
    store_batches(store, batch("gw-1", "s1", 3, [reading(recent, 6.0)]))
    assert store.count_readings() == 1
    done = store.maintain(Retention(raw_s=30 * DAY, rollups_s=10 * DAY), now=now)
    assert done.rollups_deleted == 1  # the old minute; the recent one stays
    assert len(list(store.buckets(ReadingQuery(gateway="gw-1"), 60))) == 1


def test_retention_on_postgresql_drops_whole_partitions(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        now = time.time()
        done = store.maintain(Retention(raw_s=None, rollups_s=None), now=now)
        assert done.partitions_created >= 8  # yesterday, today and the week ahead
        assert store.maintain(Retention(raw_s=None), now=now).partitions_created == 0
        store_batches(store, numbered("gw-1", 1, 3, ts=now - 3 * DAY))  # its day made on demand
        store_batches(store, numbered("gw-1", 4, 5, ts=now - 50 * DAY))  # the default partition
        assert _partition_of(pg_url, now - 3 * DAY) != "readings_default"
        assert _partition_of(pg_url, now - 50 * DAY) == "readings_default"
        done = store.maintain(Retention(raw_s=2 * DAY), now=now)
        assert (done.partitions_dropped, done.readings_deleted) == (1, 5)
        assert store.count_readings() == 0
        assert sum(b.count for b in store.buckets(ReadingQuery(), 60)) == 5
    finally:
        store.close()


def _partition_of(url: str, ts: float) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT tableoid::regclass::text FROM readings WHERE ts >= %s AND ts < %s LIMIT 1",
            (ts - 60, ts + 60),
        ).fetchone()
    assert row is not None
    return str(row[0])


def _partitions(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'readings'::regclass"
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_batch_spread_over_thousands_of_days_makes_no_partitions(pg_url: str) -> None:
    """The contract lets a time be anything from 2000 to tomorrow: one batch of 2,000
    readings a day apart each would have made 2,000 tables, and every query of the fleet
    would plan over them. Days older than a week go to the default partition; they are
    stored all the same, queried and removed by retention."""
    store = open_store(pg_url)
    try:
        now = time.time()
        store.maintain(Retention(raw_s=None, rollups_s=None), now=now)
        before = _partitions(pg_url)
        spread = [reading(now - (10 + i) * DAY, float(i)) for i in range(2000)]
        assert store_batches(store, batch("gw-x", "s1", 1, spread)) == (2000, 0)
        assert _partitions(pg_url) == before
        assert len(list(store.readings(ReadingQuery(gateway="gw-x", limit=None)))) == 2000
        assert store_batches(store, batch("gw-x", "s1", 1, spread)) == (0, 2000)  # once
        done = store.maintain(Retention(raw_s=400 * DAY), now=now)
        assert done.readings_deleted == 2000 - 391  # older than 400 days: 10 + i > 400
        assert store.count_readings() == 391
    finally:
        store.close()


# --- opening: migrations, foreign databases, an unreachable server -----------------------


def test_a_store_opens_again_and_refuses_newer_or_foreign_ones(store_address: str) -> None:
    first = open_store(store_address)
    store_batches(first, numbered("gw-1", 1, 2))
    first.close()
    again = open_store(store_address)
    assert again.count_readings() == 2
    again.close()
    if store_address.startswith("postgresql://"):
        with psycopg.connect(store_address, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_version VALUES (99, 'the future', 0)")
    else:
        with sqlite3.connect(store_address) as conn:
            conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreTooNew, match="99"):
        open_store(store_address)


def test_a_foreign_postgresql_database_is_refused_untouched(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id int)")
    with pytest.raises(NotACentralStore, match="invoices"):
        open_store(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    assert tables == [("invoices",)]


def test_an_unreachable_server_is_unavailable_and_no_password_is_shown(pg_url: str) -> None:
    url = f"postgresql://ops:{secret('s3cret-pw')}@127.0.0.1:{free_port()}/central"
    with pytest.raises(StoreUnavailable) as caught:
        open_store(url)
    assert "s3cret-pw" not in str(caught.value) and "127.0.0.1" in str(caught.value)
    store = open_store(
        pg_url.replace("postgresql://", "postgresql://postgres:pw@", 1)
        if "@" not in pg_url
        else pg_url
    )
    assert "pw@" not in store.label
    store.close()


def test_workers_opening_a_new_database_at_once_all_succeed(pg_url: str) -> None:
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            open_store(pg_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and not any(t.is_alive() for t in threads)


def test_concurrent_writers_store_every_reading_exactly_once(pg_url: str) -> None:
    """Four workers, each with its own store (connection), store overlapping batches of
    the same streams at once, in different orders: each seq once, the rest duplicates."""
    open_store(pg_url).close()
    gateways = [f"gw-{i}" for i in range(6)]
    per_worker: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(worker: int) -> None:
        store = open_store(pg_url)
        try:
            start.wait(30)
            order = gateways[worker:] + gateways[:worker]  # each its own order of streams
            stored = dupes = 0
            for r in range(10):
                batches = [numbered(gw, r * 20 + 1 + worker * 5, r * 20 + 30) for gw in order]
                for _attempt in range(20):  # a round may fail: then it is tried again
                    try:
                        s, d = store_batches(store, *batches)
                        break
                    except StoreUnavailable:
                        time.sleep(0.05)
                else:
                    raise AssertionError("a round failed 20 times")
                stored, dupes = stored + s, dupes + d
            per_worker.append((stored, dupes))
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and not any(t.is_alive() for t in threads)
    store = open_store(pg_url)
    try:
        for gw in gateways:
            assert store.sequence_keys(gw) == {("s1", q) for q in range(1, 211)}
        assert store.count_readings() == 6 * 210
        offered = sum(s + d for s, d in per_worker)
        assert sum(s for s, _ in per_worker) == 6 * 210
        assert offered == sum(6 * (30 - (1 + w * 5) + 1) * 10 for w in range(4))
    finally:
        store.close()


def test_a_lost_connection_is_unavailable_and_the_next_round_connects_again(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        store_batches(store, numbered("gw-1", 1, 3))
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'edgefleet-central'"
            )
        with pytest.raises(StoreUnavailable, match="unavailable"):
            store_batches(store, numbered("gw-1", 4, 6))
        assert store_batches(store, numbered("gw-1", 4, 6)) == (3, 0)  # nothing was kept
        assert store.count_readings() == 6  # the reader connects again too
    finally:
        store.close()


def test_text_postgresql_cannot_hold_is_rejected_in_every_field(store: Store) -> None:
    """A lone surrogate is no text on either engine: rejected on both. A NUL only
    PostgreSQL text cannot hold: rejected there, stored as it came on SQLite."""
    nul_readings = [
        reading(T0, 1.0, dev="d\x00"),
        reading(T0, 1.0, u="°\x00C"),
        reading(T0, 1.0, r="why\x00"),
    ]
    refused = store.backend == "postgresql"
    with store.round() as rnd:
        with pytest.raises(MessageRejected), rnd.message():
            # a lone surrogate: a JSON escape may make one
            rnd.insert_telemetry(batch("gw-1", "s1", 10, [reading(T0, 1.0, pt="\ud800")]))
        for i, r in enumerate(nul_readings):
            with contextlib.ExitStack() as guard:
                if refused:
                    guard.enter_context(pytest.raises(MessageRejected))
                with rnd.message():
                    rnd.insert_telemetry(batch("gw-1", "s1", 11 + i, [r]))
        with rnd.message():
            rnd.insert_telemetry(numbered("gw-1", 1, 2))
    kept = {("s1", 1), ("s1", 2)} | (set() if refused else {("s1", q) for q in (11, 12, 13)})
    assert store.sequence_keys("gw-1") == kept


def test_a_state_postgresql_cannot_hold_is_rejected_and_the_registry_kept(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        with store.round() as rnd:
            with rnd.message():
                rnd.update_state("gw-1", online_state("north", "1.0"), now=T0)
            with pytest.raises(MessageRejected), rnd.message():
                rnd.update_state("gw-1", online_state("so\x00uth", "1.0"), now=T0 + 1)
            with pytest.raises(MessageRejected), rnd.message():
                rnd.update_health("gw-1", {"devices": {"d\x00": {"link": "up"}}}, now=T0 + 1)
        gw = store.gateway("gw-1")
        assert gw is not None and gw.site == "north" and list(store.devices()) == []
    finally:
        store.close()


def test_identities_are_kept_and_register_the_gateway_with_its_site_and_tags(
    store: Store,
) -> None:
    first = Identity("gw-9", "certificate", "ab" * 32, T0, T0 + 825 * DAY)
    store.add_identity(first, site="Jing'an / 1266", tags={"district": "jingan"})
    row = store.gateway("gw-9")
    assert row is not None
    assert (row.site, row.tags, row.online) == ("Jing'an / 1266", {"district": "jingan"}, False)
    assert (store.status().gateways, store.status().offline) == (1, 1)
    # provisioned again (a new certificate), no site given: the one it had is kept
    second = Identity("gw-9", "certificate", "cd" * 32, T0 + DAY, T0 + 826 * DAY)
    store.add_identity(second)
    store.add_identity(Identity("gw-1", "password", "ef" * 32, T0 + 2 * DAY))
    assert store.identities("gw-9") == [first, second]
    assert [i.gateway for i in store.identities()] == ["gw-9", "gw-9", "gw-1"]
    row = store.gateway("gw-9")
    assert row is not None and row.site == "Jing'an / 1266" and row.tags == {"district": "jingan"}
    # its own online state says where it is from then on
    with store.round() as rnd:
        rnd.update_state("gw-9", {"online": True, "site": "moved", "tags": {"a": "b"}})
    row = store.gateway("gw-9")
    assert row is not None and row.online and row.site == "moved" and row.tags == {"a": "b"}
    assert store.identities("gw-2") == []


def test_revoking_marks_every_live_identity_and_expiring_lists_the_newest_live_one(
    store: Store,
) -> None:
    old = Identity("gw-1", "certificate", "01" * 32, T0, T0 + 10 * DAY)
    new = Identity("gw-1", "certificate", "02" * 32, T0 + DAY, T0 + 20 * DAY)  # renewed
    other = Identity("gw-2", "certificate", "03" * 32, T0, T0 + 5 * DAY)
    far = Identity("gw-3", "certificate", "04" * 32, T0, T0 + 400 * DAY)
    for identity in (old, new, other, far):
        store.add_identity(identity)
    assert store.revoked_gateways() == frozenset()
    # expiring within 30 days of T0: each gateway's newest live identity, soonest first
    assert store.expiring(T0 + 30 * DAY) == [other, new]
    assert store.revoke_identities("gw-2", T0 + 2 * DAY) == 1
    assert store.revoke_identities("gw-2", T0 + 3 * DAY) == 0  # already: kept as it was
    assert store.revoked_gateways() == {"gw-2"}
    assert [i.revoked for i in store.identities("gw-2")] == [T0 + 2 * DAY]
    assert store.expiring(T0 + 30 * DAY) == [new]
    # provisioned again after it was revoked: a live identity, no longer revoked
    store.add_identity(Identity("gw-2", "certificate", "05" * 32, T0 + 4 * DAY, T0 + 9 * DAY))
    assert store.revoked_gateways() == frozenset()
    assert store.revoke_identities("gw-unknown", T0) == 0


def test_a_round_flags_a_conflict_keeps_the_message_whole_and_acks_it(store: Store) -> None:
    """The round logic on each backend (PostgreSQL finds telemetry's conflicts only when
    the round commits): a forgery first, then the real batch and alarm with its seqs."""
    topics = Topics()

    def message(channel: Channel, body: dict[str, Any]) -> Message:
        return Message(topics.gw("gw-1", channel), json.dumps(body).encode(), qos=1)

    def telemetry(values: list[float]) -> Message:
        readings = [reading(T0 + i, v) for i, v in enumerate(values)]
        return message(
            Channel.TELEMETRY,
            {
                "gw": "gw-1",
                "stream": "s1",
                "seq_first": 1,
                "seq_last": len(values),
                "readings": readings,
            },
        )

    alarm = event(1, "active", T0).to_json()
    store_round(store, topics, [telemetry([0.0, 0.0])])
    store_round(store, topics, [message(Channel.ALARMS, alarm | {"state": "cleared"})], Lane.ALARMS)
    real = telemetry([1.0, 2.0, 3.0])
    out = store_round(store, topics, [real, telemetry([1.0, 2.0, 3.0])])
    assert [(c.seqs, c.alarm) for c in out.conflicts] == [(((1, 2),), False)] * 2
    assert out.acks == [("gw-1", Ack("s1", telemetry=((1, 3),), alarms=()))]
    assert (out.counts.readings_stored, out.counts.conflicts) == (1, 4)
    real_alarm = message(Channel.ALARMS, alarm)
    out = store_round(store, topics, [real_alarm], Lane.ALARMS)
    assert out.acks == [("gw-1", Ack("s1", telemetry=(), alarms=((1, 1),)))]
    assert out.alarms == [] and len(out.conflicts) == 1
    letters = {d.topic.rsplit("/", 1)[1]: d for d in store.rejected("gw-1")}
    assert letters["telemetry"].payload == real.payload and letters["telemetry"].times == 2
    assert letters["alarms"].payload == real_alarm.payload
    assert all(d.conflict and d.error.startswith("CONFLICT: ") for d in letters.values())
    values = [r.value for r in store.readings(ReadingQuery(gateway="gw-1", oldest_first=True))]
    assert values == [0.0, 0.0, 3.0]
    # resent as it was: a plain duplicate, nothing flagged
    out = store_round(store, topics, [telemetry([0.0, 0.0, 3.0])])
    assert out.conflicts == [] and (out.counts.duplicates, out.counts.conflicts) == (3, 0)
