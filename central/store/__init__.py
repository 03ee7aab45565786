"""The central store: one interface (``central.store.api``), two backends. ``open_store``
picks the backend from the address: ``postgresql://…`` (or ``postgres://…``) is a
PostgreSQL server (``central.store.postgres``, psycopg 3); any other URL is refused
(``address_problem``); anything else is the path of an SQLite file
(``central.store.sqlite``), the embedded default."""

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


def address_problem(address: str | Path) -> str | None:
    """Why ``address`` is no store's address, or None. A URL of another scheme (``mysql://``,
    or PostgreSQL's spelt ``PostgreSQL://``, which libpq does not take) is neither a server
    we reach nor a file to make: taken for a path, it would be made into folders and
    quoted, password and all, in the errors. Said with its password masked."""
    if not isinstance(address, str) or "://" not in address or is_postgres(address):
        return None
    from mqttlink.url import shown_url  # noqa: PLC0415 (only for the message)

    return (
        f"{shown_url(address)!r} is not a store address: give an SQLite file's path, or "
        "postgresql://user@host/db (the scheme in lower case)"
    )


def open_store(address: str | Path) -> Store:
    """The store at ``address`` (made if missing), its schema brought to the latest version.
    ``StoreSchemaError`` if it cannot be used (untouched), ``StoreUnavailable`` if it
    cannot be reached, ``StoreError`` if it is no store's address (``address_problem``)."""
    problem = address_problem(address)
    if problem is not None:
        raise StoreError(problem)
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
    "address_problem",
    "is_postgres",
    "open_store",
]
