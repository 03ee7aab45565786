"""The rule engine and the alarm lifecycle, driven with readings and a clock we control."""

from __future__ import annotations

import random
from typing import Any

import pytest

from drivers.base import Quality, Reading
from edge_agent.contract.alarms import AlarmEvent
from edge_agent.rules.compile import RuleErrors, compile_rules
from edge_agent.rules.engine import CommandRefused, RuleEngine
from edge_agent.rules.model import Rule

DEV = "det-3"
POINTS = frozenset({"smoke", "smoke_alarm", "temp", "siren", "level"})


def engine(*rules: dict[str, Any], now: float = 0.0, **kw: Any) -> RuleEngine:
    compiled = compile_rules(
        {DEV: POINTS}, [Rule.model_validate({"device": DEV, **r}) for r in rules], []
    )
    return RuleEngine(compiled, now=now, **kw)


def feed(e: RuleEngine, ts: float, q: Quality = Quality.GOOD, **values: Any) -> list[AlarmEvent]:
    readings = [Reading(DEV, k, v, None, q, ts) for k, v in values.items()]
    return e.observe(readings)


def states(events: list[AlarmEvent]) -> list[str]:
    return [ev.state for ev in events]


SMOKE = {
    "id": "smoke.alarm",
    "when": "smoke >= 2.4",
    "clear_when": "smoke < 2.0",
    "off_delay_s": 5,
    "severity": "critical",
    "message": "Smoke {smoke:.1f} %/m at {device}",
}


def test_threshold_raises_with_values_message_and_edge_timestamp() -> None:
    e = engine(SMOKE)
    assert feed(e, 1.0, smoke=1.0) == []
    (ev,) = feed(e, 2.0, smoke=2.6)
    assert ev.state == "active" and ev.ts == 2.0
    assert ev.id == "det-3/smoke.alarm" and ev.severity == "critical"
    assert ev.value == 2.6 and ev.values == {"smoke": 2.6}
    assert ev.msg == "Smoke 2.6 %/m at det-3"
    assert ev.occurrence == 1


def test_on_delay_must_hold_and_resets_when_the_condition_drops() -> None:
    e = engine({**SMOKE, "on_delay_s": 3})
    assert feed(e, 0.0, smoke=3.0) == []
    assert feed(e, 2.0, smoke=1.0) == []  # dropped: the timer restarts
    assert feed(e, 3.0, smoke=3.0) == []
    assert e.tick(5.9) == []
    assert states(e.tick(6.0)) == ["active"]


def test_hysteresis_and_off_delay_mean_no_flapping_on_a_noisy_signal() -> None:
    e = engine(SMOKE)
    rng = random.Random(1)
    events = []
    t = 0.0
    for _ in range(300):  # noise of +-0.3 around the 2.4 threshold
        t += 0.1
        events += feed(e, t, smoke=2.4 + rng.uniform(-0.3, 0.3))
        events += e.tick(t)
    assert states(events) == ["active"]
    for _ in range(100):  # falls well below the clear level
        t += 0.1
        events += feed(e, t, smoke=1.5)
        events += e.tick(t)
    assert states(events) == ["active", "cleared_unacked"]
    assert events[1].ts >= events[0].ts + 5  # the off-delay held


def test_deadband_clears_on_the_return_side() -> None:
    e = engine({"id": "lvl", "when": "level >= 25", "deadband": 5})
    assert states(feed(e, 1, level=26)) == ["active"]
    assert feed(e, 2, level=21) == []  # below the limit but inside the deadband
    assert states(feed(e, 3, level=19.9)) == ["cleared_unacked"]


def test_acknowledge_then_clear_and_clear_then_acknowledge() -> None:
    e = engine(SMOKE)
    feed(e, 1, smoke=3)
    assert states(e.acknowledge("det-3/smoke.alarm", "ops", now=2)) == ["acknowledged"]
    feed(e, 3, smoke=1)
    assert states(e.tick(8.1)) == ["cleared"]
    feed(e, 10, smoke=3)
    feed(e, 11, smoke=1)
    assert states(e.tick(16.5)) == ["cleared_unacked"]
    (ev,) = e.acknowledge("det-3/smoke.alarm", "ops", now=17)
    assert ev.state == "cleared" and ev.acked_by == "ops" and ev.occurrence == 2
    with pytest.raises(CommandRefused):
        e.acknowledge("det-3/smoke.alarm", "ops")


