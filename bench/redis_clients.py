"""Which Redis client the shared pool should speak through: the same script calls, four clients.

    .venv/bin/python bench/redis_clients.py                # the table, about two minutes
    .venv/bin/python bench/redis_clients.py --repeats 5

Every request of the shared pool sends two commands: the acquire script (EVALSHA of
`ACQUIRE` with every credential's keys and arguments) and the release (ZREM of its lease).
This sends exactly those, with the arguments the store itself builds (captured from
`SharedStore.acquire`), through:

- **own**: the relay's earlier pipelined connection (an asyncio protocol over hiredis),
  kept here only as the bench's baseline (bench/own_connection.py);
- **redis-py**: `redis.asyncio` with hiredis installed and a `Script` object (EVALSHA,
  loading the script on NOSCRIPT), one connection pool;
- **coredis**: `coredis.Redis` (multiplexes commands on one connection), `register_script`;
- **glide**: `valkey-glide`'s `GlideClient` (a Rust core in the process), `invoke_script`.

For 1 and 8 credentials, on the relay's event loop (uvloop where the client allows it):
the pair's latency (acquire then release, one after the other), the relay's CPU per pair
(process time: a client's own threads count), and 50 requests at once (pairs per second,
acquire p99). Each row is the median of `--repeats` runs, clients alternating. Every loop
is bounded in count and time. Numbers are printed, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import hiredis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_pool_cost import pct, redis_server  # noqa: E402

from gptomni_relay.cli import event_loop_factory  # noqa: E402
from gptomni_relay.core.shared_store import ACQUIRE, Candidate  # noqa: E402

CONCURRENCY = 50
CREDENTIAL_COUNTS = (1, 8)
CLIENTS = ("own", "redis-py", "coredis", "glide")


class Call:
    """One request's two commands, as the shared store sends them."""

    def __init__(self, candidates: list[Candidate], keys: list[str], args: list[str], member: str) -> None:
        self.candidates, self.keys, self.args, self.member = candidates, keys, args, member
        self.lease_key = keys[0]


def captured_calls(count: int, members: int) -> list[Call]:
    """The acquire's keys and arguments as SharedStore builds them (whatever the policy's
    layout is now), read back from the bytes it would write."""
    from own_connection import captured_acquire

    calls = []
    candidates = [Candidate(f"bench/{i}", 10_000, 1, f"fp{i}") for i in range(count)]  # one list: prepared once
    for m in range(members):
        member = f"bench:{m}"
        parts = captured_acquire(candidates, member)
        numkeys = int(parts[2])
        keys, args = parts[3:3 + numkeys], parts[3 + numkeys:]
        calls.append(Call(candidates, keys, args, member))
    return calls


Client = tuple[Callable[[Call], Awaitable[Any]], Callable[[Call], Awaitable[Any]], Callable[[], Awaitable[None]]]


async def own_client(url: str) -> Client:
    from own_connection import own_pair

    return await own_pair(url)


async def redis_py_client(url: str) -> Client:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url, socket_timeout=1.0)
    script = client.register_script(ACQUIRE)

    async def acquire(call: Call) -> Any:
        return await script(keys=call.keys, args=call.args)

    async def release(call: Call) -> Any:
        return await client.zrem(call.lease_key, call.member)

    return acquire, release, client.aclose


async def coredis_client(url: str) -> Client:
    import coredis

    client = coredis.Redis.from_url(url, stream_timeout=1.0)
    context = client.__asynccontextmanager__()
    await context.__aenter__()
    script = client.register_script(ACQUIRE)

    async def acquire(call: Call) -> Any:
        return await script(keys=call.keys, args=call.args)

    async def release(call: Call) -> Any:
        return await client.zrem(call.lease_key, [call.member])

    async def close() -> None:
        await context.__aexit__(None, None, None)

    return acquire, release, close


