"""``scripts/setup`` installs only what changed: pip when pyproject.toml, the Python in
.venv or the checkout's place changed (or the console scripts are gone), npm ci when the
interop lock file or Node.js changed; a second run installs nothing and answers at once.

The script runs for real in a copy of the checkout's files it reads, with a ``.venv``
whose python records pip calls (and otherwise is the real interpreter) and an ``npm`` and
``node`` on PATH that record theirs: what is asserted is which installs the script runs.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def checkout(tmp: Path) -> Path:
    repo = tmp / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "setup", repo / "scripts" / "setup")
    shutil.copy2(ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / "tests" / "interop").mkdir(parents=True)
    shutil.copy2(
        ROOT / "tests" / "interop" / "package-lock.json",
        repo / "tests" / "interop" / "package-lock.json",
    )
    executable(
        repo / ".venv" / "bin" / "python",
        f"""#!/usr/bin/env bash
if [ "$1" = -m ] && [ "$2" = pip ]; then
  echo "pip ${{*:3}}" >>"$INSTALLS"
  for script in edge-agent fleet; do printf '#!/bin/sh\n' >"$0-$script"; done
  cd "$(dirname "$0")" && mv python-edge-agent edge-agent && mv python-fleet fleet
  chmod +x edge-agent fleet; exit 0
fi
if [ "$1" = -c ] && [ "$2" = 'import sys; print(sys.version)' ]; then
  echo "${{FAKE_PYTHON:-3.11.7}}"; exit 0
fi
exec {sys.executable} "$@"
""",
    )
    fake = tmp / "fakebin"
    executable(
        fake / "npm",
        '#!/usr/bin/env bash\necho "npm $*" >>"$INSTALLS"\n'
        "mkdir -p node_modules && touch node_modules/.package-lock.json\n",
    )
    executable(fake / "node", '#!/bin/sh\necho "${FAKE_NODE:-v20.0.0}"\n')
    return repo


def setup(repo: Path, tmp: Path, **env: str) -> list[str]:
    """The installs one run of scripts/setup made."""
    log = tmp / "installs.log"
    log.write_text("")
    started = time.monotonic()
    out = subprocess.run(
        [str(repo / "scripts" / "setup")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "PATH": f"{tmp / 'fakebin'}{os.pathsep}{os.environ['PATH']}",
            "INSTALLS": str(log),
            **env,
        },
    )
    assert out.returncode == 0, out.stderr
    installs = [line.split()[0] + " " + line.split()[1] for line in log.read_text().splitlines()]
    if not installs:
        assert time.monotonic() - started < 5
        assert out.stderr == ""
    return installs


def test_a_second_run_installs_nothing(tmp_path: Path) -> None:
    repo = checkout(tmp_path)
    assert setup(repo, tmp_path) == ["pip install", "pip install", "npm ci"]
    assert setup(repo, tmp_path) == []
    assert setup(repo, tmp_path) == []


def test_each_install_runs_again_when_what_it_installs_from_changes(tmp_path: Path) -> None:
    repo = checkout(tmp_path)
    setup(repo, tmp_path)
    with (repo / "pyproject.toml").open("a") as f:
        f.write("\n# a new dependency\n")
    assert setup(repo, tmp_path) == ["pip install", "pip install"]
    assert setup(repo, tmp_path, FAKE_PYTHON="3.12.1") == ["pip install", "pip install"]
    assert setup(repo, tmp_path, FAKE_PYTHON="3.12.1") == []

    lock = repo / "tests" / "interop" / "package-lock.json"
    lock.write_text(lock.read_text().replace('"lockfileVersion"', '"lockfileVersion" ', 1))
    assert setup(repo, tmp_path, FAKE_PYTHON="3.12.1") == ["npm ci"]
    assert setup(repo, tmp_path, FAKE_PYTHON="3.12.1", FAKE_NODE="v22.1.0") == ["npm ci"]
    assert setup(repo, tmp_path, FAKE_PYTHON="3.12.1", FAKE_NODE="v22.1.0") == []


def test_an_install_undone_behind_the_stamp_is_made_again(tmp_path: Path) -> None:
    repo = checkout(tmp_path)
    setup(repo, tmp_path)
    (repo / ".venv" / "bin" / "fleet").unlink()  # e.g. pip uninstall edgefleet
    assert setup(repo, tmp_path) == ["pip install", "pip install"]
    shutil.rmtree(repo / "tests" / "interop" / "node_modules")
    assert setup(repo, tmp_path) == ["npm ci"]


def test_a_moved_checkout_installs_again(tmp_path: Path) -> None:
    """An editable install points at the checkout: moved, it must point at the new place."""
    repo = checkout(tmp_path)
    setup(repo, tmp_path)
    moved = repo.rename(tmp_path / "moved")
    assert setup(moved, tmp_path) == ["pip install", "pip install", "npm ci"]


def test_the_editable_install_raises_no_setuptools_warning(tmp_path: Path) -> None:
    """Our flat layout made setuptools install an import hook and print a warning banner
    on every install; declared, the checkout goes on sys.path and pip says nothing."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # as scripts/setup does: a recent pip shows the build backend's warnings
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        check=True,
        timeout=300,
        capture_output=True,
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-e", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stdout + out.stderr.replace("WARNING: Location", "")
    packages = ["edge_agent", "drivers", "central", "cli", "sim", "mqttlink", "firmware_profiles"]
    found = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util, sys\n"
            "for name in sys.argv[1:]: print(importlib.util.find_spec(name).origin)",
            *packages,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,  # not the checkout: found through the install
    )
    assert found.stdout.split() == [str(ROOT / p / "__init__.py") for p in packages], found.stderr
