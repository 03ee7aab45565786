"""Several ingest workers (``fleet central run --workers N``) and the center's feed, every
part real: Mosquitto with MQTT v5 shared subscriptions, PostgreSQL, agent processes
polling a simulated Modbus device, the supervisor and its worker processes."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest

from central.feed import FEED_ITEMS_MAX, AlarmCommitted, Committed, GatewayCommitted, feed_events
from central.workers import RESTARTS_MAX, Supervisor
from edge_agent.contract import (
    AlarmMessage,
    Channel,
    Topics,
    encode_alarm,
    encode_state,
    encode_telemetry,
)
from edge_agent.contract.acks import verify_ack
from edge_agent.contract.alarms import AlarmEvent, AlarmState, Severity
from edge_agent.contract.commands import generate_keys, load_public_keys
from edge_agent.contract.schema import CENTER_FEED, validate
from tests.rig import WireTap, devices_yaml
from tests.support import (
    Agent,
    Broker,
    Central,
    PgCentral,
    ThreadedDevice,
    produced_keys,
    run_cli,
    wait_for,
)

FEED = Topics().feed()


def feed(tap: WireTap) -> list[dict[str, Any]]:
    """The feed events the tap feed(tap), each checked against the contract's schema."""
    events = []
    for topic, payload in tap.snapshot():
        if topic == FEED:
            validate(CENTER_FEED, payload)
            events.append(json.loads(payload))
    return events


def start_agents(
    tmp_path: Path, broker: Broker, device: ThreadedDevice, count: int
) -> dict[str, tuple[Agent, Path]]:
    agents = {}
    for i in range(count):
        gw = f"work-{i:04d}"
        folder = tmp_path / gw
        folder.mkdir()
        outbox = folder / "outbox.db"
        agent = Agent.for_devices(folder, broker.url, devices_yaml(device.port, 0.2), gw, outbox)
        agents[gw] = (agent.start(), outbox)
    return agents


def stop_agents(agents: dict[str, tuple[Agent, Path]]) -> None:
    for agent, _ in agents.values():
        agent.stop()


def assert_exactly_once(central: PgCentral, agents: dict[str, tuple[Agent, Path]]) -> None:
    """Every reading produced up to a mark taken now is stored, once; nothing else is."""
    marks = {gw: produced_keys(outbox) for gw, (_, outbox) in agents.items()}

    def all_stored() -> bool:
        with central.store() as store:
            return all(keys <= store.sequence_keys(gw) for gw, keys in marks.items())

    wait_for(all_stored, 30, 0.3, what="every reading produced up to the mark stored")
    with central.store() as store, psycopg.connect(central.url) as conn:
        for gw, keys in marks.items():
            stored = store.sequence_keys(gw)
            assert stored <= produced_keys(agents[gw][1]), f"{gw}: stored what it never made"
            top = max(seq for _, seq in keys)
            row = conn.execute(
                "SELECT count(*) FROM readings WHERE gateway = %s AND seq <= %s", (gw, top)
            ).fetchone()
            assert row is not None
            assert row[0] == len(keys), f"{gw}: {row[0]} rows for {len(keys)} readings"


def stored_count(central: PgCentral) -> int:
    with central.store() as store:
        return store.count_readings()


def online(central: PgCentral) -> dict[str, bool]:
    with central.store() as store:
        return {g.id: bool(g.online) for g in store.gateways()}


