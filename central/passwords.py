"""The broker's password file, for gateways that show a username and a password instead
of a client certificate (``fleet provision GW --password``, the password listener of
``fleet broker-config --password-port``).

The file is Mosquitto's own (``password_file``): one ``GW:HASH`` line per gateway (and one
``enroll-GW:HASH`` per enrollment token, whose hash it is: ``fleet provision GW --token``), hashed
by Mosquitto's ``mosquitto_passwd`` (``$7$``: PBKDF2-SHA512), never the password. The
password itself exists in three places only: in this process's memory, in the gateway's
enrollment bundle, and for the moment ``mosquitto_passwd -U`` hashes it, in a 0600 file of
a 0700 folder of its own (``mosquitto_passwd`` keeps a plain copy beside the file while it
works, so the folder and the umask are private too). It is never an argument: ``ps``
shows every process's argv to every user.

Writes are atomic (a new file renamed over the old, so a broker reloading on SIGHUP reads
one or the other) and keep the file's owner, group and mode (at most 0640: never readable
by others): Mosquitto reads it as its own user (``mosquitto`` on Debian), so the file is
given to that user once, and stays so.

Errors: ``PasswordError``, the message saying which file or program and why.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edge_agent.contract.csr import CsrError, identity_gateway
from edge_agent.contract.topics import TopicError, check_gateway_id

PASSWORDS = "passwords"
"""The password file's default name, in the CA folder."""
ENROLL_PASSWORDS = "enroll-passwords"
"""The enrollment listener's password file (the one-time identities' hashed tokens), in
the CA folder: apart from the gateways', so that neither logs in on the other's listener."""
PROGRAM = "mosquitto_passwd"
FALLBACK_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/sbin")
"""Searched after PATH: Debian's package (``mosquitto``) puts it in /usr/bin."""
PASSWORD_BYTES = 32
"""256 random bits; ``secrets.token_urlsafe`` writes them as 43 characters."""
HASHES = ("$7$", "$6$")
"""What a line's hash starts with: PBKDF2-SHA512 (Mosquitto 2's default), SHA512 (1.x)."""
_LINE = re.compile(r"(?P<user>[^:\s]+):(?P<hash>\$[67]\$\S+)")


class PasswordError(Exception):
    """The password file or ``mosquitto_passwd`` cannot be used; nothing was changed."""


def new_password() -> str:
    """A strong random password: URL-safe characters (no ``:`` or space, which the
    password file and a config line would have to quote)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def find_program(search: str | None = None) -> str:
    """The path of ``mosquitto_passwd`` (on ``search``, default PATH and then
    ``FALLBACK_DIRS``); ``PasswordError`` saying how to get it otherwise."""
    if search is None:
        search = os.pathsep.join([os.environ.get("PATH", ""), *FALLBACK_DIRS])
    found = shutil.which(PROGRAM, path=search)
    if found is None:
        raise PasswordError(
            f"{PROGRAM} is not installed: it hashes the broker's passwords as Mosquitto "
            "reads them (Debian: apt-get install mosquitto)"
        )
    return found


def check_user(name: str) -> str:
    """``name`` if it may have a line: a gateway's id, or an enrollment identity
    (``enroll-GW``); ``PasswordError`` otherwise."""
    if identity_gateway(name) is not None:
        return name
    try:
        return check_gateway_id(name)
    except (TopicError, CsrError) as exc:
        raise PasswordError(str(exc)) from None


def hash_line(gateway: str, password: str, program: str | None = None) -> str:
    """``GW:HASH``, the password file's line for ``gateway`` (or an enrollment identity),
    hashed by ``mosquitto_passwd`` (``program``, default ``find_program()``): the password
    goes to it in a file, never in its arguments."""
    check_user(gateway)
    if not password or any(c.isspace() for c in password):
        raise PasswordError("a password of no characters, or with spaces, is not one")
    exe = program or find_program()
    with tempfile.TemporaryDirectory(prefix="edgefleet-passwd-") as folder:  # 0700
        plain = Path(folder) / "passwords"
        fd = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{gateway}:{password}\n")
        try:
            # umask: the plain copy mosquitto_passwd keeps beside the file while it works
            done = subprocess.run(
                [exe, "-U", str(plain)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                umask=0o077,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PasswordError(f"cannot run {exe}: {exc}") from None
        hashed = plain.read_text().strip() if done.returncode == 0 else ""
    match = _LINE.fullmatch(hashed)
    if match is None or match["user"] != gateway or password in hashed:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise PasswordError(
            f"{exe} -U did not hash the password (exit {done.returncode}"
            + (f": {said[-1][:200]}" if said else "")
            + ")"
        )
    return hashed


def fingerprint(line: str) -> str:
    """What the registry keeps of a password identity: the SHA-256 of its hashed line
    (hex), which names that password without saying anything about it."""
    return hashlib.sha256(line.encode()).hexdigest()


def entries(path: Path) -> dict[str, str]:
    """The file's lines by username (none if there is no file); ``PasswordError`` for a
    line that is not ``USER:HASH`` (a plain password, say)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise PasswordError(f"cannot read the password file {path}: {exc}") from None
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise PasswordError(
                f"{path} line {number} is not USER:HASH as mosquitto_passwd writes it; "
                "not changing the file"
            )
        out[match["user"]] = line
    return out


