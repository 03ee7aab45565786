"""The coalescing bench: its counts are the planner's minimum, and it merges its figures
into a results file without dropping another bench's keys."""

from __future__ import annotations

import json
from pathlib import Path

from bench.modbus_requests import KEY, PUMP_STATION, main
from drivers.modbus.plan import plan_reads
from tests.test_modbus_plan import min_requests


def test_the_bench_counts_each_way_and_merges_its_figures(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"e2e": {"readings_per_s": 1234}}))

    assert main(["--cycles", "2", "--results", str(results)]) == 0

    saved = json.loads(results.read_text())
    assert saved["e2e"] == {"readings_per_s": 1234}  # another bench's figures are kept
    figures = saved[KEY]
    points = list(PUMP_STATION)
    assert figures["points"] == len(points) >= 30
    assert figures["none"] == len(points)
    assert figures["contiguous_only"] == len(plan_reads(points, max_gap=0, max_registers=125))
    assert figures["gap_filling"] == min_requests(points, 16, 125) == 10
    assert figures["none"] > figures["contiguous_only"] > figures["gap_filling"]
    assert figures["max_gap"] == 16
