"""The shipped scenarios, played by the simulators at six times real speed, against a
real agent with the default packs: a fire raises the smoke alarm, and a lift entrapment
raises `lift.trapped` exactly once while a lift running normally raises nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.support import Agent, Broker, Central, Process, wait_for

pytestmark = pytest.mark.hil
GW = "scenario-0001"


def events(central: Central, alarm: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(central.db)
    try:
        rows = db.execute(
            "SELECT body FROM alarm_events WHERE gateway = ? AND alarm_id = ? ORDER BY seq",
            [GW, alarm],
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
    return [e for e in (json.loads(r[0]) for r in rows) if "action" not in e]


def test_fire_and_entrapment_scenarios_raise_their_alarms(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    sim_file = tmp_path / "sim.yaml"
    sim_file.write_text(
        f"seed: 3\nspeed: 6\nbroker: {mqtt_broker.url}\ncentral: {mqtt_broker.url}\n"
        "rule_packs: [smoke, elevator]\nhealth_s: 1\n"
        f"gateways:\n  - id: {GW}\n    devices:\n"
        "      - {id: det-1, profile: acme/sd-2000@1.4, scenario: fire}\n"
        "      - {id: lift-1, profile: acme/lift-monitor@2.3, scenario: elevator_entrapment}\n"
        "      - {id: lift-2, profile: acme/lift-monitor@2.3}\n"
    )
    configs = tmp_path / "configs"
    sim = Process(
        "edge-agent",
        ["sim", "run", str(sim_file), "--write-configs", str(configs)],
        tmp_path / "sim.log",
    ).start()
    central = Central(tmp_path, mqtt_broker.url).start()
    agent: Agent | None = None
    try:
        wait_for((configs / "endpoints.json").exists, 30, what="the simulators")
        agent = Agent(configs, (configs / f"{GW}.yaml").read_text()).start()
        # the lift stops between floors 24 s into the scenario (4 s here); trapped 30 s later
        trapped = wait_for(
            lambda: events(central, "lift-1/lift.trapped"), 60, what="lift.trapped on lift-1"
        )
        assert trapped[0]["state"] == "active" and trapped[0]["severity"] == "critical"
        # smoke passes the alarm point ~90 s into the fire (15 s here): the detector's own
        # alarm flag raises the one critical alarm; the level rule is for detectors without
        smoke = wait_for(
            lambda: [e for e in events(central, "det-1/smoke.alarm") if e["state"] == "active"],
            30,
            what="the smoke alarm on det-1",
        )
        assert smoke[0]["severity"] == "critical"
        assert not events(central, "det-1/smoke.alarm_level")
        # the rescue opens the door 250 s in (42 s here): the alarm clears, raised once only
        wait_for(
            lambda: any(
                e["state"] == "cleared_unacked" for e in events(central, "lift-1/lift.trapped")
            ),
            30,
            what="lift.trapped cleared after the rescue",
        )
        raised = [
            e
            for e in events(central, "lift-1/lift.trapped")
            if e["state"] == "active" and not e.get("retrigger")
        ]
        assert len(raised) == 1
        db = sqlite3.connect(central.db)
        (lift2,) = db.execute(
            "SELECT count(*) FROM alarm_events WHERE gateway = ? AND device = 'lift-2'", [GW]
        ).fetchone()
        db.close()
        assert lift2 == 0, "a lift in normal service raised an alarm"
    finally:
        if agent is not None:
            agent.stop()
        sim.stop()
        central.stop()
