"""The delivery guarantee, proven by breaking things for real: kill -9 the agent, stop the
broker, stop the central service, cut and stall the link, fill the outbox and the disk.

Each test compares the exact set of ``(stream, seq)`` the agent produced with the set the
center stored. Outages are short by default so the suite stays quick; set
``EDGEFLEET_TEST_OUTAGE_S=60`` to run them at the length the issue names.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.contract import Channel, Topics
from edge_agent.outbox import quick_check
from tests.proxy import FaultProxy
from tests.rig import GW, WireTap, devices_yaml
from tests.support import (
    Agent,
    Broker,
    Central,
    ThreadedDevice,
    agent_config,
    fill_disk,
    produced_keys,
    wait_for,
)

pytestmark = pytest.mark.hil
OUTAGE_S = float(os.environ.get("EDGEFLEET_TEST_OUTAGE_S", "5"))
POLL_S = 0.02  # 10 points every 20 ms: 500 readings/s of load


def stored(central: Central) -> set[tuple[str, int]]:
    keys: set[tuple[str, int]] = central.store().sequence_keys(GW)
    return keys


def assert_exactly_once(central: Central, outbox: Path, upto: set[tuple[str, int]]) -> None:
    """Everything produced up to the mark is stored; nothing stored was not produced;
    and the store holds each key once."""
    db = sqlite3.connect(central.db)
    rows = db.execute("SELECT stream, seq FROM readings WHERE gateway = ?", [GW]).fetchall()
    db.close()
    have = set(rows)
    assert len(rows) == len(have), "a reading is stored twice"
    produced = produced_keys(outbox)
    missing = upto - have
    assert not missing, f"{len(missing)} readings lost, e.g. {sorted(missing)[:5]}"
    assert have <= produced, f"stored keys the agent never produced: {sorted(have - produced)[:5]}"


def wait_delivered(central: Central, outbox: Path, timeout: float = 60) -> set[tuple[str, int]]:
    """Take the produced set now as the mark, and wait until the center has all of it."""
    mark = produced_keys(outbox)
    assert mark, "the agent produced nothing"
    wait_for(
        lambda: mark <= stored(central),
        timeout,
        interval=0.2,
        what=f"{len(mark)} produced readings at the center",
    )
    return mark


@pytest.fixture
def stack(tmp_path: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice) -> Iterator[dict]:  # type: ignore[type-arg]
    central = Central(tmp_path, mqtt_broker.url).start()
    yield {"central": central, "broker": mqtt_broker, "device": modbus_server, "dir": tmp_path}
    central.stop()


def make_agent(tmp_path: Path, broker_url: str, device_port: int, **outbox: object) -> Agent:
    extra = "".join(f", {k}: {v}" for k, v in outbox.items())
    text = agent_config(
        gateway=GW,
        broker_url=broker_url,
        outbox=tmp_path / "outbox.db",
        devices_yaml=devices_yaml(device_port, POLL_S),
    )
    text = text.replace("ack_timeout_s: 2}", f"ack_timeout_s: 2{extra}}}")
    return Agent(tmp_path, text)


def test_kill_minus_9_twenty_times_loses_and_duplicates_nothing(stack: dict) -> None:  # type: ignore[type-arg]
    tmp, central = stack["dir"], stack["central"]
    outbox = tmp / "outbox.db"
    agent = make_agent(tmp, stack["broker"].url, stack["device"].port)
    rng = random.Random(7)
    for _ in range(20):
        agent.start()
        time.sleep(rng.uniform(0.7, 2.0))
        agent.kill()
    agent.start()
    try:
        mark = wait_delivered(central, outbox)
        assert len(mark) > 2000
        assert_exactly_once(central, outbox, mark)
    finally:
        agent.stop()
    assert "Traceback" not in agent.output()


def test_broker_down_under_load_then_live_data_first_and_all_arrives(stack: dict) -> None:  # type: ignore[type-arg]
    tmp, central, broker = stack["dir"], stack["central"], stack["broker"]
    outbox = tmp / "outbox.db"
    agent = make_agent(tmp, broker.url, stack["device"].port).start()
    try:
        wait_for(lambda: len(stored(central)) > 500, 20, what="readings flowing")
        broker.stop()
        time.sleep(OUTAGE_S)
        broker.start()
        back = time.time()
        tap = WireTap(broker)
        try:
            state_topic = Topics().gw(GW, Channel.STATE)
            tel_topic = Topics().gw(GW, Channel.TELEMETRY)

            def reconnected() -> float | None:
                for topic, payload, at in tap.timed():
                    if topic == state_topic and json.loads(payload).get("online"):
                        return at
                return None

            def first_live() -> float | None:
                for topic, payload, at in tap.timed():
                    if topic == tel_topic and any(
                        r["ts"] > back for r in json.loads(payload)["readings"]
                    ):
                        return at
                return None

            reconnect_at = wait_for(reconnected, 10, what="the agent's reconnect")
            live_at = wait_for(first_live, 10, what="a live reading after reconnect")
        finally:
            tap.close()
        assert reconnect_at - back < 2.5, (
            f"reconnected {reconnect_at - back:.2f} s after the broker"
        )
        assert live_at - reconnect_at < 2.0, f"live data {live_at - reconnect_at:.2f} s late"
        mark = wait_delivered(central, outbox)
        assert_exactly_once(central, outbox, mark)
    finally:
        agent.stop()


def test_central_down_while_the_broker_drops_its_queue_loses_nothing(
    tmp_path: Path, modbus_server: ThreadedDevice
) -> None:
    # Mosquitto keeps at most 5 messages for the absent central; the rest it drops.
    broker = Broker(tmp_path, extra_conf="max_queued_messages 5\n").start()
    central = Central(tmp_path, broker.url).start()
    outbox = tmp_path / "outbox.db"
    agent = make_agent(tmp_path, broker.url, modbus_server.port).start()
    try:
        wait_for(lambda: len(stored(central)) > 500, 20, what="readings flowing")
        central.stop(signal.SIGKILL)
        time.sleep(OUTAGE_S)
        central.start()
        mark = wait_delivered(central, outbox)
        assert_exactly_once(central, outbox, mark)
    finally:
        agent.stop()
        central.stop()
        broker.stop()


def test_link_faults_drop_stall_and_cut_mid_packet(stack: dict) -> None:  # type: ignore[type-arg]
    tmp, central, broker = stack["dir"], stack["central"], stack["broker"]
    outbox = tmp / "outbox.db"
    proxy = FaultProxy(broker.port)
    agent = make_agent(tmp, proxy.url, stack["device"].port).start()
    try:
        wait_for(lambda: len(stored(central)) > 200, 20, what="readings through the proxy")
        proxy.cut()  # the link drops
        time.sleep(1)
        proxy.stall()  # the link hangs: open, silent; keep-alive must notice
        time.sleep(max(4.0, OUTAGE_S))
        proxy.resume()
        time.sleep(1)
        proxy.cut_mid_packet()  # a packet torn in half
        time.sleep(1)
        proxy.refusing = True  # connections refused for a while
        proxy.cut()
        time.sleep(2)
        proxy.refusing = False
        mark = wait_delivered(central, outbox)
        assert_exactly_once(central, outbox, mark)
    finally:
        agent.stop()
        proxy.close()


def test_outbox_cap_drops_oldest_telemetry_and_the_center_knows_exactly_what(
    stack: dict,  # type: ignore[type-arg]
) -> None:
    tmp, central, broker = stack["dir"], stack["central"], stack["broker"]
    outbox = tmp / "outbox.db"
    agent = make_agent(tmp, broker.url, stack["device"].port, max_mb=0.2, ballast_mb=0).start()
    try:
        wait_for(lambda: len(stored(central)) > 200, 20, what="readings flowing")
        broker.stop()
        time.sleep(max(8.0, OUTAGE_S))  # 500 readings/s, ~150 B each: the 0.2 MB cap bites
        broker.start()
        back = time.time()
        db = sqlite3.connect(outbox)

        def dropped() -> int:
            row = db.execute("SELECT value FROM meta WHERE key='dropped_telemetry'").fetchone()
            return int(row[0]) if row else 0

        assert dropped() > 0, "the cap never bit"
        mark = produced_keys(outbox)

        def settled() -> tuple[int, list[Any], set[tuple[str, int]]] | None:
            """The drops and losses once every drop notice is acked and the center has
            every reading before the mark that was not dropped. Read together each time:
            the cap may still drop while the backlog drains, after a first look."""
            if db.execute("SELECT count(*) FROM alarms").fetchone()[0]:
                return None  # a drop notice not acknowledged yet
            n = dropped()
            losses = central.store().losses(GW)
            lost = {(r.stream, s) for r in losses for s in range(r.first_seq, r.last_seq + 1)}
            if sum(r.count for r in losses) != n or not mark - lost <= stored(central):
                return None
            return n, losses, lost

        n_dropped, losses, lost = wait_for(
            settled, 60, interval=0.2, what="every reading that was not dropped at the center"
        )
        db.close()
    finally:
        agent.stop()
    have = stored(central)
    assert sum(r.count for r in losses) == n_dropped == len(lost)
    # what is missing at the center is exactly what the gateway reported dropped; a
    # dropped row may still have arrived (sent before the outage, its ack lost with the
    # broker): the center tells those apart by its own key. Of the readings made before
    # the mark: the cap may go on dropping newer ones while the backlog drains, and those
    # are the center's to know of too, but not missing from the mark's set
    assert mark - have == (lost & mark) - have
    assert len((lost & mark) - have) > 0
    # dropped in rounds of whole runs, each round older than the next
    spans = sorted((r.first_seq, r.last_seq) for r in losses)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans)), spans
    assert min(r.ts_first for r in losses) < back


def test_full_disk_does_not_crash_the_agent_nor_corrupt_the_outbox(
    stack: dict,
    small_fs: Path,  # type: ignore[type-arg]
) -> None:
    central = stack["central"]
    outbox = small_fs / "outbox.db"
    text = agent_config(
        gateway=GW,
        broker_url=stack["broker"].url,
        outbox=outbox,
        devices_yaml=devices_yaml(stack["device"].port, POLL_S),
    )
    text = text.replace("ack_timeout_s: 2}", "ack_timeout_s: 2, ballast_mb: 0.5}")
    agent = Agent(stack["dir"], text).start()
    filler = small_fs / "filler"
    try:
        wait_for(lambda: len(stored(central)) > 200, 20, what="readings flowing")
        fill_disk(filler)
        time.sleep(3)
        assert agent.running(), agent.output()[-2000:]
        filler.unlink()
        t = time.time()
        wait_for(
            lambda: any(ts > t + 1 for ts in stored_ts(central)),
            20,
            what="new readings after space returned",
        )
        assert agent.running()
    finally:
        agent.stop()
    assert quick_check(outbox) is None
    assert "Traceback" not in agent.output()


def stored_ts(central: Central) -> list[float]:
    db = sqlite3.connect(central.db)
    try:
        return [
            r[0]
            for r in db.execute(
                "SELECT ts FROM readings WHERE gateway = ? ORDER BY ts DESC LIMIT 5", [GW]
            )
        ]
    finally:
        db.close()


def test_a_gateway_that_dies_shows_offline_within_the_keepalive_window(stack: dict) -> None:  # type: ignore[type-arg]
    tmp, central = stack["dir"], stack["central"]
    agent = make_agent(tmp, stack["broker"].url, stack["device"].port).start()

    def online() -> bool | None:
        rows = list(central.store().gateways())
        return rows[0].online if rows else None

    wait_for(lambda: online() is True, 20, what="the gateway online")
    agent.kill()  # no goodbye: only the Last Will can tell
    killed = time.monotonic()
    wait_for(lambda: online() is False, 10, what="the Last Will")
    # keepalive_s is 2 in the test config: the broker gives up after 1.5 x 2 s
    assert time.monotonic() - killed < 2 * 1.5 + 1.5


def test_a_gateway_gone_silent_shows_offline_within_the_keepalive_window(stack: dict) -> None:  # type: ignore[type-arg]
    tmp, central = stack["dir"], stack["central"]
    proxy = FaultProxy(stack["broker"].port)
    agent = make_agent(tmp, proxy.url, stack["device"].port).start()
    try:
        wait_for(
            lambda: any(g.online for g in central.store().gateways()),
            20,
            what="the gateway online",
        )
        proxy.refusing = True  # and no way back in for now
        proxy.stall()  # the link hangs: no FIN, no RST; only the keep-alive can tell
        silent = time.monotonic()
        wait_for(
            lambda: [g.online for g in central.store().gateways()] == [False],
            10,
            what="the Last Will after the keep-alive ran out",
        )
        took = time.monotonic() - silent
        # the broker fires the Will 1.5 keep-alives after the last packet it saw (up to one
        # keep-alive before the stall), checking about once a second
        assert 1 <= took < 2 * 2.5 + 1.5, f"offline after {took:.1f} s with keepalive 2 s"
    finally:
        agent.stop()
        proxy.close()
