"""The central inbox: alarms first, gateways in turn, bounded with backpressure for QoS 1
and shedding for QoS 0; and an alarm cuts a telemetry round short."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import central.ingest as ingest_module
from central.inbox import MESSAGE_OVERHEAD, OTHERS, SHED_GATEWAYS_KEPT, Inbox, Lane
from central.ingest import Ingest
from central.store.sqlite import SqliteStore
from edge_agent.contract import Channel, Topics
from mqttlink.session import Message
from mqttlink.url import Broker as BrokerSettings
from tests.support import free_port

TOPICS = Topics()


def msg(gw: str, n: int, size: int = 10, qos: int = 1) -> Message:
    return Message(f"{gw}/{n}", b"x" * size, qos=qos)


def inbox(max_bytes: int = 10_000, alarm_max_bytes: int = 10_000) -> Inbox:
    return Inbox(max_bytes, alarm_max_bytes, lambda m: m.topic.split("/")[0])


def take(box: Inbox, max_messages: int = 100, max_bytes: int = 10**9) -> tuple[Lane, list[str]]:
    lane, msgs = box.take(1.0, 0.0, max_messages, max_bytes)
    return lane, [m.topic for m in msgs]


def test_alarms_go_first_and_a_round_is_one_lane() -> None:
    box = inbox()
    for n in range(3):
        box.put(Lane.DATA, msg("gw-a", n))
    box.put(Lane.ALARMS, msg("gw-b", 0))
    assert take(box) == (Lane.ALARMS, ["gw-b/0"])
    assert take(box) == (Lane.DATA, ["gw-a/0", "gw-a/1", "gw-a/2"])


def test_a_noisy_gateway_fills_its_own_queue_not_everyones_rounds() -> None:
    box = inbox(max_bytes=10**6)
    for n in range(50):
        box.put(Lane.DATA, msg("noisy", n))
    box.put(Lane.DATA, msg("quiet", 0))
    box.put(Lane.DATA, msg("other", 0))
    assert take(box, max_messages=4) == (
        Lane.DATA,
        ["noisy/0", "quiet/0", "other/0", "noisy/1"],
    )
    box.put(Lane.DATA, msg("quiet", 1))  # behind one turn of each gateway waiting, no more
    assert take(box, max_messages=2)[1] == ["noisy/2", "quiet/1"]


def test_a_round_stops_at_its_byte_limit_but_takes_at_least_one() -> None:
    box = inbox(max_bytes=10**6)
    for n in range(5):
        box.put(Lane.DATA, msg("gw", n, size=1000))
    assert take(box, max_bytes=2600)[1] == ["gw/0", "gw/1", "gw/2"]  # 1,256 B each
    assert take(box, max_bytes=1)[1] == ["gw/3"]


def test_a_full_lane_makes_qos1_wait_until_a_round_is_taken() -> None:
    size = 600 - MESSAGE_OVERHEAD
    box = inbox(max_bytes=1000)
    assert box.put(Lane.DATA, msg("gw", 0, size))
    done = threading.Event()

    def second() -> None:
        box.put(Lane.DATA, msg("gw", 1, size))
        done.set()

    thread = threading.Thread(target=second, daemon=True)
    thread.start()
    assert not done.wait(0.3)  # waiting: the session's thread stops reading its socket
    assert box.stats(Lane.DATA).waits == 1
    assert box.put(Lane.ALARMS, msg("gw", 9, size))  # the alarm lane is not held up
    assert take(box)[1] == ["gw/9"]
    assert take(box)[1] == ["gw/0"]
    assert done.wait(2)
    assert take(box)[1] == ["gw/1"]
    thread.join(2)


def test_close_releases_a_waiting_put() -> None:
    box = inbox(max_bytes=1000)
    box.put(Lane.DATA, msg("gw", 0, 900))
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(box.put(Lane.DATA, msg("gw", 1, 900))))
    thread.start()
    time.sleep(0.1)
    box.close()
    thread.join(2)
    assert result == [False] and not thread.is_alive()
    assert box.take(0.1, 0.0, 10, 10**6) == (Lane.DATA, [])


def test_qos0_is_shed_at_its_mark_counted_per_gateway_and_qos1_still_gets_in() -> None:
    box = inbox(max_bytes=10_000)
    size = 1000 - MESSAGE_OVERHEAD
    for n in range(5):  # half full
        assert box.put(Lane.DATA, msg("noisy", n, size, qos=0), shed_at=0.5)
    assert not box.put(Lane.DATA, msg("noisy", 5, size, qos=0), shed_at=0.5)
    assert not box.put(Lane.DATA, msg("other", 0, size, qos=0), shed_at=0.5)
    assert box.put(Lane.DATA, msg("health", 0, size, qos=0), shed_at=1.0)  # room yet
    assert box.put(Lane.DATA, msg("real", 0, size))
    stats = box.stats(Lane.DATA)
    assert stats.shed == 2 and box.shed_report(Lane.DATA) == (2, {"noisy": 1, "other": 1})
    assert box.shed_report(Lane.DATA) == (2, {})  # by gateway: since the last report
    assert box.pending(Lane.DATA) == 7


def test_what_is_put_back_goes_first_in_its_order() -> None:
    box = inbox()
    for n in range(3):
        box.put(Lane.DATA, msg("a", n))
    box.put(Lane.DATA, msg("b", 0))
    _, taken = box.take(1.0, 0.0, 100, 10**6)
    box.put(Lane.DATA, msg("b", 1))
    assert [m.topic for m in taken] == ["a/0", "b/0", "a/1", "a/2"]
    box.put_back(Lane.DATA, taken[1:])  # only a/0 was stored
    again = take(box)[1]
    assert sorted(again) == ["a/1", "a/2", "b/0", "b/1"]
    assert again.index("a/1") < again.index("a/2") and again.index("b/0") < again.index("b/1")


def alarm(gw: str, seq: int) -> Message:
    event = {
        "gw": gw,
        "stream": "s",
        "seq": seq,
        "id": "d/r",
        "rule": "r",
        "dev": "d",
        "severity": "critical",
        "state": "active",
        "value": 1,
        "ts": 1.7e9,
        "msg": "smoke",
    }
    return Message(TOPICS.gw(gw, Channel.ALARMS), json.dumps(event).encode())


def telemetry(gw: str, seq: int) -> Message:
    body = {"dev": "m-1", "pt": "p", "v": 1.0, "u": "", "q": "good", "ts": 1.7e9}
    payload = {"gw": gw, "stream": "s", "seq_first": seq, "seq_last": seq, "readings": [body]}
    return Message(TOPICS.gw(gw, Channel.TELEMETRY), json.dumps(payload).encode())


def test_an_alarm_waiting_cuts_a_telemetry_round_short_and_joins_its_commit(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "central.db")
    broker = BrokerSettings.plain(f"mqtt://127.0.0.1:{free_port()}")  # never connected
    ingest = Ingest(store, broker, TOPICS, client_id="cut")
    real_round = store.round
    stored: list[str] = []

    @contextmanager
    def round_where_an_alarm_arrives() -> Iterator[Any]:
        """The real round; an alarm reaches the inbox while its first batch is stored."""
        with real_round() as rnd:
            real_insert = rnd.insert_telemetry

            def insert(batch: Any) -> None:
                real_insert(batch)
                stored.append(batch.gw)
                if len(stored) == 1:
                    ingest.inbox.put(Lane.ALARMS, alarm("gw-b", 1))

            rnd.insert_telemetry = insert  # type: ignore[method-assign]
            yield rnd

    store.round = round_where_an_alarm_arrives  # type: ignore[method-assign]
    try:
        msgs = [telemetry("gw-a", seq) for seq in (1, 2, 3)]
        rest = ingest.ingest_round(msgs)
        assert rest == msgs[1:]  # one stored, then the alarm; the others not begun
        assert stored == ["gw-a"]  # one batch stored, then the alarm joined the round
        assert store.sequence_keys("gw-a") == {("s", 1)}
        events = store.conn.execute("SELECT gateway, seq FROM alarm_events").fetchall()
        assert events == [("gw-b", 1)]  # committed in the same round
        assert ingest.inbox.pending(Lane.ALARMS) == 0
        assert ingest.ingest_round(rest, Lane.ALARMS) == []  # an alarm round is never cut
        assert store.sequence_keys("gw-a") == {("s", 1), ("s", 2), ("s", 3)}
    finally:
        ingest.stop()
        store.close()


def test_shed_messages_are_logged_at_once_then_now_and_then_and_at_the_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_module, "SHED_LOG_S", 3600.0)
    caplog.set_level(logging.WARNING, "central")
    store = SqliteStore(tmp_path / "central.db")
    broker = BrokerSettings.plain(f"mqtt://127.0.0.1:{free_port()}")  # never connected
    ingest = Ingest(store, broker, TOPICS, client_id="shed")
    big = json.dumps({"gw": "noisy", "pad": "x" * (ingest_module.INBOX_MAX_BYTES // 8)})
    flood = Message(TOPICS.gw("noisy", Channel.TELEMETRY), big.encode(), qos=0)
    try:
        for _ in range(6):  # four fill half of the inbox: the fifth and the sixth are shed
            ingest._on_message(flood)
        ingest.report_shed()
        for _ in range(3):
            ingest._on_message(flood)
        ingest.report_shed()  # within SHED_LOG_S of the first: counted, not logged
        ingest.report_shed(final=True)
        lines = [r.getMessage() for r in caplog.records]
        assert lines == [
            "inbox full: shed 2 QoS 0 messages (2 in all), most from noisy (2); "
            "QoS 1 is never shed (it waits)",
            "inbox full: shed 3 QoS 0 messages (5 in all), most from noisy (3); "
            "QoS 1 is never shed (it waits)",
        ]
        assert ingest.inbox.pending(Lane.DATA) == 4
    finally:
        ingest.stop()
        store.close()


def test_made_up_gateway_ids_do_not_grow_the_shed_counts_without_end() -> None:
    box = inbox(max_bytes=1000)
    box.put(Lane.DATA, msg("real", 0, 900))
    for n in range(SHED_GATEWAYS_KEPT + 50):
        assert not box.put(Lane.DATA, msg(f"fake-{n}", 0, qos=0), shed_at=0.5)
    total, by_gateway = box.shed_report(Lane.DATA)
    assert total == SHED_GATEWAYS_KEPT + 50
    assert len(by_gateway) == SHED_GATEWAYS_KEPT + 1 and by_gateway[OTHERS] == 50
