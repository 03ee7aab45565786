"""The rule engine and the alarm lifecycle (ISA-18.2 / IEC 62682), run at the edge.

One alarm instance per (device, rule), identified as ``device/rule``. Its states::

    cleared ──(condition held on_delay_s)──▶ active ──(ack)──▶ acknowledged
      ▲                                       │                   │
      │                           (clear held off_delay_s)   (clear held off_delay_s)
      │                                       ▼                   │
      └──────────(ack)────────── cleared_unacked                  │
      └───────────────────────────────────────────────────────────┘

``cleared`` is also the state of an alarm never raised. A latched rule stays active (or
acknowledged) after its condition clears, until a reset from the center. A condition that
returns while ``cleared_unacked`` re-triggers the same occurrence (counted, not raised
anew). Shelving hides annunciation for a while. A point whose reading is not good freezes
the rules that read it: an offline level sensor must not clear a flood alarm.

Alarm-load handling follows EEMUA / ISA-18.2 (docs/rules.md, "Alarm load"): an alarm
that activates ``chatter_count`` times within ``chatter_window_s`` is chattering; a
warning diagnostic ``<id>.chattering`` is raised once and the alarm is held active (no
further transitions) until its clear condition has held for the whole window. An
unacknowledged critical alarm is announced again every ``reannunciate_critical_s`` (the
event carries ``reannounced``: how many times), so a fire nobody has acknowledged is not
forgotten on a busy console.

Every transition is an ``AlarmEvent`` (the wire contract's type, kept as it is in the
outbox's alarm lane) with the edge timestamp, the triggering values and the message;
``dirty`` names the instances whose state must be persisted with it, so state survives a
restart.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from drivers.base import Quality, Reading, Value
from edge_agent.contract.alarms import AlarmEvent, AlarmState, Severity
from edge_agent.rules.compile import CompiledRule
from edge_agent.rules.expr import render
from edge_agent.rules.model import DIAGNOSTIC_SUFFIX

TEMPLATE = "{id}"
_UNSEEN = object()
_NOTHING: frozenset[str] = frozenset()

ACTIVE = AlarmState.ACTIVE
ACKNOWLEDGED = AlarmState.ACKNOWLEDGED
CLEARED_UNACKED = AlarmState.CLEARED_UNACKED
CLEARED = AlarmState.CLEARED


@dataclass
class Persisted:
    """What survives a restart: the lifecycle, and the timers that were running."""

    state: AlarmState = CLEARED
    occurrence: int = 0
    since: float | None = None
    acked_by: str | None = None
    shelved_until: float | None = None
    shelve_reason: str | None = None
    retriggers: int = 0
    pending_since: float | None = None
    clearing_since: float | None = None
    annunciated: bool = True
    chattering: bool = False  # held active until quiet for the chatter window
    chatter_announced: bool = False  # ... and its diagnostic went out (so must its clear)
    announced: float | None = None  # the last (re-)annunciation of an unacked critical alarm
    reannounced: int = 0


@dataclass
class Instance:
    rule: CompiledRule
    p: Persisted = field(default_factory=Persisted)
    cond: bool = False  # the last evaluation of the alarm condition
    clear: bool = False  # ... and of the clear condition
    last_good: float = field(default_factory=time.time)
    last_change: float = field(default_factory=time.time)
    last_value: Value = None
    prev: tuple[float, float] | None = None  # (ts, value) for rate of change
    offline: bool = False
    evaluated: bool = False  # the condition was looked at once at least
    decided: bool = False  # ... and its inputs were good: cond and clear hold
    activations: deque[float] = field(default_factory=deque)  # within the chatter window

    @property
    def key(self) -> str:
        return self.rule.key


class CommandRefused(Exception):
    """An ack, shelve or reset that does not apply; the message says why."""


class RuleEngine:
    def __init__(
        self,
        rules: Iterable[CompiledRule],
        restored: Mapping[str, Mapping[str, Any]] | None = None,
        max_new_per_min: int = 30,
        now: float | None = None,
        *,
        chatter_count: int = 3,
        chatter_window_s: float = 60.0,
        reannunciate_critical_s: float = 300.0,
    ) -> None:
        start = time.time() if now is None else now
        self.instances: dict[str, Instance] = {}
        self._by_device: dict[str, list[Instance]] = {}
        self._restored = restored or {}
        # A device entry like "{id}" or "smoke-{id}" (one per sensor heard on a topic) has
        # its rules instantiated for each device as it first reports.
        self._templates: list[tuple[re.Pattern[str], list[CompiledRule]]] = []
        self._untemplated: set[str] = set()
        templates: dict[str, list[CompiledRule]] = {}
        for rule in rules:
            if TEMPLATE in rule.device:
                templates.setdefault(rule.device, []).append(rule)
            else:
                self._add(rule, start)
        for device, group in templates.items():
            pattern = re.escape(device).replace(re.escape(TEMPLATE), "(.+)")
            self._templates.append((re.compile(pattern), group))
        self._values: dict[str, dict[str, Value]] = {}
        self._quality: dict[str, dict[str, Quality]] = {}
        self.dirty: set[str] = set()
        self.max_new_per_min = max_new_per_min
        self.chatter_count = chatter_count
        self.chatter_window_s = chatter_window_s
        self.reannunciate_critical_s = reannunciate_critical_s
        self._activations: deque[float] = deque()
        self._flood_suppressed: dict[str, int] = {}
        self._flood_since: float | None = None
        self.evaluations = 0
        self.expressions_evaluated = 0

    def _add(self, rule: CompiledRule, start: float) -> Instance:
        inst = Instance(rule, last_good=start, last_change=start)
        saved = self._restored.get(rule.key)
        if saved:
            known = {k: v for k, v in saved.items() if k in Persisted.__dataclass_fields__}
            if "state" in known:
                known["state"] = AlarmState.restored(known["state"])
            inst.p = Persisted(**known)
        self.instances[rule.key] = inst
        self._by_device.setdefault(rule.device, []).append(inst)
        return inst

    def _instances_of(self, device: str, ts: float) -> list[Instance]:
        found = self._by_device.get(device)
        if found is not None or device in self._untemplated:
            return found or []
        for pattern, group in self._templates:
            if pattern.fullmatch(device):
                return [self._add(replace(rule, device=device), ts) for rule in group]
        self._untemplated.add(device)
        return []

    # --- input --------------------------------------------------------------------------

    def observe(self, readings: Iterable[Reading]) -> list[AlarmEvent]:
        """Feed a poll's readings; return the transitions they cause."""
        touched: dict[str, float] = {}
        changed: dict[str, set[str]] = {}
        for r in readings:
            values = self._values.setdefault(r.device, {})
            quality = self._quality.setdefault(r.device, {})
            if quality.get(r.point) is not r.quality or (
                r.quality is Quality.GOOD and values.get(r.point, _UNSEEN) != r.value
            ):
                changed.setdefault(r.device, set()).add(r.point)
            if r.quality is Quality.GOOD:
                values[r.point] = r.value
            quality[r.point] = r.quality
            touched[r.device] = max(touched.get(r.device, 0.0), r.ts)
            for inst in self._instances_of(r.device, r.ts):
                self._note(inst, r)
        events: list[AlarmEvent] = []
        for device, ts in touched.items():
            moved = changed.get(device, _NOTHING)
            for inst in self._by_device.get(device, ()):
                events += self._evaluate(inst, ts, moved)
        return events

    def _note(self, inst: Instance, r: Reading) -> None:
        rule = inst.rule
        watched = rule.points if rule.rule.point is None else {rule.rule.point}
        if r.point not in watched:
            return
        if r.quality is Quality.GOOD:
            inst.last_good = r.ts
            inst.offline = False
            if rule.rule.point == r.point:
                if r.value != inst.last_value:
                    inst.last_change = r.ts
                if isinstance(r.value, int | float) and not isinstance(r.value, bool):
                    if inst.prev is not None and r.ts > inst.prev[0]:
                        rate = abs(r.value - inst.prev[1]) / (r.ts - inst.prev[0])
                        limit = rule.rule.rate.limit_per_s if rule.rule.rate else 0.0
                        inst.cond, inst.clear = rate > limit, rate <= limit
                    inst.prev = (r.ts, float(r.value))
                inst.last_value = r.value
        elif rule.kind == "offline":
            inst.offline = True

    # --- evaluation ---------------------------------------------------------------------

    def _evaluate(
        self, inst: Instance, ts: float, moved: AbstractSet[str] | None = None
    ) -> list[AlarmEvent]:
        """Decide the rule's condition at ``ts``; ``moved`` names the points whose value or
        quality changed since the last reading (None: decide anyway)."""
        rule = inst.rule
        self.evaluations += 1
        kind = rule.kind
        if kind == "condition":
            if inst.evaluated and moved is not None and rule.points.isdisjoint(moved):
                return self._step(inst, ts) if inst.decided else []  # same inputs, same answer
            inst.evaluated = True
            quality = self._quality.get(rule.device, {})
            if any(quality.get(p) is not Quality.GOOD for p in rule.points):
                inst.decided = False
                self._stop_timers(inst)
                return []  # frozen: never decide on bad data
            values = self._values.get(rule.device, {})
            assert rule.when is not None
            inst.decided = True
            self.expressions_evaluated += 1
            inst.cond = rule.when.evaluate(values)
            inst.clear = rule.clear.evaluate(values) if rule.clear else not inst.cond
        elif kind == "offline":
            inst.cond, inst.clear = inst.offline, not inst.offline
        elif kind == "stale":
            fresh = ts - inst.last_good < (rule.rule.stale_s or 0)
            inst.cond, inst.clear = not fresh, fresh
        elif kind == "stuck":
            moving = ts - inst.last_change < (rule.rule.stuck_s or 0)
            inst.cond, inst.clear = not moving, moving
        return self._step(inst, ts)

    def _stop_timers(self, inst: Instance) -> None:
        """Bad data neither raises nor clears: the on- and off-delays start again on good."""
        p = inst.p
        if p.pending_since is not None or p.clearing_since is not None:
            p.pending_since = p.clearing_since = None
            self.dirty.add(inst.key)

    def tick(self, now: float | None = None) -> list[AlarmEvent]:
        """Advance timers (on/off delays, staleness, stuck values, shelving) to ``now``."""
        now = time.time() if now is None else now
        events: list[AlarmEvent] = []
        for inst in self.instances.values():
            p = inst.p
            if p.shelved_until is not None and now >= p.shelved_until:
                events += self._unshelve(inst, now, "shelving expired")
            if inst.rule.kind in ("stale", "stuck"):
                events += self._evaluate(inst, now)
            elif (p.pending_since is not None or p.clearing_since is not None) and (
                inst.decided or inst.rule.kind != "condition"
            ):
                events += self._step(inst, now)
            if p.state == ACTIVE and inst.rule.rule.severity == "critical":
                events += self._reannunciate(inst, now)
        events += self._flood_summary(now)
        return events

    def _reannunciate(self, inst: Instance, now: float) -> list[AlarmEvent]:
        p, every = inst.p, self.reannunciate_critical_s
        last = p.announced if p.announced is not None else p.since
        if every <= 0 or last is None or now - last < every:
            return []
        p.announced = now
        self.dirty.add(inst.key)
        if not p.annunciated or self._shelved(p, now):
            return []  # a shelved alarm is not reminded of either; nor counted
        p.reannounced += 1
        return self._event(inst, now, ACTIVE, reannounced=p.reannounced)

    @staticmethod
    def _shelved(p: Persisted, ts: float) -> bool:
        return p.shelved_until is not None and ts < p.shelved_until

    def _step(self, inst: Instance, ts: float) -> list[AlarmEvent]:
        p, rule = inst.p, inst.rule.rule
        if p.state in (CLEARED, CLEARED_UNACKED):
            if inst.cond:
                p.clearing_since = None
                if p.pending_since is None:
                    p.pending_since = ts
                    self.dirty.add(inst.key)
                if ts - p.pending_since >= rule.on_delay_s:
                    return self._activate(inst, ts)
            elif p.pending_since is not None:
                p.pending_since = None
                self.dirty.add(inst.key)
            return []
        # active or acknowledged
        if rule.latch:
            return []  # held until a reset from the center
        if inst.clear:
            if p.clearing_since is None:
                p.clearing_since = ts
                self.dirty.add(inst.key)
            hold = max(rule.off_delay_s, self.chatter_window_s if p.chattering else 0)
            if ts - p.clearing_since >= hold:
                return self._clear(inst, ts)
        elif p.clearing_since is not None:
            p.clearing_since = None
            self.dirty.add(inst.key)
        return []

    # --- transitions --------------------------------------------------------------------

    def _activate(self, inst: Instance, ts: float) -> list[AlarmEvent]:
        p = inst.p
        p.pending_since = None
        self.dirty.add(inst.key)
        p.announced, p.reannounced = ts, 0
        chatter = self._chatter(inst, ts)
        if p.state == CLEARED_UNACKED:  # the same occurrence comes back: count, don't re-raise
            p.state = ACTIVE
            p.retriggers += 1
            return self._event(inst, ts, ACTIVE, retrigger=True) + chatter
        p.state, p.occurrence, p.since = ACTIVE, p.occurrence + 1, ts
        p.acked_by, p.retriggers, p.clearing_since = None, 0, None
        p.annunciated = self._admit(inst, ts)
        return self._event(inst, ts, ACTIVE) + chatter

    def _clear(self, inst: Instance, ts: float) -> list[AlarmEvent]:
        p = inst.p
        p.clearing_since = None
        self.dirty.add(inst.key)
        quiet = self._chatter_over(inst, ts) if p.chattering else []
        if p.state == ACKNOWLEDGED:
            p.state = CLEARED
            return self._event(inst, ts, CLEARED) + quiet
        p.state = CLEARED_UNACKED
        return self._event(inst, ts, CLEARED_UNACKED) + quiet

    def _chatter(self, inst: Instance, ts: float) -> list[AlarmEvent]:
        """Count an activation; the one that makes the alarm chatter raises the diagnostic
        (unless the alarm itself is shelved or summarised by flood control)."""
        p, window = inst.p, inst.activations
        window.append(ts)
        while window and ts - window[0] > self.chatter_window_s:
            window.popleft()
        if p.chattering or self.chatter_count <= 0 or len(window) < self.chatter_count:
            return []
        p.chattering = True
        p.chatter_announced = p.annunciated and not self._shelved(p, ts)
        if not p.chatter_announced:
            return []
        rule = inst.rule
        return [
            self._diagnostic(
                inst,
                ts,
                ACTIVE,
                value=len(window),
                msg=f"{rule.rule.id} on {rule.device} is chattering: {len(window)} activations "
                f"in {self.chatter_window_s:g} s; held active until quiet for "
                f"{self.chatter_window_s:g} s",
            )
        ]

    def _chatter_over(self, inst: Instance, ts: float) -> list[AlarmEvent]:
        p = inst.p
        announced, p.chattering, p.chatter_announced = p.chatter_announced, False, False
        inst.activations.clear()
        if not announced:
            return []
        rule = inst.rule
        msg = f"{rule.rule.id} on {rule.device} no longer chattering"
        return [self._diagnostic(inst, ts, CLEARED, value=0, msg=msg)]

    @staticmethod
    def _diagnostic(
        inst: Instance, ts: float, state: AlarmState, *, value: int, msg: str
    ) -> AlarmEvent:
        rule = inst.rule
        return AlarmEvent(
            id=rule.key + DIAGNOSTIC_SUFFIX,
            rule=rule.rule.id + DIAGNOSTIC_SUFFIX,
            dev=rule.device,
            severity=Severity.WARNING,
            state=state,
            value=value,
            ts=ts,
            msg=msg,
            diagnostic="chattering",
            of=rule.key,
        )

    def _admit(self, inst: Instance, ts: float) -> bool:
        """Flood control: past ``max_new_per_min`` activations in a minute, only critical
        alarms are annunciated one by one; the rest are summarised once a minute."""
        window = self._activations
        while window and ts - window[0] > 60:
            window.popleft()
        window.append(ts)
        if len(window) <= self.max_new_per_min or inst.rule.rule.severity == "critical":
            return True
        self._flood_suppressed[inst.rule.rule.id] = (
            self._flood_suppressed.get(inst.rule.rule.id, 0) + 1
        )
        if self._flood_since is None:
            self._flood_since = ts
        return False

    def _flood_summary(self, now: float) -> list[AlarmEvent]:
        if self._flood_since is None or now - self._flood_since < 60:
            return []
        counts, self._flood_suppressed, self._flood_since = self._flood_suppressed, {}, None
        total = sum(counts.values())
        return [
            AlarmEvent(
                id="agent/alarm.flood",
                rule="alarm.flood",
                dev="agent",
                severity=Severity.WARNING,
                state=ACTIVE,
                value=total,
                ts=now,
                msg=f"alarm flood: {total} alarms summarised in the last minute",
                suppressed=counts,
            )
        ]

    def _event(self, inst: Instance, ts: float, state: AlarmState, **kind: Any) -> list[AlarmEvent]:
        """The event of a rule's alarm; ``kind``: the fields that say what kind of
        transition it is (``retrigger``, ``reannounced``, ``shelved_until`` …)."""
        p, rule = inst.p, inst.rule
        if not p.annunciated or self._shelved(p, ts):
            return []
        values = self._values.get(rule.device, {})
        shown = {name: values.get(name) for name in sorted(rule.points)}
        value = values.get(rule.primary) if rule.primary else inst.last_value
        context = {
            **values,
            "device": rule.device,
            "rule": rule.rule.id,
            "severity": rule.rule.severity,
            "value": value,
            "state": state,
        }
        template = rule.rule.message or f"{rule.rule.id} {{state}} on {{device}}"
        event = AlarmEvent(
            id=rule.key,
            rule=rule.rule.id,
            dev=rule.device,
            severity=Severity(rule.rule.severity),
            state=state,
            value=value,
            ts=ts,
            msg=render(template, context),
            occurrence=p.occurrence,
            since=p.since,
            values=shown,
            latched=rule.rule.latch,
            retriggers=p.retriggers,
            acked_by=p.acked_by or None,
            **kind,
        )
        return [event]

    # --- commands from the center -------------------------------------------------------

    def acknowledge(self, key: str, by: str, now: float | None = None) -> list[AlarmEvent]:
        inst = self._instance(key)
        now = time.time() if now is None else now
        p = inst.p
        if p.state == ACTIVE:
            p.state, p.acked_by = ACKNOWLEDGED, by
        elif p.state == CLEARED_UNACKED:
            p.state, p.acked_by = CLEARED, by
            self.dirty.add(key)
            return self._event(inst, now, CLEARED, acknowledged=True)
        else:
            raise CommandRefused(f"alarm {key} is {p.state}: nothing to acknowledge")
        self.dirty.add(key)
        return self._event(inst, now, ACKNOWLEDGED)

    def reset(self, key: str, by: str, now: float | None = None) -> list[AlarmEvent]:
        """Release a latched alarm whose condition has gone."""
        inst = self._instance(key)
        now = time.time() if now is None else now
        if not inst.rule.rule.latch:
            raise CommandRefused(f"alarm {key} is not latched: it clears by itself")
        if inst.p.state not in (ACTIVE, ACKNOWLEDGED):
            raise CommandRefused(f"alarm {key} is {inst.p.state}: nothing to reset")
        if inst.cond:
            raise CommandRefused(f"alarm {key}: the condition still holds, cannot reset")
        inst.p.acked_by = inst.p.acked_by or (by if inst.p.state == ACKNOWLEDGED else None)
        return self._clear(inst, now)

    def shelve(
        self, key: str, for_s: float, reason: str, by: str, now: float | None = None
    ) -> list[AlarmEvent]:
        inst = self._instance(key)
        now = time.time() if now is None else now
        events = self._event(
            inst,
            now,
            AlarmState.SHELVED,
            shelved_until=now + for_s,
            reason=reason,
            shelved_by=by,
        )
        inst.p.shelved_until, inst.p.shelve_reason = now + for_s, reason
        self.dirty.add(key)
        return events

    def unshelve(self, key: str, by: str, now: float | None = None) -> list[AlarmEvent]:
        inst = self._instance(key)
        if inst.p.shelved_until is None:
            raise CommandRefused(f"alarm {key} is not shelved")
        return self._unshelve(inst, time.time() if now is None else now, f"unshelved by {by}")

    def _unshelve(self, inst: Instance, now: float, why: str) -> list[AlarmEvent]:
        inst.p.shelved_until, inst.p.shelve_reason = None, None
        self.dirty.add(inst.key)
        return self._event(inst, now, AlarmState.UNSHELVED, reason=why, current=inst.p.state)

    def _instance(self, key: str) -> Instance:
        try:
            return self.instances[key]
        except KeyError:
            alarm = key.removesuffix(DIAGNOSTIC_SUFFIX)
            if alarm != key and alarm in self.instances:
                raise CommandRefused(
                    f"{key} is the gateway's diagnostic about alarm {alarm}: it clears by "
                    f"itself once {alarm} is quiet; act on {alarm} instead"
                ) from None
            raise CommandRefused(f"no alarm {key} on this gateway") from None

    # --- persistence --------------------------------------------------------------------

    def take_dirty(self) -> list[tuple[str, dict[str, Any]]]:
        rows = [(key, asdict(self.instances[key].p)) for key in sorted(self.dirty)]
        self.dirty.clear()
        return rows