def test_retrigger_is_counted_not_raised_anew() -> None:
    e = engine({**SMOKE, "off_delay_s": 0})
    feed(e, 1, smoke=3)
    feed(e, 2, smoke=1)
    (ev,) = feed(e, 3, smoke=3)
    assert ev.state == "active" and ev.retrigger is True
    assert ev.occurrence == 1 and ev.retriggers == 1


def test_latched_alarm_waits_for_a_reset_which_needs_the_condition_gone() -> None:
    e = engine({**SMOKE, "latch": True})
    feed(e, 1, smoke=3)
    with pytest.raises(CommandRefused, match="still holds"):
        e.reset("det-3/smoke.alarm", "ops", now=2)
    feed(e, 3, smoke=1)
    assert e.tick(100) == []  # still latched
    assert states(e.reset("det-3/smoke.alarm", "ops", now=101)) == ["cleared_unacked"]


def test_bad_quality_freezes_the_rule_it_never_clears_an_alarm() -> None:
    e = engine({**SMOKE, "off_delay_s": 0})
    feed(e, 1, smoke=3)
    assert feed(e, 2, q=Quality.BAD, smoke=None) == []
    assert e.tick(50) == []
    assert states(feed(e, 51, smoke=1)) == ["cleared_unacked"]


def test_stale_stuck_rate_and_offline_rules() -> None:
    e = engine(
        {"id": "silent", "stale_s": 10, "point": "level"},
        {"id": "stuck", "stuck_s": 30, "point": "temp"},
        {"id": "rise", "rate": {"per_min": 6}, "point": "temp"},
        {"id": "gone", "offline": True, "on_delay_s": 2},
    )
    feed(e, 0, level=1.0, temp=20.0)
    assert {ev.rule for ev in e.tick(10.5)} == {"silent"}
    assert states(feed(e, 11, level=1.0)) == ["cleared_unacked"]
    feed(e, 20, level=1.0)
    feed(e, 28, level=1.0)
    assert {ev.rule for ev in e.tick(30.5)} == {"stuck"}
    rise = feed(e, 31, temp=20.5)  # 0.5 degrees in 31 s: 1/min, fine; and it moved
    assert [(ev.rule, ev.state) for ev in rise] == [("stuck", "cleared_unacked")]
    assert [(ev.rule, ev.state) for ev in feed(e, 41, temp=22.5, level=1.0)] == [("rise", "active")]
    assert feed(e, 42, q=Quality.BAD, level=None, temp=None) == []
    assert [ev.rule for ev in e.tick(44.5)] == ["gone"]


def test_shelving_hides_annunciation_until_it_expires() -> None:
    e = engine({**SMOKE, "off_delay_s": 0})
    assert states(e.shelve("det-3/smoke.alarm", 10, "sensor being cleaned", "ops", now=0)) == [
        "shelved"
    ]
    assert feed(e, 1, smoke=3) == []
    (ev,) = e.tick(10.5)
    assert ev.state == "unshelved" and ev.current == "active"


def test_flood_control_summarises_all_but_critical() -> None:
    rules = [{"id": f"r{i}", "when": f"level >= {i}", "severity": "minor"} for i in range(10)]
    e = engine(
        *rules, {"id": "fire", "when": "smoke >= 1", "severity": "critical"}, max_new_per_min=3
    )
    events = feed(e, 1, level=100, smoke=5)
    assert sorted(ev.rule for ev in events) == ["fire", "r0", "r1", "r2"]
    (summary,) = e.tick(62)
    assert summary.rule == "alarm.flood" and summary.value == 7


