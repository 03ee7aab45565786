"""Issue 14, end to end: a forger publishes under a gateway's topics (a broker that lets it)
telemetry and an alarm event with the seqs the gateway is about to send, with other
content. The center stores the forgery first; then the real gateway sends its readings
and a real critical alarm under those seqs. Before, the center took them for duplicates,
acked them, and the gateway deleted them: gone without a trace. Now the real messages
are kept whole and flagged (``fleet rejected``: CONFLICT, naming the seqs), acked (the
gateway deletes them and does not resend them for ever), and logged once per stream.

Every part real: pymodbus device -> ``edge-agent run`` -> Mosquitto -> ``fleet central
run`` -> SQLite, and the forger a stock MQTT v5 client.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from central.store.api import ReadingQuery
from edge_agent.contract import Channel, Topics
from edge_agent.contract.alarms import AlarmEvent, AlarmState, Severity, encode_alarm_body
from edge_agent.outbox import Lane, Outbox
from tests.rig import GW, devices_yaml
from tests.support import Agent, Broker, Central, ThreadedDevice, run_cli, wait_for

pytestmark = pytest.mark.hil

TOPICS = Topics()


def smoke(state: AlarmState, ts: float, msg: str) -> AlarmEvent:
    return AlarmEvent(
        id="det-3/smoke.alarm",
        rule="smoke.alarm",
        dev="det-3",
        severity=Severity.CRITICAL,
        state=state,
        value=True,
        ts=ts,
        msg=msg,
        occurrence=1,
    )


def publish(broker: Broker, topic: str, payload: bytes) -> None:
    """As a forger would: a stock client, QoS 1, under the gateway's topic."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def left_in_outbox(outbox: Path, lane: str, last: int) -> int:
    db = sqlite3.connect(outbox)
    try:
        (n,) = db.execute(f"SELECT count(*) FROM {lane} WHERE seq <= ?", (last,)).fetchone()
        return int(n)
    finally:
        db.close()


def test_real_readings_and_alarm_behind_a_forgery_are_kept_flagged_and_acked(
    tmp_path: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice
) -> None:
    # the gateway's backlog: three real readings and a real critical alarm, not sent yet
    outbox_path = tmp_path / "outbox.db"
    outbox = Outbox(outbox_path, max_bytes=10**8)
    now = time.time()
    real = [
        {"dev": "tank-1", "pt": "level", "v": 40.0 + i, "q": "good", "ts": now + i}
        for i in range(3)
    ]
    last = outbox.append(Lane.TELEMETRY, [(now + i, json.dumps(r)) for i, r in enumerate(real)])
    alarm_seq = outbox.append(
        Lane.ALARMS, [(now, encode_alarm_body(smoke(AlarmState.ACTIVE, now, "smoke in room 3")))]
    )
    stream = outbox.stream_id
    outbox.close()
    assert last == 3

    central = Central(tmp_path, mqtt_broker.url).start()
    agent = None
    try:
        # the forgery first, with the very seqs the gateway will send
        fake = [dict(r, v=0.0) for r in real]
        body = {"gw": GW, "stream": stream, "seq_first": 1, "seq_last": 3, "readings": fake}
        cleared = smoke(AlarmState.CLEARED, now, "all clear").to_json()
        cleared |= {"gw": GW, "stream": stream, "seq": alarm_seq}

        def forged() -> bool:
            """Published until stored: one sent before the center's SUBACK reaches no one
            (sent again, the same forgery is a plain duplicate)."""
            store = central.store()
            try:
                if store.count_readings() < 3:
                    publish(
                        mqtt_broker, TOPICS.gw(GW, Channel.TELEMETRY), json.dumps(body).encode()
                    )
                if not store.alarms():
                    publish(
                        mqtt_broker, TOPICS.gw(GW, Channel.ALARMS), json.dumps(cleared).encode()
                    )
                return store.count_readings() == 3 and len(store.alarms()) == 1
            finally:
                store.close()

        wait_for(forged, 20, interval=0.5, what="the forgery stored")

        agent = Agent.for_devices(
            tmp_path, mqtt_broker.url, devices_yaml(modbus_server.port), GW, outbox_path
        ).start()
        # acked: the gateway deletes its rows (it would otherwise resend them for ever)
        wait_for(
            lambda: (
                left_in_outbox(outbox_path, "telemetry", last) == 0
                and left_in_outbox(outbox_path, "alarms", alarm_seq) == 0
            ),
            20,
            what="the real backlog acked and deleted",
        )
        store = central.store()
        letters = {d.topic.rsplit("/", 1)[1]: d for d in store.rejected(GW)}
        assert set(letters) == {"telemetry", "alarms"}
        readings, alarm = letters["telemetry"], letters["alarms"]
        assert readings.conflict and alarm.conflict
        assert readings.error.startswith(
            f"CONFLICT: telemetry seqs 1..3 of stream {stream!r} were stored before"
        )
        assert alarm.error.startswith(f"CONFLICT: alarm event seq {alarm_seq} of stream")
        # kept whole: the real values can be recovered from the dead letter
        kept = json.loads(readings.payload)
        assert (kept["seq_first"], readings.size) == (1, len(readings.payload))
        assert [r["v"] for r in kept["readings"][:3]] == [40.0, 41.0, 42.0]
        assert json.loads(alarm.payload)["msg"] == "smoke in room 3"
        # the stored rows stay as they were (the center cannot tell which is real)
        query = ReadingQuery(gateway=GW, device="tank-1", point="level", limit=None)
        stored = {r.seq: r.value for r in store.readings(query) if r.stream == stream}
        assert [stored[s] for s in (1, 2, 3)] == [0.0, 0.0, 0.0]
        (current,) = store.alarms()
        assert current.state == "cleared"

        # never sent again: three of the test config's 2 s ack timeouts later, still once
        time.sleep(3 * 2)
        assert {d.topic: d.times for d in central.store().rejected(GW)} == {
            d.topic: 1 for d in letters.values()
        }

        table = run_cli("fleet", "rejected", "--db", str(central.db), env={"COLUMNS": "300"})
        assert table.returncode == 0, table.stderr
        assert table.stdout.count("(acked, CONFLICT)") == 2
        assert "CONFLICT: telemetry seqs 1..3" in table.stdout
        shown = json.loads(run_cli("fleet", "rejected", "--db", str(central.db), "--json").stdout)
        assert sorted(d["conflict"] for d in shown) == [True, True]
        assert all(d["size"] == len(d["payload"].encode()) for d in shown)
    finally:
        if agent is not None:
            agent.stop()
        central.stop()
    log = (tmp_path / "central.log").read_text()
    assert log.count("CONFLICT: telemetry seqs") == 1 and log.count("CONFLICT: alarm event") == 1
