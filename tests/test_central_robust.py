"""The central service keeps ingesting for the fleet whatever one gateway sends, and stops
loudly (non-zero exit, for systemd to restart it) when its store fails for good.

Real Mosquitto on a loopback port; the real ``fleet central run`` process, or the real
``Ingest`` in-process where a test must put messages into one round deterministically.
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import central.ingest as ingest_module
from central.ingest import Ingest, run_central
from central.store import Round
from central.store.sqlite import SqliteStore
from central.store.sqlite import writes as sqlite_writes
from edge_agent.contract import (
    Channel,
    PayloadError,
    Topics,
    decode_ack,
    decode_alarm,
    decode_telemetry,
)
from mqttlink.session import Message
from mqttlink.url import Broker as BrokerSettings
from tests.support import Broker, Central, fill_disk, run_cli, stored_readings, wait_for

pytestmark = pytest.mark.hil

TOPICS = Topics()
UINT64_NA = 2**64 - 1  # a Modbus uint64 point's "not available" marker
T0 = 1_795_407_914.5


def reading(v: Any = 1.5, **override: Any) -> dict[str, Any]:
    return {"dev": "m-1", "pt": "energy", "v": v, "u": "kWh", "q": "good", "ts": T0, **override}


def batch(gw: str, seq: int, *readings: dict[str, Any], **override: Any) -> bytes:
    rs = list(readings) or [reading()]
    obj = {
        "gw": gw,
        "stream": f"s-{gw}",
        "seq_first": seq,
        "seq_last": seq + len(rs) - 1,
        "readings": rs,
        **override,
    }
    return json.dumps(obj).encode()


def alarm(gw: str, seq: int, **override: Any) -> bytes:
    obj = {
        "gw": gw,
        "stream": f"s-{gw}",
        "seq": seq,
        "id": "m-1/over",
        "rule": "over",
        "dev": "m-1",
        "severity": "major",
        "state": "active",
        "value": 3.0,
        "ts": T0,
        "msg": "over",
        **override,
    }
    return json.dumps(obj).encode()


class Gateways:
    """A stock MQTT v5 client that publishes as gateways would and records the center's
    acks, per gateway: ``{gw: [(telemetry ranges, alarm ranges), ...]}``."""

    def __init__(self, broker: Broker) -> None:
        self.acks: dict[str, list[tuple[list[tuple[int, int]], list[tuple[int, int]]]]] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(TOPICS.pattern(Channel.ACK), qos=1)
        self.client.loop_start()
        # an ack published before the SUBACK would reach no one (CI saw one lost so)
        if not subscribed.wait(10):
            self.close()
            raise AssertionError("the watcher's subscription to acks was not confirmed in 10 s")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parsed = TOPICS.parse(msg.topic)
        assert parsed is not None
        ack = decode_ack(msg.payload)
        with self._lock:
            self.acks.setdefault(parsed[0], []).append((list(ack.telemetry), list(ack.alarms)))

    def publish(self, gw: str, channel: Channel, payload: bytes) -> None:
        self.client.publish(TOPICS.gw(gw, channel), payload, qos=1).wait_for_publish(5)

    def telemetry_acked(self, gw: str) -> set[tuple[int, int]]:
        with self._lock:
            return {r for tel, _ in self.acks.get(gw, []) for r in tel}

    def alarms_acked(self, gw: str) -> set[tuple[int, int]]:
        with self._lock:
            return {r for _, al in self.acks.get(gw, []) for r in al}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def gateways(mqtt_broker: Broker) -> Iterator[Gateways]:
    gws = Gateways(mqtt_broker)
    yield gws
    gws.close()


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def wait_listening(db: Path, gws: Gateways, probe: str = "probe") -> None:
    """The center is subscribed once a health message published now reaches its store."""
    last = [0.0]

    def stored() -> bool:
        if time.monotonic() - last[0] > 0.3:
            last[0] = time.monotonic()
            gws.publish(
                probe, Channel.HEALTH, json.dumps({"gw": probe, "ts": time.time()}).encode()
            )
        try:
            return db.exists() and bool(query(db, "SELECT 1 FROM gateways WHERE id = ?", probe))
        except sqlite3.OperationalError:  # no file, or no tables yet: the service is starting
            return False

    wait_for(stored, 10, interval=0.1, what="the central service subscribed")


def reading_store(central: Central) -> SqliteStore:
    """The central process's store, opened beside it (WAL: readers do not block it)."""
    return SqliteStore(central.db)