def test_chattering_alarm_is_held_active_with_a_diagnostic_until_quiet() -> None:
    e = engine({**SMOKE, "off_delay_s": 0}, chatter_count=3, chatter_window_s=60)
    seen: list[AlarmEvent] = []
    for i in range(3):  # active -> clear three times within a minute
        seen += feed(e, 10 * i, smoke=3)
        seen += feed(e, 10 * i + 5, smoke=1)
    assert [(ev.rule, ev.state) for ev in seen] == [
        ("smoke.alarm", "active"),
        ("smoke.alarm", "cleared_unacked"),
        ("smoke.alarm", "active"),
        ("smoke.alarm", "cleared_unacked"),
        ("smoke.alarm", "active"),
        ("smoke.alarm.chattering", "active"),  # the third activation: a diagnostic
    ]
    chatter = seen[-1]
    assert chatter.severity == "warning" and chatter.of == "det-3/smoke.alarm"
    assert chatter.id == "det-3/smoke.alarm.chattering" and chatter.value == 3
    # held active: clearing again and again inside the window announces nothing
    quiet: list[AlarmEvent] = []
    for t in (30, 31, 40, 41):
        quiet += feed(e, t, smoke=3 if t % 2 == 0 else 1)
    assert quiet == []
    assert e.instances["det-3/smoke.alarm"].p.state == "active"
    assert e.tick(100) == []  # clear since 41: not yet a whole window
    done = e.tick(101.5)
    assert [(ev.rule, ev.state) for ev in done] == [
        ("smoke.alarm", "cleared_unacked"),
        ("smoke.alarm.chattering", "cleared"),
    ]


def test_alarm_that_clears_slowly_is_not_chattering() -> None:
    e = engine({**SMOKE, "off_delay_s": 0}, chatter_count=3, chatter_window_s=60)
    seen: list[AlarmEvent] = []
    for i in range(4):  # one activation every 40 s: never 3 within 60 s
        seen += feed(e, 40 * i, smoke=3) + feed(e, 40 * i + 5, smoke=1)
    assert not any(ev.rule.endswith("chattering") for ev in seen)
    assert states(seen) == ["active", "cleared_unacked"] * 4


def test_unacknowledged_critical_alarm_is_announced_again() -> None:
    minor = {"id": "temp.high", "when": "temp > 50", "severity": "minor"}
    e = engine(SMOKE, minor, reannunciate_critical_s=300)
    assert states(feed(e, 0, smoke=3, temp=60)) == ["active", "active"]
    assert e.tick(299) == []
    (again,) = e.tick(300)  # only the critical one, once per period
    assert again.rule == "smoke.alarm" and again.reannounced == 1
    assert again.ts == 300 and again.occurrence == 1
    assert e.tick(301) == [] and e.tick(599) == []
    assert e.tick(600)[0].reannounced == 2
    e.acknowledge("det-3/smoke.alarm", "ops", now=601)
    assert e.tick(1200) == []  # acknowledged: somebody is on it


def test_reannunciation_can_be_switched_off() -> None:
    e = engine(SMOKE, reannunciate_critical_s=0)
    feed(e, 0, smoke=3)
    assert e.tick(10_000) == []


def chatter(e: RuleEngine) -> list[AlarmEvent]:
    """Active at 0, 10 and 20, clear in between: the third activation is a chatter."""
    seen: list[AlarmEvent] = []
    for i in range(3):
        seen += feed(e, 10 * i, smoke=3) + feed(e, 10 * i + 5, smoke=1)
    return seen


def test_a_restart_keeps_the_chatter_hold_and_clears_its_diagnostic() -> None:
    e = engine({**SMOKE, "off_delay_s": 0})
    assert chatter(e)[-1].rule == "smoke.alarm.chattering"
    again = engine({**SMOKE, "off_delay_s": 0}, restored=dict(e.take_dirty()))
    assert feed(again, 26, smoke=1) == []  # still held after the restart
    assert again.tick(80) == []
    assert [(ev.rule, ev.state) for ev in again.tick(86)] == [
        ("smoke.alarm", "cleared_unacked"),
        ("smoke.alarm.chattering", "cleared"),  # never left active at the center
    ]