@pytest.mark.hil
def test_two_workers_split_five_gateways_and_store_each_reading_once(
    tmp_path: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice, pg_url: str
) -> None:
    tap = WireTap(mqtt_broker)
    central = PgCentral(tmp_path, mqtt_broker.url, pg_url, "--workers", "2").start(sessions=4)
    agents = start_agents(tmp_path, mqtt_broker, modbus_server, 5)
    try:
        wait_for(
            lambda: online(central) == dict.fromkeys(agents, True),
            20,
            0.3,
            what="five gateways online in the registry",
        )
        wait_for(lambda: stored_count(central) >= 1000, 20, 0.3, what="1000 readings stored")
        assert_exactly_once(central, agents)
        events = feed(tap)
        per_worker = Counter[int]()
        for e in events:
            per_worker[e["worker"]] += e["readings"]
        assert set(per_worker) == {0, 1} and min(per_worker.values()) > 0, per_worker
        # the state channel is not shared: worker 0 alone stores it
        assert {e["worker"] for e in events if e["gateways"]} == {0}
        assert {g["gateway"] for e in events for g in e["gateways"]} == set(agents)
        # each worker its own sessions
        out = central.output()
        for k in (0, 1):
            assert f" w{k} central.ingest: central connected to" in out
            assert f" w{k} central.ingest: central-alarms connected to" in out

        stop_agents(agents)  # goodbyes: retained offline states, to worker 0
        wait_for(
            lambda: online(central) == dict.fromkeys(agents, False),
            15,
            0.3,
            what="five gateways offline in the registry",
        )
        # the feed told every reading stored, once (a notice is published after its commit)
        wait_for(
            lambda: sum(e["readings"] for e in feed(tap)) == stored_count(central),
            10,
            0.3,
            what="the feed's readings adding up to the store's",
        )
        assert {e["client"] for e in feed(tap)} == {"edgefleet-central-w0", "edgefleet-central-w1"}
        told = Counter[int]()
        for e in feed(tap):
            told[e["worker"]] += e["readings"]
        pids = central.worker_pids()
    finally:
        stop_agents(agents)
        rc = central.stop()
        tap.close()
    assert rc == 0
    assert sorted(pids) == [0, 1] and not any(alive(p) for p in pids.values())
    # each worker's own count, in its last words, adds up to what the feed told
    logged = Counter[int]()
    for k, n in re.findall(
        r" w(\d) central.ingest: ingest stopped: \d+ messages, (\d+) readings", central.output()
    ):
        logged[int(k)] += int(n)
    assert logged == told
    assert "Traceback" not in central.output()


@pytest.mark.hil
def test_every_worker_signs_its_acks_with_the_key_of_the_command_line(
    tmp_path: Path, mqtt_broker: Broker, pg_url: str
) -> None:
    """``--key`` reaches each worker (the supervisor gives them its command line): every
    ack on the wire, whichever worker committed it, verifies for its topic's gateway."""
    key = tmp_path / "keys" / "center.key"
    trusted = load_public_keys(generate_keys(key))
    tap = WireTap(mqtt_broker)
    central = PgCentral(tmp_path, mqtt_broker.url, pg_url, "--workers", "2", "--key", str(key))
    central.start(sessions=4)
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.connect("127.0.0.1", mqtt_broker.port)
    sender.loop_start()
    topics = Topics()
    gateways = [f"sign-{i:04d}" for i in range(6)]
    try:
        now = time.time()
        for gw in gateways:
            for first in (1, 11, 21):
                readings = [
                    {"dev": "d", "pt": "p", "v": float(i), "q": "good", "ts": now}
                    for i in range(10)
                ]
                payload = encode_telemetry(gw, "s1", first, readings)
                sender.publish(topics.gw(gw, Channel.TELEMETRY), payload, qos=1)

        def acked() -> dict[str, set[int]]:
            seqs: dict[str, set[int]] = {}
            for topic, payload in tap.snapshot():
                if topic.endswith("/ack"):
                    gw = topic.split("/")[-2]
                    ack = verify_ack(payload, trusted, gw)  # raises if any is not signed
                    for a, b in ack.telemetry:
                        seqs.setdefault(gw, set()).update(range(a, b + 1))
            return seqs

        want = {gw: set(range(1, 31)) for gw in gateways}
        wait_for(
            lambda: acked() == want,
            20,
            0.3,
            what="every batch acked, signed",
        )
        served = Counter(e["worker"] for e in feed(tap) if e["readings"])
        assert set(served) == {0, 1}, served  # both workers committed, and so signed, some
    finally:
        sender.loop_stop()
        sender.disconnect()
        central.stop()
        tap.close()
    assert "no --key" not in central.output()


