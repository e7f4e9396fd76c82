"""Compare the relay at two git revisions under the same load, in alternating rounds.

On a small shared machine one run's p99 moves by a factor of two from run to run
(docs/performance.md), so "before" and "after" measured minutes apart say little. This
runs the relay of both revisions against one simulator profile in turns (A, B, A, B, ...)
and prints every round and the median of each column.

    .venv/bin/python bench/ab_compare.py HEAD~1            # HEAD~1 against the work tree
    .venv/bin/python bench/ab_compare.py main HEAD --streams 500 --profile fast --rounds 6

A revision is checked out into a temporary git worktree and its relay started with that
worktree's `service/` first on PYTHONPATH; the work tree is used as it is ("worktree").
The simulator and the load generator are always the work tree's, so only the relay differs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import relay_bench as bench

ROOT = Path(__file__).resolve().parent.parent
WORK_TREE = "worktree"
COLUMNS = ("added_first_piece_p50_ms", "added_first_piece_p99_ms", "overhead_ttfb_p99_ms", "overhead_total_p99_ms")


@contextmanager
def service_path(revision: str) -> Iterator[str]:
    """The `service/` directory holding the relay's code at `revision`."""
    if revision == WORK_TREE:
        yield str(ROOT / "service")
        return
    with tempfile.TemporaryDirectory() as scratch:
        checkout = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(checkout), revision], check=True)
        try:
            yield str(checkout / "service")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)], check=False)


def one_round(relay_env: dict[str, str], streams: int, profile: str, seconds: float,
              surface: str = "chat") -> dict[str, float]:
    return bench.overhead_levels(*bench.PROFILES[profile], [streams], seconds,
                                 relay_extra_env=relay_env, surface=surface)["sustained"][streams]


def alternate(sides: dict[str, dict[str, str]], streams: int, profile: str, rounds: int,
              seconds: float, surface: str = "chat") -> dict[str, list[dict[str, float]]]:
    """Runs each side's relay (its extra environment) in turns, `rounds` times; prints each round."""
    results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for round_number in range(rounds):
        for side, relay_env in sides.items():
            row = one_round(relay_env, streams, profile, seconds, surface)
            results[side].append(row)
            print(f"round {round_number + 1} {side:>12}: "
                  + "  ".join(f"{column.removesuffix('_ms')} {row[column]:7.2f}" for column in COLUMNS)
                  + f"  errors {row['errors']}", flush=True)
    return results


def print_medians(results: dict[str, list[dict[str, float]]], streams: int, profile: str) -> None:
    rounds = len(next(iter(results.values())))
    print(f"\nmedians over {rounds} rounds, {streams} streams, profile {profile} (ms)")
    print(f"{'side':>12} " + " ".join(f"{column.removesuffix('_ms'):>26}" for column in COLUMNS))
    for side, rows in results.items():
        print(f"{side:>12} " + " ".join(f"{statistics.median(r[c] for r in rows):>26.2f}" for c in COLUMNS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="git revision, or 'worktree'")
    parser.add_argument("b", nargs="?", default=WORK_TREE, help="git revision, or 'worktree' (the default)")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--profile", choices=sorted(bench.PROFILES), default="chat")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per revision")
    parser.add_argument("--seconds", type=float, default=10, help="load per round and side")
    parser.add_argument("--surface", choices=sorted(bench.SURFACES), default="chat",
                        help="the endpoint driven (both revisions must serve it)")
    parser.add_argument("--env", action="append", default=[], metavar="SIDE:NAME=VALUE",
                        help="an extra setting for one side's relay (SIDE is a or b), e.g. b:GPTOMNI_API_KEYS=...")
    args = parser.parse_args()
    bench.tune_gc_for_serving()
    with ExitStack() as stack:
        sides = {revision: {"PYTHONPATH": stack.enter_context(service_path(revision))} for revision in (args.a, args.b)}
        for side, setting in (extra.split(":", 1) for extra in args.env):
            name, value = setting.split("=", 1)
            sides[args.a if side == "a" else args.b][name] = value
        results = alternate(sides, args.streams, args.profile, args.rounds, args.seconds, args.surface)
    print_medians(results, args.streams, args.profile)


if __name__ == "__main__":
    main()
