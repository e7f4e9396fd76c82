"""API-key limits held for the whole deployment: the counts of key_limits.py in the shared
store (the Redis of the shared pool, over its one connection), so three replicas admit
what one would.

Keys, under the store's hash tag:

| key | type | holds |
| --- | --- | --- |
| `{P}:key:<name>:window` | sorted set | the key's requests of the last 60 s, scored by their time (ms) |
| `{P}:key:<name>:streams` | sorted set | its requests in progress, scored by their lease's end (ms) |
| `{P}:key:<name>:tokens:<day>` | string | tokens counted on that UTC day (kept two days) |

A request in progress holds a lease renewed every tick while it runs, so the requests of
a replica that died free themselves within the lease time. When the store is out of
reach, admission falls back to this replica's share of each limit (the limit divided by
the replicas expected, at least 1: the shared pool's rule, docs/shared-pool.md), counted
in the process; tokens counted meanwhile are added to the store once it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

from gptomni_common.api_key_set import KeyLimits
from gptomni_relay.core.key_limits import (
    DAY_SECONDS,
    KeyLimitExceeded,
    LimitKind,
    LocalCounts,
    Usage,
    day_number,
    seconds_to_midnight,
)
from gptomni_relay.core.shared_store import Script, SharedStore
from gptomni_relay.core.store_link import StoreUnavailable

log = logging.getLogger(__name__)

_NOW = """local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS: window, streams, tokens. ARGV: requests per minute, streams, tokens per day (0:
# no such limit), member, lease_ms. Returns {verdict, requests in the window, ms until the
# oldest leaves it, tokens today}; verdict 0 admitted (and counted), 1 requests, 2 streams,
# 3 tokens.
ADMIT = _NOW + """
local rpm, streams, budget, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
local n, reset = 0, 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  n = redis.call('ZCARD', KEYS[1])
  if n > 0 then reset = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) + 60000 - now end
end
if budget > 0 and used >= budget then return {3, n, reset, used} end
if rpm > 0 and n >= rpm then return {1, n, reset, used} end
if streams > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= streams then return {2, n, reset, used} end
  redis.call('ZADD', KEYS[2], now + lease, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], lease * 2)
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], 61000)
  n = n + 1
  if reset == 0 then reset = 60000 end
end
return {0, n, reset, used}
"""
# KEYS: streams, tokens. ARGV: member, tokens, seconds to keep the count. Returns tokens today.
RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local add = tonumber(ARGV[2])
if add > 0 then
  local total = redis.call('INCRBY', KEYS[2], add)
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
  return total
end
return tonumber(redis.call('GET', KEYS[2]) or '0')
"""
# KEYS: the streams sets of the requests in progress; ARGV: lease_ms, then one member per key.
RENEW = _NOW + """
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], lease * 2)
end
return #KEYS
"""
# KEYS: tokens keys; ARGV: seconds to keep, then one count per key.
ADD_TOKENS = """
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], tonumber(ARGV[i + 1]))
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[1]))
end
return #KEYS
"""
_KINDS = {1: LimitKind.REQUESTS, 2: LimitKind.CONCURRENCY, 3: LimitKind.TOKENS}
STORE_FAILURES = (StoreUnavailable, OSError, TimeoutError)


class StoreCounts:
    def __init__(self, store: SharedStore, *, lease_seconds: float, expected_replicas: int,
                 sync_seconds: float) -> None:
        self._store = store
        self._lease_ms = max(1000, round(lease_seconds * 1000))
        self._sync_seconds = sync_seconds
        self._fallback = LocalCounts(share=expected_replicas)
        self._admit, self._release = Script(ADMIT), Script(RELEASE)
        self._renew, self._add_tokens = Script(RENEW), Script(ADD_TOKENS)
        self._in_store: dict[str, str] = {}  # member -> its streams key, renewed each tick
        self._local: set[str] = set()  # members admitted by the fallback
        self._unsent_tokens: dict[str, int] = defaultdict(int)  # tokens key -> count
        self._task: asyncio.Task[None] | None = None

    def _keys(self, name: str, now: float) -> tuple[str, str, str]:
        return (self._store.tagged_key("key", name, "window"), self._store.tagged_key("key", name, "streams"),
                self._store.tagged_key("key", name, "tokens", str(day_number(now))))

    async def admit(self, name: str, limits: KeyLimits, member: str) -> Usage:
        wall = time.time()
        window, streams, tokens = self._keys(name, wall)
        try:
            verdict, requests, reset_ms, used = await self._store.run_script(self._admit, (window, streams, tokens), (
                limits.requests_per_minute or 0, limits.max_concurrent_streams or 0, limits.tokens_per_day or 0,
                member, self._lease_ms))
        except STORE_FAILURES:
            usage = await self._fallback.admit(name, limits, member)
            self._local.add(member)
            return usage
        usage = Usage(int(requests), int(reset_ms) / 1000, int(used), seconds_to_midnight(wall))
        if verdict:
            kind = _KINDS[int(verdict)]
            limit = {LimitKind.REQUESTS: limits.requests_per_minute, LimitKind.CONCURRENCY: limits.max_concurrent_streams,
                     LimitKind.TOKENS: limits.tokens_per_day}[kind] or 0
            retry = {LimitKind.REQUESTS: usage.requests_reset_seconds, LimitKind.CONCURRENCY: 1.0,
                     LimitKind.TOKENS: usage.seconds_to_midnight}[kind]
            raise KeyLimitExceeded(kind, limit, retry, usage)
        if limits.max_concurrent_streams is not None:
            self._in_store[member] = streams
        return usage

    async def release(self, name: str, limits: KeyLimits, member: str, tokens: int) -> int:
        if member in self._local:
            self._local.discard(member)
            return await self._fallback.release(name, limits, member, tokens)
        self._in_store.pop(member, None)
        _, streams, tokens_key = self._keys(name, time.time())
        try:
            return int(await self._store.run_script(self._release, (streams, tokens_key),
                                                    (member, tokens, 2 * DAY_SECONDS)))
        except STORE_FAILURES:
            # The lease ends by itself; the tokens go to the store at the next tick that reaches it.
            self._unsent_tokens[tokens_key] += tokens
            return await self._fallback.release(name, limits, member, tokens)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._renew_forever(), name="key-limit leases")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sync_seconds)
            try:
                await self.renew()
            except STORE_FAILURES:
                pass  # the leases outlive a tick or two; the next one tries again
            except Exception:
                log.exception("renewing API-key leases failed")

    async def renew(self) -> None:
        held = list(self._in_store.items())
        if held:
            await self._store.run_script(self._renew, [key for _, key in held],
                                         [self._lease_ms, *[member for member, _ in held]])
        if self._unsent_tokens:
            unsent, self._unsent_tokens = dict(self._unsent_tokens), defaultdict(int)
            try:
                await self._store.run_script(self._add_tokens, list(unsent), [2 * DAY_SECONDS, *unsent.values()])
            except STORE_FAILURES:
                for key, count in unsent.items():
                    self._unsent_tokens[key] += count
                raise
