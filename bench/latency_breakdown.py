"""Where the relay's added latency goes: the first piece's path, leg by leg.

relay_bench.py says how much the relay adds to the first piece; this says where. It runs
the simulator, the relay under a stopwatch (timed_relay.py) and a closed-loop load of
streams from this process, then joins three records of every request by the simulator's
stamp in the first piece (one monotonic clock for all three processes):

    client -> relay        request sent here, until the relay's app has it
    relay -> simulator     the relay's own work, the upstream request, until it arrives
    simulator -> relay     first piece sent, until the relay has its chunk ready
    relay writes           the chunk, into the socket
    relay -> client        until this process has read it

It also lists the relay's garbage-collector pauses and event-loop stalls (with how much of
a stall was the relay's own CPU work rather than waiting for a CPU), how long each process
waited for a CPU (/proc/PID/schedstat), and the slowest requests with what overlapped them.

    .venv/bin/python bench/latency_breakdown.py --streams 100 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import relay_bench as bench
from timed_relay import STALL_PROBE_SECONDS

HERE = Path(__file__).resolve().parent
LEGS = ("client -> relay", "relay -> simulator", "simulator -> relay", "relay writes", "relay -> client")


def waited_for_cpu_seconds(pid: int) -> float:
    """Time the process spent runnable but not running (the scheduler's run-queue wait)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def legs(relay: dict[str, Any], started: float, sim_sent: float, received: float) -> dict[str, float]:
    arrived = float(relay["stamp"])
    return dict(zip(LEGS, (relay["entered"] - started, arrived - relay["entered"], relay["first_ready"] - sim_sent,
                           relay["first_written"] - relay["first_ready"], received - relay["first_written"]),
                    strict=True))


def measure(streams: int, seconds: float, token_delay: float, words: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "timings.json"
        with bench.stack(0.05, token_delay, words, relay_command=[sys.executable, str(HERE / "timed_relay.py")],
                         relay_extra_env={"GPTOMNI_TIMINGS_OUT": str(out)}) as s:
            pids = {"relay": s["relay_pid"], "simulator": s["sim_pid"], "load generator": os.getpid()}
            before = {name: waited_for_cpu_seconds(pid) for name, pid in pids.items()}
            started = time.monotonic()
            timing = asyncio.run(bench.sustained(s["relay"], False, streams, seconds, spread=0.05 + token_delay * words))
            elapsed = time.monotonic() - started
            waited = {name: (waited_for_cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}
        recorded = json.loads(out.read_text())  # written by the relay on exit
    by_stamp = {r["stamp"]: r for r in recorded["requests"]}
    rows = [(legs(by_stamp[stamp], *times), times) for stamp, *times in timing.stamped if stamp in by_stamp]
    return {"rows": rows, "errors": timing.errors, "waited_for_cpu": waited, "started": started,
            "gc_pauses": [p for p in recorded["gc_pauses"] if p[0] >= started],
            "stalls": [s for s in recorded["stalls"] if s[0] >= started], "elapsed": elapsed}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f}"


def print_report(result: dict[str, Any], worst: int) -> None:
    rows = result["rows"]
    print(f"\n{len(rows)} streams measured, {result['errors']} errors; per leg of the first piece's path, ms")
    print(f"{'leg':<20} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    for leg in (*LEGS, "added (sum)"):
        values = [sum(r.values()) if leg == "added (sum)" else r[leg] for r, _ in rows]
        print(f"{leg:<20} {ms(bench.pct(values, 0.5))} {ms(bench.pct(values, 0.9))} {ms(bench.pct(values, 0.99))} "
              f"{ms(max(values, default=float('nan')))}")
    print("\nwaiting for a CPU (ms per second): "
          + ", ".join(f"{name} {seconds * 1000:.0f}" for name, seconds in result["waited_for_cpu"].items()))
    pauses = result["gc_pauses"]
    print("relay GC pauses: " + ("none" if not pauses else ", ".join(
        f"gen {g}: {len(p)} x, p50 {ms(bench.pct(p, 0.5)).strip()} max {ms(max(p)).strip()} ms"
        for g in (0, 1, 2) if (p := [wall for _, wall, gen, _ in pauses if gen == g]))))
    stalls = result["stalls"]
    if stalls:
        busy = sum(cpu for *_, cpu in stalls) / sum(late + STALL_PROBE_SECONDS for _, late, _ in stalls)
        print(f"relay event-loop stalls > 2 ms: {len(stalls)} in {result['elapsed']:.0f} s, longest "
              f"{max(late for _, late, _ in stalls) * 1000:.1f} ms; relay CPU busy {busy:.0%} of that time")
    print(f"\nslowest {worst} requests (ms), with the relay's GC pauses / stalls (start from request start, length)")
    for leg_times, (started, _, received) in sorted(rows, key=lambda row: -sum(row[0].values()))[:worst]:
        overlapping_gc = [f"gc{gen} +{(s - started) * 1000:.0f}/{wall * 1000:.1f}" for s, wall, gen, _ in
                          result["gc_pauses"] if s < received and s + wall > started and wall > 0.001]
        overlapping_stalls = [f"+{(s - started) * 1000:.0f}/{late * 1000:.1f}" for s, late, _ in result["stalls"]
                              if s < received and s + late > started]
        print(f"  added {ms(sum(leg_times.values()))}: " + " ".join(f"{ms(v).strip()}" for v in leg_times.values())
              + f"  gc {overlapping_gc or '-'} stalls {overlapping_stalls or '-'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--token-delay", type=float, default=0.05, help="seconds between pieces (chat-like: 0.05)")
    parser.add_argument("--words", type=int, default=60, help="pieces per answer")
    parser.add_argument("--worst", type=int, default=8, help="slowest requests to list")
    args = parser.parse_args()
    bench.tune_gc_for_serving()
    print_report(measure(args.streams, args.seconds, args.token_delay, args.words), args.worst)


if __name__ == "__main__":
    main()
