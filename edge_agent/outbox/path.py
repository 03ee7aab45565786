"""Whether ``outbox.path`` names a file the agent may make, or one it made: before anything
opens it.

The agent moves a corrupt outbox aside and writes a new one in its place, adds its tables,
its WAL and a ballast file beside it. Done to a file that is not an outbox it made (the
config file itself, another program's database, ``/dev/null``), that destroys or buries
someone else's data. So the file is recognised before it is opened: an SQLite database
whose header carries the outbox's ``PRAGMA application_id``, or, from versions before the
id, one with the outbox's ``meta`` table (with a stream id) and no table that is not the
outbox's. A missing or empty file is a new outbox. Everything else is refused, with the
cause, and left exactly as it is; so is a place the agent cannot write to.

``edge-agent check`` and ``run`` both ask ``outbox_path_problem``, and ``OutboxFile``
asks again at open. It reads only: the header, and for a file without the id its table
names through a read-only (immutable, when no WAL is beside it) SQLite connection that
creates nothing.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

OUTBOX_APPLICATION_ID = 0x45466F62
"""``PRAGMA application_id`` of every outbox file: "EFob" (EdgeFleet outbox)."""

SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100
APPLICATION_ID_AT = 68  # offset of the application id, 4 bytes big-endian, in the header

OUTBOX_TABLES = frozenset({"meta", "telemetry", "alarms", "alarm_state", "seen_commands"})
"""Every table an outbox has held (``sqlite_*`` tables are SQLite's own)."""

ADVICE = "it is left as it is; point outbox.path at a file of its own, e.g. outbox.db"


class OutboxPathError(Exception):
    """``outbox.path`` names something the agent must not open as its outbox; the message
    says what it is. Nothing was moved or written."""


def outbox_path_problem(path: Path) -> str | None:
    """None if ``path`` is an outbox this agent made, or a place where it may make one;
    else the cause, in words for the technician, naming ``path``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():  # SQLite cannot make a file at the end of a broken link
            return (
                f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; "
                f"point outbox.path at a file of its own, e.g. outbox.db"
            )
        return _place_problem(path)
    except OSError as exc:
        return f"{path}: cannot be examined ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        return f"{path} is a directory, not a file; point outbox.path at a file in it"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file (a device, a pipe or a socket); {ADVICE}"
    if st.st_size:
        problem = _identity_problem(path)
        if problem is not None:
            return problem
    return _writable_problem(path)


def _place_problem(path: Path) -> str | None:
    """A path that does not exist yet: the nearest directory above it must take files."""
    above = path.parent
    while not above.exists():
        if above == above.parent:
            break
        above = above.parent
    if not above.is_dir():
        return f"{path}: {above} is not a directory, so the outbox cannot be made there"
    return _directory_problem(above, path)


def _writable_problem(path: Path) -> str | None:
    if not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is read-only to the agent (its mode, or a read-only filesystem)"
    return _directory_problem(path.parent, path)


def _directory_problem(directory: Path, path: Path) -> str | None:
    # -wal, -shm and the ballast are made beside the outbox: the directory must take them
    if not os.access(directory, os.W_OK | os.X_OK):
        return (
            f"{path}: the directory {directory} is read-only to the agent (its mode, or a "
            f"read-only filesystem); the outbox needs to create files there"
        )
    return None


def _identity_problem(path: Path) -> str | None:
    """None if the non-empty file at ``path`` is an outbox this agent made."""
    try:
        with path.open("rb") as f:
            header = f.read(HEADER_BYTES)
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or exc})"
    if len(header) < HEADER_BYTES or not header.startswith(SQLITE_MAGIC):
        return f"{path} is not an SQLite database, so not an outbox this agent made; {ADVICE}"
    app_id = int.from_bytes(header[APPLICATION_ID_AT : APPLICATION_ID_AT + 4], "big")
    if app_id == OUTBOX_APPLICATION_ID:
        return None
    if app_id != 0:
        return (
            f"{path} is an SQLite database of another application (application_id "
            f"{app_id:#010x}), not an outbox; {ADVICE}"
        )
    return _legacy_problem(path)


def _legacy_problem(path: Path) -> str | None:
    """A database without an application id: an outbox of an older agent, or not ours."""
    try:
        tables, stream = _tables_and_stream(path)
    except sqlite3.Error as exc:
        return (
            f"{path} is an SQLite database without the outbox's application id that cannot "
            f"be read ({exc}), so it cannot be told for an outbox; {ADVICE}"
        )
    foreign = sorted(t for t in tables - OUTBOX_TABLES if not t.startswith("sqlite_"))
    if foreign or stream is None:
        shown = ", ".join(foreign[:5]) if foreign else "no outbox meta table with a stream id"
        return f"{path} is an SQLite database that is not an outbox ({shown}); {ADVICE}"
    return None


def _tables_and_stream(path: Path) -> tuple[set[str], str | None]:
    """Table names and the meta table's stream id, read without writing a byte: immutable
    unless a WAL beside the file holds what it has not checkpointed yet (read-only then:
    the -wal and -shm are there already)."""
    has_wal = Path(f"{path}-wal").exists()
    mode = "mode=ro" if has_wal else "immutable=1"
    db = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)
    try:
        tables = {
            str(name) for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        stream = None
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key='stream_id'").fetchone()
            stream = None if row is None else str(row[0])
        return tables, stream
    finally:
        db.close()
