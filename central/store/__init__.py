"""The central store: one interface (``central.store.api``), two backends. ``open_store``
picks the backend from the address: ``postgresql://…`` (or ``postgres://…``) is a
PostgreSQL server (``central.store.postgres``, psycopg 3); anything else is the path of an
SQLite file (``central.store.sqlite``), the embedded default."""

from __future__ import annotations

from pathlib import Path

from central.store.api import Retention, Round, RoundCounts, Store
from central.store.errors import (
    MessageRejected,
    NotACentralStore,
    StoreError,
    StoreSchemaError,
    StoreTooNew,
    StoreUnavailable,
)
from central.store.limits import (
    REJECTED_ERROR_MAX,
    REJECTED_HEAD_BYTES,
    REJECTED_KEEP,
    REJECTED_MAX_BYTES,
    REJECTED_WHOLE_BYTES,
)
from central.store.rows import StoredReading

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(address: str | Path) -> bool:
    return isinstance(address, str) and address.startswith(POSTGRES_SCHEMES)


def open_store(address: str | Path) -> Store:
    """The store at ``address`` (made if missing), its schema brought to the latest version.
    ``StoreSchemaError`` if it cannot be used (untouched), ``StoreUnavailable`` if it
    cannot be reached."""
    if is_postgres(address):
        # loaded only for a server: the embedded store never imports psycopg
        from central.store.postgres import PostgresStore  # noqa: PLC0415

        return PostgresStore(str(address))
    from central.store.sqlite import SqliteStore  # noqa: PLC0415

    return SqliteStore(Path(address))


__all__ = [
    "REJECTED_ERROR_MAX",
    "REJECTED_HEAD_BYTES",
    "REJECTED_KEEP",
    "REJECTED_MAX_BYTES",
    "REJECTED_WHOLE_BYTES",
    "MessageRejected",
    "NotACentralStore",
    "Retention",
    "Round",
    "RoundCounts",
    "Store",
    "StoreError",
    "StoreSchemaError",
    "StoreTooNew",
    "StoreUnavailable",
    "StoredReading",
    "is_postgres",
    "open_store",
]
