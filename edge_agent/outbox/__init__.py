"""The durable outbox: every reading and alarm event is committed here before it is sent.

One SQLite file, split by what it keeps:

- ``path.py``: whether ``outbox.path`` is an outbox this agent made (or may make),
  asked by ``check``, ``run`` and at open; never writes;
- ``store.py``: the file (schema, opening, corruption, transactions, the disk-full
  ballast);
- ``lanes.py``: the two lanes of rows, ``telemetry`` and ``alarms``, and the bounds
  (size, age) by which the oldest telemetry is dropped, never alarms;
- ``alarms.py``: alarm events with the rule states they leave, in one transaction;
- ``rule_state.py``: the rule engine's saved state; ``commands.py``: the command ids
  seen (replay guard); ``notices.py``: the events in which the outbox reports a loss;
- ``sync.py``: ``Outbox``, all of it as one synchronous object, for one thread;
- ``facade.py``: ``AgentOutbox``, the agent's async facade that owns that thread;
- ``interfaces.py``: the narrow interface each part of the agent sees
  (``TelemetryLog``, ``AlarmJournal``, ``CommandLedger``, ``RuleState``,
  ``OutboxGauge``), and ``memory.py`` an in-memory implementation of each.
"""

from edge_agent.outbox.facade import AgentOutbox, DbThread
from edge_agent.outbox.interfaces import (
    AlarmJournal,
    AppendListener,
    CommandLedger,
    OutboxGauge,
    RuleState,
    SentLane,
    TelemetryLog,
)
from edge_agent.outbox.lanes import Lane, OutboxStats
from edge_agent.outbox.path import OutboxPathError, outbox_path_problem
from edge_agent.outbox.store import OutboxFull, OutboxUnavailable, quick_check
from edge_agent.outbox.sync import Outbox

__all__ = [
    "AgentOutbox",
    "AlarmJournal",
    "AppendListener",
    "CommandLedger",
    "DbThread",
    "Lane",
    "Outbox",
    "OutboxFull",
    "OutboxGauge",
    "OutboxPathError",
    "OutboxStats",
    "OutboxUnavailable",
    "RuleState",
    "SentLane",
    "TelemetryLog",
    "outbox_path_problem",
    "quick_check",
]
