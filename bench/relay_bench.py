"""Relay benchmark: overhead, capacity, throughput and memory, against a naive baseline.

Starts three processes on 127.0.0.1 — the GPT-Omni simulator, the relay, and the naive
seed-style relay — then drives them from this process with aiohttp. Every load loop is
bounded in count and time. Prints a table and writes JSON (bench/results/).

    .venv/bin/python bench/relay_bench.py            # full run, a few minutes
    .venv/bin/python bench/relay_bench.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gptomni_common.upstream.protocol import chat_body, chat_headers, chat_url
from gptomni_relay.gc_tuning import tune_gc_for_serving

HERE = Path(__file__).resolve().parent
KEY = "sk-bench-key-0123456789"
PROMPT = {"model": "gptomni", "messages": [{"role": "user", "content": "bench"}]}


@dataclass(frozen=True)
class Surface:
    """One OpenAI endpoint the bench drives: its path, its request body, and the bytes that
    mark the first chunk carrying answer text (the stamp the simulator put in it)."""

    path: str
    body: dict[str, Any]
    first_text: bytes


SURFACES: dict[str, Surface] = {
    "chat": Surface("/v1/chat/completions", PROMPT, b'"content"'),
    "responses": Surface("/v1/responses", {"model": "gptomni", "input": "bench"}, b"response.output_text.delta"),
    "completions": Surface("/v1/completions", {"model": "gptomni", "prompt": "bench"}, b'"text"'),
}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def process(args: list[str], env: dict[str, str] | None = None, ready_url: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while ready_url:
            try:
                import urllib.request

                urllib.request.urlopen(ready_url, timeout=1)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{args[:3]} did not start") from None
                time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Timing:
    ttfb: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    # Time to the first piece minus the time the simulator held the request (from the
    # simulator's stamps): the path's own share, free of the simulator's timer jitter.
    path: list[float] = field(default_factory=list)
    # Per stamped request: the simulator's arrival stamp as sent, then monotonic times of
    # request start, the simulator's send of the first piece, and its arrival here.
    stamped: list[tuple[str, float, float, float]] = field(default_factory=list)
    errors: int = 0


STAMP = re.compile(rb"\[(\d+\.\d+) (\d+\.\d+)\] ")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def post_chat(http: aiohttp.ClientSession, url: str, direct: bool, stream: bool, surface: str = "chat") -> Any:
    """One request: to the relay in OpenAI form on `surface`, or `direct` to the simulator in
    GPT-Omni's own form (the relay's protocol module, so both sides send the same upstream request)."""
    if direct:
        return http.post(chat_url(url), data=chat_body("bench"),
                         headers=chat_headers(url, "session=bench", "gptomni-bench"))
    endpoint = SURFACES[surface]
    return http.post(f"{url}{endpoint.path}", json={**endpoint.body, "stream": stream},
                     headers={"Authorization": f"Bearer {KEY}"})


async def stream_once(http: aiohttp.ClientSession, url: str, direct: bool, timing: Timing,
                      surface: str = "chat") -> None:
    started = time.monotonic()
    marker = SURFACES[surface].first_text
    try:
        async with post_chat(http, url, direct, stream=True, surface=surface) as response:
            if response.status != 200:
                timing.errors += 1
                return
            first = True
            async for chunk in response.content.iter_any():
                if first and (direct or marker in chunk):
                    now = time.monotonic()
                    timing.ttfb.append(now - started)
                    first = False
                    stamp = STAMP.search(chunk)
                    if stamp:
                        arrived, sent = float(stamp[1]), float(stamp[2])
                        timing.path.append((arrived - started) + (now - sent))
                        timing.stamped.append((stamp[1].decode(), started, sent, now))
        timing.total.append(time.monotonic() - started)
    except (TimeoutError, aiohttp.ClientError):
        timing.errors += 1


async def wave(url: str, direct: bool, concurrency: int, rounds: int, budget: float, surface: str = "chat") -> Timing:
    timing = Timing()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=budget)) as http:
        deadline = time.monotonic() + budget
        for _ in range(rounds):
            if time.monotonic() > deadline:
                break
            await asyncio.wait_for(asyncio.gather(*(stream_once(http, url, direct, timing, surface)
                                                    for _ in range(concurrency))),
                                   timeout=budget)
    return timing


async def sustained(url: str, direct: bool, concurrency: int, seconds: float, spread: float,
                    warmup: float | None = None, surface: str = "chat") -> Timing:
    """Closed loop: `concurrency` workers each open a stream, and another when it ends (like
    `wrk -c N`). Each worker starts after a random pause up to `spread` (one stream's
    length), so arrivals are spread as real traffic is, not synchronised bursts; streams
    started during the warm-up (the spread) are not counted."""
    timing, discarded = Timing(), Timing()
    warmup = spread if warmup is None else warmup
    rng = random.Random(1)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        started = time.monotonic()

        async def worker() -> None:
            await asyncio.sleep(rng.uniform(0, spread))
            while time.monotonic() - started < seconds:
                target = timing if time.monotonic() - started > warmup else discarded
                await stream_once(http, url, direct, target, surface)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout=seconds + 60)
    return timing


async def throughput(url: str, direct: bool, total: int, concurrency: int, budget: float,
                     surface: str = "chat") -> float:
    done = 0
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one() -> None:
            nonlocal done
            async with semaphore, post_chat(http, url, direct, stream=False, surface=surface) as response:
                await response.read()
                done += response.status == 200

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(total))), timeout=budget)
        return done / (time.perf_counter() - started)


def relay_env(sim_url: str) -> dict[str, str]:
    return {
        "GPTOMNI_UPSTREAM_URL": sim_url,
        "GPTOMNI_API_KEYS": KEY,
        "GPTOMNI_CREDENTIALS": json.dumps([f"session={i}" for i in range(4)]),
        "GPTOMNI_DEFAULT_MAX_CONCURRENCY": "5000",
        "GPTOMNI_EJECT_PROBE_SECONDS": "0",
        "GPTOMNI_METRICS_PORT": str(free_port()),  # never a fixed port another process may hold
    }


@contextmanager
def stack(first_byte: float, token_delay: float, words: int, naive: bool = False,
          relay_command: list[str] | None = None, relay_extra_env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    sim_port, relay_port, naive_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    with process([sys.executable, str(HERE / "run_simulator.py"), "--port", str(sim_port), "--first-byte-delay",
                  str(first_byte), "--token-delay", str(token_delay), "--answer-words", str(words), "--stamp-times"],
                 ready_url=f"{sim_url}/__simulator__/health") as simulator:
        with process([*(relay_command or [sys.executable, "-m", "gptomni_relay"]), "--host", "127.0.0.1",
                      "--port", str(relay_port)], env={**relay_env(sim_url), **(relay_extra_env or {})},
                     ready_url=f"http://127.0.0.1:{relay_port}/healthz") as relay:
            info: dict[str, Any] = {"sim": sim_url, "relay": f"http://127.0.0.1:{relay_port}", "relay_pid": relay.pid,
                                    "sim_pid": simulator.pid}
            if not naive:
                yield info
                return
            with process([sys.executable, str(HERE / "naive_relay.py"), "--port", str(naive_port), "--upstream", sim_url],
                         ready_url=f"http://127.0.0.1:{naive_port}/docs"):
                info["naive"] = f"http://127.0.0.1:{naive_port}"
                yield info


def summarise(direct: Timing, relayed: Timing) -> dict[str, float]:
    return {
        "direct_ttfb_p50_ms": pct(direct.ttfb, 0.5) * 1000, "direct_ttfb_p99_ms": pct(direct.ttfb, 0.99) * 1000,
        "relay_ttfb_p50_ms": pct(relayed.ttfb, 0.5) * 1000, "relay_ttfb_p99_ms": pct(relayed.ttfb, 0.99) * 1000,
        "overhead_ttfb_p50_ms": (pct(relayed.ttfb, 0.5) - pct(direct.ttfb, 0.5)) * 1000,
        "overhead_ttfb_p99_ms": (pct(relayed.ttfb, 0.99) - pct(direct.ttfb, 0.99)) * 1000,
        "added_first_piece_p50_ms": (pct(relayed.path, 0.5) - pct(direct.path, 0.5)) * 1000,
        "added_first_piece_p99_ms": (pct(relayed.path, 0.99) - pct(direct.path, 0.99)) * 1000,
        "overhead_total_p50_ms": (pct(relayed.total, 0.5) - pct(direct.total, 0.5)) * 1000,
        "overhead_total_p99_ms": (pct(relayed.total, 0.99) - pct(direct.total, 0.99)) * 1000,
        "samples": len(relayed.total), "errors": direct.errors + relayed.errors,
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def relay_cpu_cost(streams: int, surface: str = "chat") -> dict[str, float]:
    """The relay's own CPU time per stream set-up and per streamed piece on `surface`, read
    from /proc: the same number of streams with 2 and with 42 pieces (10 ms apart, so each
    piece is its own read and write), 50 at a time."""
    per_stream = {}
    for pieces in (2, 42):
        with stack(0.0, 0.01, pieces) as s:
            asyncio.run(wave(s["relay"], False, 50, 2, 60, surface))  # warm-up
            before = cpu_seconds(s["relay_pid"])
            timing = asyncio.run(wave(s["relay"], False, 50, streams // 50, 120, surface))
            per_stream[pieces] = (cpu_seconds(s["relay_pid"]) - before) / (streams // 50 * 50)
            if timing.errors:
                raise RuntimeError(f"{timing.errors} streams failed while measuring CPU cost")
    per_piece = (per_stream[42] - per_stream[2]) / 40
    return {"setup_ms": (per_stream[2] - 2 * per_piece) * 1000, "per_piece_us": per_piece * 1e6}


@contextmanager
def relay_on_its_own_core(s: dict[str, Any]) -> Iterator[None]:
    """The relay's threads on the last CPU; the simulator and this load generator on the
    others, for the direct and the relayed runs alike. This is the relay as a pod with a
    CPU request of its own sees it, without the two stand-ins competing for its core."""
    cpus = sorted(os.sched_getaffinity(0))
    own, rest = {cpus[-1]}, set(cpus[:-1])
    before = os.sched_getaffinity(0)
    for pid, cores in ((s["relay_pid"], own), (s["sim_pid"], rest)):
        for thread in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(thread), cores)
    os.sched_setaffinity(0, rest)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# Simulator profiles: seconds to the first byte, seconds between pieces, pieces.
# Chat-like: 60 pieces 50 ms apart (20 pieces/s, ~3 s). Fast and short: 20 pieces 20 ms
# apart (44 pieces/s, ~0.45 s; at 100 streams, 220 new streams and 4,400 pieces a second).
# Slow: 20 pieces 200 ms apart (5 pieces/s), the cadence capacity is measured at.
PROFILES: dict[str, tuple[float, float, int]] = {
    "chat": (0.05, 0.05, 60),
    "fast": (0.05, 0.02, 20),
    "slow": (0.05, 0.2, 20),
}


def overhead_levels(first_byte: float, token_delay: float, words: int, levels: list[int], seconds: float,
                    bursts: bool = False, relay_own_core: bool = False,
                    relay_extra_env: dict[str, str] | None = None, surface: str = "chat") -> dict[str, Any]:
    stream_seconds = first_byte + token_delay * words
    out: dict[str, Any] = {"sustained": {}, "bursts": {}}
    with (stack(first_byte, token_delay, words, relay_extra_env=relay_extra_env) as s,
          relay_on_its_own_core(s) if relay_own_core else nullcontext()):
        for c in levels:
            direct = asyncio.run(sustained(s["sim"], True, c, seconds, spread=stream_seconds))
            relayed = asyncio.run(sustained(s["relay"], False, c, seconds, spread=stream_seconds, surface=surface))
            out["sustained"][c] = summarise(direct, relayed)
        for c in levels if bursts else []:
            direct = asyncio.run(wave(s["sim"], True, c, 3, 120))
            relayed = asyncio.run(wave(s["relay"], False, c, 3, 120, surface))
            out["bursts"][c] = summarise(direct, relayed)
    return out


def surfaces_compared(streams: int, seconds: float) -> dict[str, dict[str, float]]:
    """The same answers through each OpenAI endpoint: the relay's CPU per set-up and per
    piece, the overhead at 100 fast streams, and short non-streamed requests per second."""
    rows: dict[str, dict[str, float]] = {}
    for surface in SURFACES:
        overhead = overhead_levels(*PROFILES["fast"], [100], seconds, surface=surface)["sustained"][100]
        with stack(0.0, 0.0, 3) as s:
            rps = asyncio.run(throughput(s["relay"], False, streams, 64, 120, surface))
        rows[surface] = {**relay_cpu_cost(streams, surface), **overhead, "rps_short_non_streamed": rps}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "relay_bench.json")
    args = parser.parse_args()
    tune_gc_for_serving()  # the load generator's own GC pauses would land in both columns
    levels = [1, 100] if args.quick else [1, 100, 500]
    capacity_levels = [250, 500] if args.quick else [250, 500, 750, 1000, 1500]
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()}}
    results["relay_cpu"] = relay_cpu_cost(300 if args.quick else 1000)
    results["surfaces"] = surfaces_compared(300 if args.quick else 1000, 4 if args.quick else 8)
    results["overhead_chat"] = overhead_levels(*PROFILES["chat"], levels, 8 if args.quick else 20)
    results["overhead_fast"] = overhead_levels(*PROFILES["fast"], levels, 4 if args.quick else 8, bursts=True)
    if len(os.sched_getaffinity(0)) >= 2:
        results["overhead_chat_own_core"] = overhead_levels(*PROFILES["chat"], [1, 100], 8 if args.quick else 20,
                                                            relay_own_core=True)
    with stack(*PROFILES["fast"], naive=True) as s:
        naive = asyncio.run(wave(s["naive"], False, 100, 1, 120))
        relayed = asyncio.run(wave(s["relay"], False, 100, 1, 120))
        results["naive_vs_relay_100_streams"] = {
            "naive_total_p50_ms": pct(naive.total, 0.5) * 1000, "naive_total_p99_ms": pct(naive.total, 0.99) * 1000,
            "relay_total_p50_ms": pct(relayed.total, 0.5) * 1000, "relay_total_p99_ms": pct(relayed.total, 0.99) * 1000,
            "naive_errors": naive.errors,
        }
    # Capacity at a slow chat cadence: 5 pieces/s per stream.
    seconds = 8 if args.quick else 16
    with stack(*PROFILES["slow"]) as s:
        capacity = {}
        for c in capacity_levels:
            direct = asyncio.run(sustained(s["sim"], True, c, seconds, spread=4.0))
            relayed = asyncio.run(sustained(s["relay"], False, c, seconds, spread=4.0))
            capacity[c] = summarise(direct, relayed)
            if capacity[c]["added_first_piece_p99_ms"] > 50 or capacity[c]["errors"]:
                break
        results["capacity_5_pieces_per_second"] = capacity
        results["max_streams_p99_overhead_under_50ms"] = max(
            (c for c, r in capacity.items() if r["added_first_piece_p99_ms"] < 50 and not r["errors"]), default=0)
    # Short non-streamed answers: requests per second.
    with stack(0.0, 0.0, 3) as s:
        total = 1000 if args.quick else 3000
        results["rps_short_non_streamed"] = {
            "direct": asyncio.run(throughput(s["sim"], True, total, 64, 120)),
            "relay": asyncio.run(throughput(s["relay"], False, total, 64, 120)),
        }
    # Memory: hold N streams open (1 s between pieces) and read the relay's RSS.
    with stack(0.0, 1.0, 30) as s:
        n = 200 if args.quick else 500

        async def hold() -> dict[str, float]:
            idle = rss_kb(s["relay_pid"])
            opened = asyncio.Event()
            counter = 0
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

                async def one() -> None:
                    nonlocal counter
                    async with http.post(f"{s['relay']}/v1/chat/completions", json={**PROMPT, "stream": True},
                                         headers={"Authorization": f"Bearer {KEY}"}) as response:
                        await response.content.readany()
                        counter += 1
                        if counter == n:
                            opened.set()
                        await asyncio.sleep(3)

                tasks = [asyncio.create_task(one()) for _ in range(n)]
                await asyncio.wait_for(opened.wait(), 60)
                await asyncio.sleep(0.5)
                busy = rss_kb(s["relay_pid"])
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            return {"streams": n, "rss_idle_kb": idle, "rss_open_kb": busy, "kb_per_stream": (busy - idle) / n}

        results["memory"] = asyncio.run(hold())
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float))
    print(f"\nJSON written to {args.out}")


def print_overhead_rows(rows: dict[int, dict[str, float]]) -> None:
    """`added` is the relay's own share of the time to the first piece (simulator stamps);
    TTFB and total are end-to-end differences, which also carry the simulator's jitter."""
    print(f"{'streams':>8} {'added p50':>10} {'added p99':>10} {'TTFB p50':>9} {'TTFB p99':>9} "
          f"{'total p50':>10} {'total p99':>10} {'samples':>8} {'errors':>7}")
    for c, r in rows.items():
        print(f"{c:>8} {r['added_first_piece_p50_ms']:>10.2f} {r['added_first_piece_p99_ms']:>10.2f} "
              f"{r['overhead_ttfb_p50_ms']:>9.2f} {r['overhead_ttfb_p99_ms']:>9.2f} {r['overhead_total_p50_ms']:>10.2f} "
              f"{r['overhead_total_p99_ms']:>10.2f} {r['samples']:>8} {r['errors']:>7}")


