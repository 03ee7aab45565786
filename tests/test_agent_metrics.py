"""The agent's Prometheus endpoint (``health.metrics_port``): a real ``edge-agent run``
polling a simulated Modbus device, publishing to a real Mosquitto with no center behind it
(nothing is acked), scraped over HTTP and parsed as Prometheus parses it. And the config
checks: ``check`` refuses what ``run`` would, and a port in use is one line, exit 1."""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge_agent.alarms import AlarmService
from edge_agent.committer import Committer
from edge_agent.contract import Topics
from edge_agent.health import HealthReporter
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox.memory import MemoryAlarmJournal, MemoryGauge, MemoryTelemetryLog
from edge_agent.rules.engine import RuleEngine
from edge_agent.sender import Sender
from tests.rig import devices_yaml
from tests.support import (
    Agent,
    Broker,
    Samples,
    ThreadedDevice,
    agent_config,
    free_port,
    port_open,
    run_cli,
    sample,
    scrape,
    wait_for,
)
from tests.test_health import Uplink as HealthUplink

pytestmark = pytest.mark.hil

DEV = {"device": "tank-1"}


def _scraped(port: int) -> Samples | None:
    try:
        return scrape(port)
    except OSError:  # not serving yet
        return None


def test_a_running_agent_serves_outbox_depth_device_link_and_uplink(
    tmp_path: Path, mqtt_broker: Broker, modbus_server: ThreadedDevice
) -> None:
    port = free_port()
    text = agent_config(
        gateway="gw-metrics",
        broker_url=mqtt_broker.url,
        outbox=tmp_path / "outbox.db",
        devices_yaml=devices_yaml(modbus_server.port),
        metrics_port=port,
    )
    agent = Agent(tmp_path, text).start()
    try:

        def published() -> Samples | None:
            got = _scraped(port)
            if got is None or not sample(got, "edgefleet_agent_readings_published_total"):
                return None
            return got

        first = wait_for(published, 20, what="readings published, as scraped")
        assert sample(first, "edgefleet_agent_uplink_connected") == 1
        assert sample(first, "edgefleet_agent_device_up", **DEV) == 1
        last_good = sample(first, "edgefleet_agent_device_last_good_timestamp_seconds", **DEV)
        assert last_good is not None and abs(time.time() - last_good) < 5
        assert (sample(first, "edgefleet_agent_readings_produced_total") or 0) >= 10
        assert (sample(first, "edgefleet_agent_device_polls_total", **DEV) or 0) >= 1
        assert sample(first, "edgefleet_agent_device_errors_total", **DEV) == 0
        assert sample(first, "edgefleet_agent_rows_acked_total") == 0  # no center: no acks
        for lane, cause in (
            ("telemetry", "outbox_bound"),
            ("telemetry", "disk_full"),
            ("alarms", "disk_full"),
        ):
            assert sample(first, "edgefleet_agent_dropped_total", lane=lane, cause=cause) == 0
        depth = sample(first, "edgefleet_agent_outbox_depth", lane="telemetry")
        assert depth is not None and depth > 0

        # nothing is acked: the outbox grows, and its oldest reading ages
        time.sleep(1.0)
        later = scrape(port)
        later_depth = sample(later, "edgefleet_agent_outbox_depth", lane="telemetry")
        assert later_depth is not None and later_depth > depth
        age = sample(later, "edgefleet_agent_outbox_oldest_age_seconds")
        assert age is not None and age >= 1.0
        assert (sample(later, "edgefleet_agent_outbox_bytes") or 0) > 0

        # the device goes away: its link is down, its last good reading stays where it was
        modbus_server.stop()

        def link_down() -> Samples | None:
            got = scrape(port)
            return got if sample(got, "edgefleet_agent_device_up", **DEV) == 0 else None

        down = wait_for(link_down, 10, what="the device's link down, as scraped")
        assert (sample(down, "edgefleet_agent_device_errors_total", **DEV) or 0) >= 1
        stale = sample(down, "edgefleet_agent_device_last_good_timestamp_seconds", **DEV)
        assert stale is not None and stale >= last_good
        assert ("python_gc_objects_collected_total", (("generation", "0"),)) not in down
    finally:
        assert agent.stop() == 0, agent.output()[-3000:]
    assert not port_open(port)


