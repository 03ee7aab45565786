"""Hostile payloads at the center: dead letters cannot fill its disk, a message too big is
refused at the broker and before parsing, values JSON cannot hold never get in, and what an
older store already holds can neither crash a ``fleet`` command nor make ``--json`` print
what a strict JSON parser refuses.

Real Mosquitto on a loopback port, the real ``Ingest`` in-process (so that one round holds
exactly the messages a test puts in it), real SQLite stores in ``tmp_path``, the CLIs
through Typer's CliRunner.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

import central.store
from central.broker_config import BrokerConfig
from central.ingest import Ingest
from central.store import REJECTED_HEAD_BYTES
from central.store.sqlite import SqliteStore
from central.store.sqlite import writes as sqlite_writes
from cli.agent import app as agent_app
from cli.fleet import app as fleet_app
from drivers.modbus import ModbusPoint
from edge_agent.contract import Channel, Topics
from edge_agent.contract.limits import MESSAGE_MAX_BYTES
from mqttlink.session import Message
from mqttlink.url import Broker as BrokerSettings
from tests.support import Broker, ThreadedDevice, stored_readings, wait_for
from tests.test_central_robust import Gateways
from tests.test_opcua_driver import ThreadedStation

pytestmark = pytest.mark.hil

TOPICS = Topics()
NOW = time.time()
# the broker config `fleet broker-config` renders from packaging/mosquitto.conf
BROKER_CONF = BrokerConfig(Path("/etc/edgefleet/ca"), Path("/etc/mosquitto/edgefleet")).render()[
    "mosquitto.conf"
]
WIDE = {"COLUMNS": "200", "FORCE_COLOR": None, "NO_COLOR": None}


def strict_loads(text: str) -> Any:
    """JSON as a strict parser (jq, JavaScript) reads it: no NaN or Infinity literals."""

    def refuse(literal: str) -> Any:
        raise ValueError(f"{literal} is not JSON")

    return json.loads(text, parse_constant=refuse)


def batch(gw: str, seq: int, **reading: Any) -> bytes:
    r = {"dev": "m-1", "pt": "p", "v": 1.5, "u": None, "q": "good", "ts": NOW} | reading
    obj = {"gw": gw, "stream": f"s-{gw}", "seq_first": seq, "seq_last": seq, "readings": [r]}
    return json.dumps(obj).encode()


def size(store: SqliteStore) -> int:
    """Bytes the store's files hold on disk (the database and its WAL)."""
    path = Path(store.conn.execute("PRAGMA database_list").fetchone()[2])
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


# --- dead letters ----------------------------------------------------------------------


def test_garbage_under_new_gateway_ids_cannot_fill_the_centers_disk(tmp_path: Path) -> None:
    """The tester's case: 20 payloads of 10 MB, each from a gateway id never seen before,
    added 190 MB. Now each keeps its head, its size and its hash."""
    store = SqliteStore(tmp_path / "central.db")
    try:
        before = size(store)
        sent = {}
        for i in range(20):
            gw = f"made-up-{i}"
            topic = TOPICS.gw(gw, Channel.TELEMETRY)
            payload = bytes([i]) * 10_000_000
            sent[gw] = hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()
            with store.round() as rnd:
                rnd.insert_rejected(gw, topic, payload, "x" * 100_000, None)
        grown = size(store) - before
        rows = store.rejected(limit=100)
    finally:
        store.close()
    assert grown < 2_000_000, f"20 dead letters of 10 MB took {grown} bytes"
    assert len(rows) == 20
    for row in rows:
        assert bytes(row.payload) == bytes([int(row.gateway.rsplit("-", 1)[1])]) * 4096
        assert row.size == 10_000_000
        assert row.digest == sent[row.gateway]
        assert len(row.error) == central.store.REJECTED_ERROR_MAX


