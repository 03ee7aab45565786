"""The store's own errors. Each backend translates its driver's exceptions into these
inside itself, so that ingest and the CLI never import ``sqlite3`` or ``psycopg`` to tell
what went wrong:

- ``StoreUnavailable``: the store cannot work now (disk full, I/O error, a lock held too
  long, the server down or the connection lost). Nothing of the round is kept; ingest
  acks nothing, waits and tries the round again.
- ``MessageRejected``: this one message holds something the store cannot take. Its writes
  alone are undone (the rest of the round goes on); ingest keeps it as a dead letter.
- ``StoreSchemaError`` (and its kinds, from ``central.migrations``): the store at that
  address is not one this release can use; nothing in it was changed.
"""

from __future__ import annotations

from central.migrations import NotACentralStore, StoreSchemaError, StoreTooNew


class StoreError(Exception):
    """Something went wrong in the store; the message is for the operator."""


class StoreUnavailable(StoreError):
    """The store cannot work now: the round is rolled back, and may be tried again."""


class MessageRejected(StoreError):
    """This message cannot be stored: its writes were undone, the round goes on."""


__all__ = [
    "MessageRejected",
    "NotACentralStore",
    "StoreError",
    "StoreSchemaError",
    "StoreTooNew",
    "StoreUnavailable",
]
