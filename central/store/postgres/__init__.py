"""The server backend of the central store: PostgreSQL through psycopg 3.

``PostgresStore(url)`` connects, runs the migrations (``schema``) and serves the Store
protocol (``central.store.api``): rounds (``writes``), queries (``queries``), partitions
and retention (``partitions``). It keeps up to three connections, each made when first
needed: the writer (rounds, the command ledger), the reader (queries; long ones through a
server-side cursor) and one for partition DDL (never inside a round's transaction).

Commits are durable when they return (``synchronous_commit = on``, the server's fsync):
the center acks only what it has committed. A lost connection is ``StoreUnavailable``;
the next call connects again. ``label`` is the URL without its password.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from central.store import api
from central.store.api import ALL_GATEWAYS, AlarmQuery, GatewayFilter, Maintenance, ReadingQuery
from central.store.errors import MessageRejected, StoreUnavailable
from central.store.postgres import partitions, queries, schema
from central.store.postgres.writes import ContentError, PgRound, jsonb, text
from central.store.rows import (
    AlarmRow,
    CommandRecord,
    DeadLetter,
    DeviceRow,
    FleetStatus,
    GatewayRow,
    Identity,
    LossRow,
    ReadingBucket,
    StoredReading,
)

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.Connection[tuple[Any, ...]]

CONNECT_TIMEOUT_S = 10


def without_password(url: str) -> str:
    """``url`` for messages: its password (and any query string) left out."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "a PostgreSQL URL that cannot be read"


