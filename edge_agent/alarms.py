"""The agent's side of the alarm lifecycle: runs the rule engine on the readings and on a
clock, makes every transition durable (alarm lane + alarm state, one transaction), takes
acks and shelving from the center, and performs local actions (sound a siren, start a
pump) with a guard against flapping, recording each result in the alarm's history.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from drivers.base import Driver, DriverError, Reading, Value
from edge_agent.config.models import AlarmsConfig
from edge_agent.contract.alarms import (
    ActionReport,
    ActionResult,
    ActionWrite,
    AlarmEvent,
    AlarmState,
)
from edge_agent.contract.limits import COMMAND_REASON_MAX, OPERATOR_MAX
from edge_agent.outbox import AlarmJournal, AppendListener, Lane, OutboxFull, RuleState
from edge_agent.rules.compile import CompiledRule
from edge_agent.rules.engine import RuleEngine
from edge_agent.rules.model import Action

log = logging.getLogger(__name__)
TICK_S = 0.1
HELD_MAX = 10_000
"""Alarm events kept in memory while a full disk refuses them; past this the oldest go."""
WRITE_TIMEOUT_S = 10
"""The longest a write of a point may take before it counts as failed."""


@dataclass(slots=True)
class AlarmWrite:
    """What one commit must make durable: events (their actions not run yet: ``new``;
    already run, or none to run: ``held``) and the alarm states as the engine has them."""

    new: list[AlarmEvent] = field(default_factory=list)
    held: list[AlarmEvent] = field(default_factory=list)
    states: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new or self.held or self.states)

    def events(self) -> list[AlarmEvent]:
        """In the order they are written: those held back first."""
        return [*self.held, *self.new]


class AlarmService:
    def __init__(
        self,
        engine: RuleEngine,
        journal: AlarmJournal,
        sender: AppendListener,
        drivers: Mapping[str, Driver],
    ) -> None:
        self.engine = engine
        self._journal = journal
        self._sender = sender
        self._drivers = drivers
        self._last_action: dict[tuple[str, str], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.actions_run = 0
        self.engine_errors = 0
        self._held: list[AlarmEvent] = []  # refused by a full disk: written with the next commit
        self.lost_disk_full = 0  # alarm events given up (past HELD_MAX) on a full disk
        self._disk_full = False

    @staticmethod
    async def restore(
        rules: list[CompiledRule], state: RuleState, settings: AlarmsConfig
    ) -> RuleEngine:
        saved = await state.load()
        engine = RuleEngine(rules, restored=saved, **settings.engine_options())
        active = [
            k
            for k, s in saved.items()
            if AlarmState.restored(s.get("state", AlarmState.CLEARED)) is not AlarmState.CLEARED
        ]
        if active:
            log.info("restored %d alarm(s) not cleared: %s", len(active), ", ".join(active))
        return engine

    # --- called by the committer with each poll's readings -----------------------------

    def observe(self, readings: list[Reading]) -> list[AlarmEvent]:
        try:
            return self.engine.observe(readings)
        except Exception:  # a rule bug must never cost the readings themselves
            self._engine_failed("evaluating readings")
            return []

    def _engine_failed(self, doing: str) -> None:
        self.engine_errors += 1
        if self.engine_errors == 1:
            log.exception("rule engine failed while %s; counting further failures", doing)

    def take(self, events: list[AlarmEvent], acted: bool = False) -> AlarmWrite:
        """Events to commit, with those a full disk refused before and the dirty states.
        Exactly one of ``committed`` or ``not_committed`` must follow."""
        write = AlarmWrite(
            new=[] if acted else list(events),
            held=[*self._held, *(events if acted else [])],
            states=[(k, json.dumps(s)) for k, s in self.engine.take_dirty()],
        )
        self._held = []
        return write

    def committed(self, write: AlarmWrite, last_alarm_seq: int) -> None:
        """The events are durable: let the sender go, and act on the new ones."""
        if self._disk_full:
            log.warning("alarm events are durable again")
            self._disk_full = False
        if last_alarm_seq:
            self._sender.appended(Lane.ALARMS, last_alarm_seq)
        for event in write.new:
            self._act(event)

    def not_committed(self, write: AlarmWrite, why: object, act: bool = True) -> None:
        """A full disk refused the write: keep the events for the next commit and the
        states dirty, and act now anyway: a siren must not wait for disk space."""
        self.engine.dirty.update(key for key, _ in write.states)
        self._held[:0] = [*write.held, *write.new]  # taken before anything held since
        if len(self._held) > HELD_MAX:
            lost = len(self._held) - HELD_MAX
            del self._held[:lost]
            if not self.lost_disk_full:
                log.error(
                    "disk full: more than %d alarm events held in memory; giving up the "
                    "oldest (counted in health data: alarms.events_lost_disk_full)",
                    HELD_MAX,
                )
            self.lost_disk_full += lost
        if not self._disk_full:
            log.error("disk full: alarm events kept in memory until there is room: %s", why)
            self._disk_full = True
        for event in write.new if act else ():
            self._act(event)

    # --- the clock ----------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                events = self.engine.tick()
            except Exception:
                self._engine_failed("advancing its clock")
                continue
            await self.record(events)

    async def record(self, events: list[AlarmEvent], acted: bool = False) -> None:
        write = self.take(events, acted)
        if not write:
            return
        rows = write.events()
        try:
            last = await self._journal.record(rows, write.states)
        except OutboxFull as exc:
            self.not_committed(write, exc)
            return
        except BaseException as exc:
            self.not_committed(write, exc, act=False)
            raise
        self.committed(write, last if rows else 0)

    def health(self) -> dict[str, object]:
        return {
            "alarms": {
                "rules": len(self.engine.instances),
                "engine_errors": self.engine_errors,
                "actions_run": self.actions_run,
                "events_lost_disk_full": self.lost_disk_full,
            }
        }

    # --- commands from the center -------------------------------------------------------

    COMMANDS = ("alarm.ack", "alarm.reset", "alarm.shelve", "alarm.unshelve")
    """The commands from the center that ``command`` carries out."""

    async def command(self, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        alarm = str(args.get("alarm", ""))
        by = _bounded_text(args.get("by", "center"), "by", OPERATOR_MAX)
        if name == "alarm.ack":
            events = self.engine.acknowledge(alarm, by)
        elif name == "alarm.reset":
            events = self.engine.reset(alarm, by)
        elif name == "alarm.shelve":
            for_s = args.get("for_s", 3600)
            # a number above 0: a shelving that ends before it begins would answer
            # 'shelved' for an alarm that is not (and "2h" or true are not seconds)
            if type(for_s) not in (int, float) or not math.isfinite(for_s) or for_s <= 0:
                raise ValueError(f"for_s must be a number of seconds above 0, not {for_s!r}")
            reason = _bounded_text(args.get("reason", ""), "reason", COMMAND_REASON_MAX)
            events = self.engine.shelve(alarm, float(for_s), reason, by)
        elif name == "alarm.unshelve":
            events = self.engine.unshelve(alarm, by)
        else:
            raise KeyError(name)
        await self.record(events)
        return self.reply(alarm)

    def reply(self, alarm: str, now: float | None = None) -> dict[str, Any]:
        """The alarm's state after a command, in the contract's words (``AlarmState``).

        A shelved alarm is ``shelved`` (ISA-18.2's state G), whatever its lifecycle: an
        operator who shelved it must not read ``active`` back and think the shelving
        failed. Its lifecycle state is then in ``current`` (as on an ``unshelved`` event)
        and the end of the shelving in ``shelved_until``."""
        p = self.engine.instances[alarm].p
        now = time.time() if now is None else now
        if p.shelved_until is not None and now < p.shelved_until:
            return {
                "alarm": alarm,
                "state": AlarmState.SHELVED.value,
                "current": p.state.value,
                "shelved_until": p.shelved_until,
            }
        return {"alarm": alarm, "state": p.state.value}

    # --- local actions ------------------------------------------------------------------

    def _act(self, event: AlarmEvent) -> None:
        key = event.id
        inst = self.engine.instances.get(key)
        if inst is None or event.retrigger or event.reannounced:
            return
        state = event.state
        actions = inst.rule.rule.actions
        if state is AlarmState.ACTIVE:
            phase, todo = "on_active", actions.on_active
        elif state in (AlarmState.CLEARED, AlarmState.CLEARED_UNACKED):
            phase, todo = "on_cleared", actions.on_cleared
        else:
            return
        if not todo:
            return
        task = asyncio.get_running_loop().create_task(
            self._run_actions(key, phase, todo, actions.min_interval_s, event)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_actions(
        self, key: str, phase: str, todo: list[Action], min_interval: float, event: AlarmEvent
    ) -> None:
        now = time.monotonic()
        last = self._last_action.get((key, phase))
        results: list[ActionResult] = []
        if last is not None and now - last < min_interval:
            skipped = f"skipped: flapping guard ({min_interval:g} s)"
            results = [ActionResult(_target(a), False, skipped) for a in todo]
        else:
            self._last_action[(key, phase)] = now
            for action in todo:
                results.append(await self._write(action))
        self.actions_run += len(results)
        report = ActionReport(phase, tuple(results))
        history = replace(event, ts=time.time(), action=report, retrigger=None)
        await self.record_history(history)

    async def _write(self, action: Action) -> ActionResult:
        target = action.write
        error = await self.write_point(target.device, target.point, target.value)
        if error is not None:
            log.warning(
                "action write %s.%s=%r failed: %s",
                target.device,
                target.point,
                target.value,
                error,
            )
        return ActionResult(_target(action), error is None, error)

    async def write_point(self, device: str, point: str, value: Value) -> str | None:
        """Set one point as every write from the agent does (a rule's action, a ``write``
        command): through the device's driver, which refuses a read-only point and a value
        that does not fit, bounded by ``WRITE_TIMEOUT_S``. ``None``, or why it failed."""
        driver = self._drivers.get(device)
        try:
            if driver is None:
                raise DriverError(f"no device {device}")
            async with asyncio.timeout(WRITE_TIMEOUT_S):  # not wait_for: see Sender.run
                await driver.write(point, value)
        except (DriverError, TimeoutError) as exc:
            return str(exc) or type(exc).__name__
        return None

    async def record_history(self, event: AlarmEvent) -> None:
        await self.record([event], acted=True)  # a result: nothing more to act on


def _target(action: Action) -> ActionWrite:
    w = action.write
    return ActionWrite(w.device, w.point, w.value)


def _bounded_text(value: object, name: str, most: int) -> str:
    """A command's text argument, refused (the reply says why) when it is not text or is
    longer than the contract keeps: it goes into every alarm event the command causes."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, not {type(value).__name__}")
    if len(value) > most:
        raise ValueError(f"{name} is {len(value)} characters; at most {most}")
    return value
