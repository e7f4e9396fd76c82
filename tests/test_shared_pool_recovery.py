"""The shared pool around a store outage, step by step: two or three pools in this
process on one real Redis, their sync ticks driven by hand (interleavings a timer would
make rare), the cookie's limit counted over every pool's book."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gptomni_common.upstream.protocol import Outcome
from gptomni_relay.core.errors import AllBusy
from gptomni_relay.core.pool import Credential, PoolMode
from gptomni_relay.core.shared_pool import SharedCredentialPool, SharedLease
from gptomni_relay.infra.redis_connection import connect_store
from tests.polling import FakeClock, eventually
from tests.redis_server import RedisServer

LEASE = 1.0


def cookie(credential_id: str, limit: int) -> Credential:
    return Credential(credential_id, f"session={credential_id}", max_concurrency=limit)


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[Callable[..., object]]:
    made: list[SharedCredentialPool] = []

    async def make(name: str, credential: Credential, expected: int = 2,
                   clock: FakeClock | None = None) -> SharedCredentialPool:
        store = connect_store(redis_server.url, None, 0.5, "recovery", LEASE)
        # A sync period longer than any test: ticks come from sync_once() calls only.
        pool = SharedCredentialPool(store, replica_id=name, expected_replicas=expected, lease_seconds=LEASE,
                                    sync_seconds=3600, **({"clock": clock} if clock else {}))
        pool.replace([credential])
        await pool.start()
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.stop()


async def tick(*pools: SharedCredentialPool) -> None:
    for pool in pools:
        await pool.sync_once()


async def take(pool: SharedCredentialPool, count: int) -> list[SharedLease]:
    """`count` acquires at once; the leases of those that got one."""
    results = await asyncio.gather(*(pool.acquire() for _ in range(count)), return_exceptions=True)
    assert all(isinstance(r, SharedLease | AllBusy) for r in results), results
    return [r for r in results if isinstance(r, SharedLease)]


def in_flight(*pools: SharedCredentialPool) -> int:
    return sum(pool.total_in_flight() for pool in pools)


async def test_acquires_while_settling_count_each_other(replicas, redis_server: RedisServer) -> None:  # noqa: ANN001
    a, b = await replicas("a", cookie("c", 2)), await replicas("b", cookie("c", 2))
    await tick(a, b)
    redis_server.stop()
    await tick(a, b)
    assert len(await take(b, 2)) == 1  # B's share, in fallback
    redis_server.start()
    await tick(a)  # A is back first and settles; B's tick comes later
    assert a.store_up and a.mode is PoolMode.FALLBACK
    assert len(await take(a, 2)) == 1  # two at once: the second sees the first
    assert in_flight(a, b) == 2


async def test_the_first_replica_back_keeps_the_share_it_had(replicas, redis_server: RedisServer) -> None:  # noqa: ANN001
    # A credential whose remainder slot (3 over 2 replicas) goes to rank 0: "a" before the outage.
    credential_id = next(f"k{i}" for i in range(100) if zlib.crc32(f"k{i}".encode()) % 2 == 0)
    a, b = await replicas("a", cookie(credential_id, 3)), await replicas("b", cookie(credential_id, 3))
    await tick(a, b)
    assert (a.share(cookie(credential_id, 3)), b.share(cookie(credential_id, 3))) == (2, 1)
    redis_server.stop()
    await tick(a, b)
    assert len(await take(a, 3)) == 2 and len(await take(b, 3)) == 1
    redis_server.start()
    await tick(b)  # B is back first: alone in the store it has rank 0 now, but A still counts on the old ranks
    assert len(await take(b, 2)) == 0
    assert in_flight(a, b) == 3


async def rejoin_holding_a_lease(a: Any, redis_server: RedisServer) -> tuple[Any, asyncio.Future[None]]:
    """A lease taken in fallback during an outage, then the store back and the first
    registration on its way (not yet answered)."""
    redis_server.stop()
    await tick(a)
    [lease] = await take(a, 1)
    redis_server.start()
    rejoining = asyncio.ensure_future(a.sync_once())
    for _ in range(5):
        await asyncio.sleep(0)
    return lease, rejoining


async def test_a_release_during_re_registration_leaves_nothing_in_the_store(
        replicas, redis_server: RedisServer) -> None:  # noqa: ANN001
    a = await replicas("a", cookie("c", 2), expected=1)
    lease, rejoining = await rejoin_holding_a_lease(a, redis_server)
    lease.release()
    await rejoining
    await tick(a)
    assert a.total_in_flight() == 0
    assert redis_server.client().zcard("{recovery}:leases:c") == 0


async def test_a_rate_limit_during_re_registration_reaches_the_store(replicas, redis_server: RedisServer) -> None:  # noqa: ANN001
    a = await replicas("a", cookie("c", 2), expected=1)
    lease, rejoining = await rejoin_holding_a_lease(a, redis_server)
    lease.report(Outcome.RATE_LIMITED, retry_after=30)  # in fallback still: learnt locally only
    lease.release()
    await rejoining
    assert 25_000 < redis_server.client().pttl("{recovery}:cooling:c") <= 30_000  # the others see it too


async def test_an_idle_replica_regains_its_share_one_lease_time_into_an_outage(
        replicas, redis_server: RedisServer) -> None:  # noqa: ANN001
    clock = FakeClock()  # the pool's own clock times the outage's excess window
    a, b = await replicas("a", cookie("c", 2)), await replicas("b", cookie("c", 2), clock=clock)
    held = await take(a, 2)  # beyond A's share of 1
    await tick(a, b)
    redis_server.stop()
    await tick(a, b)
    for lease in held:
        lease.release()
    assert b.share(cookie("c", 2)) == 0  # A's excess may still run
    clock.advance(LEASE - 0.01)
    await tick(b)  # ticks keep failing meanwhile
    assert b.share(cookie("c", 2)) == 0  # not before a lease time from the outage's start
    clock.advance(0.02)
    await tick(b)
    assert b.share(cookie("c", 2)) == 1  # A's excess would have expired unrenewed by now


async def test_a_store_gone_between_commands_is_noticed_without_one(replicas, redis_server: RedisServer) -> None:  # noqa: ANN001
    a, b = await replicas("a", cookie("c", 2)), await replicas("b", cookie("c", 2))
    await tick(a, b)
    assert a.mode is PoolMode.SHARED and b.mode is PoolMode.SHARED
    redis_server.stop()  # neither pool sends anything: their idle connections close
    await eventually(lambda: a.mode is PoolMode.FALLBACK and b.mode is PoolMode.FALLBACK, timeout=10, step=0.02,
                     what="both pools noticing the closed connection")
