"""The agent's alarm service over a real outbox: what it writes, restores and replies."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from drivers.base import Quality, Reading
from edge_agent.alarms import AlarmService
from edge_agent.config.models import AlarmsConfig
from edge_agent.contract.limits import COMMAND_REASON_MAX, OPERATOR_MAX
from edge_agent.outbox import AgentOutbox, DbThread, Lane, Outbox
from edge_agent.rules.compile import compile_rules
from edge_agent.rules.engine import RuleEngine
from edge_agent.rules.model import Rule

T = TypeVar("T")
DEV = "det-3"
KEY = f"{DEV}/smoke.alarm"
SMOKE = {"id": "smoke.alarm", "device": DEV, "when": "smoke >= 2.4", "off_delay_s": 0}


class FakeSender:
    def __init__(self) -> None:
        self.last = 0

    def appended(self, lane: Lane, last_seq: int) -> None:
        self.last = max(self.last, last_seq)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[tuple[Outbox, AgentOutbox]]:
    ob = Outbox(tmp_path / "outbox.db", max_bytes=10**8)
    agent_outbox = AgentOutbox(ob, DbThread())
    yield ob, agent_outbox
    await agent_outbox.aclose()


def rules() -> list[Any]:
    return compile_rules({DEV: frozenset({"smoke"})}, [Rule.model_validate(SMOKE)], [])


def smoke(value: float) -> list[Reading]:
    return [Reading(DEV, "smoke", value, "%/m", Quality.GOOD, time.time())]


def history(ob: Outbox) -> list[dict[str, Any]]:
    return [json.loads(body) for _, body in ob.fetch(Lane.ALARMS, 1, None, 100)]


async def test_the_reply_to_an_ack_names_the_state_the_history_and_the_outbox_keep(
    outbox: tuple[Outbox, AgentOutbox],
) -> None:
    ob, agent_outbox = outbox
    alarms = AlarmService(RuleEngine(rules()), agent_outbox.alarms, FakeSender(), {})
    await alarms.record(alarms.observe(smoke(3.0)))
    await alarms.record(alarms.observe(smoke(1.0)))
    reply = await alarms.command("alarm.ack", {"alarm": KEY, "by": "ops"})
    assert reply == {"alarm": KEY, "state": "cleared"}
    assert [e["state"] for e in history(ob)] == ["active", "cleared_unacked", "cleared"]
    assert history(ob)[-1]["acknowledged"] is True and history(ob)[-1]["acked_by"] == "ops"
    assert ob.alarm_states()[KEY]["state"] == "cleared"


async def test_an_alarm_state_saved_as_normal_by_an_older_agent_is_restored(
    outbox: tuple[Outbox, AgentOutbox],
) -> None:
    ob, agent_outbox = outbox
    old = {"state": "normal", "occurrence": 3, "since": 100.0, "acked_by": "ops"}
    ob.record_alarms([], [(KEY, json.dumps(old))])
    engine = await AlarmService.restore(rules(), agent_outbox, AlarmsConfig())
    alarms = AlarmService(engine, agent_outbox.alarms, FakeSender(), {})
    assert engine.instances[KEY].p.state == "cleared"
    await alarms.record(alarms.observe(smoke(3.0)))
    (raised,) = history(ob)
    assert (raised["state"], raised["occurrence"]) == ("active", 4)  # a new occurrence
    assert ob.alarm_states()[KEY]["state"] == "active"


async def test_every_command_reply_names_the_alarms_state_after_it(
    outbox: tuple[Outbox, AgentOutbox],
) -> None:
    """The reply uses the words of the events: shelving an active alarm answers
    ``shelved`` (its lifecycle in ``current``), never ``active``."""
    ob, agent_outbox = outbox
    alarms = AlarmService(RuleEngine(rules()), agent_outbox.alarms, FakeSender(), {})
    await alarms.record(alarms.observe(smoke(3.0)))
    shelve = {"alarm": KEY, "by": "ops", "reason": "cleaning", "for_s": 600}
    before = time.time()
    shelved = await alarms.command("alarm.shelve", shelve)
    assert shelved.pop("shelved_until") == pytest.approx(before + 600, abs=5)
    assert shelved == {"alarm": KEY, "state": "shelved", "current": "active"}
    acked = await alarms.command("alarm.ack", {"alarm": KEY, "by": "ops"})
    assert (acked["state"], acked["current"]) == ("shelved", "acknowledged")
    unshelved = await alarms.command("alarm.unshelve", {"alarm": KEY, "by": "ops"})
    assert unshelved == {"alarm": KEY, "state": "acknowledged"}
    assert [e["state"] for e in history(ob)] == ["active", "shelved", "unshelved"]
    await alarms.record(alarms.observe(smoke(1.0)))
    assert history(ob)[-1]["state"] == "cleared"  # acknowledged, then cleared: at rest


@pytest.mark.parametrize("for_s", [0, -60, "2h", True, None, float("inf"), float("nan")])
async def test_a_shelving_of_no_length_or_not_a_number_is_refused(
    outbox: tuple[Outbox, AgentOutbox], for_s: object
) -> None:
    ob, agent_outbox = outbox
    alarms = AlarmService(RuleEngine(rules()), agent_outbox.alarms, FakeSender(), {})
    await alarms.record(alarms.observe(smoke(3.0)))
    shelve = {"alarm": KEY, "by": "ops", "reason": "cleaning", "for_s": for_s}
    with pytest.raises(ValueError, match=r"^for_s must be a number of seconds above 0, not "):
        await alarms.command("alarm.shelve", shelve)
    assert alarms.reply(KEY)["state"] == "active"
    assert [e["state"] for e in history(ob)] == ["active"]


@pytest.mark.parametrize(
    ("args", "refusal"),
    [
        ({"by": "x" * (OPERATOR_MAX + 1)}, r"^by is 65 characters; at most 64$"),
        ({"by": ["ops"]}, r"^by must be text, not list$"),
        ({"reason": "r" * (COMMAND_REASON_MAX + 1)}, r"^reason is 513 characters; at most 512$"),
        ({"reason": {"why": 1}}, r"^reason must be text, not dict$"),
    ],
)
async def test_a_command_whose_texts_the_contract_cannot_keep_is_refused(
    outbox: tuple[Outbox, AgentOutbox], args: dict[str, object], refusal: str
) -> None:
    """``by`` and a shelving's ``reason`` go into every alarm event the command causes:
    a megabyte of either made events no batch could carry (it was taken as it came)."""
    ob, agent_outbox = outbox
    alarms = AlarmService(RuleEngine(rules()), agent_outbox.alarms, FakeSender(), {})
    await alarms.record(alarms.observe(smoke(3.0)))
    shelve = {"alarm": KEY, "by": "ops", "reason": "cleaning", "for_s": 60} | args
    with pytest.raises(ValueError, match=refusal):
        await alarms.command("alarm.shelve", shelve)
    assert [e["state"] for e in history(ob)] == ["active"]
    longest = {"by": "o" * OPERATOR_MAX, "reason": "r" * COMMAND_REASON_MAX}
    assert (await alarms.command("alarm.shelve", shelve | longest))["state"] == "shelved"