async def glide_client(url: str) -> Client:
    from glide import GlideClient, GlideClientConfiguration, NodeAddress, Script
    from redis.asyncio.connection import parse_url

    options = parse_url(url)
    client = await GlideClient.create(GlideClientConfiguration(
        [NodeAddress(options["host"], int(options["port"]))], request_timeout=1000))
    script = Script(ACQUIRE)

    async def acquire(call: Call) -> Any:
        return await client.invoke_script(script, keys=call.keys, args=call.args)

    async def release(call: Call) -> Any:
        return await client.zrem(call.lease_key, [call.member])

    return acquire, release, client.close


FACTORIES = {"own": own_client, "redis-py": redis_py_client, "coredis": coredis_client, "glide": glide_client}


async def measure(client_name: str, url: str, count: int, pairs: int, seconds: float,
                  warmup: int = 200) -> dict[str, float]:
    calls = captured_calls(count, CONCURRENCY)
    acquire, release, close = await FACTORIES[client_name](url)
    try:
        for i in range(warmup):  # warm-up: connections, the script cache
            call = calls[i % len(calls)]
            picked = await acquire(call)
            # the same work for every client: a slot taken (own: its index; the others: the script's reply)
            assert picked == 0 or (isinstance(picked, list) and int(picked[0]) >= 1), (client_name, picked)
            assert int(await release(call)) == 1, client_name
        pair_us: list[float] = []
        cpu = time.process_time()
        deadline = time.monotonic() + seconds
        for i in range(pairs):
            call = calls[i % len(calls)]
            started = time.perf_counter()
            await acquire(call)
            await release(call)
            pair_us.append((time.perf_counter() - started) * 1e6)
            if time.monotonic() > deadline:
                break
        row = {"pair_p50": statistics.median(pair_us), "pair_p99": pct(pair_us, 0.99),
               "cpu": (time.process_time() - cpu) * 1e6 / len(pair_us)}
        acquire_us: list[float] = []
        stop_at = time.monotonic() + seconds

        async def worker(call: Call) -> None:
            for _ in range(100_000):  # bounded; the clock ends it first
                if time.monotonic() > stop_at:
                    return
                started = time.perf_counter()
                await acquire(call)
                acquire_us.append((time.perf_counter() - started) * 1e6)
                await release(call)

        cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker(call) for call in calls))
        elapsed = time.perf_counter() - started
        row |= {"c_pairs_per_s": len(acquire_us) / elapsed, "c_acquire_p99": pct(acquire_us, 0.99),
                "c_cpu": (time.process_time() - cpu) * 1e6 / len(acquire_us)}
        return row
    finally:
        await close()


COLUMNS = [("pair_p50", "pair p50 µs"), ("pair_p99", "pair p99 µs"), ("cpu", "CPU/pair µs"),
           ("c_pairs_per_s", f"{CONCURRENCY}x pairs/s"), ("c_acquire_p99", f"{CONCURRENCY}x acq p99 µs"),
           ("c_cpu", f"{CONCURRENCY}x CPU/pair µs")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3000, help="sequential pairs per run (bounded by --seconds)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time bound of each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (the table shows medians)")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    args = parser.parse_args()
    names = args.clients.split(",")
    rows: dict[tuple[str, int], dict[str, float]] = {}
    with redis_server() as url:
        for count in CREDENTIAL_COUNTS:
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
            for _ in range(args.repeats):
                for name in names:
                    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                        runs[name].append(runner.run(measure(name, url, count, args.pairs, args.seconds)))
            for name, measured in runs.items():
                rows[(name, count)] = {key: statistics.median(run[key] for run in measured) for key in measured[0]}
    print(f"\nacquire script + release through each client, medians of {args.repeats} runs")
    print("| client | creds | " + " | ".join(title for _, title in COLUMNS) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in COLUMNS) + " |")
    for (name, count), row in rows.items():
        print(f"| {name} | {count} | " + " | ".join(f"{row[key]:,.0f}" for key, _ in COLUMNS) + " |")


if __name__ == "__main__":
    assert hiredis  # redis-py picks its hiredis parser only when hiredis is installed
    main()