def set_line(path: Path, line: str) -> None:
    """``line`` (from ``hash_line``) into the password file at ``path``, in place of the
    line of the same user if there is one; the file is made (0600) if missing."""
    match = _LINE.fullmatch(line)
    if match is None:
        raise PasswordError("not a hashed password line")
    with _locked(path):
        lines = entries(path)
        lines[match["user"]] = line
        _replace(path, lines)


def remove(path: Path, gateway: str) -> bool:
    """Take ``gateway``'s line (or an enrollment identity's) out of the password file;
    whether there was one."""
    with _locked(path):
        lines = entries(path)
        if lines.pop(check_user(gateway), None) is None:
            return False
        _replace(path, lines)
    return True


def keep_enrollments(path: Path, live: set[str]) -> list[str]:
    """Take out the lines of enrollment identities not in ``live`` (their tokens used up,
    expired or withdrawn); the identities taken out. Gateways' lines stay."""
    with _locked(path):
        lines = entries(path)
        gone = [u for u in lines if identity_gateway(u) is not None and u not in live]
        if gone:
            _replace(path, {u: line for u, line in lines.items() if u not in gone})
    return gone


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Two ``fleet`` commands changing the file at once: one after the other, so that
    neither loses the other's line (a lock file beside it: the file itself is renamed)."""
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise PasswordError(f"cannot lock the password file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure(path: Path) -> bool:
    """Make an empty password file (0600) if there is none (Mosquitto does not start on a
    ``password_file`` that is missing); whether one was made."""
    if path.exists():
        return False
    _replace(path, {})
    return True


def _replace(path: Path, lines: dict[str, str]) -> None:
    """The file made ``lines`` by a rename, its owner, group and mode kept."""
    try:
        st = path.stat()
    except FileNotFoundError:
        owner, mode = None, 0o600
    else:
        owner, mode = (st.st_uid, st.st_gid), st.st_mode & 0o640
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # a stale one (or a link) is not written through
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            if owner is not None and owner != (os.getuid(), os.getgid()):
                os.fchown(f.fileno(), *owner)
            os.fchmod(f.fileno(), mode)
            f.write("".join(f"{line}\n" for line in lines.values()))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        theirs = owner is not None and owner[0] != os.getuid()
        raise PasswordError(
            f"cannot write the password file {path}: {exc.strerror or exc}"
            + (" (another user owns it: run as root or as that user)" if theirs else "")
        ) from None
