"""One gateway end to end, every part a real process or a real server:
pymodbus device -> edge-agent -> outbox -> Mosquitto -> fleet central -> `fleet readings`."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.contract import Channel, Topics
from edge_agent.contract.schema import CENTER_FEED, validate
from edge_agent.outbox import Lane, Outbox
from tests.rig import GW, WireTap, devices_yaml, latest, value_is
from tests.support import (
    Agent,
    Broker,
    Central,
    ThreadedDevice,
    free_port,
    produced_keys,
    run_cli,
    stored_readings,
    wait_for,
)

pytestmark = pytest.mark.hil


def test_readings_flow_from_device_to_fleet_query(
    tmp_path: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice
) -> None:
    values = {
        "level": 12.345,
        "temp": -12,
        "count": 4_000_000_000,
        "delta": -70_000,
        "pressure": -1.5,
        "flow": 0.25,
        "smoke_alarm": False,
        "fault": True,
        "door_closed": True,
        "siren": False,
    }
    for name, v in values.items():
        modbus_server.set(name, v)
    tap = WireTap(mqtt_broker)
    central = Central(tmp_path, mqtt_broker.url).start()
    agent = Agent.for_devices(tmp_path, mqtt_broker.url, devices_yaml(modbus_server.port), GW)
    try:
        t0 = time.time()
        agent.start()
        for name, v in values.items():
            wait_for(lambda n=name, v=v: value_is(central.db, n, v, t0), 20, what=f"{name}={v}")

        # the device changes: the center sees the new decoded values, stamped at the edge
        changed = {
            "level": 0.5,
            "temp": -32768,
            "pressure": 3.25,
            "smoke_alarm": True,
            "door_closed": False,
            "delta": 123_456,
            "siren": True,
        }
        t1 = time.time()
        for name, v in changed.items():
            modbus_server.set(name, v)
        for name, v in changed.items():
            row = wait_for(
                lambda n=name, v=v: value_is(central.db, n, v, t1),
                10,
                what=f"{name} changed to {v}",
            )
            assert t1 <= row["ts"] <= time.time()
            assert row["gateway"] == GW and row["device"] == "tank-1"
        assert latest(central.db, "level")["unit"] == "m"  # type: ignore[index]

        gateways = json.loads(
            run_cli("fleet", "gateways", "list", "--db", str(central.db), "--json").stdout
        )
        assert [g["id"] for g in gateways] == [GW]
        assert gateways[0]["online"] is True
        assert gateways[0]["agent_version"]
        wait_for(
            lambda: (
                json.loads(
                    run_cli("fleet", "gateways", "list", "--db", str(central.db), "--json").stdout
                )[0]["outbox_depth"]
                is not None
            ),
            10,
            what="health data at the center",
        )
    finally:
        agent.stop()
        central.stop()
        tap.close()

    # the agent said goodbye: the retained state is offline
    gateways = json.loads(
        run_cli("fleet", "gateways", "list", "--db", str(central.db), "--json").stdout
    )
    assert gateways[0]["online"] is False

    # every payload that crossed the broker follows the published contract
    topics = Topics()
    seen: set[Channel] = set()
    fed = 0
    for topic, payload in tap.snapshot():
        if topic == topics.feed():  # the center's feed of its commits
            validate(CENTER_FEED, payload)
            fed += 1
            continue
        parsed = topics.parse(topic)
        assert parsed is not None, topic
        if not payload:
            continue
        validate(parsed[1], payload)
        seen.add(parsed[1])
    assert {Channel.TELEMETRY, Channel.STATE, Channel.HEALTH, Channel.ACK} <= seen
    assert fed > 0


def test_central_killed_and_restarted_loses_and_duplicates_nothing(
    tmp_path: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice
) -> None:
    outbox = tmp_path / "outbox.db"
    central = Central(tmp_path, mqtt_broker.url).start()
    agent = Agent.for_devices(
        tmp_path, mqtt_broker.url, devices_yaml(modbus_server.port, 0.05), GW, outbox=outbox
    )
    agent.start()
    try:
        wait_for(
            lambda: central.db.exists() and len(central.store().sequence_keys(GW)) > 100,
            20,
            what="readings at the center",
        )
        central.kill()  # no goodbye: whatever it had not acked, the agent must resend
        time.sleep(3)
        produced_while_down = produced_keys(outbox)
        central.start()
        wait_for(
            lambda: produced_while_down <= central.store().sequence_keys(GW),
            30,
            what="every reading produced while central was down",
        )
        final = produced_keys(outbox)
        stored = central.store().sequence_keys(GW)
        top = max(s for _, s in produced_while_down)
        # exactly the produced set, up to the mark: nothing lost, nothing invented
        assert {k for k in stored if k[1] <= top} == {k for k in final if k[1] <= top}
        assert stored <= final
        # one row per key: counted up to the mark, which no later reading can move
        (rows,) = (
            central.store()
            .conn.execute("SELECT count(*) FROM readings WHERE gateway = ? AND seq <= ?", [GW, top])
            .fetchone()
        )
        assert rows == len({k for k in stored if k[1] <= top})
    finally:
        agent.stop()
        central.stop()


def test_unreachable_device_is_bad_and_the_others_keep_going(
    tmp_path: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice
) -> None:
    dead_port = free_port()  # nothing listens there
    devices = devices_yaml(modbus_server.port, 0.2, "tank-1") + devices_yaml(
        dead_port, 0.2, "dead-1"
    )
    central = Central(tmp_path, mqtt_broker.url).start()
    agent = Agent.for_devices(tmp_path, mqtt_broker.url, devices, GW)
    try:
        t0 = time.time()
        agent.start()
        wait_for(
            lambda: value_is(central.db, "level", modbus_server.get("level"), t0),
            20,
            what="tank-1 readings",
        )

        def dead_rows() -> list[dict[str, Any]]:
            out = run_cli(
                "fleet",
                "readings",
                "--db",
                str(central.db),
                "--device",
                "dead-1",
                "--json",
                "--limit",
                "50",
            )
            return list(json.loads(out.stdout))

        rows = wait_for(dead_rows, 20, what="readings of the dead device")
        assert {r["quality"] for r in rows} == {"bad"}
        assert all(r["value"] is None and r["reason"] for r in rows)
        assert {r["point"] for r in rows} >= {"level", "pressure"}

        # the healthy device keeps its poll rate while the dead one fails every poll
        t1 = time.time()
        time.sleep(3)
        out = run_cli(
            "fleet",
            "readings",
            "--db",
            str(central.db),
            "--device",
            "tank-1",
            "--point",
            "level",
            "--since",
            "10s",
            "--json",
            "--limit",
            "1000",
        )
        recent = [r for r in json.loads(out.stdout) if t1 <= r["ts"] <= t1 + 3]
        assert len(recent) >= 12, f"tank-1 polled {len(recent)} times in 3 s at poll_s 0.2"
        assert all(r["quality"] == "good" for r in recent)
    finally:
        agent.stop()
        central.stop()


def test_a_batch_the_center_cannot_store_is_kept_acked_and_never_sent_again(
    tmp_path: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice
) -> None:
    """A reading the center refuses (here a list value, written into the outbox by hand
    as a buggy firmware might) sits in a backlog batch. Without an ack the gateway would
    send it, and everything behind it, again at every ack timeout until its outbox dropped
    it: the center keeps the batch as a dead letter and acks its rows instead."""
    outbox_path = tmp_path / "outbox.db"
    outbox = Outbox(outbox_path, max_bytes=10**8)
    now = time.time()
    good = json.dumps({"dev": "tank-1", "pt": "level", "v": 1.0, "q": "good", "ts": now})
    poison = json.dumps({"dev": "tank-1", "pt": "level", "v": [1, 2], "q": "good", "ts": now})
    last = outbox.append(Lane.TELEMETRY, [(now, good), (now, poison), (now, good)])
    stream = outbox.stream_id
    outbox.close()

    central = Central(tmp_path, mqtt_broker.url).start()
    agent = Agent.for_devices(
        tmp_path, mqtt_broker.url, devices_yaml(modbus_server.port), GW, outbox_path
    ).start()
    try:

        def backlog_left() -> int:
            db = sqlite3.connect(outbox_path)
            try:
                (n,) = db.execute(
                    "SELECT count(*) FROM telemetry WHERE seq <= ?", (last,)
                ).fetchone()
                return int(n)
            finally:
                db.close()

        wait_for(lambda: backlog_left() == 0, 20, what="the backlog acked and deleted")
        (dead,) = central.store().rejected(GW)
        assert dead.stream == stream and dead.seq_first <= 2 <= dead.seq_last
        assert dead.error.startswith("readings[1].v must be")
        # later readings flow as usual, and the dead letter is not sent again
        wait_for(lambda: stored_readings(central.store(), GW, "tank-1", "level", limit=1), 10)
        time.sleep(3 * 2)  # three of the test config's 2 s ack timeouts
        (dead,) = central.store().rejected(GW)
        assert dead.times == 1

        out = run_cli("fleet", "rejected", "--db", str(central.db), "--json")
        assert out.returncode == 0, out.stderr
        (shown,) = json.loads(out.stdout)
        assert '"v": [1, 2]' in shown["payload"] or '"v":[1,2]' in shown["payload"]
        table = run_cli("fleet", "rejected", "--db", str(central.db))
        assert "(acked)" in table.stdout and GW in table.stdout
    finally:
        agent.stop()
        central.stop()
