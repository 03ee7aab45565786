"""Writing the center's files so that a reader never sees half of one: the CA folder's keys
and CRL, the broker's config and ACL, enrollment records, rotated keys.

``replace`` writes one file beside its place and renames it in (a broker re-reading the
CRL at that moment reads the old file or the new one); ``replace_all`` does that for
several, all or none. A file is given its mode before a byte is in it, so a private key
is never readable by others, not even for a moment; a stale staging file (or a link left
there) is removed, never written through.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644


def replace(path: Path, data: bytes, mode: int = PUBLIC, *, sync: bool = True) -> Path:
    """``data`` into ``path`` by a rename, with ``mode``; synced first unless ``sync`` is
    off (files that are made again from the others if lost)."""
    tmp = _stage(path, data, mode, sync=sync)
    try:
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def replace_all(folder: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """``files`` (name: data and mode) into ``folder``, all or none: each staged beside its
    place, then all renamed in; a folder made for them is removed again on failure."""
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    staged: list[Path] = []
    try:
        for name, (data, mode) in files.items():
            staged.append(_stage(folder / name, data, mode))
        for tmp, name in zip(staged, files, strict=True):
            tmp.replace(folder / name)
    except OSError:
        with contextlib.suppress(OSError):
            for tmp in staged:
                tmp.unlink(missing_ok=True)
            if made:
                folder.rmdir()
        raise


def _stage(path: Path, data: bytes, mode: int, *, sync: bool = True) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # whatever the umask made of it
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