def test_dead_letters_of_all_gateways_together_stay_within_their_byte_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    each = REJECTED_HEAD_BYTES + len("t") + len("bad")  # what one of these dead letters keeps
    monkeypatch.setattr(sqlite_writes, "REJECTED_MAX_BYTES", 10 * each)
    store = SqliteStore(tmp_path / "central.db")
    try:
        pruned = []
        for i in range(12):  # 12 gateways, one dead letter each: the per-gateway cap never acts
            with store.round() as rnd:
                pruned.append(rnd.insert_rejected(f"gw-{i}", "t", b"%d" % i * 9000, "bad", None))
            time.sleep(0.01)  # last_seen orders them
        kept = store.rejected(limit=100)
        (total,) = store.conn.execute(
            "SELECT sum(length(topic) + length(error) + length(payload)) FROM rejected"
        ).fetchone()
        (counted,) = store.conn.execute("SELECT bytes FROM rejected_bytes").fetchone()
    finally:
        store.close()
    # the 11th went past the cap: the oldest went, down to 90 % of it (9 kept); then 10 fit
    assert pruned == [0] * 10 + [2, 0]
    assert [r.gateway for r in kept] == [f"gw-{i}" for i in range(11, 1, -1)]
    assert total == counted == 10 * each <= sqlite_writes.REJECTED_MAX_BYTES


def test_a_store_from_before_dead_letters_had_a_size_opens_and_keeps_taking_them(
    tmp_path: Path,
) -> None:
    db = tmp_path / "central.db"
    # a store of release 0.1.0: its dead letters have no size
    shutil.copyfile(Path(__file__).parent / "data" / "store-0.1.0.db", db)
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM rejected")  # only this test's dead letters, to count them
    conn.execute(
        "INSERT INTO rejected VALUES ('gw-a', 'd', 't', 'e', x'00', NULL, NULL, NULL, 1, 1, 1)"
    )
    conn.commit()
    conn.close()
    store = SqliteStore(db)
    try:
        with store.round() as rnd:
            rnd.insert_rejected("gw-a", "t", b"new", "bad", None)
        rows = {bytes(r.payload): r.size for r in store.rejected("gw-a")}
        (counted,) = store.conn.execute("SELECT bytes FROM rejected_bytes").fetchone()
    finally:
        store.close()
    assert rows == {b"\x00": None, b"new": 3}
    assert counted == len("te\x00") + len("tbadnew")  # the old one, and the new


# --- ingest: refused, kept as a head, acked when it names its rows -----------------------


@pytest.fixture
def ingest(tmp_path: Path, mqtt_broker: Broker) -> Iterator[tuple[Ingest, Gateways]]:
    store = SqliteStore(tmp_path / "central.db")
    ing = Ingest(store, BrokerSettings.plain(mqtt_broker.url), TOPICS, client_id="test-hostile")
    watcher = Gateways(mqtt_broker)
    ing.start()
    wait_for(ing.connected.is_set, 10, what="ingest connected")
    yield ing, watcher
    watcher.close()
    ing.stop()
    store.close()


def message(gw: str, channel: Channel, payload: bytes) -> Message:
    return Message(TOPICS.gw(gw, channel), payload, qos=0)


def test_hostile_messages_are_dead_letters_and_the_rest_of_the_round_is_stored(
    ingest: tuple[Ingest, Gateways],
) -> None:
    ing, watcher = ingest
    store = ing.store
    # a batch too big (it would name its rows, were it parsed: it is not), one from a
    # broken clock and one holding NaN (both name their rows: acked), and good ones
    huge = batch("gw-big", 1, r="x" * MESSAGE_MAX_BYTES)
    alarm = {"gw": "gw-a", "stream": "s-gw-a", "seq": 1, "id": "m-1/hot", "rule": "hot"}
    alarm |= {"dev": "m-1", "severity": "major", "state": "active", "value": 1, "ts": NOW}
    alarm |= {"msg": "hot", "occurrence": 1}
    ing.ingest_round(
        [
            message("gw-big", Channel.TELEMETRY, huge),
            message("gw-big", Channel.TELEMETRY, batch("gw-big", 2)),
            message("gw-a", Channel.TELEMETRY, batch("gw-a", 1, ts=1e308)),
            message("gw-a", Channel.TELEMETRY, batch("gw-a", 2).replace(b"1.5", b"NaN")),
            message("gw-a", Channel.TELEMETRY, batch("gw-a", 3)),
            message("gw-a", Channel.ALARMS, json.dumps(alarm | {"since": 1e308}).encode()),
            message("gw-a", Channel.HEALTH, b'{"ts": %r, "cpu": 1e400}' % NOW),
            message("gw-a", Channel.STATE, json.dumps({"online": True, "started": 1e308}).encode()),
        ]
    )
    wait_for(lambda: {(1, 3)} <= watcher.telemetry_acked("gw-a"), 10, what="gw-a acked")
    wait_for(
        lambda: (2, 2) in watcher.telemetry_acked("gw-big"), 10, what="gw-big's good batch acked"
    )
    assert sorted((r.gateway, r.seq) for r in stored_readings(store)) == [
        ("gw-a", 3),
        ("gw-big", 2),
    ]
    assert store.alarms() == []
    dead = {(r.gateway, r.error): r for r in store.rejected(limit=100)}
    errors = sorted(dead)
    assert errors == [
        ("gw-a", "$.cpu is not a finite number"),
        ("gw-a", "field 'since' must be a time from 2000-01-01 to a day from now"),
        ("gw-a", "field 'started' must be a time from 2000-01-01 to a day from now"),
        ("gw-a", "not JSON: NaN is not a JSON number"),
        ("gw-a", "readings[0].ts must be a time from 2000-01-01 to a day from now"),
        ("gw-big", f"message of {len(huge)} bytes, more than the {MESSAGE_MAX_BYTES} allowed"),
    ]
    big = dead[errors[-1]]
    assert (big.size, len(big.payload), big.stream) == (len(huge), 4096, None)
    assert bytes(big.payload) == huge[:4096]
    assert (1, 1) not in watcher.telemetry_acked("gw-big")  # refused unparsed: it names no rows
    assert ing.stats.rejected == 6


