"""``packaging/install.sh`` laid out into a temporary root (``DESTDIR``), run by the
system's POSIX shell (dash on Debian): the release layout, a second run that changes
nothing, a second release that switches ``current`` by one rename and keeps the first,
and an uninstall that keeps the data unless asked."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "packaging" / "install.sh"
SHELL = shutil.which("dash") or "/bin/sh"


def agent(folder: Path, version: str) -> Path:
    """A stand-in for the built binary: answers ``--version`` as edge-agent does."""
    path = folder / f"edge-agent-{version}"
    path.write_text(f"#!/bin/sh\necho 'edge-agent {version} (CPython 3.11, Linux x86_64)'\n")
    path.chmod(0o755)
    return path


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "DESTDIR": str(root)}
    return subprocess.run(
        [SHELL, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def tree(root: Path) -> dict[str, tuple[int, str, int]]:
    """Every path under ``root``: its mode, what it holds (a link's target, a file's
    bytes) and its mtime in ns."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        held = (
            os.readlink(path) if path.is_symlink() else (path.read_text() if path.is_file() else "")
        )
        out[str(path.relative_to(root))] = (st.st_mode, held, st.st_mtime_ns)
    return out


def test_install_lays_out_a_release_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = install(root, str(agent(tmp_path, "1.0.0")))
    assert done.returncode == 0, done.stderr
    release = root / "opt/edgefleet/releases/1.0.0/edge-agent"
    assert stat.S_IMODE(release.stat().st_mode) == 0o755
    assert os.readlink(root / "opt/edgefleet/current") == "releases/1.0.0"
    assert os.readlink(root / "usr/local/bin/edge-agent") == "/opt/edgefleet/current/edge-agent"
    assert stat.S_IMODE((root / "etc/edgefleet").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "var/lib/edgefleet").stat().st_mode) == 0o750
    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_text() == (REPO / "packaging/edge-agent.service").read_text()
    # the binary the unit runs, through the links, is the release's
    resolved = (root / "opt/edgefleet/current").resolve() / "edge-agent"
    assert resolved.read_bytes() == release.read_bytes()

    before = tree(root)
    again = install(root, str(agent(tmp_path, "1.0.0")))
    assert again.returncode == 0, again.stderr
    assert "wrote" not in again.stdout and "->" not in again.stdout, again.stdout
    assert tree(root) == before


def test_a_second_release_switches_current_in_one_rename_and_keeps_the_first(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    assert install(root, str(agent(tmp_path, "1.0.0"))).returncode == 0
    current = root / "opt/edgefleet/current"
    seen: set[str] = set()
    missing: list[BaseException] = []
    stop = threading.Event()

    def watch() -> None:  # what a starting service would read meanwhile
        for _ in range(1_000_000):
            if stop.is_set():
                return
            try:
                seen.add(os.readlink(current))
            except OSError as exc:
                missing.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        done = install(root, str(agent(tmp_path, "1.1.0")))
    finally:
        stop.set()
        watcher.join(30)
    assert done.returncode == 0, done.stderr
    assert not missing, missing[:3]
    assert seen <= {"releases/1.0.0", "releases/1.1.0"}, seen
    assert os.readlink(current) == "releases/1.1.0"
    assert sorted(p.name for p in (root / "opt/edgefleet/releases").iterdir()) == [
        "1.0.0",
        "1.1.0",
    ]
    assert not list((root / "opt/edgefleet").glob("*.new.*")), "a temporary left behind"
    # --version names a release the binary cannot say (built for another machine)
    arm = install(root, "--version", "1.1.0-arm64", str(agent(tmp_path, "9")))
    assert arm.returncode == 0 and os.readlink(current) == "releases/1.1.0-arm64"


def test_bad_input_is_refused_and_installs_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for args, why in (
        (["--version", "../../etc", str(agent(tmp_path, "1"))], "not a release name"),
        ([str(tmp_path / "nothing")], "no such file"),
        (["--bogus", str(agent(tmp_path, "1"))], "unknown option"),
        ([], "usage"),
    ):
        out = install(root, *args)
        assert out.returncode == 1 and why in out.stderr, (args, out.stderr)
    silent = tmp_path / "silent"
    silent.write_text("#!/bin/sh\nexit 3\n")
    silent.chmod(0o755)
    out = install(root, str(silent))
    assert out.returncode == 1 and "--version" in out.stderr, out.stderr
    assert not (root / "opt").exists()


def test_uninstall_keeps_the_data_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert install(root, str(agent(tmp_path, "1.0.0"))).returncode == 0
    (root / "etc/edgefleet/agent.yaml").write_text("gateway: {id: gw-1}\n")
    (root / "var/lib/edgefleet/outbox.db").write_bytes(b"readings the center has not")
    gone = install(root, "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not (root / "opt/edgefleet").exists()
    assert not (root / "usr/local/bin/edge-agent").is_symlink()
    assert not (root / "etc/systemd/system/edge-agent.service").exists()
    assert (root / "etc/edgefleet/agent.yaml").exists()
    assert (root / "var/lib/edgefleet/outbox.db").exists()
    purged = install(root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (root / "etc/edgefleet").exists() and not (root / "var/lib/edgefleet").exists()
