"""``fleet alarms shelve --for`` and ``unshelve`` against a real agent, broker and center:
the length the operator types is the length the gateway shelves for."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.output import utc
from drivers.modbus.config import ModbusPoint
from tests.rig import GW
from tests.support import Agent, Broker, Central, ThreadedDevice, run_cli, wait_for
from tests.test_hil_alarms import DETECTOR, config

pytestmark = pytest.mark.hil
ALARM = "det-3/smoke.alarm"


@pytest.fixture
def smoky() -> Iterator[ThreadedDevice]:
    device = ThreadedDevice([ModbusPoint.model_validate(p) for p in DETECTOR]).start()
    device.set("smoke", 3.0)
    yield device
    device.close()


def history(central: Central) -> list[dict[str, Any]]:
    out = run_cli("fleet", "alarms", "history", ALARM, "-g", GW, "--db", str(central.db), "--json")
    if out.returncode == 1 and "no such alarm" in out.stderr:
        return []  # not at the center yet
    assert out.returncode == 0, out.stderr
    return [e for e in json.loads(out.stdout) if "action" not in e]


def test_shelving_for_two_hours_shelves_on_the_gateway_for_7200_s(
    tmp_path: Path, mqtt_broker: Broker, smoky: ThreadedDevice
) -> None:
    key = tmp_path / "keys" / "center.key"
    assert run_cli("fleet", "keys", "init", "--key", str(key)).returncode == 0
    central = Central(tmp_path, mqtt_broker.url).start()
    agent = Agent(
        tmp_path, config(tmp_path, mqtt_broker.url, smoky.port, key.with_suffix(".pub"))
    ).start()
    command = ("-g", GW, "--broker", mqtt_broker.url, "--key", str(key))
    try:
        wait_for(lambda: history(central), 20, what="the smoke alarm at the center")
        shelve = run_cli(
            "fleet", "alarms", "shelve", ALARM, "--reason", "detector being cleaned",
            "--for", "2h", "--by", "li.wei", *command,
        )  # fmt: skip
        assert shelve.returncode == 0, shelve.stdout + shelve.stderr

        def shelved() -> list[dict[str, Any]]:
            return [e for e in history(central) if e["state"] == "shelved"]

        (event,) = wait_for(shelved, 10, what="the shelving at the center")
        assert event["shelved_until"] - event["ts"] == pytest.approx(7200, abs=0.01)
        assert (event["reason"], event["shelved_by"]) == ("detector being cleaned", "li.wei")
        # the reply, as a person reads it: the state after the command, no dict repr
        assert shelve.stdout.splitlines() == [
            f"{GW}: alarm.shelve det-3/smoke.alarm done",
            f"alarm: {ALARM}",
            "state: shelved",
            "current: active",
            f"shelved_until: {utc(event['shelved_until'])} UTC",
        ]

        unshelve = run_cli(
            "fleet", "alarms", "unshelve", ALARM, "--by", "li.wei", *command, "--json"
        )
        assert unshelve.returncode == 0, unshelve.stdout + unshelve.stderr
        reply = json.loads(unshelve.stdout)
        assert reply["ok"] is True and reply["result"] == {"alarm": ALARM, "state": "active"}
        wait_for(lambda: history(central)[-1]["state"] == "unshelved", 10, what="the unshelving")
    finally:
        agent.stop()
        central.stop()
