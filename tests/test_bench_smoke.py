"""Benches that do not rot: ``python -m bench --quick`` finds every bench by itself, runs
each one's smoke run and fails for one that has no ``--quick``, fails, hangs or writes
results; and the alarm-latency bench survives the gateway's chattering detection."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest

from bench.__main__ import discover, has_quick, main
from bench.rules import QUICK_CHANGES, alarm_latency

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
THE_BENCHES = {"drain", "e2e", "ingest", "modbus_requests", "parts", "rules"}
NOT_BENCHES = {"bare", "raw", "sim_device", "profile", "procs", "points", "results"}


def test_every_bench_of_the_repository_is_found_and_no_helper() -> None:
    found = set(discover(BENCH_DIR))
    assert found >= THE_BENCHES
    assert not found & NOT_BENCHES


@pytest.mark.parametrize("module", discover(BENCH_DIR))
def test_every_bench_offers_a_quick_mode(module: str) -> None:
    assert has_quick("bench", module, BENCH_DIR.parent)


def fake_benches(tmp: Path, **modules: str) -> Path:
    package = tmp / "fakebench"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, body in modules.items():
        (package / f"{name}.py").write_text(body)
    return package


QUICK_BENCH = textwrap.dedent(
    """\
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print("figures: 42 per s", "quick" if args.quick else "full")

    if __name__ == "__main__":
        pass
    """
)


def test_a_new_bench_is_run_and_a_helper_or_a_library_is_not(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    package = fake_benches(
        tmp_path,
        newbench=QUICK_BENCH,
        helper='HELPER = "a process the benches start"\nif __name__ == "__main__":\n    1 / 0\n',
        library="def f() -> int:\n    return 1\n",
    )
    assert discover(package) == ["newbench"]
    assert main(["--quick", "--package-dir", str(package)]) == 0
    out = capfd.readouterr().out
    assert "figures: 42 per s quick" in out
    assert "newbench" in out and "ok" in out


def test_a_bench_without_quick_fails_the_run_and_the_others_still_run(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    package = fake_benches(
        tmp_path,
        a_old="import argparse\nargparse.ArgumentParser().parse_args()\n"
        'if __name__ == "__main__":\n    print("full run")\n',
        b_good=QUICK_BENCH,
    )
    assert main(["--quick", "--package-dir", str(package)]) == 1
    out, err = capfd.readouterr()
    assert "a_old" in out and "has no --quick mode" in out
    assert "full run" not in out  # never run without its smoke mode
    assert "figures: 42 per s quick" in out
    assert "failed: a_old" in err


def test_a_bench_that_saves_results_in_its_smoke_run_fails_and_leaves_the_tree_clean(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(BENCH_DIR.parent))  # the fake imports bench.results
    package = fake_benches(
        tmp_path,
        saver=QUICK_BENCH.replace(
            "print(", "from bench.results import merge\nmerge({'saver': 1})\nprint("
        ),
    )
    before = (BENCH_DIR / "results.json").read_bytes()
    assert main(["--quick", "--package-dir", str(package)]) == 1
    assert "wrote results in its --quick mode" in capfd.readouterr().out
    assert (BENCH_DIR / "results.json").read_bytes() == before
    assert "saver" not in json.loads(before)


def test_a_failing_or_hanging_bench_fails_within_its_timeout(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    package = fake_benches(
        tmp_path,
        broken=QUICK_BENCH.replace("print(", "raise SystemExit(3)\nprint("),
        garbled='if __name__ == "__main__":\n    print(\n',
        hangs=QUICK_BENCH.replace("print(", "import time\ntime.sleep(120)\nprint("),
    )
    started = time.monotonic()
    assert main(["--quick", "--timeout", "3", "--package-dir", str(package)]) == 1
    assert time.monotonic() - started < 60
    out = capfd.readouterr().out
    assert "exited with 3" in out
    assert "did not finish within 3 s" in out
    # found, though it cannot even start
    assert "its --help fails (exit 1): SyntaxError: '(' was never closed" in out


def test_alarm_latency_bench_gets_an_event_for_every_change() -> None:
    """More toggles than the default chattering limit (3 in 60 s): with the gateway's
    alarm-load handling on, the alarm would be held and the bench time out."""
    latency = alarm_latency(QUICK_CHANGES, poll_s=0.2)
    assert QUICK_CHANGES > 3
    assert latency["changes"] == QUICK_CHANGES
    assert 0 < latency["p50_s"] <= latency["max_s"] < 10