@pytest.mark.hil
def test_two_services_in_one_share_group_split_the_fleet(
    tmp_path: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice, pg_url: str
) -> None:
    """Two machines' worth: two ``fleet central run --share-group`` of one worker each,
    with their own client ids, on one PostgreSQL database."""
    tap = WireTap(mqtt_broker)
    services = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        args = ("--share-group", "city", "--client-id", f"center-{name}")
        services.append(PgCentral(tmp_path / name, mqtt_broker.url, pg_url, *args).start())
    agents = start_agents(tmp_path, mqtt_broker, modbus_server, 3)
    try:
        wait_for(lambda: online(services[0]) == dict.fromkeys(agents, True), 20, 0.3)
        wait_for(lambda: stored_count(services[0]) >= 600, 20, 0.3, what="600 readings stored")
        assert_exactly_once(services[0], agents)
        for service in services:
            out = service.output()
            assert "shared subscriptions of group city" in out
            assert "central connected to" in out and "central-alarms connected to" in out
        # both worker 0 of their own, told apart by their client ids: each stored some
        per_client = Counter[str]()
        for e in feed(tap):
            assert e["worker"] == 0
            per_client[e["client"]] += e["readings"]
        assert set(per_client) == {"center-a", "center-b"}, per_client
        assert min(per_client.values()) > 0, per_client
    finally:
        stop_agents(agents)
        codes = [s.stop() for s in services]
        tap.close()
    assert codes == [0, 0]


@pytest.mark.hil
def test_workers_stop_when_their_supervisor_is_killed(
    tmp_path: Path, mqtt_broker: Broker, pg_url: str
) -> None:
    central = PgCentral(tmp_path, mqtt_broker.url, pg_url, "--workers", "2").start(sessions=4)
    pids = central.worker_pids()
    central.kill()
    wait_for(
        lambda: not any(alive(p) for p in pids.values()), 10, what="the workers gone by themselves"
    )
    assert central.output().count("the supervisor") == 2  # "... is gone: stopping", each


@pytest.mark.hil
def test_a_worker_killed_is_started_again_and_nothing_is_lost_or_doubled(
    tmp_path: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice, pg_url: str
) -> None:
    tap = WireTap(mqtt_broker)
    central = PgCentral(tmp_path, mqtt_broker.url, pg_url, "--workers", "2").start(sessions=4)
    agents = start_agents(tmp_path, mqtt_broker, modbus_server, 2)
    try:
        wait_for(lambda: len(feed(tap)) > 5, 20, what="rounds committed")
        victim = central.worker_pids()[1]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: central.worker_pids()[1] != victim,
            15,
            what="worker 1 started again",
        )
        assert f"worker 1 (pid {victim}) was killed by SIGKILL; starting it again" in (
            central.output()
        )
        since = len(feed(tap))
        wait_for(
            lambda: any(e["worker"] == 1 and e["readings"] for e in feed(tap)[since:]),
            20,
            what="the new worker 1 committing",
        )
        assert_exactly_once(central, agents)
    finally:
        stop_agents(agents)
        rc = central.stop()
        tap.close()
    assert rc == 0


