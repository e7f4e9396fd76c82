"""The benchmarks still run: miniatures of bench/relay_bench.py, bench/latency_breakdown.py
and bench/ab_compare.py (numbers are not asserted; these are not timed tests, only guards
against benchmarks that silently rot)."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench(name: str = "relay_bench") -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))  # the scripts import each other, as when run from bench/
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
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


@pytest.mark.parametrize("surface", ["responses", "completions"])
def test_each_endpoint_is_measured_from_its_first_text_chunk(surface: str) -> None:
    bench = load_bench()
    row = bench.overhead_levels(0.0, 0.01, 5, levels=[3], seconds=1.0, surface=surface)["sustained"][3]
    assert row["errors"] == 0 and row["samples"] > 0
    # Finite only when the chunk the bench took for the first text carried the simulator's stamps.
    assert math.isfinite(row["added_first_piece_p50_ms"])


def test_relay_cpu_cost_is_read_from_the_relay_process() -> None:
    cost = load_bench().relay_cpu_cost(100)
    assert cost["setup_ms"] > 0 and cost["per_piece_us"] > 0


def test_latency_breakdown_joins_the_relay_timings_with_the_clients(capsys) -> None:  # noqa: ANN001
    breakdown = load_bench("latency_breakdown")
    result = breakdown.measure(streams=5, seconds=1.5, token_delay=0.01, words=5)
    assert result["errors"] == 0 and len(result["rows"]) > 0
    for legs, _ in result["rows"]:
        assert set(legs) == set(breakdown.LEGS)
        # The relay's own steps are ordered in time, on the clock all three processes share.
        assert legs["relay writes"] >= 0 and legs["relay -> simulator"] > 0
    breakdown.print_report(result, worst=2)
    assert "relay -> simulator" in capsys.readouterr().out


def test_ab_compare_runs_a_relay_from_another_revision() -> None:
    ab = load_bench("ab_compare")
    if not (ab.ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    with ab.service_path("HEAD") as service:
        assert (Path(service) / "gptomni_relay" / "app.py").is_file() and Path(service) != ab.ROOT / "service"
        row = ab.one_round({"PYTHONPATH": service}, streams=3, profile="fast", seconds=1.0)
    assert row["errors"] == 0 and row["samples"] > 0
    assert not Path(service).exists()  # the temporary worktree is gone


def test_overhead_with_the_relay_on_its_own_core() -> None:
    bench = load_bench()
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    before = os.sched_getaffinity(0)
    row = bench.overhead_levels(0.0, 0.01, 5, levels=[3], seconds=1.0, relay_own_core=True)["sustained"][3]
    assert row["errors"] == 0 and row["samples"] > 0
    assert os.sched_getaffinity(0) == before  # the load generator is unpinned again


def test_shared_pool_cost_measures_both_pools(tmp_path: Path) -> None:
    from tests.redis_server import RedisServer

    cost = load_bench("shared_pool_cost")
    server = RedisServer(tmp_path)
    server.start()
    try:
        rows = {(mode, 2): asyncio.run(cost.measure(url, 2, pairs=50, seconds=0.5))
                for mode, url in (("local", None), ("redis", server.url))}
    finally:
        server.stop()
    assert rows[("redis", 2)]["pairs"] > 0 and rows[("redis", 2)]["redis_cpu"] >= 0
    assert rows[("local", 2)]["c_pairs_per_s"] > 0
    assert rows[("redis", 2)]["c_per_batch"] > 1  # 50 requests at once share writes to Redis
    cost.print_table({key: cost.median_row([row, row]) for key, row in rows.items()}, 2)


def test_token_estimate_error_is_measured_against_a_real_tokenizer() -> None:
    from tests.real_clients import js_tiktoken, node

    node()
    error = load_bench("token_estimate_error")
    texts = ["The relay folds the whole conversation into one prompt.", "中继把对话折叠成一个提示。"]
    row = error.measure(js_tiktoken(), texts, "o200k_base")
    # Real counts from the BPE ranks (a wrong path or encoding fails in node): both texts
    # are a dozen tokens or so, and the estimate is within a factor of two of them.
    assert row["samples"] == 2 and 10 <= row["real"] <= 40
    assert 0.5 <= row["total"] <= 2


def test_redis_clients_sends_the_same_script_calls_through_every_client(tmp_path: Path) -> None:
    from tests.redis_server import RedisServer

    clients = load_bench("redis_clients")
    server = RedisServer(tmp_path)
    server.start()
    try:
        for name in clients.CLIENTS:  # each warm-up call checks a slot was taken and released
            row = asyncio.run(clients.measure(name, server.url, 2, pairs=20, seconds=0.5, warmup=5))
            assert row["c_pairs_per_s"] > 0 and row["cpu"] > 0, name
    finally:
        server.stop()
