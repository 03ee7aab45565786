"""Limits every backend keeps alike, so that ingest, the CLI and the docs can name them
without importing a backend (``central.store.sqlite``, ``central.store.postgres``)."""

from __future__ import annotations

REJECTED_KEEP = 1000
"""Dead letters kept per gateway (the newest): a gateway sending garbage cannot push out
the others' dead letters."""
REJECTED_HEAD_BYTES = 4096
"""What a dead letter keeps of its payload: enough to see what it was; ``size`` and the
sha256 ``digest`` stand for the rest."""
REJECTED_ERROR_MAX = 1000
"""Characters of the error kept (it may quote the payload)."""
REJECTED_MAX_BYTES = 64 * 1024 * 1024
"""Bytes of dead letters (topic, error, payload head) kept in all, the newest: gateway ids
are many (anyone may make one up), so only a cap on the whole table bounds the disk."""
REJECTED_WHOLE_BYTES = 8 * 1024 * 1024
"""Bytes of payload a gateway's dead letters may hold before a conflict (kept whole: it may
hold the real readings) is kept by its head only, as any other dead letter: so that a
gateway whose seqs keep conflicting (or a forger under its topic) cannot push, with whole
megabyte messages, every other gateway's dead letters out of ``REJECTED_MAX_BYTES``."""
