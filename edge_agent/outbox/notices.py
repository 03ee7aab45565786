"""The alarm-lane events in which the outbox tells the center what it lost."""

from __future__ import annotations

import time
from pathlib import Path

from edge_agent.contract.alarms import (
    AlarmEvent,
    AlarmState,
    CorruptOutbox,
    DroppedRows,
    Severity,
)


def dropped_notice(d: DroppedRows) -> AlarmEvent:
    """The alarm-lane event that tells the center which readings were lost, and when."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.ts_first or 0))
    return AlarmEvent(
        id="outbox.dropped",
        rule="outbox.dropped",
        dev="agent",
        severity=Severity.WARNING,
        state=AlarmState.ACTIVE,
        value=d.count,
        ts=time.time(),
        msg=(
            f"outbox {d.cause}: dropped {d.count} oldest readings "
            f"(seq {d.first}..{d.last}, taken from {when} UTC)"
        ),
        dropped=d,
    )


def corrupt_notice(why: str, kept: Path, old_stream: str | None, new_stream: str) -> AlarmEvent:
    """The alarm-lane event that tells the center a corrupt outbox was set aside: whatever
    it still held (readings, alarms) will not arrive."""
    return AlarmEvent(
        id="outbox.corrupt",
        rule="outbox.corrupt",
        dev="agent",
        severity=Severity.MAJOR,
        state=AlarmState.ACTIVE,
        value=None,
        ts=time.time(),
        msg=(
            f"outbox file was corrupt ({why}): kept as {kept.name}, what it still held "
            f"(stream {old_stream or 'unknown'}) is not delivered; new stream {new_stream}"
        ),
        corrupt=CorruptOutbox(old_stream=old_stream, kept_as=str(kept), problem=why),
    )