def message(gw: str, channel: Channel, payload: bytes) -> Message:
    """A message as the session hands it to ingest (QoS 0 here: nothing for us to PUBACK)."""
    return Message(TOPICS.gw(gw, channel), payload, qos=0)


def new_ingest(db: Path, broker: Broker) -> Ingest:
    store = SqliteStore(db)
    return Ingest(store, BrokerSettings.plain(broker.url), TOPICS, client_id=f"test-{db.stem}")


@pytest.fixture
def ingest(tmp_path: Path, mqtt_broker: Broker) -> Iterator[Ingest]:
    """The real ingest, in-process, connected to the real broker (it publishes the acks)."""
    ing = new_ingest(tmp_path / "central.db", mqtt_broker)
    store = ing.store
    ing.start()
    wait_for(ing.connected.is_set, 10, what="ingest connected")
    yield ing
    ing.stop()
    store.close()


# --- the decoders check every field the store takes --------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (batch("gw-c", 1, reading({"raw": 1})), r"readings\[0\]\.v"),
        (batch("gw-c", 1, reading([1])), r"readings\[0\]\.v"),
        (batch("gw-c", 1, reading(u=5)), "u and r"),
        (batch("gw-c", 1, reading(r={"why": 1})), "u and r"),
        (batch("gw-c", 1, reading(ts=2**64)), "ts"),
        (batch("gw-c", 2**63), "seq_last"),
        (batch("gw-c", 2**63 - 1, reading(), reading()), "seq_last"),
    ],
)
def test_decode_telemetry_rejects_what_the_store_cannot_take(payload: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode_telemetry(payload)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"value": {"x": 1}}, "value"),
        ({"value": [1]}, "value"),
        ({"seq": 0}, "'seq'"),
        ({"seq": 2**63}, "'seq'"),
        ({"ts": 10**400}, "ts"),
    ],
)
def test_decode_alarm_rejects_what_the_store_cannot_take(
    override: dict[str, Any], message: str
) -> None:
    with pytest.raises(PayloadError, match=message):
        decode_alarm(json.dumps({**json.loads(alarm("gw-c", 1)), **override}).encode())


def test_integers_of_any_size_are_values() -> None:
    values = [UINT64_NA, -(2**70), 2**63 - 1, None, True, "on", 0.5]
    decoded = decode_telemetry(batch("gw-a", 2**63 - 7, *(reading(v) for v in values)))
    assert [r["v"] for r in decoded.readings] == values
    assert decode_alarm(alarm("gw-a", 2**63 - 1, value=UINT64_NA)).event.value == UINT64_NA


# --- one message cannot stop the fleet's ingest --------------------------------------------


def test_uint64_value_is_stored_exactly_and_a_bad_message_is_rejected_alone_kept_and_acked(
    ingest: Ingest, gateways: Gateways
) -> None:
    store = ingest.store
    lone = "\ud800"  # decodes from JSON, but SQLite cannot take it: fails inside the store
    ingest.ingest_round(
        [
            message("gw-a", Channel.TELEMETRY, batch("gw-a", 1, reading(UINT64_NA))),
            message("gw-c", Channel.TELEMETRY, batch("gw-c", 1, reading({"raw": 1}))),
            # the first reading is written before the second fails: the SAVEPOINT undoes it
            message("gw-d", Channel.TELEMETRY, batch("gw-d", 1, reading(), reading(dev=lone))),
            # an outbox.dropped event writes its loss first, then fails on its message
            message(
                "gw-d",
                Channel.ALARMS,
                alarm(
                    "gw-d",
                    1,
                    rule="outbox.dropped",
                    msg=lone,
                    dropped={"lane": "telemetry", "first": 1, "last": 5, "count": 5},
                ),
            ),
            message("gw-b", Channel.TELEMETRY, batch("gw-b", 1, reading(42))),
        ]
    )
    ingest.ingest_round([message("gw-b", Channel.TELEMETRY, batch("gw-b", 2, reading(43)))])

    (a,) = stored_readings(store, gateway="gw-a")
    assert a.value == UINT64_NA and type(a.value) is int  # exact, not a rounded float
    typeof = store.conn.execute("SELECT typeof(value) FROM readings WHERE gateway = 'gw-a'")
    assert typeof.fetchall() == [("text",)]  # its decimal digits: SQLite integers are 64-bit
    assert store.sequence_keys("gw-b") == {("s-gw-b", 1), ("s-gw-b", 2)}
    assert store.sequence_keys("gw-c") == set() and store.sequence_keys("gw-d") == set()
    assert store.losses() == [] and store.alarms() == []
    assert ingest.stats.rejected == 3
    assert dict(ingest.stats.rejected_by_gateway) == {"gw-c": 1, "gw-d": 2}
    assert ingest.stats.readings_stored == 3
    wait_for(
        lambda: (
            gateways.telemetry_acked("gw-b") == {(1, 1), (2, 2)}
            and gateways.telemetry_acked("gw-a") == {(1, 1)}
        ),
        10,
        what="acks for gateways A and B",
    )
    # the rejected ones are kept whole as dead letters, and the rows they name are acked,
    # so that their gateways stop sending them
    dead = {(r.gateway, r.topic.rsplit("/", 1)[1]): r for r in store.rejected()}
    assert set(dead) == {("gw-c", "telemetry"), ("gw-d", "telemetry"), ("gw-d", "alarms")}
    assert json.loads(dead["gw-c", "telemetry"].payload)["readings"][0]["v"] == {"raw": 1}
    assert "readings[0].v must be" in dead["gw-c", "telemetry"].error
    assert (dead["gw-d", "telemetry"].seq_first, dead["gw-d", "telemetry"].seq_last) == (1, 2)
    wait_for(
        lambda: (
            gateways.telemetry_acked("gw-c") == {(1, 1)}
            and gateways.telemetry_acked("gw-d") == {(1, 2)}
            and gateways.alarms_acked("gw-d") == {(1, 1)}
        ),
        10,
        what="acks for the dead letters",
    )


