"""The agent's side of the alarm lifecycle: runs the rule engine on the readings and on a
clock, makes every transition durable (alarm lane + alarm state, one transaction), takes
acks and shelving from the center, and performs local actions (sound a siren, start a
pump) with a guard against flapping, recording each result in the alarm's history.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from drivers.base import Driver, DriverError, Reading
from edge_agent.config.models import Alarms
from edge_agent.outbox import Lane, Outbox
from edge_agent.rules.compile import CompiledRule
from edge_agent.rules.engine import ACTIVE, CLEARED, CLEARED_UNACKED, Event, RuleEngine
from edge_agent.rules.model import Action
from edge_agent.sender import RunInDb, Sender

log = logging.getLogger(__name__)
TICK_S = 0.1

Rows = tuple[list[tuple[float, str]], list[tuple[str, str]]]


def encode_event(event: Event) -> tuple[float, str]:
    return float(event["ts"]), json.dumps(
        event, separators=(",", ":"), ensure_ascii=False, default=str
    )


class AlarmService:
    def __init__(
        self,
        engine: RuleEngine,
        outbox: Outbox,
        in_db: RunInDb,
        sender: Sender,
        drivers: Mapping[str, Driver],
    ) -> None:
        self.engine = engine
        self._outbox = outbox
        self._in_db = in_db
        self._sender = sender
        self._drivers = drivers
        self._last_action: dict[tuple[str, str], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.actions_run = 0
        self.engine_errors = 0

    @staticmethod
    async def restore(
        rules: list[CompiledRule], outbox: Outbox, in_db: RunInDb, settings: Alarms
    ) -> RuleEngine:
        saved = await in_db(outbox.alarm_states)
        engine = RuleEngine(rules, restored=saved, **settings.engine_options())
        active = [k for k, s in saved.items() if s.get("state") not in (None, "normal")]
        if active:
            log.info("restored %d alarm(s) not normal: %s", len(active), ", ".join(active))
        return engine

    # --- called by the committer with each poll's readings -----------------------------

    def observe(self, readings: list[Reading]) -> tuple[list[Event], Rows]:
        try:
            events = self.engine.observe(readings)
        except Exception:  # a rule bug must never cost the readings themselves
            self._engine_failed("evaluating readings")
            events = []
        return events, self.rows(events)

    def _engine_failed(self, doing: str) -> None:
        self.engine_errors += 1
        if self.engine_errors == 1:
            log.exception("rule engine failed while %s; counting further failures", doing)

    def rows(self, events: list[Event]) -> Rows:
        states = [(k, json.dumps(s)) for k, s in self.engine.take_dirty()]
        return [encode_event(e) for e in events], states

    def committed(self, events: list[Event], last_alarm_seq: int) -> None:
        """Events are durable: let the sender go, and act on them."""
        if last_alarm_seq:
            self._sender.appended(Lane.ALARMS, last_alarm_seq)
        for event in events:
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

    async def record(self, events: list[Event]) -> None:
        alarm_rows, states = self.rows(events)
        if not alarm_rows and not states:
            return
        last = await self._in_db(lambda: self._outbox.record_alarms(alarm_rows, states))
        self.committed(events, last if alarm_rows else 0)

    # --- commands from the center -------------------------------------------------------

    async def command(self, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        alarm = str(args.get("alarm", ""))
        by = str(args.get("by", "center"))
        if name == "alarm.ack":
            events = self.engine.acknowledge(alarm, by)
        elif name == "alarm.reset":
            events = self.engine.reset(alarm, by)
        elif name == "alarm.shelve":
            for_s = float(args.get("for_s", 3600))
            events = self.engine.shelve(alarm, for_s, str(args.get("reason", "")), by)
        elif name == "alarm.unshelve":
            events = self.engine.unshelve(alarm, by)
        else:
            raise KeyError(name)
        await self.record(events)
        return {"alarm": alarm, "state": self.engine.instances[alarm].p.state}

    # --- local actions ------------------------------------------------------------------

    def _act(self, event: Event) -> None:
        key = str(event.get("id"))
        inst = self.engine.instances.get(key)
        if inst is None or event.get("retrigger") or event.get("reannounced"):
            return
        state = event.get("state")
        actions = inst.rule.rule.actions
        if state == ACTIVE:
            phase, todo = "on_active", actions.on_active
        elif state in (CLEARED, CLEARED_UNACKED):
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
        self, key: str, phase: str, todo: list[Action], min_interval: float, event: Event
    ) -> None:
        now = time.monotonic()
        last = self._last_action.get((key, phase))
        results: list[dict[str, Any]] = []
        if last is not None and now - last < min_interval:
            results = [
                {
                    "write": a.write.model_dump(),
                    "ok": False,
                    "error": f"skipped: flapping guard ({min_interval:g} s)",
                }
                for a in todo
            ]
        else:
            self._last_action[(key, phase)] = now
            for action in todo:
                results.append(await self._write(action))
        self.actions_run += len(results)
        history = {**event, "ts": time.time(), "action": {"phase": phase, "results": results}}
        history.pop("retrigger", None)
        await self.record_history(history)

    async def _write(self, action: Action) -> dict[str, Any]:
        target = action.write
        result: dict[str, Any] = {"write": target.model_dump(), "ok": True, "error": None}
        driver = self._drivers.get(target.device)
        try:
            if driver is None:
                raise DriverError(f"no device {target.device}")
            await asyncio.wait_for(driver.write(target.point, target.value), timeout=10)
        except (DriverError, TimeoutError) as exc:
            result.update(ok=False, error=str(exc) or type(exc).__name__)
            log.warning(
                "action write %s.%s=%r failed: %s",
                target.device,
                target.point,
                target.value,
                result["error"],
            )
        return result

    async def record_history(self, event: Event) -> None:
        row = encode_event(event)
        last = await self._in_db(lambda: self._outbox.record_alarms([row], []))
        self._sender.appended(Lane.ALARMS, last)