# --- the broker refuses what the center would ----------------------------------------------


def test_the_broker_config_drops_a_message_over_the_contracts_size(tmp_path: Path) -> None:
    limits = [
        line
        for line in BROKER_CONF.splitlines()
        if line.startswith(("message_size_limit ", "max_packet_size "))
    ]
    assert len(limits) == 2
    broker = Broker(tmp_path, extra_conf="".join(f"{line}\n" for line in limits)).start()
    got: list[int] = []
    clients = [mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5) for _ in range(3)]
    sub, hostile, gateway = clients
    sub.on_message = lambda client, userdata, msg: got.append(len(msg.payload))
    try:
        for client in clients:
            client.connect("127.0.0.1", broker.port)
            client.loop_start()
        sub.subscribe("t/#", qos=1)
        time.sleep(0.3)  # the subscription is in place
        # Mosquitto 2.0 drops it and disconnects the sender (QoS 0: nothing to send again)
        hostile.publish("t/x", b"x" * (MESSAGE_MAX_BYTES + 1), qos=0)
        time.sleep(0.3)
        for n in (MESSAGE_MAX_BYTES, 10):
            gateway.publish("t/x", b"x" * n, qos=1).wait_for_publish(10)
        wait_for(lambda: 10 in got, 10, what="the small message")
    finally:
        for client in clients:
            client.loop_stop()
            client.disconnect()
        broker.stop()
    assert got == [MESSAGE_MAX_BYTES, 10]


# --- what an older store holds: no command crashes, --json is strict ------------------------


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    """A store as an older center left it: it took what the contract now refuses
    (``ts: 1e308``, ``Infinity``, ``NaN`` inside JSON it kept as text)."""
    path = tmp_path / "central.db"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    inf = math.inf
    nan_body = '{"id": "m-1/hot", "state": "active", "msg": "hot", "ts": %r, "since": NaN, '
    nan_body += '"value": Infinity}'
    with conn:
        conn.executemany(
            "INSERT INTO readings (gateway, stream, seq, device, point, value, unit, quality, "
            "reason, ts) VALUES (?, 's', ?, 'm-1', 'p', ?, NULL, 'good', NULL, ?)",
            [("gw-a", 1, inf, NOW), ("gw-a", 2, -inf, 1e308), ("gw-a", 3, 2.5, NOW - 1)],
        )
        conn.execute(
            "INSERT INTO alarms (gateway, alarm_id, rule, device, severity, state, value, since, "
            "ts, msg) VALUES ('gw-a', 'm-1/hot', 'hot', 'm-1', 'major', 'active', ?, ?, ?, 'hot')",
            (inf, inf, 1e308),
        )
        conn.execute(
            "INSERT INTO alarm_events (gateway, stream, seq, alarm_id, rule, device, severity, "
            "state, value, ts, msg, body) VALUES ('gw-a', 's', 1, 'm-1/hot', 'hot', 'm-1', "
            "'major', 'active', ?, ?, 'hot', ?)",
            (inf, 1e308, nan_body % 1e308),
        )
        conn.execute(
            "INSERT INTO losses VALUES ('gw-a', 's', 1, 9, 9, ?, ?, 'cap', ?)", (-inf, 1e308, inf)
        )
        conn.execute(
            "INSERT INTO gateways (id, online, started, last_seen, outbox_oldest_age_s, health) "
            "VALUES ('gw-a', 1, ?, ?, ?, ?)",
            (1e308, inf, inf, '{"ts": 1, "cpu": NaN}'),
        )
        conn.execute(
            "INSERT INTO rejected (gateway, digest, topic, error, payload, first_seen, last_seen) "
            "VALUES ('gw-a', 'd', 't', 'bad', ?, ?, ?)",
            (b'{"v": NaN}', inf, 1e308),
        )
    conn.close()
    return path