def test_a_dead_letter_acks_only_rows_it_names_beyond_doubt(
    ingest: Ingest, gateways: Gateways
) -> None:
    bad = reading([1])
    garbled = batch("gw-e", 1, bad, seq_last=5)  # says 1..5, holds one reading
    foreign = batch("gw-x", 7, bad)  # another gateway's rows, on gw-e's topic
    again = batch("gw-e", 9, bad)
    ingest.ingest_round(
        [
            message("gw-e", Channel.TELEMETRY, garbled),
            message("gw-e", Channel.TELEMETRY, foreign),
            message("gw-e", Channel.TELEMETRY, b"\xff not json"),
            message("gw-e", Channel.HEALTH, b"[]"),
            message("gw-e", Channel.TELEMETRY, again),
        ]
    )
    ingest.ingest_round([message("gw-e", Channel.TELEMETRY, again)])  # sent once more
    dead = {bytes(r.payload): r for r in ingest.store.rejected("gw-e")}
    assert len(dead) == 5
    assert dead[again].times == 2 and dead[again].seq_first == 9
    assert all(dead[p].stream is None for p in (garbled, foreign, b"\xff not json", b"[]"))
    wait_for(lambda: gateways.telemetry_acked("gw-e") == {(9, 9)}, 10, what="the ack of 9")
    time.sleep(0.3)  # acks of a round go out together: nothing else comes
    assert gateways.telemetry_acked("gw-e") == {(9, 9)} and "gw-x" not in gateways.acks


def test_a_number_too_long_for_python_is_rejected_and_ingest_goes_on(
    ingest: Ingest, gateways: Gateways
) -> None:
    """json.loads raises a plain ValueError for an integer of more than 4,300 digits: one
    such message, which anybody allowed on one gateway's topic can send, must not end
    the ingest of the whole fleet (it did, in the dead letter's second look at it)."""
    huge = batch("gw-f", 1).replace(b'"v": 1.5', b'"v": 1' + b"0" * 5000)
    ingest.ingest_round(
        [
            message("gw-f", Channel.TELEMETRY, huge),
            message("gw-f", Channel.ALARMS, b'{"seq": 1' + b"0" * 5000 + b"}"),
            message("gw-b", Channel.TELEMETRY, batch("gw-b", 1, reading(42))),
        ]
    )
    assert ingest.store.sequence_keys("gw-b") == {("s-gw-b", 1)}
    dead = ingest.store.rejected("gw-f")
    assert len(dead) == 2 and all(r.stream is None for r in dead)
    assert all(r.error.startswith("not JSON") for r in dead)
    wait_for(lambda: gateways.telemetry_acked("gw-b") == {(1, 1)}, 10, what="B acked")
    assert "gw-f" not in gateways.acks


