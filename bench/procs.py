"""Processes the benchmark starts: every one is registered and stopped at the end, even on
an error or Ctrl-C, and every wait is bounded. Plus what ``/proc`` tells about them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent
"""Children run from the repository root, so ``python -m bench.x`` finds this package."""


class Cleanup:
    """Stops what was started, newest first, whatever happened in between."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, step: Callable[[], object]) -> None:
        self._steps.append((what, step))

    def popen(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
        """Start ``argv`` with its output in ``log``; it is stopped at cleanup."""
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=out, cwd=REPO, env={**os.environ, **(env or {})}
            )
        proc = Proc(popen, log)
        self.push(f"{Path(argv[0]).name} (pid {popen.pid})", proc.stop)
        return proc

    def module(self, module: str, args: list[str], log: Path) -> Proc:
        """``python -m module args`` with this interpreter."""
        return self.popen([sys.executable, "-m", module, *args], log)

    def run(self) -> None:
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except Exception as exc:  # keep stopping the others
                print(f"cleanup: stopping {what} failed: {exc!r}", file=sys.stderr)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.run()


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def raise_on_sigterm() -> None:
    """SIGTERM and SIGHUP stop the benchmark like Ctrl-C does, through its cleanup."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after "pid (comm)": state is field 3, utime 14 and stime 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` figure of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb(pid: int) -> float | None:
    kb = status_kb(pid, "VmRSS")
    return None if kb is None else round(kb / 1024, 1)


class CpuMeter:
    """CPU use of some processes between ``start()`` and ``stop()``, in % of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0 = 0.0
        self._cpu0: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._t0, 1e-9)
        return {
            name: round(100 * (cpu_seconds(pid) - self._cpu0[name]) / wall, 1)
            for name, pid in self.pids.items()
        }


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def read_port(ready_file: Path, proc: Proc, timeout: float = 20.0) -> int:
    """The port a child wrote into ``ready_file`` once it listens."""

    def ready() -> bool:
        if not proc.running():
            raise RuntimeError(f"{proc.popen.args!r} exited early:\n{proc.tail()}")
        return ready_file.exists()

    wait_until(ready, timeout, f"{ready_file.name}")
    return int(ready_file.read_text().strip())
