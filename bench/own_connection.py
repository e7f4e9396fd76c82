"""The bench's baseline: the relay's own pipelined connection, and the acquire's parts as the store builds them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis

from gptomni_relay.core.shared_store import Candidate, SharedStore
from gptomni_relay.infra.redis_connection import connect_store


class _Capture:
    """Stands in for the connection: keeps the bytes of the command it is given."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, command: bytes, convert: Any = None, on_missing_script: Any = None) -> asyncio.Future[Any]:
        self.sent.append(command)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.cancel()
        return future


def captured_acquire(candidates: list[Candidate], member: str) -> list[str]:
    """EVALSHA, the SHA-1, numkeys, the keys, the arguments: what `SharedStore.acquire` writes."""
    line = _Capture()
    store = SharedStore(line, "bench", 30)  # type: ignore[arg-type]
    store.acquire(store.prepare(candidates), frozenset(), member, 0)
    reader = hiredis.Reader(encoding="utf-8")
    reader.feed(line.sent[0])
    return reader.gets()


async def own_pair(url: str) -> tuple[Callable[[Any], Awaitable[Any]], Callable[[Any], Awaitable[Any]],
                                      Callable[[], Awaitable[None]]]:
    store = connect_store(url, None, 1.0, "bench", lease_seconds=30)
    prepared: dict[int, Any] = {}

    async def acquire(call: Any) -> Any:
        ready = prepared.get(id(call.candidates))
        if ready is None:
            ready = prepared[id(call.candidates)] = store.prepare(call.candidates)
        return await store.acquire(ready, frozenset(), call.member, 0)

    async def release(call: Any) -> Any:
        return await store.release(call.lease_key, call.member)

    return acquire, release, store.aclose