def test_bad_payloads_are_rejected_once_never_redelivered_and_others_flow(
    tmp_path: Path, mqtt_broker: Broker, gateways: Gateways
) -> None:
    central = Central(tmp_path, mqtt_broker.url).start()
    try:
        wait_listening(central.db, gateways)
        bad = [
            (Channel.TELEMETRY, batch("gw-c", 1, reading({"raw": [1, 2]}))),
            (Channel.TELEMETRY, batch("gw-c", 2, reading([1]))),
            (Channel.TELEMETRY, batch("gw-c", 3, reading(u=5))),
            (Channel.TELEMETRY, batch("gw-c", 4, reading(r={"why": 1}))),
            (Channel.TELEMETRY, batch("gw-c", 2**63)),
            (Channel.ALARMS, alarm("gw-c", 1, value={"x": 1})),
            (Channel.ALARMS, alarm("gw-c", 2**64)),
        ]
        gateways.publish("gw-a", Channel.TELEMETRY, batch("gw-a", 1, reading(UINT64_NA)))
        for channel, payload in bad:
            gateways.publish("gw-c", channel, payload)
        gateways.publish("gw-b", Channel.TELEMETRY, batch("gw-b", 1, reading(42)))
        wait_for(
            lambda: (
                gateways.telemetry_acked("gw-b") == {(1, 1)}
                and gateways.telemetry_acked("gw-a") == {(1, 1)}
            ),
            10,
            what="gateways A and B acked",
        )
        gateways.publish("gw-b", Channel.TELEMETRY, batch("gw-b", 2, reading(43)))
        wait_for(lambda: (2, 2) in gateways.telemetry_acked("gw-b"), 10, what="B's next batch")
        assert central.running()
        (a,) = stored_readings(reading_store(central), gateway="gw-a")
        assert a.value == UINT64_NA

        # Restart: a message the center never PUBACKed the broker would deliver again now.
        assert central.stop() == 0
        central.start()
        wait_listening(central.db, gateways, probe="probe-2")
        gateways.publish("gw-b", Channel.TELEMETRY, batch("gw-b", 3, reading(44)))
        wait_for(lambda: (3, 3) in gateways.telemetry_acked("gw-b"), 10, what="B after restart")

        log = central.output()
        rejections = [line for line in log.splitlines() if "rejected a" in line]
        assert len(rejections) == 1, rejections  # logged once (the rest counted), not redelivered
        assert "from gw-c" in rejections[0]
        assert "Traceback" not in log
        store = reading_store(central)
        assert store.sequence_keys("gw-b") == {("s-gw-b", s) for s in (1, 2, 3)}
        assert store.sequence_keys("gw-c") == set()
        # every one kept once (none delivered again after the restart); those that name
        # their outbox rows acked, the two whose seq is out of range not
        dead = store.rejected("gw-c")
        store.close()
        assert len(dead) == len(bad) and all(r.times == 1 for r in dead)
        assert sorted((r.seq_first or 0) for r in dead) == [0, 0, 1, 1, 2, 3, 4]
        assert query(central.db, "SELECT count(*) FROM alarm_events") == [(0,)]
        wait_for(
            lambda: (
                {s for a, b in gateways.telemetry_acked("gw-c") for s in range(a, b + 1)}
                == {1, 2, 3, 4}
                and gateways.alarms_acked("gw-c") == {(1, 1)}
            ),
            10,
            what="acks for C's dead letters",
        )
    finally:
        central.stop()


# --- the store fails: retried, then the process exits non-zero ------------------------------


def test_a_round_the_store_fails_is_rolled_back_retried_and_acked_once(
    ingest: Ingest, gateways: Gateways, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_module, "STORE_RETRY_S", 0.05)
    store = ingest.store
    real_round = store.round
    failures = iter([sqlite3.OperationalError("disk I/O error")] * 2)

    @contextmanager
    def flaky_round() -> Iterator[Round]:
        """The round's writes done, its commit fails as a full disk's would: inside the real
        round, which rolls it back and says StoreUnavailable."""
        with real_round() as rnd:
            yield rnd
            err = next(failures, None)
            if err is not None:
                raise err

    monkeypatch.setattr(store, "round", flaky_round)
    ingest.ingest_retrying([message("gw-b", Channel.TELEMETRY, batch("gw-b", 1, reading(7)))])
    assert ingest.stats.store_failures == 2 and ingest.stats.rejected == 0
    assert store.sequence_keys("gw-b") == {("s-gw-b", 1)}
    assert ingest.stats.readings_stored == 1  # counted once, not once per try
    wait_for(lambda: gateways.telemetry_acked("gw-b") == {(1, 1)}, 10, what="the ack")
    time.sleep(0.3)
    assert len(gateways.acks["gw-b"]) == 1


