"""``edge-agent enroll``: an enrollment bundle (``edge_agent.contract.enrollment``)
installed into the gateway's config folder.

Nothing is written unless all of it can be: a folder that holds any of the bundle's files
already (another enrollment's key, an edited config) is refused, unless ``force``; the
bundle's config must pass the schema pass first. The key is 0600 from the moment it
exists (given to the agent's user with ``owner``: the shipped systemd unit runs it as
``edgefleet``, and a key root owns it could not read); the rest 0644.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from edge_agent.config.loader import ConfigError, parse_config
from edge_agent.contract.enrollment import CONFIG_FILE, FILES, PRIVATE, Bundle, BundleError
from edge_agent.contract.topics import GATEWAY_ID


class EnrollError(Exception):
    """The bundle cannot be installed; the message says why."""


def read_bundle(path: Path) -> Bundle:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EnrollError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        bundle = Bundle.decode(data)
    except BundleError as exc:
        raise EnrollError(f"{path}: {exc}") from None
    if not GATEWAY_ID.fullmatch(bundle.gateway):
        raise EnrollError(f"{path}: {bundle.gateway!r} is not a gateway id")
    return bundle


def install(
    bundle: Bundle, folder: Path, *, force: bool = False, owner: str | None = None
) -> list[Path]:
    """The bundle's files written into ``folder`` (made if missing); the paths written.
    ``owner``: the user the agent runs as, given the key (it alone may read it)."""
    ids = _user(owner) if owner is not None else None
    targets = [folder / name for name in FILES]
    present = [p.name for p in targets if p.exists() or p.is_symlink()]
    if present and not force:
        raise EnrollError(
            f"{folder} already holds {', '.join(present)}; not overwriting them "
            "(--force does, for a gateway enrolled again)"
        )
    try:
        parse_config(bundle.files[CONFIG_FILE], f"the bundle's {CONFIG_FILE}", folder)
    except ConfigError as exc:
        raise EnrollError(f"the bundle's {CONFIG_FILE} is not a valid config: {exc}") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path in targets:
            private = path.name in PRIVATE
            _write(path, bundle.files[path.name].encode(), 0o600 if private else 0o644)
            if private and ids is not None:
                os.chown(path, *ids, follow_symlinks=False)
    except OSError as exc:
        raise EnrollError(f"cannot write into {folder}: {exc.strerror or exc}") from None
    return targets


def _user(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise EnrollError(f"no user {name!r} on this host (--owner)") from None
    return entry.pw_uid, entry.pw_gid


def _write(path: Path, data: bytes, mode: int) -> None:
    # a symlink left in the folder is replaced, never followed; the mode is set before
    # the key is in the file
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)
        f.write(data)
