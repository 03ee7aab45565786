"""The rule engine's saved state, per alarm instance (written with its events: alarms.py)."""

from __future__ import annotations

import json

from edge_agent.outbox.store import OutboxFile


class SavedRuleState:
    def __init__(self, file: OutboxFile) -> None:
        self._file = file

    def load(self) -> dict[str, dict[str, object]]:
        rows = self._file.db.execute("SELECT key, body FROM alarm_state").fetchall()
        return {str(k): json.loads(b) for k, b in rows}