class PostgresStore:
    backend: ClassVar[api.Backend] = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.label = without_password(url)
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        self._secret = password or None
        self._writer: Conn | None = None
        self._reader: Conn | None = None
        self._ddl: Conn | None = None
        self._days: set[int] = set()
        self._in_default: set[int] = set()
        """Days ``create_days`` left in the default partition (it holds rows of them)."""
        conn = self._conn("writer")
        try:
            with self.translating():
                schema.migrate(conn, self.label, time.time())
                self._days = partitions.existing_days(conn)
        except BaseException:
            self.close()
            raise

    # --- connections and errors ---------------------------------------------------------

    def _connect(self) -> Conn:
        import psycopg  # noqa: PLC0415 (loaded by the command that uses it)

        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="edgefleet-central",
            )
        except psycopg.Error as exc:
            raise StoreUnavailable(self.unavailable(exc)) from exc
        except Exception as exc:  # a URL psycopg cannot read at all
            raise StoreUnavailable(
                f"cannot connect to {self.label}: {self._scrub(str(exc))}"
            ) from exc
        conn.execute("SET synchronous_commit = on")
        return conn

    def _conn(self, which: str) -> Conn:
        conn: Conn | None = getattr(self, f"_{which}")
        if conn is None or conn.closed or conn.broken:
            conn = self._connect()
            setattr(self, f"_{which}", conn)
        return conn

    def _scrub(self, message: str) -> str:
        if self._secret:
            message = message.replace(self._secret, "***")
        return message.replace(self.url, self.label)

    def unavailable(self, exc: BaseException) -> str:
        detail = self._scrub(str(exc).strip() or type(exc).__name__)
        return f"the PostgreSQL store {self.label} is unavailable: {detail}"

    @contextmanager
    def translating(self) -> Iterator[None]:
        """Any error of psycopg as ``StoreUnavailable`` (not one of a message's content)."""
        import psycopg  # noqa: PLC0415 (loaded by the command that uses it)

        try:
            yield
        except psycopg.Error as exc:
            raise StoreUnavailable(self.unavailable(exc)) from exc

    @contextmanager
    def translating_content(self) -> Iterator[None]:
        """Inside a message: errors the content caused pass through (``message()`` makes
        them ``MessageRejected``), the rest become ``StoreUnavailable``."""
        import psycopg  # noqa: PLC0415 (loaded by the command that uses it)

        try:
            yield
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError):
            raise
        except psycopg.Error as exc:
            raise StoreUnavailable(self.unavailable(exc)) from exc

    # --- writes -------------------------------------------------------------------------

    @contextmanager
    def round(self) -> Iterator[api.Round]:
        conn = self._conn("writer")
        with self.translating():
            if conn.info.transaction_status != 0:  # a failed round left it open: not acked
                conn.execute("ROLLBACK")
            conn.execute("BEGIN")
        rnd = PgRound(self, conn)
        try:
            yield rnd
            with self.translating():
                rnd.flush()
                conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            if conn.broken:
                self._writer = None
            raise

    def ensure_partitions(self, days: Iterable[int]) -> int:
        """Create the partitions of ``days`` not made yet (on the DDL connection)."""
        missing = set(days) - self._days - self._in_default
        if not missing:
            return 0
        conn = self._conn("ddl")
        with self.translating():
            made = partitions.create_days(conn, missing)
            self._days = partitions.existing_days(conn)
        self._in_default |= missing - self._days  # their rows are in the default partition
        return made

    def maintain(self, retention: api.Retention, now: float | None = None) -> Maintenance:
        now = time.time() if now is None else now
        made = self.ensure_partitions(partitions.ahead(now))
        dropped = deleted = rollups = 0
        conn = self._conn("ddl")
        with self.translating():
            if retention.raw_s is not None:
                dropped, deleted = partitions.drop_before(conn, now - retention.raw_s)
                self._days = partitions.existing_days(conn)
            if retention.rollups_s is not None:
                cur = conn.execute(
                    "DELETE FROM rollups_1m WHERE minute + 60 <= %s", (now - retention.rollups_s,)
                )
                rollups = max(cur.rowcount, 0)
        return Maintenance(
            partitions_created=made,
            partitions_dropped=dropped,
            readings_deleted=deleted,
            rollups_deleted=rollups,
        )

    # --- queries ------------------------------------------------------------------------

    def _streamed(self, rows: Iterator[Any]) -> Iterator[Any]:
        try:
            with self.translating():
                yield from rows
        finally:
            reader = self._reader
            if reader is not None and reader.broken:
                self._reader = None

    def _read(self) -> Conn:
        return self._conn("reader")

    def gateways(
        self,
        where: GatewayFilter = ALL_GATEWAYS,
        after: str | None = None,
        limit: int | None = None,
    ) -> Iterator[GatewayRow]:
        return self._streamed(queries.gateways(self._read(), where, after, limit))

    def gateway(self, gateway: str) -> GatewayRow | None:
        with self.translating():
            return queries.gateway(self._read(), gateway)

    def devices(
        self, gateway: str | None = None, where: GatewayFilter = ALL_GATEWAYS
    ) -> Iterator[DeviceRow]:
        return self._streamed(queries.devices(self._read(), gateway, where))

    def status(self, now: float | None = None) -> FleetStatus:
        with self.translating():
            return queries.status(self._read(), time.time() if now is None else now)

    def readings(self, query: ReadingQuery) -> Iterator[StoredReading]:
        return self._streamed(queries.readings(self._read(), query))

    def buckets(self, query: ReadingQuery, bucket_s: int) -> Iterator[ReadingBucket]:
        if type(bucket_s) is not int or bucket_s <= 0 or bucket_s % 60:
            raise ValueError(f"a bucket is a positive multiple of 60 s, not {bucket_s!r}")
        return self._streamed(queries.buckets(self._read(), query, bucket_s))

    def alarms(self, query: AlarmQuery | None = None) -> list[AlarmRow]:
        with self.translating():
            return queries.alarms(self._read(), query or AlarmQuery())

    def alarm(self, gateway: str, alarm_id: str) -> AlarmRow | None:
        with self.translating():
            return queries.alarm(self._read(), gateway, alarm_id)

    def alarm_history(self, gateway: str, alarm_id: str) -> list[dict[str, Any]]:
        with self.translating():
            return queries.alarm_history(self._read(), gateway, alarm_id)

    def losses(self, gateway: str | None = None) -> list[LossRow]:
        with self.translating():
            return queries.losses(self._read(), gateway)

    def rejected(self, gateway: str | None = None, limit: int = 100) -> list[DeadLetter]:
        with self.translating():
            return queries.rejected(self._read(), gateway, limit)

    def sequence_keys(self, gateway: str) -> set[tuple[str, int]]:
        with self.translating():
            return queries.sequence_keys(self._read(), gateway)

    def count_readings(self) -> int:
        with self.translating():
            return queries.count_readings(self._read())

    # --- the command ledger -------------------------------------------------------------

    def record_command(self, record: CommandRecord) -> None:
        try:
            params = (
                text(record.id, "the command id"),
                text(record.gateway, "the gateway id"),
                text(record.cmd, "the command"),
                jsonb(record.args, "the command's args"),
                None if record.by is None else text(record.by, "by"),
                record.sent,
                None if record.result is None else text(record.result, "the result"),
                None if record.detail is None else jsonb(record.detail, "the detail"),
                record.replied,
            )
        except (ContentError, TypeError, ValueError) as exc:
            raise MessageRejected(f"the command cannot be recorded: {exc}") from exc
        with self.translating():
            self._conn("writer").execute(
                "INSERT INTO commands (id, gateway, cmd, args, by, sent, result, detail, "
                "replied) VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s::jsonb, %s) "
                "ON CONFLICT (id) DO NOTHING",
                params,
            )

    def command_result(
        self, command_id: str, result: str, detail: Any, replied: float | None = None
    ) -> None:
        replied = time.time() if replied is None else replied
        try:
            body = None if detail is None else jsonb(detail, "the detail")
        except (ContentError, TypeError, ValueError):
            body = json.dumps(repr(detail).replace("\x00", "\\x00"))
        with self.translating():
            self._conn("writer").execute(
                "UPDATE commands SET result = %s, detail = %s::jsonb, replied = %s WHERE id = %s",
                (text(result, "the result"), body, replied, command_id.replace("\x00", "")),
            )

    def commands(self, gateway: str | None = None, limit: int = 100) -> list[CommandRecord]:
        with self.translating():
            return queries.commands(self._read(), gateway, limit)

    def add_identity(
        self, identity: Identity, site: str | None = None, tags: dict[str, str] | None = None
    ) -> None:
        try:
            params = (
                text(identity.gateway, "the gateway id"),
                None if site is None else text(site, "the site"),
                None if tags is None else jsonb(tags, "the tags"),
            )
            row = (
                params[0],
                text(identity.kind, "the kind"),
                text(identity.fingerprint, "the fingerprint"),
                identity.issued,
                identity.expires,
                identity.revoked,
            )
        except (ContentError, TypeError, ValueError) as exc:
            raise MessageRejected(f"the identity cannot be recorded: {exc}") from exc
        with self.translating():
            conn = self._conn("writer")
            with conn.transaction():
                conn.execute(
                    "INSERT INTO gateways (id, site, tags) VALUES (%s, %s, %s::jsonb) "
                    "ON CONFLICT (id) DO UPDATE SET "
                    "site = coalesce(excluded.site, gateways.site), "
                    "tags = coalesce(excluded.tags, gateways.tags)",
                    params,
                )
                conn.execute(
                    "INSERT INTO identities (gateway, kind, fingerprint, issued, expires, "
                    "revoked) VALUES (%s, %s, %s, %s, %s, %s)",
                    row,
                )

    def identities(self, gateway: str | None = None) -> list[Identity]:
        with self.translating():
            return queries.identities(self._read(), gateway)

    def revoke_identities(self, gateway: str, when: float) -> int:
        with self.translating():
            conn = self._conn("writer")
            with conn.transaction():
                cur = conn.execute(
                    "UPDATE identities SET revoked = %s WHERE gateway = %s AND revoked IS NULL",
                    (when, text(gateway, "the gateway id")),
                )
            return cur.rowcount

    def revoked_gateways(self) -> frozenset[str]:
        with self.translating():
            return queries.revoked_gateways(self._read())

    def expiring(self, before: float) -> list[Identity]:
        with self.translating():
            return queries.expiring(self._read(), before)

    def close(self) -> None:
        for which in ("writer", "reader", "ddl"):
            conn: Conn | None = getattr(self, f"_{which}")
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            setattr(self, f"_{which}", None)


__all__ = ["PostgresStore", "without_password"]


def _implements_the_protocol(store: PostgresStore) -> api.Store:
    return store  # mypy checks here that PostgresStore is an api.Store
