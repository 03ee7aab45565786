"""A real PostgreSQL server for tests: ``initdb`` and ``pg_ctl`` in a temporary folder,
listening on a free loopback port (and a Unix socket in that folder only), stopped with
``pg_ctl stop -m fast`` at the end. A cluster the system's package may run is never used.

``initdb`` refuses to run as root (CI runs as root): then the server runs as the
``postgres`` system user (``runuser -u postgres --``), owner of the folder. Without root
it runs as the current user. Every test gets its own database, made with
``CREATE DATABASE`` (from ``template0``: an empty database, in milliseconds).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.secret_scan import scan_log_now
from tests.support import free_port, wait_for

SERVER_USER = "postgres"


def pg_bin(name: str) -> str:
    """A PostgreSQL program: on PATH, or in Debian's ``/usr/lib/postgresql/<v>/bin`` (the
    newest version there), which Debian keeps off PATH."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return candidates[-1]
    raise RuntimeError(
        f"PostgreSQL's {name} is not installed: run scripts/setup (it installs Debian's "
        "postgresql package)"
    )


def _runs_as() -> tuple[list[str], str, int | None]:
    """The command prefix the server's programs run with, the database user they make, and
    the uid the folder must belong to (None: ours)."""
    if os.geteuid() != 0:
        return [], pwd.getpwuid(os.geteuid()).pw_name, None
    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError as exc:
        raise RuntimeError(
            "the tests run as root and there is no postgres user for PostgreSQL to run as "
            "(initdb refuses root): install Debian's postgresql package (scripts/setup)"
        ) from exc
    return ["runuser", "-u", SERVER_USER, "--"], SERVER_USER, user.pw_uid


class PgServer:
    """One PostgreSQL server in a folder of its own."""

    def __init__(self) -> None:
        self.prefix, self.user, self.uid = _runs_as()
        # not under pytest's tmp_path: its parents are private to root, the server user
        # must reach the folder
        self.folder = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = free_port()
        self._names = itertools.count(1)
        self.running = False

    def _run(self, *argv: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({done.returncode}): {done.stderr or done.stdout}"
            )

    def start(self) -> PgServer:
        if self.uid is not None:
            os.chown(self.folder, self.uid, -1)
        self._run(
            pg_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} "
            f"-c unix_socket_directories={self.folder} -c fsync=on "
            "-c max_connections=100 -c shared_buffers=128MB"
        )
        self._run(
            pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self.running = True
        wait_for(self._ready, timeout=30, what="PostgreSQL to accept connections")
        return self

    def _ready(self) -> bool:
        import psycopg  # noqa: PLC0415 (loaded by the tests that use it)

        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg  # noqa: PLC0415 (loaded by the tests that use it)

        name = f"t{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg  # noqa: PLC0415 (loaded by the tests that use it)

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.running:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.running = False
        scan_log_now(self.log)  # for secrets, before the folder goes (tests.secret_scan)
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def pg_server() -> Iterator[PgServer]:
    server = PgServer()
    try:
        yield server.start()
    finally:
        server.stop()
