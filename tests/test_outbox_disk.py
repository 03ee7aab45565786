"""The outbox when things go wrong under it: a full disk at restart and while an alarm
fires, a truly corrupt file, a reading stamped by a wrong clock, a drop that cannot commit.

The full-disk cases fill a real 4 MB tmpfs (the ``small_fs`` fixture: root, as in CI)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from drivers.base import Quality, Reading, Value
from edge_agent.alarms import HELD_MAX, AlarmService, AlarmWrite
from edge_agent.committer import Committer
from edge_agent.contract import AlarmEvent, AlarmState, Channel, Severity
from edge_agent.contract.schema import validate
from edge_agent.outbox import (
    AgentOutbox,
    DbThread,
    Lane,
    Outbox,
    OutboxFull,
    OutboxPathError,
    OutboxUnavailable,
    quick_check,
)
from edge_agent.outbox.memory import MemoryAlarmJournal
from edge_agent.rules.compile import compile_rules
from edge_agent.rules.engine import RuleEngine
from edge_agent.rules.model import Rule
from tests.support import fill_disk

T = TypeVar("T")
BODY = "y" * 200
DEV = "det-3"
SMOKE = {
    "id": "smoke.alarm",
    "device": DEV,
    "when": "smoke >= 2.4",
    "clear_when": "smoke < 2.0",
    "severity": "critical",
    "message": "Smoke {smoke:.1f} %/m at {device}",
    "actions": {"on_active": [{"write": {"device": DEV, "point": "siren", "value": True}}]},
}


def corrupt_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".corrupt-" in p.name)


def alarm_events(ob: Outbox) -> list[dict[str, Any]]:
    return [json.loads(b) for _, b in ob.fetch(Lane.ALARMS, 1, None, 10_000)]


# --- B2: restart on a full disk; a truly corrupt file ----------------------------------


def test_restart_on_a_full_disk_keeps_the_outbox_and_its_backlog(small_fs: Path) -> None:
    path = small_fs / "outbox.db"
    ob = Outbox(path, max_bytes=10**9, ballast_bytes=256 * 1024)
    ob.append(Lane.TELEMETRY, [(1.0, BODY)] * 3000)
    stream = ob.stream_id
    ob.close()  # a clean close: no -shm left, and opening again needs room for one
    fill_disk(small_fs / "filler")
    again = Outbox(path, max_bytes=10**9, ballast_bytes=256 * 1024)
    assert again.moved_aside is None
    assert corrupt_files(small_fs) == []
    assert again.stream_id == stream
    assert again.stats().depth == 3000  # the backlog is still there to be sent
    assert not again.ballast.exists()  # given back to make the open possible
    again.close()
    assert quick_check(path) is None


def test_restart_on_a_full_disk_without_ballast_refuses_and_touches_nothing(
    small_fs: Path,
) -> None:
    path = small_fs / "outbox.db"
    ob = Outbox(path, max_bytes=10**9)
    ob.append(Lane.TELEMETRY, [(1.0, BODY)] * 3000)
    stream = ob.stream_id
    ob.close()
    filler = small_fs / "filler"
    fill_disk(filler)
    with pytest.raises(OutboxUnavailable, match="make room"):
        Outbox(path, max_bytes=10**9)
    assert corrupt_files(small_fs) == []
    filler.unlink()  # space returns: the next start finds everything
    again = Outbox(path, max_bytes=10**9)
    assert (again.moved_aside, again.stream_id, again.stats().depth) == (None, stream, 3000)


def test_a_corrupt_file_is_set_aside_and_the_center_is_told(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path, max_bytes=10**8)
    ob.append(Lane.TELEMETRY, [(1000.0 + i, "{}") for i in range(2000)])
    old_stream = ob.stream_id
    ob.close()
    data = bytearray(path.read_bytes())
    data[-4096:] = b"\xff" * 4096  # smash the last page: telemetry, not the meta table
    path.write_bytes(bytes(data))
    again = Outbox(path, max_bytes=10**8)
    assert again.moved_aside is not None and again.moved_aside.exists()
    assert again.stream_id != old_stream
    (notice,) = alarm_events(again)  # the new stream's first alarm-lane event
    assert notice["rule"] == notice["id"] == "outbox.corrupt"
    assert notice["corrupt"]["old_stream"] == old_stream
    assert notice["corrupt"]["kept_as"] == str(again.moved_aside)
    assert again.moved_aside.name in notice["msg"] and old_stream in notice["msg"]
    wire = json.dumps({**notice, "gw": "gw-1", "stream": again.stream_id, "seq": 1}).encode()
    validate(Channel.ALARMS, wire)
    assert again.append(Lane.ALARMS, [(1.0, "{}")]) == 2  # after the notice


def test_a_file_that_is_not_a_database_is_refused_and_kept_as_it_is(tmp_path: Path) -> None:
    """Not SQLite at all, so not an outbox this agent made: never moved aside (it may be
    anyone's file, the agent's config even); only a corrupt outbox of ours is."""
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not SQLite at all\n" * 400)
    with pytest.raises(OutboxPathError, match="not an SQLite database"):
        Outbox(path, max_bytes=10**8)
    assert path.read_bytes().startswith(b"this is not SQLite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox.db"]


def test_a_sound_file_is_never_set_aside_for_an_error_that_is_not_corruption(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path, max_bytes=10**8).close()
    locker = sqlite3.connect(path, timeout=0, isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    locker.execute("INSERT INTO meta VALUES ('x', 'y')")
    real_connect = sqlite3.connect

    def impatient(*args: Any, **kw: Any) -> sqlite3.Connection:
        return real_connect(*args, **{**kw, "timeout": 0.05})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sqlite3, "connect", impatient)
        with pytest.raises(OutboxUnavailable, match="locked"):
            Outbox(path, max_bytes=10**8)
    locker.close()
    assert corrupt_files(tmp_path) == []


# --- B3: an alarm while the disk is full --------------------------------------------------


class FakeSender:
    def __init__(self) -> None:
        self.last: dict[Lane, int] = {Lane.ALARMS: 0, Lane.TELEMETRY: 0}

    def appended(self, lane: Lane, last_seq: int) -> None:
        self.last[lane] = max(self.last[lane], last_seq)


class Siren:
    def __init__(self) -> None:
        self.writes: list[tuple[str, Value]] = []

    async def read(self) -> list[Reading]:
        return []

    async def write(self, point: str, value: Value) -> None:
        self.writes.append((point, value))

    async def aclose(self) -> None:
        pass


@pytest.fixture
def db_thread() -> Iterator[DbThread]:
    thread = DbThread()
    yield thread
    thread.shutdown()


def agent_parts(ob: Outbox, thread: DbThread) -> tuple[Committer, AlarmService, FakeSender, Siren]:
    outbox = AgentOutbox(ob, thread)
    rules = compile_rules({DEV: frozenset({"smoke", "siren"})}, [Rule.model_validate(SMOKE)], [])
    sender, siren = FakeSender(), Siren()
    alarms = AlarmService(RuleEngine(rules), outbox.alarms, sender, {DEV: siren})
    return Committer(outbox.telemetry, outbox.alarms, sender, alarms), alarms, sender, siren


def smoke(value: float, n: int = 1) -> list[Reading]:
    now = time.time()
    return [Reading(DEV, "smoke", value, "%/m", Quality.GOOD, now + i * 1e-3) for i in range(n)]


async def settle(alarms: AlarmService) -> None:
    for _ in range(100):  # the siren is written by a task: let it run
        if not alarms._tasks:
            return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("when", ["disk just filled", "ballast spent"])
async def test_an_alarm_on_a_full_disk_is_recorded_and_the_committer_carries_on(
    small_fs: Path, db_thread: DbThread, when: str
) -> None:
    ob = Outbox(small_fs / "outbox.db", max_bytes=10**8, ballast_bytes=256 * 1024)
    ob.append(Lane.TELEMETRY, [(1.0, BODY)] * 2000)
    committer, alarms, sender, siren = agent_parts(ob, db_thread)
    filler = small_fs / "filler"
    fill_disk(filler)
    if when == "ballast spent":  # readings took the ballast's room, and more is refused
        for _ in range(200):
            await committer.commit_pending(smoke(1.0, 200))
            if committer.lost_disk_full:
                break
        assert committer.lost_disk_full
        assert ob.ballast.stat().st_size == 64 * 1024  # what readings may not take
    await committer.commit_pending(smoke(3.0))  # fire, and no room on the disk
    for _ in range(40):  # and the readings keep coming: never an exception
        await committer.commit_pending(smoke(3.0, 50))
    await settle(alarms)
    fired = [e for e in alarm_events(ob) if e.get("id") == f"{DEV}/smoke.alarm"]
    assert [e["state"] for e in fired if "action" not in e] == ["active"]
    assert siren.writes == [("siren", True)]  # committed() ran: the local action
    assert sender.last[Lane.ALARMS] == ob.last_seq(Lane.ALARMS)  # the sender was told
    assert ob.alarm_states()[f"{DEV}/smoke.alarm"]["state"] == "active"
    assert not ob.ballast.exists() and ob.stats().dropped_telemetry > 0  # room was made
    assert any(e["rule"] == "outbox.dropped" for e in alarm_events(ob))  # and reported
    # space returns: readings are committed again, the lost ones were counted
    filler.unlink()
    lost = committer.lost_disk_full
    before = committer.committed
    await committer.commit_pending(smoke(3.0, 10))
    assert committer.committed == before + 10 and committer.lost_disk_full == lost
    assert sender.last[Lane.TELEMETRY] == ob.last_seq(Lane.TELEMETRY)


async def test_readings_refused_by_a_full_disk_do_not_stop_the_alarm(
    tmp_path: Path, db_thread: DbThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    ob = Outbox(tmp_path / "outbox.db", max_bytes=10**8)
    committer, alarms, sender, siren = agent_parts(ob, db_thread)

    def full(lane: Lane, rows: object) -> int:
        raise OutboxFull("database or disk is full")

    monkeypatch.setattr(ob, "append", full)
    await committer.commit_pending(smoke(3.0, 5))
    await settle(alarms)
    assert committer.lost_disk_full == 5 and committer.committed == 0
    assert siren.writes == [("siren", True)]
    assert sender.last[Lane.ALARMS] >= 1
    assert [e["state"] for e in alarm_events(ob)][:1] == ["active"]


async def test_an_alarm_the_disk_refuses_is_kept_acted_on_and_written_later(
    tmp_path: Path, db_thread: DbThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    ob = Outbox(tmp_path / "outbox.db", max_bytes=10**8)
    committer, alarms, sender, siren = agent_parts(ob, db_thread)
    real_record = ob.record_alarms

    def full(events: object, states: object) -> int:
        raise OutboxFull("database or disk is full")

    monkeypatch.setattr(ob, "record_alarms", full)
    await committer.commit_pending(smoke(3.0, 5))
    await settle(alarms)
    assert siren.writes == [("siren", True)]  # a siren does not wait for disk space
    assert committer.lost_disk_full == 5  # readings yield the room to the alarm
    assert alarm_events(ob) == [] and ob.alarm_states() == {}
    assert f"{DEV}/smoke.alarm" in alarms.engine.dirty  # its state is still to be saved
    monkeypatch.setattr(ob, "record_alarms", real_record)
    await alarms.record([])  # the clock's next tick: room again
    await settle(alarms)
    events = alarm_events(ob)
    assert events[0]["state"] == "active" and events[0]["id"] == f"{DEV}/smoke.alarm"
    assert ob.alarm_states()[f"{DEV}/smoke.alarm"]["state"] == "active"
    assert sender.last[Lane.ALARMS] == ob.last_seq(Lane.ALARMS)
    assert siren.writes == [("siren", True)]  # not a second time


# --- B6: one reading stamped by a wrong clock --------------------------------------------


def test_a_stray_old_timestamp_does_not_drop_the_newer_readings(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=10**9, max_age_s=7 * 86400)
    now = 1_000_000_000.0
    ob.append(Lane.TELEMETRY, [(now - 3600 + i, "{}") for i in range(1000)])  # young backlog
    ob.append(Lane.TELEMETRY, [(now - 8 * 86400, "{}")])  # a PLC whose clock is 8 days behind
    ob.append(Lane.TELEMETRY, [(now, "{}")])
    assert ob.enforce_bounds(now=now) == []
    assert ob.stats().depth == 1002 and ob.stats().dropped_telemetry == 0
    # a week on, everything before the stray row is old too: it goes with them, not later
    drops = ob.enforce_bounds(now=now + 7 * 86400 - 1)
    assert [(d.first, d.last, d.cause) for d in drops] == [(1, 1001, "age")]
    assert ob.first_seq(Lane.TELEMETRY) == 1002


# --- B7: the drop counter ------------------------------------------------------------------


def test_a_drop_that_cannot_commit_is_not_counted(small_fs: Path) -> None:
    path = small_fs / "outbox.db"
    ob = Outbox(path, max_bytes=10**9)  # no ballast: nothing to give back
    ob.append(Lane.TELEMETRY, [(1.0, BODY)] * 3000)
    filler = small_fs / "filler"
    fill_disk(filler)
    refused = 0
    for _ in range(10):
        try:
            ob.append(Lane.TELEMETRY, [(2.0, BODY)] * 10)
        except OutboxFull:
            refused += 1
    assert refused > 0
    (left,) = ob.file.db.execute("SELECT count(*) FROM telemetry WHERE seq <= 3000").fetchone()
    notices = [e for e in alarm_events(ob) if e["rule"] == "outbox.dropped"]
    gone = 3000 - left
    assert ob.stats().dropped_telemetry == gone == sum(n["dropped"]["count"] for n in notices)
    filler.unlink()
    ob.close()
    assert Outbox(path, max_bytes=10**9).stats().dropped_telemetry == gone


def test_alarm_events_held_past_the_cap_are_counted_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A disk full for so long that more alarm events wait in memory than HELD_MAX: the
    oldest are given up, counted for health data, and said once."""
    alarms = AlarmService(RuleEngine([]), MemoryAlarmJournal(), FakeSender(), {})
    events = [active(f"d/r{i}") for i in range(HELD_MAX + 5)]
    alarms.not_committed(AlarmWrite(held=events[:HELD_MAX]), "disk full", act=False)
    assert alarms.lost_disk_full == 0
    alarms.not_committed(AlarmWrite(held=events[HELD_MAX:]), "disk full", act=False)
    alarms.not_committed(AlarmWrite(held=[active("d/late")]), "disk full", act=False)
    assert alarms.lost_disk_full == 6
    assert sum("giving up the oldest" in r.message for r in caplog.records) == 1


def active(alarm_id: str) -> AlarmEvent:
    return AlarmEvent(
        id=alarm_id,
        rule="r",
        dev="d",
        severity=Severity.MINOR,
        state=AlarmState.ACTIVE,
        value=1,
        ts=1.0,
        msg="r active on d",
    )
