"""The alarm journal's rows: alarm events, and the alarm states they leave behind.

Events and states are written in one transaction, so a restart resumes exactly where the
published history stops (the states are the rule engine's, kept by ``rule_state.py``'s
table; they are written only here, with their events).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from edge_agent.contract import PayloadError
from edge_agent.contract.alarms import (
    AlarmEvent,
    AlarmState,
    Severity,
    decode_alarm_body,
    encode_alarm_body,
)
from edge_agent.outbox.lanes import ALARM_ROOM_ROUNDS, Lane, Lanes

log = logging.getLogger(__name__)


class AlarmRows:
    def __init__(self, lanes: Lanes) -> None:
        self._lanes = lanes
        self._db = lanes.file

    def record(self, events: Sequence[AlarmEvent], states: Sequence[tuple[str, str]]) -> int:
        """Commit the events and the ``(key, json)`` states in one transaction; return the
        alarm lane's last seq.

        On a full disk, room is made as for an append to the alarm lane: the ballast,
        then the oldest telemetry in growing rounds; ``OutboxFull`` (nothing written) only
        when even that was not enough."""
        lanes, file = self._lanes, self._db
        rows = [(e.ts, encode_alarm_body(e)) for e in events]

        def write() -> int:
            with file.tx():
                if rows:
                    file.db.executemany("INSERT INTO alarms(ts, body) VALUES (?, ?)", rows)
                if states:
                    file.db.executemany(
                        "INSERT OR REPLACE INTO alarm_state(key, body) VALUES (?, ?)", states
                    )
            return lanes.last_seq(Lane.ALARMS)

        if not events and not states:
            return lanes.last_seq(Lane.ALARMS)
        return lanes.make_room(write, 64 + 4 * len(events), ALARM_ROOM_ROUNDS)

    def fetch(self, start: int, limit: int) -> list[tuple[int, AlarmEvent]]:
        """Events from seq ``start`` on, in order. A row that is not an event (only a
        file changed by hand holds one) comes as an ``outbox.unreadable`` event in its
        place, so that the center hears of it and the lane goes on."""
        rows = self._lanes.fetch(Lane.ALARMS, start, None, limit)
        return [(seq, _event(seq, body)) for seq, body in rows]


def _event(seq: int, body: str) -> AlarmEvent:
    try:
        return decode_alarm_body(body)
    except PayloadError as exc:
        log.error("outbox: alarm-lane row %d is not an alarm event: %s", seq, exc)
        return AlarmEvent(
            id="outbox.unreadable",
            rule="outbox.unreadable",
            dev="agent",
            severity=Severity.WARNING,
            state=AlarmState.ACTIVE,
            value=seq,
            ts=time.time(),
            msg=f"alarm-lane row {seq} of the outbox could not be read ({exc}): not delivered",
        )