def test_central_exits_non_zero_when_its_store_keeps_failing(
    tmp_path: Path, small_fs: Path, mqtt_broker: Broker, gateways: Gateways
) -> None:
    central = Central(tmp_path, mqtt_broker.url, db=small_fs / "central.db").start()
    try:
        wait_listening(central.db, gateways)
        fill_disk(small_fs / "ballast")  # the disk is full: every commit fails from now on
        started = time.monotonic()
        gateways.publish("gw-b", Channel.TELEMETRY, batch("gw-b", 1, reading(42)))
        wait_for(lambda: not central.running(), 15, what="the central process to exit")
        assert time.monotonic() - started < 15
        assert central.proc is not None and central.proc.returncode == 1
        log = central.output()
        assert log.count("store failed: ") == ingest_module.STORE_TRIES - 1, log
        assert "central ingest stopped" in log and "StoreFailed" in log
        assert gateways.telemetry_acked("gw-b") == set()  # nothing acked that is not stored
    finally:
        central.stop()


def test_run_central_returns_1_when_the_ingest_thread_dies(
    tmp_path: Path, mqtt_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    ing = new_ingest(tmp_path / "central.db", mqtt_broker)

    def crash() -> None:  # not an error of the store: nothing retries it
        raise RuntimeError("a bug in ingest")

    monkeypatch.setattr(ing.store, "round", crash)
    ing._on_message(message("gw-b", Channel.TELEMETRY, batch("gw-b", 1)))
    stop = threading.Event()
    watchdog = threading.Timer(15, stop.set)  # bound: a hang returns 0 and fails, not forever
    watchdog.start()
    try:
        started = time.monotonic()
        assert run_central(ing.store, ing, stop) == 1
        assert time.monotonic() - started < 5
    finally:
        watchdog.cancel()


def test_run_central_returns_0_when_stopped(tmp_path: Path, mqtt_broker: Broker) -> None:
    ing = new_ingest(tmp_path / "central.db", mqtt_broker)
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    assert run_central(ing.store, ing, stop) == 0
    timer.join()


# --- durability ------------------------------------------------------------------------------


def test_store_fsyncs_every_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "central.db")
    try:
        assert store.conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert store.conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    finally:
        store.close()


def _open_store_when_told(path: Path, go: Any, errors: Any) -> None:
    go.wait()
    try:
        SqliteStore(path).close()
    except Exception as exc:
        errors.put(f"{type(exc).__name__}: {exc}")


def test_the_service_and_a_query_opening_a_new_store_together_both_succeed(
    tmp_path: Path,
) -> None:
    """Switching a new file to WAL needs an exclusive lock, refused at once while another
    process holds one: ``fleet central run`` and a ``fleet`` query starting together made
    one of them fail ("database is locked") about one time in seven, and when it was the
    service, it exited. Forty new stores, each opened by two processes at the same moment."""
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    for i in range(40):
        go = ctx.Event()
        procs = [
            ctx.Process(target=_open_store_when_told, args=(tmp_path / f"{i}.db", go, errors))
            for _ in range(2)
        ]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    found = []
    while not errors.empty():
        found.append(errors.get(timeout=1))
    assert found == []


def test_fleet_tables_show_what_gateways_sent_as_text_not_markup(tmp_path: Path) -> None:
    """Error texts quote payloads: a gateway id like ``[/x]`` is rich markup, and the table
    of every dead letter failed on it ("closing tag ... doesn't match")."""
    db = tmp_path / "central.db"
    store = SqliteStore(db)
    with store.round() as rnd:
        rnd.insert_rejected(
            "gw-a", "edgefleet/v1/gw/gw-a/telemetry", b"{}", "payload says gateway '[/x]'", None
        )
    store.close()
    out = run_cli("fleet", "rejected", "--db", str(db), env={"COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "[/x]" in out.stdout and "not acked" in out.stdout


def test_a_gateway_keeps_only_its_newest_dead_letters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writes, "REJECTED_KEEP", 3)
    store = SqliteStore(tmp_path / "central.db")
    try:
        pruned = []
        for i in range(5):
            with store.round() as rnd:
                pruned.append(rnd.insert_rejected("gw-a", "t", b"%d" % i, "bad", None))
            time.sleep(0.01)  # last_seen orders them
        with store.round() as rnd:
            rnd.insert_rejected("gw-b", "t", b"0", "bad", None)
        assert pruned == [0, 0, 0, 1, 1]
        assert [bytes(r.payload) for r in store.rejected("gw-a")] == [b"4", b"3", b"2"]
        assert len(store.rejected("gw-b")) == 1
    finally:
        store.close()
