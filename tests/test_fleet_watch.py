"""``fleet watch``: updates from the center's feed, never by polling; hostile feed events
are dropped, not obeyed; the screen fits the terminal.

The process test runs ``fleet watch`` through its entry point, piped (one line per
change), against a real broker and a real store; feed events are published by a stock
paho client, as a center (or an attacker who could publish there) would."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console

from bench.flood import alarm_payload
from central.store import open_store
from central.store.rows import FleetStatus
from cli.fleet_watch import Alarm, View, apply, parse_event, render
from edge_agent.contract import Channel, Topics, decode_alarm, decode_state
from edge_agent.contract.payloads import dumps
from tests.support import BIN, Broker, Central, wait_for

FEED = "edgefleet/v1/center/feed"


def event(**fields: object) -> bytes:
    base: dict[str, object] = {"worker": 0, "client": "c", "ts": time.time(), "readings": 0}
    return json.dumps({**base, "alarms": [], "gateways": [], **fields}).encode()


def test_hostile_feed_events_are_refused_whole() -> None:
    assert parse_event(event(readings=5)) == {"readings": 5, "alarms": [], "gateways": []}
    good_alarm = {"gateway": "g", "alarm_id": "d/r", "severity": "critical", "state": "active"}
    assert parse_event(event(alarms=[good_alarm]))["alarms"] == [  # type: ignore[index]
        ("g", "d/r", "critical", "active")
    ]
    for bad in (
        b"not json",
        b"[1, 2]",
        event(readings="5"),
        event(readings=-1),
        event(readings=True),
        event(alarms={"a": 1}),
        event(alarms=[{**good_alarm, "state": 7}]),
        event(alarms=[{**good_alarm, "gateway": "x" * 300}]),
        event(alarms=[good_alarm] * 1001),
        event(gateways=[{"gateway": "g", "online": "yes"}]),
        b"[" * 100_000,
    ):
        assert parse_event(bad) is None, bad[:40]


def smoke_alarm(gw: str, state: str) -> bytes:
    return dumps(
        {"gw": gw, "stream": "s1", "seq": 1, "id": "det-3/smoke", "rule": "smoke",
         "dev": "det-3", "severity": "major", "state": state, "value": 1.0,
         "ts": time.time(), "msg": "smoke"}
    )  # fmt: skip


def test_a_forged_feed_event_shows_only_what_the_store_holds(tmp_path: Path) -> None:
    """Anyone who can publish on the feed must not put an alarm the center never stored
    on the operator's screen, nor print a gateway offline that the store has online."""
    store = open_store(str(tmp_path / "central.db"))
    try:
        with store.round() as rnd:
            rnd.update_state("gw-1", decode_state(dumps({"gw": "gw-1", "online": True})))
        view = View(status=store.status())
        forged = event(
            alarms=[
                {"gateway": "gw-1", "alarm_id": "fake/fire", "severity": "critical",
                 "state": "active"},
                {"gateway": "gw-9", "alarm_id": "x/y", "severity": "critical", "state": "active"},
            ],
            gateways=[{"gateway": "gw-1", "online": False}, {"gateway": "gw-9", "online": True}],
        )  # fmt: skip
        assert apply(view, store, forged, time.time()) == []
        assert view.alarms == {}
        assert list(view.changes) == []
        # what the store holds is shown as the store has it, whatever the event says
        with store.round() as rnd:
            rnd.insert_alarm(decode_alarm(smoke_alarm("gw-1", "active")))
        claim = {"gateway": "gw-1", "alarm_id": "det-3/smoke", "severity": "critical"}
        lines = apply(view, store, event(alarms=[{**claim, "state": "cleared"}]), time.time())
        assert len(lines) == 1 and lines[0].endswith("gw-1 det-3/smoke major active"), lines
        assert view.alarms[("gw-1", "det-3/smoke")].severity == "major"
        # one alarm named a thousand times in one event: read (and printed) once
        flood = event(alarms=[{**claim, "state": "active"}] * 1000)
        assert len(apply(view, store, flood, time.time())) == 1
        said = event(gateways=[{"gateway": "gw-1", "online": True}])
        assert [line[-11:] for line in apply(view, store, said, 0.0)] == ["gw-1 online"]
    finally:
        store.close()


