"""What the shared pool adds per request: acquire + release, in-process against Redis on loopback.

    .venv/bin/python bench/shared_pool_cost.py          # the table, about three minutes
    .venv/bin/python bench/shared_pool_cost.py --e2e    # and the relay local vs shared under load
                                                        # (alternating rounds, as bench/ab_compare.py)
    .venv/bin/python bench/shared_pool_cost.py --e2e --against 15e86ff   # and that revision's shared pool

Starts its own redis-server (Debian's, scripts/provision/20-redis.sh) on a free loopback
port without persistence and stops it by PID. For 1, 8 and 32 credentials it measures, on
the relay's event loop (uvloop):

- **acquire**: the time a request waits for its lease (on the request path);
- **pair**: acquire, release, and the release's write landing in the store (the release
  itself is a background write: the request does not wait for it);
- **relay CPU** and **Redis CPU** per pair (process time of this process; Redis's
  `used_cpu_*` from INFO);
- the same with 50 requests acquiring at once (p50/p99 of acquire, pairs per second, and
  how many commands shared one write to Redis on average).

Each row is the median of `--repeats` runs (local and Redis alternating): one run's
numbers move by half on a small shared machine. Every loop is bounded in count and time.
Not a test: numbers are printed, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import redis

from gptomni_relay.cli import event_loop_factory
from gptomni_relay.core.pool import Credential, CredentialPool
from gptomni_relay.core.shared_pool import SharedCredentialPool
from gptomni_relay.core.shared_store import SharedStore
from gptomni_relay.infra.redis_connection import connect_store

CREDENTIAL_COUNTS = (1, 8, 32)
CONCURRENCY = 50


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; run: sudo bash scripts/provision/20-redis.sh")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port, socket_timeout=2)
            for _ in range(200):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


def redis_cpu(url: str) -> float:
    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def credentials(count: int) -> list[Credential]:
    return [Credential(f"bench/{i}", f"session=bench-{i}", max_concurrency=10_000) for i in range(count)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def sequential(pool: Any, pairs: int, budget: float) -> dict[str, float]:
    acquire_us: list[float] = []
    pair_us: list[float] = []
    flush = getattr(pool, "flush", None)
    cpu = time.process_time()
    deadline = time.monotonic() + budget
    for _ in range(pairs):
        started = time.perf_counter()
        lease = await pool.acquire()
        acquired = time.perf_counter()
        lease.release()
        if flush is not None:
            await flush(5)
        pair_us.append((time.perf_counter() - started) * 1e6)
        acquire_us.append((acquired - started) * 1e6)
        if time.monotonic() > deadline:
            break
    cpu_us = (time.process_time() - cpu) * 1e6 / len(pair_us)
    return {"acquire_p50": statistics.median(acquire_us), "acquire_p99": pct(acquire_us, 0.99),
            "pair_p50": statistics.median(pair_us), "relay_cpu": cpu_us, "pairs": len(pair_us)}


async def concurrent(pool: Any, seconds: float, store: SharedStore | None) -> dict[str, float]:
    acquire_us: list[float] = []
    stop_at = time.monotonic() + seconds
    batches_before = store.batches_sent if store is not None else 0

    async def one_request_after_another() -> None:
        for _ in range(100_000):  # bounded; the clock ends it first
            if time.monotonic() > stop_at:
                return
            started = time.perf_counter()
            lease = await pool.acquire()
            acquire_us.append((time.perf_counter() - started) * 1e6)
            await asyncio.sleep(0)  # the request's own work would run here
            lease.release()

    started = time.perf_counter()
    await asyncio.gather(*(one_request_after_another() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    batches = store.batches_sent - batches_before if store is not None else 0
    return {"c_acquire_p50": statistics.median(acquire_us), "c_acquire_p99": pct(acquire_us, 0.99),
            "c_pairs_per_s": len(acquire_us) / elapsed,
            "c_per_batch": 2 * len(acquire_us) / batches if batches else 0.0}


async def measure(url: str | None, count: int, pairs: int, seconds: float) -> dict[str, float]:
    pool: Any
    store = None
    if url is None:
        pool = CredentialPool()
    else:
        store = connect_store(url, None, 1.0, f"bench{count}", lease_seconds=30)
        pool = SharedCredentialPool(store, replica_id="bench", expected_replicas=1, lease_seconds=30,
                                    sync_seconds=0.5)
    pool.replace(credentials(count))
    await pool.start()
    try:
        await sequential(pool, 200, 10)  # warm-up: connections, script cache
        before = redis_cpu(url) if url else 0.0
        row = await sequential(pool, pairs, seconds)
        row["redis_cpu"] = (redis_cpu(url) - before) * 1e6 / row["pairs"] if url else 0.0
        row |= await concurrent(pool, seconds, store)
        return row
    finally:
        await pool.stop()


COLUMNS = [("acquire_p50", "acquire p50"), ("acquire_p99", "acquire p99"), ("pair_p50", "pair p50"),
           ("relay_cpu", "relay CPU"), ("redis_cpu", "Redis CPU"), ("c_acquire_p50", f"{CONCURRENCY}x acquire p50"),
           ("c_acquire_p99", f"{CONCURRENCY}x acquire p99"), ("c_pairs_per_s", "pairs/s"),
           ("c_per_batch", "cmds/write")]


def median_row(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def print_table(rows: dict[tuple[str, int], dict[str, float]], repeats: int) -> None:
    print(f"\nacquire + release per request, µs; medians of {repeats} runs "
          f"(pairs/s and commands per write: {CONCURRENCY} requests at once)")
    print(f"{'pool':>8} {'creds':>5} " + " ".join(f"{title:>17}" for _, title in COLUMNS))
    for (mode, count), row in rows.items():
        print(f"{mode:>8} {count:>5} " + " ".join(f"{row[key]:>17.1f}" for key, _ in COLUMNS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5000, help="sequential pairs per row (bounded by --seconds)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time bound of each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (the table shows medians)")
    parser.add_argument("--e2e", action="store_true", help="also the relay, local vs shared pool, under load")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=("chat", "fast", "slow"), default="chat")
    parser.add_argument("--against", metavar="REVISION", help="with --e2e: also that git revision's shared pool")
    args = parser.parse_args()
    rows: dict[tuple[str, int], dict[str, float]] = {}
    with redis_server() as url, asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        for count in CREDENTIAL_COUNTS:
            runs: dict[str, list[dict[str, float]]] = {"local": [], "redis": []}
            for _ in range(args.repeats):
                runs["local"].append(runner.run(measure(None, count, args.pairs, args.seconds)))
                runs["redis"].append(runner.run(measure(url, count, args.pairs, args.seconds)))
            for mode, measured in runs.items():
                rows[(mode, count)] = median_row(measured)
        print_table(rows, args.repeats)
        if args.e2e:
            import ab_compare

            with ExitStack() as stack:
                sides: dict[str, dict[str, str]] = {"local": {}, "shared": {"GPTOMNI_REDIS_URL": url}}
                if args.against:
                    sides[f"shared@{args.against}"] = {
                        "GPTOMNI_REDIS_URL": url, "PYTHONPATH": stack.enter_context(ab_compare.service_path(args.against))}
                results = ab_compare.alternate(sides, args.streams, args.profile, args.rounds, 10)
            ab_compare.print_medians(results, args.streams, args.profile)


if __name__ == "__main__":
    main()
