"""The command ledger's rows: the ids of commands seen, until they expire (replay guard)."""

from __future__ import annotations

from edge_agent.outbox.store import OutboxFile


class SeenCommands:
    def __init__(self, file: OutboxFile) -> None:
        self._file = file

    def remember(self, cmd_id: str, expires: float, now: float) -> bool:
        """False if ``cmd_id`` was seen before (a replay); forget ids past their expiry."""
        file = self._file
        with file.tx():
            file.db.execute("DELETE FROM seen_commands WHERE expires < ?", (now,))
            cur = file.db.execute(
                "INSERT OR IGNORE INTO seen_commands(id, expires) VALUES (?, ?)", (cmd_id, expires)
            )
        return cur.rowcount == 1