def test_a_metrics_port_in_use_stops_the_start_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "agent.yaml"
        outbox = tmp_path / "outbox.db"
        config.write_text(
            agent_config(
                gateway="gw-taken",
                broker_url=f"mqtt://127.0.0.1:{free_port()}",
                outbox=outbox,
                devices_yaml="  []\n",
                metrics_port=port,
            )
        )
        assert run_cli("edge-agent", "check", "-c", str(config)).returncode == 0
        result = run_cli("edge-agent", "run", "-c", str(config), timeout=20)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"edge-agent: not starting: cannot serve metrics on 127.0.0.1:{port}: "
        "address already in use"
    )
    assert not outbox.exists()  # refused before the outbox is opened


@pytest.mark.parametrize(
    ("health", "line", "message"),
    [
        ("  metrics_port: 0\n", 3, "health.metrics_port: 0 is not a TCP port"),
        ("  metrics_port: 65536\n", 3, "health.metrics_port: 65536 is not a TCP port"),
        ("  metrics_port: '9100'\n", 3, "health.metrics_port: '9100' is not a TCP port"),
        ("  metrics_port: true\n", 3, "health.metrics_port: True is not a TCP port"),
        (
            "  metrics_port: 9100\n  metrics_host: 'my host'\n",
            4,
            "health.metrics_host: 'my host' is not an IP address",
        ),
        (
            "  metrics_host: 0.0.0.0\n",
            3,
            "health.metrics_host: metrics_host needs a metrics_port",
        ),
    ],
)
@pytest.mark.parametrize("command", ["check", "run"])
def test_check_and_run_refuse_a_bad_metrics_setting_at_its_line(
    tmp_path: Path, health: str, line: int, message: str, command: str
) -> None:
    config = tmp_path / "agent.yaml"
    outbox = tmp_path / "outbox.db"
    config.write_text(f"gateway: {{id: gw-1}}\nhealth:\n{health}outbox: {{path: '{outbox}'}}\n")
    result = run_cli("edge-agent", command, "-c", str(config))
    assert result.returncode == 2
    assert f"{config}:{line}: {message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not outbox.exists()


@pytest.mark.parametrize(
    ("host", "here"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("0.0.0.0", True),
        ("localhost", True),
        ("gw-1.lan", False),  # a name: the schema takes it, this host may not have it
    ],
)
def test_check_takes_a_port_and_an_address_to_serve_on(
    tmp_path: Path, host: str, here: bool
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"gateway: {{id: gw-1}}\noutbox: {{path: '{tmp_path / 'o.db'}'}}\n"
        f"health: {{metrics_port: 9100, metrics_host: '{host}'}}\n"
    )
    result = run_cli("edge-agent", "check", *([] if here else ["--schema-only"]), "-c", str(config))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("host", "message"),
    [
        # TEST-NET-1 (RFC 5737): an address no host here has
        ("192.0.2.1", "192.0.2.1 is not an address of this host (cannot assign requested address)"),
        ("no-such-host.invalid", "no-such-host.invalid does not resolve"),
    ],
)
@pytest.mark.parametrize("command", ["check", "run"])
def test_an_address_this_host_does_not_have_is_refused_by_check_and_run_alike(
    tmp_path: Path, host: str, message: str, command: str
) -> None:
    config = tmp_path / "agent.yaml"
    outbox = tmp_path / "o.db"
    config.write_text(
        f"gateway: {{id: gw-1}}\noutbox: {{path: '{outbox}'}}\n"
        f"health: {{metrics_port: 9100, metrics_host: '{host}'}}\n"
    )
    result = run_cli("edge-agent", command, "-c", str(config))
    assert result.returncode == 2
    assert f"{config}:3: health.metrics_host: {message}" in result.stderr
    assert not outbox.exists()
    schema_only = run_cli("edge-agent", "check", "--schema-only", "-c", str(config))
    assert schema_only.returncode == 0, schema_only.stderr