def test_a_bad_reading_stops_the_clear_timer_it_never_clears_an_alarm() -> None:
    e = engine({**SMOKE, "off_delay_s": 30})
    feed(e, 0, smoke=3)
    assert feed(e, 5, smoke=1) == []  # the off-delay starts
    feed(e, 6, q=Quality.BAD, smoke=None)  # the sensor goes bad
    assert e.tick(40) == [] and e.instances["det-3/smoke.alarm"].p.state == "active"
    assert feed(e, 41, smoke=1) == []  # good again: the off-delay starts over
    assert states(e.tick(71)) == ["cleared_unacked"]


def test_a_shelved_alarm_that_chatters_raises_no_diagnostic_but_is_held() -> None:
    e = engine({**SMOKE, "off_delay_s": 0})
    e.shelve("det-3/smoke.alarm", 1000, "detector being cleaned", "ops", now=0)
    assert chatter(e) == []
    assert e.instances["det-3/smoke.alarm"].p.chattering
    assert e.tick(86) == []  # cleared while shelved: nothing to say, not even the diagnostic


def test_the_diagnostic_cannot_be_acted_on_and_only_latched_alarms_reset() -> None:
    e = engine({**SMOKE, "off_delay_s": 0})
    chatter(e)
    with pytest.raises(CommandRefused, match=r"clears by itself once det-3/smoke\.alarm is quiet"):
        e.acknowledge("det-3/smoke.alarm.chattering", "ops", now=30)
    with pytest.raises(CommandRefused, match="not latched"):
        e.reset("det-3/smoke.alarm", "ops", now=30)


def test_rule_ids_cannot_take_the_diagnostic_suffix() -> None:
    with pytest.raises(ValueError, match="diagnostics"):
        Rule.model_validate({"id": "smoke.chattering", "device": DEV, "when": "smoke > 1"})


def test_reminders_skip_shelved_time_and_survive_a_restart() -> None:
    e = engine(SMOKE, reannunciate_critical_s=300)
    feed(e, 0, smoke=3)
    assert e.tick(300)[0].reannounced == 1
    e.shelve("det-3/smoke.alarm", 400, "drill", "ops", now=310)
    assert e.tick(600) == []  # shelved: no reminder, not counted
    e.unshelve("det-3/smoke.alarm", "ops", now=700)
    assert e.tick(900)[0].reannounced == 2
    again = engine(SMOKE, restored=dict(e.take_dirty()), reannunciate_critical_s=300)
    feed(again, 901, smoke=3)
    assert again.tick(1000) == []  # the last reminder was at 900, before the restart
    (ev,) = again.tick(1200)
    assert ev.reannounced == 3 and ev.since == 0


def test_state_survives_a_restart() -> None:
    e = engine({**SMOKE, "on_delay_s": 30})
    feed(e, 1, smoke=3)  # the on-delay timer starts
    saved = dict(e.take_dirty())
    again = engine({**SMOKE, "on_delay_s": 30}, restored=saved)
    assert again.instances["det-3/smoke.alarm"].p.pending_since == 1
    feed(again, 20, smoke=3)
    assert states(again.tick(31)) == ["active"]


def test_the_rest_state_is_cleared_everywhere() -> None:
    """One name for an alarm at rest: the engine's state, its persisted state and its events
    agree (agents before this one said ``normal`` in the first two)."""
    e = engine({**SMOKE, "off_delay_s": 0})
    assert e.instances["det-3/smoke.alarm"].p.state == "cleared"  # never raised
    feed(e, 1, smoke=3)
    feed(e, 2, smoke=1)
    (ev,) = e.acknowledge("det-3/smoke.alarm", "ops", now=3)
    assert ev.state == "cleared" and e.instances["det-3/smoke.alarm"].p.state == "cleared"
    assert dict(e.take_dirty())["det-3/smoke.alarm"]["state"] == "cleared"


@pytest.mark.parametrize("saved", ["garbled", "shelved", None, 3])
def test_a_saved_state_that_is_no_lifecycle_state_is_restored_as_cleared(saved: object) -> None:
    e = engine(SMOKE, restored={"det-3/smoke.alarm": {"state": saved, "occurrence": 2}})
    assert e.instances["det-3/smoke.alarm"].p.state == "cleared"
    (ev,) = feed(e, 1, smoke=3)  # raised again: its condition holds
    assert (ev.state, ev.occurrence) == ("active", 3)


