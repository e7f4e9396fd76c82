"""The pool's two backends behind one face, for tests that must hold for both: the
in-process `CredentialPool` and the `SharedCredentialPool` on a real Redis (its selection
and cooldowns are the Lua's). Time is a `FakeClock` for the pool's own book; for Redis,
whose cooldowns run on its own clock, `advance` moves every cooldown in the store closer
to its end by the same amount."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gptomni_relay.core.pool import Credential, CredentialPool, CredentialStatus
from gptomni_relay.core.shared_pool import SharedCredentialPool
from gptomni_relay.infra.redis_connection import connect_store
from tests.polling import FakeClock
from tests.redis_server import RedisServer

BASE, MAX = 5.0, 40.0  # the cooldowns of every backend here
PREFIX = "selection"


class InProcess:
    name = "in-process"

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.pool = CredentialPool(cooldown_base_seconds=BASE, cooldown_max_seconds=MAX, clock=self.clock)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def replace(self, credentials: Iterable[Credential]) -> None:
        self.pool.replace(credentials)

    async def acquire(self, exclude: frozenset[str] = frozenset()) -> Any:
        return await self.pool.acquire(exclude)

    async def settled(self) -> None:
        """Nothing in flight between the pool and its state."""

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def cooling_for(self, credential_id: str) -> float:
        return self.status(credential_id).cooling_for

    def status(self, credential_id: str) -> CredentialStatus:
        return {s.id: s for s in self.pool.statuses()}[credential_id]


class OnRedis(InProcess):
    name = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.clock = FakeClock()
        self.redis = server.client()
        store = connect_store(server.url, None, 2.0, PREFIX, lease_seconds=30)
        # No ticks of its own (sync_seconds far beyond any test): `settled` syncs by hand.
        self.pool = SharedCredentialPool(store, replica_id="r", expected_replicas=1, lease_seconds=30,
                                         sync_seconds=3600, cooldown_base_seconds=BASE, cooldown_max_seconds=MAX,
                                         clock=self.clock)

    async def start(self) -> None:
        await self.pool.start()

    async def stop(self) -> None:
        await self.pool.stop()
        self.redis.close()

    async def settled(self) -> None:
        """The writes the last reports and releases started have landed, and the pool's own
        book (statuses, readiness) mirrors the store."""
        await self.pool.flush(5)
        await self.pool.sync_once()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        ms = round(seconds * 1000)
        for key in self.redis.scan_iter(f"{{{PREFIX}}}:cooling:*"):
            left = self.redis.pttl(key)
            if left <= ms:
                self.redis.delete(key)
            else:
                self.redis.set(key, int(self.redis.get(key) or 0) - ms, px=left - ms)

    def cooling_for(self, credential_id: str) -> float:
        """What the store says: the acquire script decides by it, whatever the book shows."""
        return max(0, self.redis.pttl(f"{{{PREFIX}}}:cooling:{credential_id}")) / 1000


def backend(kind: str, server: RedisServer | None) -> InProcess:
    if kind == "redis":
        assert server is not None
        return OnRedis(server)
    return InProcess()

