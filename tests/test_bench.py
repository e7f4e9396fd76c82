"""The benchmark still runs: a miniature of bench/relay_bench.py (numbers are not asserted;
this is not a timed test, only a guard against a benchmark that silently rots)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench" / "relay_bench.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("relay_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["relay_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_overhead_measurement_runs_through_the_relay_and_reads_the_simulator_stamps() -> None:
    bench = load_bench()
    result = bench.overhead_levels(0.0, 0.01, 5, levels=[1, 5], seconds=1.0)["sustained"]
    for level in (1, 5):
        row = result[level]
        assert row["errors"] == 0 and row["samples"] > 0
        # Present only when the first piece carried the simulator's stamps through the relay.
        assert math.isfinite(row["added_first_piece_p50_ms"]) and math.isfinite(row["added_first_piece_p99_ms"])
    bench.print_overhead_rows(result)


def test_relay_cpu_cost_is_read_from_the_relay_process() -> None:
    cost = load_bench().relay_cpu_cost(100)
    assert cost["setup_ms"] > 0 and cost["per_piece_us"] > 0