FLEET_QUERIES = [
    ("gateways", "list"),
    ("readings",),
    ("losses",),
    ("rejected",),
    ("alarms", "list"),
    ("alarms", "history", "m-1/hot", "-g", "gw-a"),
]


@pytest.mark.parametrize("command", FLEET_QUERIES, ids=" ".join)
def test_every_fleet_query_of_an_old_store_prints_a_table_and_strict_json(
    old_store: Path, command: tuple[str, ...]
) -> None:
    runner = CliRunner()
    shown = runner.invoke(fleet_app, [*command, "--db", str(old_store)], env=WIDE)
    assert shown.exit_code == 0, shown.output
    assert shown.exception is None
    printed = runner.invoke(fleet_app, [*command, "--db", str(old_store), "--json"], env=WIDE)
    assert printed.exit_code == 0, printed.output
    data = strict_loads(printed.stdout)
    assert data, "the hostile rows are listed"


def test_fleet_readings_shows_the_whole_fleet_whatever_one_row_holds(old_store: Path) -> None:
    """The tester's case: one ``ts: 1e308`` sorted newest and the whole table failed with
    ``OverflowError: timestamp out of range``."""
    out = CliRunner().invoke(fleet_app, ["readings", "--db", str(old_store)], env=WIDE).stdout
    assert "1e+308 (no date)" in out
    assert "2.5" in out and "inf" in out
    rows = strict_loads(
        CliRunner().invoke(fleet_app, ["readings", "--db", str(old_store), "--json"]).stdout
    )
    assert [(r["seq"], r["value"], r["ts"]) for r in rows] == [
        (2, None, 1e308),
        (1, None, NOW),
        (3, 2.5, NOW - 1),
    ]
    history = strict_loads(
        CliRunner()
        .invoke(
            fleet_app,
            ["alarms", "history", "m-1/hot", "-g", "gw-a", "--db", str(old_store), "--json"],
        )
        .stdout
    )
    assert (history[0]["since"], history[0]["value"]) == (None, None)


