"""``fleet central run`` says when it cannot reach its broker: once, then now and then,
while it keeps retrying; and when it is back."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import central.ingest as ingest_module
from central.ingest import Ingest
from central.store.sqlite import SqliteStore
from edge_agent.contract import Topics
from mqttlink.outage import OutageLog
from mqttlink.url import Broker as BrokerSettings
from tests.support import Broker, Central, free_port, wait_for

WHO = "central at mqtt://b"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_told_once_then_every_reminder_then_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = OutageLog(logging.getLogger("t"), "central at mqtt://b", remind_s=60, clock=clock)
    caplog.set_level(logging.DEBUG, "t")
    for _ in range(5):  # every 10 s for 40 s: one warning, the rest at debug
        outage.failed("unreachable: refused")
        clock.now += 10
    clock.now += 10  # 60 s after the first warning
    outage.failed("unreachable: timed out")
    outage.failed("unreachable: refused")
    clock.now += 5
    outage.up()
    outage.lost("connection lost: keep alive timeout")
    outage.failed("unreachable: refused")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("WARNING", "central at mqtt://b: cannot reach the broker: unreachable: refused; retrying"),
        *[
            ("DEBUG", f"central at mqtt://b: attempt {n} failed: unreachable: refused")
            for n in (2, 3, 4, 5)
        ],
        (
            "WARNING",
            "central at mqtt://b: still cannot reach the broker after 60 s (6 attempts), "
            "last: unreachable: timed out; retrying",
        ),
        ("DEBUG", "central at mqtt://b: attempt 7 failed: unreachable: refused"),
        ("INFO", "central at mqtt://b: reached again after 65 s (7 failed attempts)"),
        (
            "WARNING",
            "central at mqtt://b: lost the broker: connection lost: keep alive timeout; "
            "reconnecting",
        ),
        ("WARNING", "central at mqtt://b: cannot reach the broker: unreachable: refused; retrying"),
    ]


def test_ingest_reminds_while_the_broker_stays_away(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_module, "UNREACHABLE_REMIND_S", 1.0)
    caplog.set_level(logging.INFO, "central")
    store = SqliteStore(tmp_path / "central.db")
    url = f"mqtt://127.0.0.1:{free_port()}"  # nobody listens
    ingest = Ingest(store, BrokerSettings.plain(url), Topics(), client_id="outage")
    ingest.start()
    try:

        def told(text: str) -> list[str]:
            return [r.getMessage() for r in caplog.records if text in r.getMessage()]

        wait_for(lambda: len(told("still cannot reach")) >= 2, 15, 0.1, "two reminders")
        first = told("cannot reach the broker:")
        assert sorted(m.split(": ")[0] for m in first) == [
            f"central at {url}",
            f"central-alarms at {url}",
        ]  # once per session, the rest reminders
        assert all("Connection refused" in m for m in told("still cannot reach"))
    finally:
        ingest.stop()
        store.close()


def test_central_run_says_it_cannot_reach_the_broker_at_start_and_after_losing_it(
    tmp_path: Path,
) -> None:
    broker = Broker(tmp_path)  # not started yet
    central = Central(tmp_path, broker.url).start()
    try:
        wait_for(
            lambda: "central at" in central.output() and "cannot reach" in central.output(),
            10,
            what="the first 'cannot reach'",
        )
        broker.start()
        wait_for(lambda: "reached again" in central.output(), 15, what="connected again")
        mark = len(central.output())
        broker.stop()
        wait_for(
            lambda: "cannot reach the broker" in central.output()[mark:],
            15,
            what="'cannot reach' after the loss",
        )
        after = central.output()[mark:]
        assert "lost the broker" in after
        assert central.running()  # and it keeps trying
        broker.start()
        wait_for(lambda: "reached again" in central.output()[mark:], 15, what="back")
        assert "Traceback" not in central.output()
    finally:
        central.stop()
        broker.stop()