def test_a_state_saved_as_normal_by_an_older_agent_is_restored_as_cleared() -> None:
    saved = {"det-3/smoke.alarm": {"state": "normal", "occurrence": 4, "since": 10.0}}
    e = engine({**SMOKE, "off_delay_s": 0}, restored=saved)
    p = e.instances["det-3/smoke.alarm"].p
    assert (p.state, p.occurrence) == ("cleared", 4)
    (ev,) = feed(e, 20, smoke=3)  # raised anew from rest: the next occurrence
    assert (ev.state, ev.occurrence, ev.since) == ("active", 5, 20)


@pytest.mark.parametrize(
    ("rule", "field", "needle"),
    [
        ({"id": "x", "when": "smoke >= (2"}, "when", "syntax error"),
        ({"id": "x", "when": "smok > 2"}, "when", "unknown point smok"),
        ({"id": "x", "when": "__import__('os')"}, "when", "may be called"),
        ({"id": "x", "when": "smoke > 1", "clear_when": "smoek < 1"}, "clear_when", "unknown"),
        ({"id": "x", "when": "smoke > 1", "message": "{nope}"}, "message", "not a point"),
        ({"id": "x", "when": "smoke > 1 and temp > 2", "deadband": 1}, "when", "deadband"),
    ],
)
def test_rule_errors_name_the_field(rule: dict[str, Any], field: str, needle: str) -> None:
    with pytest.raises(RuleErrors) as info:
        compile_rules({DEV: POINTS}, [Rule.model_validate({"device": DEV, **rule})], [])
    (err,) = info.value.errors
    assert err.loc == ("rules", 0, field)
    assert needle in err.message


def test_packs_apply_to_devices_that_have_their_points() -> None:
    devices = {
        "det-1": frozenset({"smoke_alarm", "pre_alarm", "obscuration", "fault"}),
        "lift-7": frozenset({"running", "door_open", "door_zone", "person_in_car", "speed"}),
    }
    rules = compile_rules(devices, [], ["smoke", "elevator", "water"])
    keys = {r.key for r in rules}
    assert {"det-1/smoke.alarm", "det-1/smoke.prealarm", "lift-7/lift.trapped"} <= keys
    assert not any(k.startswith("det-1/lift.") or k.startswith("lift-7/smoke.") for k in keys)
    assert not any("water" in k for k in keys)


def test_rules_of_a_device_template_apply_to_each_device_as_it_reports() -> None:
    """An MQTT entry with id "smoke-{id}" stands for every detector heard on its topic."""
    rules = compile_rules({"smoke-{id}": frozenset({"smoke_alarm"})}, [], ["smoke"])
    e = RuleEngine(rules, now=0)
    assert e.instances == {}
    alarm = Reading("smoke-7", "smoke_alarm", True, None, Quality.GOOD, 1.0)
    (ev,) = e.observe([alarm, Reading("other", "smoke_alarm", True, None, Quality.GOOD, 1.0)])
    assert ev.id == "smoke-7/smoke.alarm" and ev.dev == "smoke-7"
    assert set(e.instances) == {"smoke-7/smoke.alarm"}


def test_unchanged_inputs_are_not_evaluated_again_but_delays_still_run() -> None:
    e = engine({**SMOKE, "on_delay_s": 2})
    feed(e, 0, smoke=3.0, temp=20.0)
    assert e.expressions_evaluated == 1
    feed(e, 1, smoke=3.0, temp=21.0)  # only a point the rule does not read moved
    assert e.expressions_evaluated == 1
    assert states(feed(e, 2, smoke=3.0, temp=22.0)) == ["active"]  # the delay ran out
    feed(e, 3, smoke=1.0)
    assert e.expressions_evaluated == 2
    feed(e, 4, q=Quality.BAD, smoke=None)
    feed(e, 5, smoke=1.0)  # good again with the same value: its quality moved
    assert e.expressions_evaluated == 3