def test_every_edge_agent_json_command_prints_strict_json_of_hostile_values(
    tmp_path: Path,
) -> None:
    """A float register holding NaN and infinity, an OPC-UA Double holding NaN, a replay
    series with infinite values: each ``--json`` output parses strictly."""
    runner = CliRunner()
    outputs: dict[str, str] = {}

    points = [
        ModbusPoint.model_validate({"name": n, "table": "holding", "address": a, "type": "float32"})
        for n, a in (("nan", 0), ("inf", 2))
    ]
    device = ThreadedDevice(points, sparse=True).start()
    try:
        device.set("nan", math.nan)
        device.set("inf", -math.inf)
        config = tmp_path / "agent.yaml"
        config.write_text(
            "gateway: {id: gw-1}\ndevices:\n  - id: panel-1\n"
            f"    modbus: {{host: 127.0.0.1, port: {device.port}}}\n    points:\n"
            "      - {name: nan, table: holding, address: 0, type: float32}\n"
            "      - {name: inf, table: holding, address: 2, type: float32}\n"
            "rules:\n  - {id: hot, device: panel-1, when: 'inf < 0', severity: major}\n"
        )
        probe = ["probe", "modbus", "-c", str(config), "--device", "panel-1", "--json"]
        outputs["probe"] = runner.invoke(agent_app, probe).stdout
    finally:
        device.close()

    station = ThreadedStation()
    try:
        asyncio.run(station.set("Pump1.Level", math.nan))
        browse = ["browse", station.endpoint, "--node", "ns=2;s=Pump1", "--json"]
        outputs["browse"] = runner.invoke(agent_app, browse).stdout
    finally:
        station.close()

    # a replay series refuses non-finite values (a CSV the center wrote has none: they are
    # null there), each at its line, and prints no JSON at all; the extremes of a float32
    # replay into strict JSON
    series = tmp_path / "series.csv"
    series.write_text(
        "ts,device,point,value\n"
        f"{NOW},panel-1,nan,nan\n{NOW + 1},panel-1,inf,-inf\n{NOW + 2},panel-1,nan,inf\n"
    )
    replay = ["rules", "test", "-c", str(config), "--replay", str(series), "--json"]
    refused = runner.invoke(agent_app, replay)
    assert refused.exit_code == 1 and refused.stdout == ""
    assert all(f"series.csv:{line}:" in refused.stderr for line in (2, 3, 4)), refused.stderr
    series.write_text(
        "ts,device,point,value\n"
        f"{NOW},panel-1,nan,3.4028235e38\n{NOW + 1},panel-1,inf,-3.4028235e38\n"
    )
    outputs["rules"] = runner.invoke(agent_app, replay).stdout
    outputs["profiles list"] = runner.invoke(agent_app, ["profiles", "list", "--json"]).stdout
    show = ["profiles", "show", "acme/sd-2000@1.4", "--json"]
    outputs["profiles show"] = runner.invoke(agent_app, show).stdout
    outputs["sim scenarios"] = runner.invoke(agent_app, ["sim", "scenarios", "--json"]).stdout
    sim_file = tmp_path / "sim.yaml"
    sim_file.write_text(
        "seed: 7\ngateways:\n  - id: gw\n    devices:\n"
        "      - {id: ws-1, profile: acme/ws-100@2.1, scenario: garbage}\n"
    )
    timeline = ["sim", "timeline", str(sim_file), "-d", "ws-1", "--ticks", "10", "--json"]
    outputs["sim timeline"] = runner.invoke(agent_app, timeline).stdout

    parsed = {name: strict_loads(text) for name, text in outputs.items()}
    values = {p["name"]: p["value"] for p in parsed["probe"]["points"]}
    assert values == {"nan": None, "inf": None}
    assert "NaN" not in outputs["browse"] and "Pump1" in outputs["browse"]
    assert any(e["state"] == "active" for e in parsed["rules"])
    for name in ("profiles list", "profiles show", "sim scenarios", "sim timeline"):
        assert parsed[name], name


class HostileGateway:
    """A stock MQTT v5 client on a gateway's ``cmd`` topic that answers every command with
    ``reply`` (its ``{id}`` filled in), as a broken or hostile gateway might."""

    def __init__(self, broker: Broker, gw: str, reply: str) -> None:
        self.reply = reply
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(TOPICS.gw(gw, Channel.CMD), qos=1)
        self.client.loop_start()
        time.sleep(0.3)  # the subscription is in place

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = mqtt.Properties(mqtt.PacketTypes.PUBLISH)
        props.CorrelationData = msg.properties.CorrelationData
        body = self.reply.replace("{id}", json.loads(msg.payload)["id"])
        client.publish(msg.properties.ResponseTopic, body.encode(), qos=1, properties=props)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.parametrize(
    ("reply", "exit_code", "expected"),
    [
        ('{"id": "{id}", "ok": true, "result": 1e400}', 0, {"ok": True, "result": None}),
        ('{"id": "{id}", "ok": true, "result": NaN}', 1, {"ok": False}),
    ],
    ids=["1e400", "NaN"],
)
def test_alarm_commands_print_strict_json_whatever_the_gateway_replies(
    tmp_path: Path, mqtt_broker: Broker, reply: str, exit_code: int, expected: dict[str, Any]
) -> None:
    runner = CliRunner()
    key = tmp_path / "center.key"
    assert runner.invoke(fleet_app, ["keys", "init", "--key", str(key)]).exit_code == 0
    gateway = HostileGateway(mqtt_broker, "gw-h", reply)
    common = ["-g", "gw-h", "--broker", mqtt_broker.url, "--key", str(key), "--json"]
    try:
        outputs = [
            runner.invoke(fleet_app, ["alarms", name, "m-1/hot", *common])
            for name in ("ack", "reset", "unshelve")
        ]
        shelve = ["alarms", "shelve", "m-1/hot", "--reason", "test", *common]
        outputs.append(runner.invoke(fleet_app, shelve))
    finally:
        gateway.close()
    for out in outputs:
        assert out.exit_code == exit_code, out.output
        printed = strict_loads(out.stdout)
        assert printed.items() >= expected.items(), printed
