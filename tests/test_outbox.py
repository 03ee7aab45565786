from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from edge_agent.outbox import Lane, Outbox


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


def test_cap_drops_oldest_telemetry_and_keeps_alarms(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=10**8)
    big = "x" * 1000
    ob.append(Lane.ALARMS, [(1.0, big)] * 50)
    ob.append(Lane.TELEMETRY, [(float(i), big) for i in range(2000)])
    ob.max_bytes = ob.used_bytes() // 2
    dropped = ob.enforce_cap()
    assert dropped > 0
    stats = ob.stats()
    assert stats.alarms_depth == 50
    assert stats.depth == 2000 - dropped
    assert stats.dropped_telemetry == dropped
    first = ob.first_seq(Lane.TELEMETRY)
    assert first == dropped + 1  # oldest went first
    assert ob.used_bytes() <= ob.max_bytes
