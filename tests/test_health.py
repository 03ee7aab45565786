"""The health report: what each part of the agent adds to it, and that it follows the contract."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from edge_agent.alarms import AlarmService
from edge_agent.committer import Committer
from edge_agent.contract import Channel, Topics
from edge_agent.contract.schema import validate
from edge_agent.health import HealthReporter
from edge_agent.outbox.memory import MemoryAlarmJournal, MemoryGauge, MemoryTelemetryLog
from edge_agent.rules.compile import compile_rules
from edge_agent.rules.engine import RuleEngine
from edge_agent.rules.model import Rule
from edge_agent.sender import Sender
from edge_agent.uplink import Inbound


class Uplink:
    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.reconnects = 2
        self.published: list[tuple[str, bytes]] = []

    def subscribe(self, topic: str, handler: Callable[[Inbound], None]) -> None:
        pass

    def on_up(self, fn: Callable[[], None]) -> None:
        pass

    def on_down(self, fn: Callable[[], None]) -> None:
        pass

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        self.published.append((topic, payload))
        return True


async def test_the_report_carries_what_the_alarm_service_and_the_committer_count(
    tmp_path: Path,
) -> None:
    telemetry = MemoryTelemetryLog()
    journal = MemoryAlarmJournal(stream_id=telemetry.stream_id)
    await telemetry.append([(1.0, "{}"), (2.0, "{}")])
    uplink = Uplink()
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
    rule = Rule.model_validate({"id": "smoke.alarm", "device": "det-3", "when": "smoke > 1"})
    engine = RuleEngine(compile_rules({"det-3": frozenset({"smoke"})}, [rule], []))
    alarms = AlarmService(engine, journal, sender, {})
    alarms.actions_run, alarms.engine_errors, alarms.lost_disk_full = 3, 1, 5
    committer = Committer(telemetry, journal, sender, alarms)
    committer.lost_disk_full = 7
    health = HealthReporter(
        gateway="gw-1",
        topics=topics,
        outbox=MemoryGauge(telemetry, journal, tmp_path),
        uplink=uplink,
        sender=sender,
        pollers=[],
        interval_s=1,
        sources=[alarms, committer],
    )
    body = await health.report()
    assert body["alarms"] == {
        "rules": 1,
        "engine_errors": 1,
        "actions_run": 3,
        "events_lost_disk_full": 5,
    }
    assert body["lost_disk_full"] == 7
    outbox = body["outbox"]
    assert isinstance(outbox, dict)
    assert (outbox["depth"], outbox["alarms_depth"], outbox["bytes"]) == (2, 0, 4)
    ((topic, payload),) = uplink.published
    assert topic == topics.gw("gw-1", Channel.HEALTH)
    validate(Channel.HEALTH, payload)
    assert json.loads(payload)["uplink"]["reconnects"] == 2