async def test_drops_by_cause_are_the_health_reports_counters(tmp_path: Path) -> None:
    """What a full disk costs is hard to make happen here (tests/test_outbox_disk.py does);
    the endpoint shows the same counters the health report does, each under its cause."""
    telemetry = MemoryTelemetryLog()
    journal = MemoryAlarmJournal(stream_id=telemetry.stream_id)
    await telemetry.append([(time.time() - 3, "{}")])
    uplink = HealthUplink()
    topics = Topics("edgefleet/v1")
    sender = Sender(
        gateway="gw-1",
        topics=topics,
        telemetry=telemetry,
        alarms=journal,
        uplink=uplink,
        batch_max=10,
        window=4,
        ack_timeout_s=10,
    )
    alarms = AlarmService(RuleEngine([]), journal, sender, {})
    committer = Committer(telemetry, journal, sender, alarms)
    committer.lost_disk_full, alarms.lost_disk_full = 7, 5
    health = HealthReporter(
        gateway="gw-1",
        topics=topics,
        outbox=MemoryGauge(telemetry, journal, tmp_path),
        uplink=uplink,
        sender=sender,
        pollers=[],
        interval_s=1,
        sources=[alarms, committer],
        produced=committer,
        alarm_losses=alarms,
    )
    metrics = AgentMetrics("127.0.0.1", 0)
    try:
        metrics.expose(asyncio.get_running_loop(), health.figures)
        got = await asyncio.to_thread(scrape, metrics.port)  # the loop stays free to answer
    finally:
        await metrics.aclose()
    drops = "edgefleet_agent_dropped_total"
    assert sample(got, drops, lane="telemetry", cause="disk_full") == 7
    assert sample(got, drops, lane="alarms", cause="disk_full") == 5
    assert sample(got, drops, lane="telemetry", cause="outbox_bound") == 0
    assert sample(got, "edgefleet_agent_outbox_depth", lane="telemetry") == 1
    age = sample(got, "edgefleet_agent_outbox_oldest_age_seconds")
    assert age is not None and 3 <= age < 10
    assert sample(got, "edgefleet_agent_uplink_connected") == 0
    body = await health.report()  # the health message says the same
    assert body["lost_disk_full"] == 7
    alarm_body = body["alarms"]
    assert isinstance(alarm_body, dict) and alarm_body["events_lost_disk_full"] == 5


async def test_scrapes_at_once_share_one_reading_of_the_figures() -> None:
    """Each reading of the figures counts the outbox on its one thread (``count(*)`` over
    what may be millions of rows), ahead of the appends waiting there: a burst of scrapes
    (several Prometheus servers, or anyone who reaches the port) must cost one reading,
    not one each."""
    from edge_agent.health import HealthFigures  # noqa: PLC0415
    from edge_agent.outbox.lanes import OutboxStats  # noqa: PLC0415

    readings = 0

    async def figures() -> HealthFigures:
        nonlocal readings
        readings += 1
        await asyncio.sleep(0.5)  # an outbox count that takes a while
        counts = [0] * 10  # every count after ``connected``: none matters here
        return HealthFigures(time.time(), OutboxStats(readings, 0, None, 0, 0), {}, True, *counts)

    metrics = AgentMetrics("127.0.0.1", 0)
    try:
        metrics.expose(asyncio.get_running_loop(), figures)
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(20) as pool:  # twenty at once, not the default pool's few
            burst = await asyncio.gather(
                *(loop.run_in_executor(pool, scrape, metrics.port) for _ in range(20))
            )
        later = await asyncio.to_thread(scrape, metrics.port)  # a scrape after: figures anew
    finally:
        await metrics.aclose()
    depths = [sample(got, "edgefleet_agent_outbox_depth", lane="telemetry") for got in burst]
    assert readings <= 3, f"{readings} readings of the figures for one burst of 20 scrapes"
    assert all(d is not None and d <= 3 for d in depths), depths
    assert sample(later, "edgefleet_agent_outbox_depth", lane="telemetry") == readings
