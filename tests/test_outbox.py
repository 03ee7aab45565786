from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from edge_agent.config.models import OutboxConfig as OutboxSettings
from edge_agent.contract import Channel
from edge_agent.contract.schema import validate
from edge_agent.outbox import AgentOutbox, Lane, Outbox, OutboxFull, quick_check
from tests.support import fill_disk


def rows(n: int, start_ts: float = 1000.0) -> list[tuple[float, str]]:
    return [(start_ts + i, json.dumps({"i": i})) for i in range(n)]


def test_append_numbers_rows_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path, max_bytes=10**8)
    assert ob.append(Lane.TELEMETRY, rows(5)) == 5
    assert ob.append(Lane.ALARMS, rows(2)) == 2  # each lane numbers its own rows
    stream = ob.stream_id
    ob.close()
    again = Outbox(path, max_bytes=10**8)
    assert again.stream_id == stream
    assert [s for s, _ in again.fetch(Lane.TELEMETRY, 1, None, 100)] == [1, 2, 3, 4, 5]
    assert again.append(Lane.TELEMETRY, rows(1)) == 6


def test_seq_never_reused_after_everything_is_acked(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=10**8)
    ob.append(Lane.TELEMETRY, rows(3))
    assert ob.delete(Lane.TELEMETRY, [(1, 3)]) == 3
    # a reused seq would be dropped by the center as a duplicate: data loss
    assert ob.append(Lane.TELEMETRY, rows(1)) == 4


def test_new_file_new_stream(tmp_path: Path) -> None:
    a = Outbox(tmp_path / "a.db", max_bytes=10**8)
    b = Outbox(tmp_path / "b.db", max_bytes=10**8)
    assert a.stream_id != b.stream_id


def test_fetch_cuts_batches_at_gaps_and_respects_stop(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=10**8)
    ob.append(Lane.TELEMETRY, rows(10))
    ob.delete(Lane.TELEMETRY, [(4, 5)])
    assert [s for s, _ in ob.fetch(Lane.TELEMETRY, 1, None, 100)] == [1, 2, 3]
    assert [s for s, _ in ob.fetch(Lane.TELEMETRY, 4, None, 100)] == [6, 7, 8, 9, 10]
    assert [s for s, _ in ob.fetch(Lane.TELEMETRY, 6, 8, 100)] == [6, 7]
    assert [s for s, _ in ob.fetch(Lane.TELEMETRY, 6, None, 2)] == [6, 7]


def test_committed_rows_are_in_the_file_for_another_reader(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, max_bytes=10**8)
    ob.append(Lane.TELEMETRY, rows(7))
    other = sqlite3.connect(path)
    assert other.execute("SELECT count(*) FROM telemetry").fetchone() == (7,)
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_cap_drops_oldest_telemetry_keeps_alarms_and_says_what_was_lost(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=10**8)
    big = "x" * 1000
    ob.append(Lane.ALARMS, [(1.0, big)] * 50)
    ob.append(Lane.TELEMETRY, [(1000.0 + i, big) for i in range(2000)])
    ob.max_bytes = ob.used_bytes() // 2
    drops = ob.enforce_bounds()
    assert len(drops) == 1
    d = drops[0]
    assert (d.first, d.cause, d.ts_first) == (1, "cap", 1000.0)
    assert d.last == d.count and d.ts_last == 1000.0 + d.count - 1
    stats = ob.stats()
    assert stats.depth == 2000 - d.count
    assert stats.dropped_telemetry == d.count
    assert ob.first_seq(Lane.TELEMETRY) == d.count + 1  # oldest went first
    assert ob.used_bytes() <= ob.max_bytes
    # the 50 alarms are all there, and one more: the notice of what was dropped
    assert stats.alarms_depth == 51
    (_, body) = ob.fetch(Lane.ALARMS, 51, None, 1)[0]
    notice = json.loads(body)
    assert notice["rule"] == "outbox.dropped"
    wire = json.dumps({**notice, "gw": "gw-1", "stream": ob.stream_id, "seq": 51}).encode()
    validate(Channel.ALARMS, wire)  # what the sender publishes follows the contract
    assert notice["dropped"] == {
        "lane": "telemetry",
        "first": 1,
        "last": d.last,
        "count": d.count,
        "ts_first": 1000.0,
        "ts_last": d.ts_last,
        "cause": "cap",
    }


