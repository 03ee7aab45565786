"""The center's feed: what each ingest round committed, for whoever listens.

After every round that committed something, the ingest worker that stored it publishes
one small JSON event on ``<root>/center/feed`` (QoS 0, not retained). Several workers,
in several processes or on several machines, all write into one store (PostgreSQL);
each knows only its own rounds, and a process that wants to hear of commits (``fleet
watch``, a dashboard) cannot poll every store it might be. The feed is how it hears,
the same on both backends and however many workers there are::

    {"worker": 1, "client": "edgefleet-central-w1", "ts": 1718083301.2,
     "readings": 480, "duplicates": 0,
     "alarms": [{"gateway": "jingan-0001", "alarm_id": "det-3/smoke.alarm",
                 "severity": "critical", "state": "active"}],
     "gateways": [{"gateway": "jingan-0001", "online": false}],
     "part": 1, "parts": 1}

- ``worker``, ``client``: which worker committed the round, and its MQTT client id (the
  number alone does not tell the machines of one share group apart);
- ``readings``, ``duplicates``: readings the round stored, and those it had already;
- ``alarms``: the alarm events the round stored (not those it had already), each with the
  state it moved its alarm to, in the order they came;
- ``gateways``: the state messages it stored (a gateway's retained state or its Last
  Will), with ``online`` as the gateway said;
- bounded: at most ``FEED_ITEMS_MAX`` alarms and as many gateways in one event. A round
  with more goes out as several events, ``part`` 1 to ``parts``, which together list
  them all; ``readings`` and ``duplicates`` are counted in part 1 only (0 in the
  others), so summing events never counts a round twice. One event stays under about
  50 KB.

QoS 0 and not retained, because it is a notice, not a record: the store is the record.
A listener that was away, or a notice the broker dropped, loses nothing but the notice;
read the store for what is there. Nothing here acks anything to a gateway.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

FEED_ITEMS_MAX = 100
"""Alarms (and, apart, gateways) listed in one feed event."""
TEXT_MAX = 200
"""An alarm id or a client id longer than this is cut to it in the feed."""


@dataclass(frozen=True, slots=True)
class AlarmCommitted:
    """An alarm event the round stored: the alarm, and the state it moved to."""

    gateway: str
    alarm_id: str
    severity: str
    state: str

    def to_json(self) -> dict[str, Any]:
        return {
            "gateway": self.gateway,
            "alarm_id": self.alarm_id[:TEXT_MAX],
            "severity": self.severity,
            "state": self.state,
        }


@dataclass(frozen=True, slots=True)
class GatewayCommitted:
    """A state message the round stored: whether the gateway says it is online."""

    gateway: str
    online: bool | None

    def to_json(self) -> dict[str, Any]:
        return {"gateway": self.gateway, "online": self.online}


@dataclass(slots=True)
class Committed:
    """What one round committed, as the feed tells it."""

    readings: int = 0
    duplicates: int = 0
    alarms: list[AlarmCommitted] = field(default_factory=list)
    gateways: list[GatewayCommitted] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.readings or self.duplicates or self.alarms or self.gateways)


def feed_events(
    worker: int, client: str, committed: Committed, ts: float | None = None
) -> list[bytes]:
    """The feed events of one committed round (none if it committed nothing): one, or
    several parts when it lists more than ``FEED_ITEMS_MAX`` alarms or gateways."""
    if committed.empty:
        return []
    ts = time.time() if ts is None else ts
    n = FEED_ITEMS_MAX
    parts = max(1, -(-len(committed.alarms) // n), -(-len(committed.gateways) // n))
    out = []
    for i in range(parts):
        first = i == 0
        event = {
            "worker": worker,
            "client": client[:TEXT_MAX],
            "ts": round(ts, 3),
            "readings": committed.readings if first else 0,
            "duplicates": committed.duplicates if first else 0,
            "alarms": [a.to_json() for a in committed.alarms[i * n : (i + 1) * n]],
            "gateways": [g.to_json() for g in committed.gateways[i * n : (i + 1) * n]],
            "part": i + 1,
            "parts": parts,
        }
        out.append(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())
    return out
