"""The README's demo command really shows readings arriving at the center."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_whole_stack_and_shows_readings(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "demo.py"),
            "--duration",
            "6",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    m = re.search(r"demo: (\d+) readings stored at the center", result.stdout)
    assert m and int(m.group(1)) >= 11, result.stdout  # one poll of all 11 points at least
    assert "obscuration" in result.stdout
    # Ctrl-C / the end of the demo stops every process it started
    for log in ("agent.log", "central.log"):
        assert "Traceback" not in (tmp_path / "demo" / log).read_text()
    assert "stopped" in (tmp_path / "demo" / "agent.log").read_text()