def test_several_workers_on_sqlite_are_refused(tmp_path: Path) -> None:
    db = tmp_path / "central.db"
    out = run_cli(
        "fleet", "central", "run", "--workers", "2", "--db", str(db), "--broker", "mqtt://x:1"
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --workers 2 needs a PostgreSQL store (--db postgresql://…): SQLite has one "
        "writer, so one worker"
    ]
    assert not db.exists()


def test_a_bad_share_group_is_a_usage_error(tmp_path: Path) -> None:
    out = run_cli("fleet", "central", "run", "--share-group", "a/b", "--db", str(tmp_path / "c"))
    assert out.returncode == 2
    assert "share group 'a/b'" in out.stderr


def alarm(gw: str, seq: int, state: str) -> AlarmMessage:
    event = AlarmEvent(
        id="det-3/smoke.alarm",
        rule="smoke.alarm",
        dev="det-3",
        severity=Severity.CRITICAL,
        state=AlarmState(state),
        value=3.0,
        ts=time.time(),
        msg="smoke",
        occurrence=1,
    )
    return AlarmMessage(gw=gw, stream="s1", seq=seq, event=event)


@pytest.mark.hil
def test_the_feed_tells_what_each_round_committed(tmp_path: Path, mqtt_broker: Broker) -> None:
    """A stock MQTT v5 client on the feed hears of readings, alarms and gateway states
    once they are committed, and of nothing that was already stored."""
    tap = WireTap(mqtt_broker)  # a stock client on the fleet's root, the feed among it
    central = Central(tmp_path, mqtt_broker.url).start()
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.connect("127.0.0.1", mqtt_broker.port)
    sender.loop_start()
    topics = Topics()
    gw = "feed-0001"
    try:
        wait_for(lambda: "central-alarms connected" in central.output(), 10)
        now = time.time()
        readings = [
            {"dev": "d", "pt": "p", "v": float(i), "q": "good", "ts": now} for i in range(7)
        ]
        batch = encode_telemetry(gw, "s1", 1, readings)

        def tel() -> None:
            sender.publish(topics.gw(gw, Channel.TELEMETRY), batch, qos=1).wait_for_publish(5)

        tel()
        wait_for(
            lambda: any(e["readings"] == 7 for e in feed(tap)), 10, what="7 readings in the feed"
        )
        tel()  # the same batch again: duplicates, not readings
        wait_for(lambda: any(e["duplicates"] == 7 for e in feed(tap)), 10, what="7 duplicates")
        assert sum(e["readings"] for e in feed(tap)) == 7

        payload = encode_alarm(alarm(gw, 1, "active"))
        sender.publish(topics.gw(gw, Channel.ALARMS), payload, qos=1)
        sender.publish(
            topics.gw(gw, Channel.STATE),
            encode_state(gw, False, agent_version="9.9"),
            qos=1,
            retain=True,
        )
        wait_for(lambda: any(e["alarms"] for e in feed(tap)), 10, what="the alarm in the feed")
        wait_for(lambda: any(e["gateways"] for e in feed(tap)), 10, what="the state in the feed")
        (alarms,) = [e["alarms"] for e in feed(tap) if e["alarms"]]
        assert alarms == [
            {
                "gateway": gw,
                "alarm_id": "det-3/smoke.alarm",
                "severity": "critical",
                "state": "active",
            }
        ]

        def alarm_acks() -> int:
            ack = topics.gw(gw, Channel.ACK)
            return sum(1 for t, p in tap.snapshot() if t == ack and json.loads(p).get("alarms"))

        wait_for(lambda: alarm_acks() == 1, 10, what="the alarm acked")
        sender.publish(topics.gw(gw, Channel.ALARMS), payload, qos=1)  # again: stored already
        wait_for(lambda: alarm_acks() == 2, 10, what="the alarm acked again")
        time.sleep(0.2)  # the feed goes out after the ack
        assert [e["alarms"] for e in feed(tap) if e["alarms"]] == [alarms]
        (gateways,) = [e["gateways"] for e in feed(tap) if e["gateways"]]
        assert gateways == [{"gateway": gw, "online": False}]
        assert {(e["worker"], e["client"]) for e in feed(tap)} == {(0, "edgefleet-central")}
        assert all(e["parts"] == 1 and e["part"] == 1 for e in feed(tap))
    finally:
        sender.loop_stop()
        sender.disconnect()
        tap.close()
        central.stop()


@pytest.mark.hil
def test_a_service_that_joins_a_share_group_leaves_its_unshared_subscriptions(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    """The same client id, first alone, then in a share group: its persistent session
    still holds the plain subscriptions, which would deliver every batch a second time."""
    tap = WireTap(mqtt_broker)
    central = Central(tmp_path, mqtt_broker.url).start()
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.connect("127.0.0.1", mqtt_broker.port)
    sender.loop_start()
    topic = Topics().gw("join-0001", Channel.TELEMETRY)
    try:
        wait_for(lambda: central.output().count(" connected to ") >= 2, 10)
        central.stop()
        central.args += ["--share-group", "city"]
        central.start()
        wait_for(lambda: central.output().count("session present: True") >= 2, 10)
        time.sleep(0.3)  # the UNSUBSCRIBEs follow the CONNACK
        now = time.time()
        for first in (1, 6, 11):
            readings = [{"dev": "d", "pt": "p", "v": 1.5, "q": "good", "ts": now}] * 5
            batch = encode_telemetry("join-0001", "s1", first, readings)
            sender.publish(topic, batch, qos=1).wait_for_publish(5)
        wait_for(lambda: sum(e["readings"] for e in feed(tap)) == 15, 10, what="15 readings")
        time.sleep(0.5)  # a second delivery would come within this
        assert sum(e["duplicates"] for e in feed(tap)) == 0
        assert "shared subscriptions of group city" in central.output()
    finally:
        sender.loop_stop()
        sender.disconnect()
        tap.close()
        central.stop()


def test_a_round_with_many_alarms_goes_out_in_bounded_parts() -> None:
    n = FEED_ITEMS_MAX
    alarms = [AlarmCommitted("gw", f"dev/rule-{i}", "critical", "active") for i in range(2 * n)]
    alarms.append(AlarmCommitted("gw", "d/" + "r" * 500, "minor", "cleared"))
    gateways = [GatewayCommitted(f"gw-{i}", True) for i in range(3)]
    raw = feed_events(3, "c-w3", Committed(40, 2, alarms, gateways), 1.0)
    for payload in raw:
        validate(CENTER_FEED, payload)
    events = [json.loads(e) for e in raw]
    assert [(e["part"], e["parts"]) for e in events] == [(1, 3), (2, 3), (3, 3)]
    assert [len(e["alarms"]) for e in events] == [n, n, 1]
    ids = [a["alarm_id"] for e in events for a in e["alarms"]]
    assert ids == [a.alarm_id[:200] for a in alarms]
    assert [len(e["gateways"]) for e in events] == [3, 0, 0]
    assert [e["readings"] for e in events] == [40, 0, 0]
    assert [e["duplicates"] for e in events] == [2, 0, 0]
    assert {(e["worker"], e["client"]) for e in events} == {(3, "c-w3")}
    # the biggest event there can be: every list full, every text as long as it gets
    gw = "g" * 64
    longest = Committed(
        2**40,
        2**40,
        [AlarmCommitted(gw, "a" * 999, "critical", "cleared_unacked")] * n,
        [GatewayCommitted(gw, False)] * n,
    )
    (biggest,) = feed_events(63, "c" * 999, longest, 1e10)
    validate(CENTER_FEED, biggest)
    assert len(biggest) < 50_000
    assert feed_events(0, "c", Committed()) == []


# --- the supervisor on its own, with stand-in workers ------------------------------------


def supervise(code: str, workers: int = 2) -> tuple[int, float]:
    """Run a ``Supervisor`` over ``python -c code`` workers (fast restarts); its exit code
    and how long it ran."""
    stop = threading.Event()
    sup = Supervisor(
        lambda k: [sys.executable, "-c", code, str(k)],
        workers,
        stop,
        restart_first_s=0.02,
        restart_cap_s=0.05,
        stop_wait_s=2,
    )
    t0 = time.monotonic()
    rc = sup.run()
    return rc, time.monotonic() - t0


def test_a_worker_that_keeps_dying_ends_the_supervisor_with_1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rc, took = supervise("import sys, time; sys.exit(1) if sys.argv[1] == '1' else time.sleep(30)")
    assert rc == 1 and took < 10
    assert f"exited with status 1, {RESTARTS_MAX + 1} times within 60 s" in caplog.text


def test_a_worker_with_a_usage_error_is_not_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "central.workers")
    rc, took = supervise("import sys, time; sys.exit(2) if sys.argv[1] == '0' else time.sleep(30)")
    assert rc == 2 and took < 5  # the sleeping one was stopped, not waited for
    assert caplog.text.count("worker 0 started") == 1


def test_stop_reaches_every_worker_as_sigterm(tmp_path: Path) -> None:
    """Each stand-in writes down the signal it got; stopping the supervisor gives both
    SIGTERM, and it returns 0."""
    code = (
        "import signal, sys, time, pathlib\n"
        "def on(sig, _): pathlib.Path(sys.argv[1] + '.got').write_text(str(sig)); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on)\n"
        "pathlib.Path(sys.argv[1] + '.up').write_text('')\n"
        "time.sleep(30)\n"
    )
    stop = threading.Event()
    sup = Supervisor(
        lambda k: [sys.executable, "-c", code, str(tmp_path / str(k))], 2, stop, stop_wait_s=5
    )
    runner = threading.Thread(target=lambda: setattr(runner, "rc", sup.run()))
    runner.start()
    try:
        wait_for(lambda: all((tmp_path / f"{k}.up").exists() for k in (0, 1)), 10)
        pids = sup.pids()
    finally:
        stop.set()
        runner.join(10)
    assert getattr(runner, "rc", None) == 0
    assert [(tmp_path / f"{k}.got").read_text() for k in (0, 1)] == [str(signal.SIGTERM)] * 2
    for pid in pids:
        assert pid is not None and not alive(pid)


def alive(pid: int) -> bool:
    """Running: not gone, and not a zombie (an orphan's reaper may be slow, or absent in
    a container whose first process reaps nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