def print_surfaces(rows: dict[str, dict[str, float]]) -> None:
    print("\nby endpoint: relay CPU, overhead at 100 fast streams (ms), short non-streamed req/s")
    print(f"{'endpoint':>12} {'set-up ms':>10} {'piece us':>9} {'added p50':>10} {'added p99':>10} "
          f"{'total p99':>10} {'req/s':>7} {'errors':>7}")
    for surface, r in rows.items():
        print(f"{surface:>12} {r['setup_ms']:>10.2f} {r['per_piece_us']:>9.0f} {r['added_first_piece_p50_ms']:>10.2f} "
              f"{r['added_first_piece_p99_ms']:>10.2f} {r['overhead_total_p99_ms']:>10.2f} "
              f"{r['rps_short_non_streamed']:>7.0f} {r['errors']:>7}")


def print_table(results: dict[str, Any]) -> None:
    print(f"\nmachine: {results['machine']}")
    cpu = results["relay_cpu"]
    print(f"\nrelay CPU: {cpu['setup_ms']:.2f} ms per stream set-up, {cpu['per_piece_us']:.0f} us per streamed piece")
    print_surfaces(results["surfaces"])
    for key, profile in (("overhead_chat", "chat-like: 20 pieces/s, ~3 s answers"),
                         ("overhead_fast", "fast: 44 pieces/s, ~0.45 s answers"),
                         ("overhead_chat_own_core", "chat-like, the relay on a core of its own "
                                                    "(simulator and load generator on the other)")):
        if key not in results:
            continue
        for mode, title in (("sustained", "sustained (closed loop, N streams always open)"),
                            ("bursts", "bursts (N streams started at once)")):
            if not results[key][mode]:
                continue
            print(f"\nrelay overhead, {profile}, {title}: relay minus direct-to-simulator, ms")
            print_overhead_rows(results[key][mode])
    print("\ncapacity at 5 pieces/s per stream (sustained), ms")
    print_overhead_rows(results["capacity_5_pieces_per_second"])
    print(f"max streams with p99 TTFB overhead < 50 ms: {results['max_streams_p99_overhead_under_50ms']}")
    n = results["naive_vs_relay_100_streams"]
    print("\n100 streams started at once, total time per stream (ms)   p50      p99")
    print(f"  naive (blocking call in async handler)           {n['naive_total_p50_ms']:>8.0f} {n['naive_total_p99_ms']:>8.0f}")
    print(f"  gptomni relay                                    {n['relay_total_p50_ms']:>8.0f} {n['relay_total_p99_ms']:>8.0f}")
    print(f"  ratio p99 naive/relay: {n['naive_total_p99_ms'] / n['relay_total_p99_ms']:.1f}x")
    rps = results["rps_short_non_streamed"]
    print(f"\nshort non-streamed answers: relay {rps['relay']:.0f} req/s, simulator alone {rps['direct']:.0f} req/s")
    m = results["memory"]
    print(f"memory: {m['streams']} open streams, RSS {m['rss_idle_kb'] / 1024:.1f} -> {m['rss_open_kb'] / 1024:.1f} MiB, "
          f"{m['kb_per_stream']:.1f} KB per stream")


if __name__ == "__main__":
    main()
