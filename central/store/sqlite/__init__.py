"""The embedded backend: one SQLite file (see ``legacy`` until the split lands)."""

from __future__ import annotations

from central.store.sqlite.legacy import Store as SqliteStore

__all__ = ["SqliteStore"]
