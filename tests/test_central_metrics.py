"""The center's Prometheus endpoint: the real ingest against a real Mosquitto, scraped over
HTTP and parsed as Prometheus parses it; and ``fleet central run --metrics-port`` as a
real process, with a port in use refused in one line."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from central.inbox import Inbox, Lane
from central.ingest import Ingest, run_central
from central.metrics import CentralMetrics
from central.rounds import RoundResult
from central.store.sqlite import SqliteStore
from edge_agent.contract import Channel, Topics
from mqttlink.session import Message
from mqttlink.url import Broker as BrokerSettings
from tests.support import (
    Broker,
    Central,
    free_port,
    port_open,
    run_cli,
    sample,
    scrape,
    stored_readings,
    wait_for,
)
from tests.test_central_robust import Gateways, alarm, batch, reading

pytestmark = pytest.mark.hil

TOPICS = Topics()
W = {"worker": "0"}


@pytest.fixture
def served(tmp_path: Path, mqtt_broker: Broker) -> Iterator[tuple[Ingest, CentralMetrics]]:
    """The real ingest running on its thread (as ``central run`` runs it), its metrics
    served on a free loopback port."""
    store = SqliteStore(tmp_path / "central.db")
    ingest = Ingest(store, BrokerSettings.plain(mqtt_broker.url), TOPICS, client_id="metrics")
    metrics = CentralMetrics("127.0.0.1", 0)
    metrics.add_worker(ingest)
    stop = threading.Event()
    runner = threading.Thread(target=run_central, args=(store, ingest, stop), daemon=True)
    runner.start()
    wait_for(ingest.connected.is_set, 10, what="ingest connected")
    yield ingest, metrics
    stop.set()
    runner.join(10)
    metrics.close()


def test_counters_grow_with_what_the_fleet_sends(
    served: tuple[Ingest, CentralMetrics], mqtt_broker: Broker
) -> None:
    ingest, metrics = served
    before = scrape(metrics.port)
    assert sample(before, "edgefleet_central_messages_total", channel="telemetry", **W) == 0
    assert sample(before, "edgefleet_central_connected", **W) == 1
    gws = Gateways(mqtt_broker)
    try:
        # the center is subscribed once a health message sent now is counted
        def listening() -> bool:
            gws.publish(
                "probe", Channel.HEALTH, json.dumps({"gw": "probe", "ts": time.time()}).encode()
            )
            got = scrape(metrics.port)
            return bool(sample(got, "edgefleet_central_messages_total", channel="health", **W))

        wait_for(listening, 10, interval=0.3, what="the center subscribed")
        for seq in (1, 3, 5):
            gws.publish("gw-m", Channel.TELEMETRY, batch("gw-m", seq, reading(1), reading(2)))
        gws.publish("gw-m", Channel.TELEMETRY, batch("gw-m", 1, reading(1), reading(2)))  # again
        gws.publish("gw-m", Channel.TELEMETRY, b"not json")
        gws.publish("gw-m", Channel.ALARMS, alarm("gw-m", 1))
        wait_for(
            lambda: _seqs(gws.telemetry_acked("gw-m")) == set(range(1, 7)), 10, what="the acks"
        )
        wait_for(lambda: gws.alarms_acked("gw-m") == {(1, 1)}, 10, what="the alarm's ack")

        def all_counted() -> bool:
            got = scrape(metrics.port)
            tel = sample(got, "edgefleet_central_messages_total", channel="telemetry", **W)
            return tel == 5 and sample(got, "edgefleet_central_acks_sent_total", **W) != 0

        wait_for(all_counted, 10, what="the five telemetry messages counted")
    finally:
        gws.close()
    assert len(stored_readings(ingest.store, gateway="gw-m")) == 6

    after = scrape(metrics.port)
    assert sample(after, "edgefleet_central_messages_total", channel="alarms", **W) == 1
    assert sample(after, "edgefleet_central_messages_total", channel="state", **W) == 0
    assert sample(after, "edgefleet_central_readings_stored_total", **W) == 6
    assert sample(after, "edgefleet_central_duplicates_total", **W) == 2
    assert sample(after, "edgefleet_central_alarms_stored_total", **W) == 1
    assert sample(after, "edgefleet_central_messages_rejected_total", **W) == 1
    assert sample(after, "edgefleet_central_messages_in_conflict_total", **W) == 0
    assert sample(after, "edgefleet_central_store_failures_total", **W) == 0
    rounds = sample(after, "edgefleet_central_rounds_total", **W)
    assert rounds is not None and rounds >= 2  # the probe's, and at least one of the rest
    acks = sample(after, "edgefleet_central_acks_sent_total", **W)
    # one per round and stream: an alarm that joins a telemetry round shares its ack
    assert acks is not None and 1 <= acks <= 5
    # every round is in the histogram once, under +Inf and in the count
    assert sample(after, "edgefleet_central_commit_seconds_count", **W) == rounds
    assert sample(after, "edgefleet_central_commit_seconds_bucket", le="+Inf", **W) == rounds
    total = sample(after, "edgefleet_central_commit_seconds_sum", **W)
    assert total is not None and 0 < total < 10
    for lane in ("alarms", "data"):
        assert sample(after, "edgefleet_central_inbox_messages", lane=lane, **W) == 0
        assert sample(after, "edgefleet_central_inbox_oldest_age_seconds", lane=lane, **W) == 0
        assert sample(after, "edgefleet_central_inbox_shed_total", lane=lane, **W) == 0


def _seqs(ranges: set[tuple[int, int]]) -> set[int]:
    return {s for first, last in ranges for s in range(first, last + 1)}


def test_the_inbox_tells_how_long_its_oldest_message_has_waited() -> None:
    inbox = Inbox(1 << 20, 1 << 20, lambda msg: msg.topic.split("/")[3])
    assert inbox.waiting(Lane.DATA) == (0, 0, None)
    first = Message(TOPICS.gw("gw-a", Channel.TELEMETRY), b"x" * 10)
    inbox.put(Lane.DATA, first)
    time.sleep(0.2)
    inbox.put(Lane.DATA, Message(TOPICS.gw("gw-b", Channel.TELEMETRY), b"y"))
    count, nbytes, age = inbox.waiting(Lane.DATA)
    assert count == 2 and nbytes == 11 + 2 * 256
    assert age is not None and 0.2 <= age < 2
    # a message put back (a round cut short) keeps the age of the round it came from
    _, taken = inbox.take(0, 0, 1, 1 << 20)
    assert taken == [first]
    assert (inbox.waiting(Lane.DATA)[2] or 0) < 0.2  # gw-b's, just put
    inbox.put_back(Lane.DATA, taken)
    age = inbox.waiting(Lane.DATA)[2]
    assert age is not None and age >= 0.2


def test_a_second_worker_has_series_of_its_own(tmp_path: Path) -> None:
    settings = BrokerSettings.plain(f"mqtt://127.0.0.1:{free_port()}")  # never connected
    stores = [SqliteStore(tmp_path / f"c{i}.db") for i in range(2)]
    metrics = CentralMetrics("127.0.0.1", 0)
    try:
        for i, store in enumerate(stores):
            metrics.add_worker(Ingest(store, settings, TOPICS, client_id=f"w{i}"), str(i))
        with pytest.raises(ValueError, match="already"):
            metrics.add_worker(Ingest(stores[0], settings, TOPICS, client_id="w0b"), "0")
        samples = scrape(metrics.port)
        for worker in ("0", "1"):
            assert sample(samples, "edgefleet_central_connected", worker=worker) == 0
            assert sample(samples, "edgefleet_central_rounds_total", worker=worker) == 0
    finally:
        metrics.close()
        for store in stores:
            store.close()


def test_central_run_serves_metrics_on_the_port_it_is_given(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    port = free_port()
    central = Central(tmp_path, mqtt_broker.url)
    central.args += ["--metrics-port", str(port)]
    central.start()
    try:
        samples = wait_for(
            lambda: _scraped_connected(port), 10, what="metrics of a connected central"
        )
        assert sample(samples, "edgefleet_central_readings_stored_total", **W) == 0
        assert ("python_gc_objects_collected_total", (("generation", "0"),)) not in samples
    finally:
        assert central.stop() == 0
    assert not port_open(port)  # closed with the service


def _scraped_connected(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    try:
        samples = scrape(port)
    except OSError:
        return None
    return samples if sample(samples, "edgefleet_central_connected", **W) == 1 else None


def test_a_metrics_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = tmp_path / "central.db"
        result = run_cli(
            "fleet", "central", "run", "--db", str(db), "--metrics-port", str(port), timeout=20
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: cannot serve metrics on 127.0.0.1:{port}: address already in use"
    )
    assert not db.exists()  # refused before the store is made


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics-port", "70000"], "less than or equal to 65535"),
        (["--metrics-port", "9100", "--metrics-host", "not a host!"], "is not an IP address"),
    ],
)
def test_bad_metrics_options_are_usage_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_cli("fleet", "central", "run", "--db", str(tmp_path / "c.db"), *args)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split()).replace("│", "")


def test_a_round_lands_in_the_first_bucket_it_fits(tmp_path: Path) -> None:
    settings = BrokerSettings.plain(f"mqtt://127.0.0.1:{free_port()}")  # never connected
    store = SqliteStore(tmp_path / "c.db")
    ingest = Ingest(store, settings, TOPICS, client_id="buckets")
    metrics = CentralMetrics("127.0.0.1", 0)
    try:
        metrics.add_worker(ingest)
        (observe,) = ingest.round_observers
        for seconds in (0.001, 0.0011, 20.0):  # on a bound, just past it, past the last
            observe(RoundResult(), seconds)
        got = scrape(metrics.port)
    finally:
        metrics.close()
        store.close()
    bucket = "edgefleet_central_commit_seconds_bucket"
    assert sample(got, bucket, le="0.001", **W) == 1
    assert sample(got, bucket, le="0.0025", **W) == 2
    assert sample(got, bucket, le="10.0", **W) == 2
    assert sample(got, bucket, le="+Inf", **W) == 3
    assert sample(got, "edgefleet_central_commit_seconds_sum", **W) == pytest.approx(20.0021)
    assert sample(got, "edgefleet_central_rounds_total", **W) == 3