def test_the_screen_fits_the_terminal_and_shows_sent_text_literally() -> None:
    status = FleetStatus(gateways=3, online=2, offline=1, alarms_by_severity={"critical": 200})
    view = View(status=status)
    for i in range(200):
        gw = "gw-\x1b[2J" if i == 0 else f"gw-{i}"
        view.alarms[(gw, "d/r")] = Alarm(gw, "d/r", "critical", "active", 1_700_000_000.0 + i)
    console = Console(width=80, height=24, force_terminal=True, color_system=None)
    with console.capture() as captured:
        console.print(render(view, 24, time.time()))
    lines = captured.get().splitlines()
    assert len(lines) <= 24
    assert "alarms (200), 21 shown" in captured.get()  # 24 lines: counts, title, header
    assert "gw-199 " in captured.get()  # ids whole at 80 columns
    assert "\x1b[2J" not in captured.get()  # a gateway's escape sequence is shown, not obeyed


def test_watch_prints_what_the_feed_says_as_it_comes(tmp_path: Path, mqtt_broker: Broker) -> None:
    db = tmp_path / "central.db"
    store = open_store(str(db))
    with store.round() as rnd:
        for gw in ("gw-1", "gw-2"):
            rnd.update_state(gw, decode_state(dumps({"gw": gw, "online": True})))
    store.close()
    watch = subprocess.Popen(
        [str(BIN / "fleet"), "watch", "--db", str(db), "--broker", mqtt_broker.url,
         "--duration", "20s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", mqtt_broker.port)
    publisher.loop_start()
    try:
        assert watch.stdout is not None
        first = watch.stdout.readline()  # the counts, read once from the store
        assert "2 gateways: 2 online, 0 offline" in first, first
        # what the center committed before it said so on the feed
        store = open_store(str(db))
        with store.round() as rnd:
            rnd.update_state("gw-2", decode_state(dumps({"gw": "gw-2", "online": False})))
            rnd.insert_alarm(decode_alarm(smoke_alarm("gw-1", "active")))
        store.close()
        # the session is subscribed once it printed; a garbage event first: dropped
        time.sleep(0.5)
        publisher.publish(FEED, b"\xff garbage", qos=1).wait_for_publish(5)
        publisher.publish(FEED, event(gateways=[{"gateway": "gw-2", "online": False}]), qos=1)
        alarm = {"gateway": "gw-1", "alarm_id": "det-3/smoke", "severity": "major"}
        publisher.publish(FEED, event(alarms=[{**alarm, "state": "active"}]), qos=1)
        lines: list[str] = []
        wait_for(
            lambda: bool(lines.append(watch.stdout.readline()) or len(lines) >= 2),  # type: ignore[union-attr]
            15,
            what="two changes printed",
        )
        assert "gw-2 offline" in lines[0], lines
        assert "gw-1 det-3/smoke major active" in lines[1], lines
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        watch.terminate()
        watch.wait(10)
    assert "Traceback" not in (watch.stderr.read() if watch.stderr else "")


def test_watch_hears_what_a_real_center_commits(tmp_path: Path, mqtt_broker: Broker) -> None:
    """End to end: a gateway's state and alarm cross the broker, the central service
    stores them and tells its feed, and ``fleet watch`` prints them."""
    central = Central(tmp_path, mqtt_broker.url).start()
    watch = subprocess.Popen(
        [str(BIN / "fleet"), "watch", "--db", str(central.db), "--broker", mqtt_broker.url,
         "--duration", "30s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    gateway = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    gateway.connect("127.0.0.1", mqtt_broker.port)
    gateway.loop_start()
    try:
        assert watch.stdout is not None
        assert "0 gateways" in watch.stdout.readline()
        time.sleep(0.5)  # its subscription on its way: the first line comes after open()
        topics = Topics()
        state = {"gw": "gw-9", "online": True, "site": "bench"}
        gateway.publish(topics.gw("gw-9", Channel.STATE), dumps(state), qos=1, retain=True)
        gateway.publish(topics.gw("gw-9", Channel.ALARMS), alarm_payload("gw-9", 1), qos=1)
        lines: list[str] = []
        wait_for(
            lambda: bool(lines.append(watch.stdout.readline()) or len(lines) >= 2),  # type: ignore[union-attr]
            20,
            what="the state and the alarm printed",
        )
        assert any("gw-9 online" in line for line in lines), lines
        assert any("gw-9 " in line and " active" in line for line in lines if "online" not in line)
    finally:
        gateway.loop_stop()
        gateway.disconnect()
        watch.terminate()
        watch.wait(10)
        central.stop()