def test_age_bound_drops_what_is_too_old(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=10**8, max_age_s=3600)
    now = 100_000.0
    ob.append(Lane.TELEMETRY, [(now - 7200 + i, "{}") for i in range(10)])  # too old
    ob.append(Lane.TELEMETRY, [(now - 60 + i, "{}") for i in range(5)])
    drops = ob.enforce_bounds(now=now)
    assert [(d.first, d.last, d.cause) for d in drops] == [(1, 10, "age")]
    assert ob.first_seq(Lane.TELEMETRY) == 11
    assert ob.enforce_bounds(now=now) == []


def test_a_corrupt_file_is_kept_aside_and_a_new_stream_starts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path, max_bytes=10**8)
    ob.append(Lane.TELEMETRY, rows(100))
    old_stream = ob.stream_id
    ob.close()
    data = bytearray(path.read_bytes())
    data[4096:8192] = b"\xff" * 4096  # smash a page
    path.write_bytes(bytes(data))
    again = Outbox(path, max_bytes=10**8)
    assert again.moved_aside is not None and again.moved_aside.exists()
    assert again.moved_aside.read_bytes()[:16] == b"SQLite format 3\x00"  # kept, not deleted
    assert again.stream_id != old_stream
    assert again.append(Lane.TELEMETRY, rows(1)) == 1


def test_ballast_is_reserved_beside_the_outbox(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=10**8, ballast_bytes=1_000_000)
    assert ob.ballast.stat().st_size == 1_000_000


def test_full_disk_gives_back_ballast_drops_oldest_and_recovers(small_fs: Path) -> None:
    path = small_fs / "outbox.db"
    ob = Outbox(path, max_bytes=10**8, ballast_bytes=512 * 1024)
    body = "y" * 200
    ob.append(Lane.TELEMETRY, [(1.0, body)] * 2000)  # ~0.5 MB of readings waiting
    filler = small_fs / "filler"
    fill_disk(filler)
    # the disk is full: appends still go in, paid for by the ballast and the oldest rows
    outcomes = []
    for i in range(200):
        try:
            ob.append(Lane.TELEMETRY, [(2.0 + i, body)] * 100)
            outcomes.append("ok")
        except OutboxFull:
            outcomes.append("full")
    # readings take the ballast but for a quarter, kept for alarms (and deletes)
    assert ob.ballast.stat().st_size == 128 * 1024
    assert "ok" in outcomes
    assert ob.stats().dropped_telemetry > 0
    notices = [json.loads(b) for _, b in ob.fetch(Lane.ALARMS, 1, None, 1000)]
    assert notices and notices[0]["dropped"]["cause"] == "disk full"
    # space returns: the outbox carries on, sound, and takes its ballast back
    filler.unlink()
    last = ob.append(Lane.TELEMETRY, [(9.0, body)])
    assert last > 2000
    assert ob.ensure_ballast() and ob.ballast.exists()
    ob.close()
    assert quick_check(path) is None


async def test_the_agent_opens_the_outbox_its_config_describes(tmp_path: Path) -> None:
    settings = OutboxSettings(path=tmp_path / "o.db", max_mb=2, ballast_mb=8, max_age=3600)
    outbox = await AgentOutbox.from_config(settings)
    try:
        ob = await outbox.run(lambda ob: ob)
        assert (ob.max_bytes, ob.lanes.max_age_s) == (2_000_000, 3600)
        # the ballast is at most a quarter of the cap
        assert ob.ballast.stat().st_size == 500_000
        assert outbox.folder == tmp_path
    finally:
        await outbox.aclose()
