"""Summaries of py-spy's collapsed stacks (``--format raw``): where a process spends CPU.

    .venv/bin/python -m bench.profile bench/profiles/agent.collapsed

Each line of the input is ``frame;frame;...;leaf count``, the root first (with
``--threads``, a thread frame). Percentages are of all samples of the process, so they
add up across threads; ``self`` is time in the function itself, ``total`` includes its
callees (a recursive function is counted once per stack).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

# not a bench (python -m bench leaves it out):
HELPER = "re-summarises py-spy output of bench.e2e --profile; measures nothing"

_LINE = re.compile(r":\d+\)$")
_THREAD = re.compile(r"^(process \d+:)?\"?(?P<name>[^\"]*)\"?")


PROJECT = ("edge_agent/", "drivers/", "central/")


def _ours(raw: str) -> bool:
    """A frame of the project's runtime code (py-spy names files relative to sys.path)."""
    where = raw.partition(" (")[2]
    return where.startswith(PROJECT) or "/edge_agent/" in where or "/central/" in where


def _frame(raw: str) -> str:
    """``fn (path/to/file.py:12)`` -> ``fn (file.py)``: one entry per function."""
    raw = _LINE.sub(")", raw.strip())
    if " (" in raw:
        fn, where = raw.split(" (", 1)
        where = where.rstrip(")")
        short = "/".join(where.split("/")[-2:])
        return f"{fn} ({short})"
    return raw


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append((stack.split(";"), int(count)))
    return stacks


def summarise(path: Path, top: int = 25) -> str:
    stacks = load(path)
    total = sum(n for _, n in stacks)
    if total == 0:
        return "no samples"
    threads: Counter[str] = Counter()
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    for frames, n in stacks:
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        body = frames[1:] if thread != "?" else frames
        threads[thread] += n
        named = [_frame(f) for f in body]
        if named:
            self_t[named[-1]] += n
        for f in set(named):
            incl[f] += n
        for f in {_frame(f) for f in body if _ours(f)}:
            ours[f] += n

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f} %"

    lines = [f"{total} samples (CPU time only; idle threads not sampled)", "", "by thread:"]
    lines += [f"  {pct(n)}  {t}" for t, n in threads.most_common()]
    lines += ["", f"self time, top {top}:"]
    lines += [f"  {pct(n)}  {f}" for f, n in self_t.most_common(top)]
    lines += ["", f"total time (with callees), top {top}:"]
    lines += [f"  {pct(n)}  {f}" for f, n in incl.most_common(top)]
    lines += ["", f"project functions, total time (with callees), top {2 * top}:"]
    lines += [f"  {pct(n)}  {f}" for f, n in ours.most_common(2 * top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    for arg in sys.argv[1:]:
        print(f"=== {arg}\n{summarise(Path(arg))}")


if __name__ == "__main__":
    main()
