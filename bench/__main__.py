"""Run every bench, one after the other: ``python -m bench --quick`` (what CI runs after the
tests) or ``python -m bench`` (every full run, for a quiet machine).

Benches rot when nothing runs them: a setting changes under one and it times out, an API
moves and it no longer starts, and nobody notices until the figures are needed. The
smoke run of each (``--quick``: seconds, no timed assertion) catches that.

A bench is any module of this package that runs as a program (it has an
``if __name__ == "__main__":`` block) and does not declare itself a helper (a module-level
``HELPER = "why"``: the processes benches start, tools that re-read their output). So a
new bench is run without being registered anywhere, and one without ``--quick`` fails.

Each bench runs alone (in a small machine's CPUs, another run would be noise), in its own
process group so that everything it started is stopped when it overruns ``--timeout``.
Smoke runs get ``EDGEFLEET_BENCH_RESULTS`` pointing at a temporary file: a bench that
writes results in a smoke run fails, and the tree stays clean.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.results import RESULTS_ENV

HELP_TIMEOUT_S = 60
GRACE_S = 10


@dataclass(frozen=True)
class Outcome:
    module: str
    seconds: float
    problem: str | None  # None: it ran


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    names = [node.test.left, *node.test.comparators]
    return any(isinstance(n, ast.Name) and n.id == "__name__" for n in names) and any(
        isinstance(n, ast.Constant) and n.value == "__main__" for n in names
    )


def _declares_helper(node: ast.stmt) -> bool:
    targets = (
        node.targets
        if isinstance(node, ast.Assign)
        else [node.target]
        if isinstance(node, ast.AnnAssign)
        else []
    )
    return any(isinstance(t, ast.Name) and t.id == "HELPER" for t in targets)


def discover(package_dir: Path) -> list[str]:
    """The bench modules of ``package_dir`` by name, read from their source (not imported:
    a bench that no longer imports must still be found, and fail)."""
    found = []
    for path in sorted(package_dir.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            body = ast.parse(path.read_text(), str(path)).body
        except SyntaxError:  # it cannot run, so it cannot pass: found, and failed
            found.append(path.stem)
            continue
        if any(_is_main_guard(n) for n in body) and not any(_declares_helper(n) for n in body):
            found.append(path.stem)
    return found


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float | None) -> int | None:
    """Exit code of ``cmd``, output passed through; None when it overran ``timeout`` (then
    its whole process group is stopped: TERM, and KILL after a grace period)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(GRACE_S)
        # the bench's own children too, whether or not the bench stopped them
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def quick_problem(package: str, module: str, cwd: Path) -> str | None:
    """Why the bench cannot be smoke-run, from its ``--help``; None when it offers
    ``--quick``."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", f"{package}.{module}", "--help"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=HELP_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"its --help did not answer within {HELP_TIMEOUT_S} s"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or [""])[-1]
        return f"its --help fails (exit {out.returncode}): {last}"
    if "--quick" not in out.stdout:
        return "has no --quick mode (its --help does not offer it)"
    return None


def has_quick(package: str, module: str, cwd: Path) -> bool:
    return quick_problem(package, module, cwd) is None


def run_one(package_dir: Path, module: str, quick: bool, timeout: float | None) -> Outcome:
    package, cwd = package_dir.name, package_dir.parent
    started = time.monotonic()
    problem = quick_problem(package, module, cwd) if quick else None
    if problem is not None:
        return Outcome(module, time.monotonic() - started, problem)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-smoke-") as tmp:
        env = dict(os.environ)
        results = Path(tmp) / "results.json"
        if quick:
            env[RESULTS_ENV] = str(results)
        cmd = [sys.executable, "-m", f"{package}.{module}", *(["--quick"] if quick else [])]
        print(f"== {' '.join(cmd[2:])}", flush=True)
        code = _run(cmd, cwd, env, timeout)
        took = time.monotonic() - started
        if code is None:
            return Outcome(module, took, f"did not finish within {timeout:g} s")
        if code != 0:
            return Outcome(module, took, f"exited with {code}")
        if quick and results.exists():
            return Outcome(module, took, "wrote results in its --quick mode")
    return Outcome(module, took, None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="each bench's smoke run")
    ap.add_argument(
        "--timeout", type=float, default=None, help="seconds per bench (default 300 with --quick)"
    )
    ap.add_argument("only", nargs="*", help="these benches only (default: every one)")
    ap.add_argument(
        "--package-dir", type=Path, default=Path(__file__).parent, help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    timeout = args.timeout or (300.0 if args.quick else None)
    found = discover(args.package_dir)
    unknown = sorted(set(args.only) - set(found))
    if unknown:
        print(f"error: no such bench: {', '.join(unknown)} (there are: {', '.join(found)})")
        return 2
    outcomes = [run_one(args.package_dir, m, args.quick, timeout) for m in args.only or found]
    print(f"\n== benches{' (--quick)' if args.quick else ''}")
    for o in outcomes:
        print(f"{o.module:<20} {o.seconds:7.1f} s  {o.problem or 'ok'}")
    print(f"{'total':<20} {sum(o.seconds for o in outcomes):7.1f} s")
    failed = [o.module for o in outcomes if o.problem]
    if failed:
        print(f"error: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
