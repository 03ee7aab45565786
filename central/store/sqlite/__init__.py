"""The embedded backend: one SQLite file (``store``: opening, rounds, retention;
``writes``: a round's unit of work; ``queries``: what it answers; ``cells``: how values
are kept)."""

from __future__ import annotations

from central.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
