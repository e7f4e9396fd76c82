"""The shared pool's state in Redis: keys, Lua scripts and the calls that run them.

Every decision that must hold across replicas is one Lua script, which Redis runs
atomically: picking the least-loaded credential and taking a slot on it, cooling a
credential down, renewing this replica's leases. Times are Redis's own clock (`TIME`),
so replicas whose clocks disagree still agree on when a lease or a cooldown ends.

Keys (all under one hash tag, so a Redis Cluster keeps them on one node):

| key | type | holds |
| --- | --- | --- |
| `{P}:leases:<id>` | sorted set | one member per request holding the credential, scored by its expiry (ms) |
| `{P}:cooling:<id>` | string with PX | when the cooldown ends (ms), present until then |
| `{P}:ejected:<id>` | string | the fingerprint of the cookie GPT-Omni rejected |
| `{P}:strikes:<id>` | string | consecutive rate limits (the backoff's exponent) |
| `{P}:replicas` | sorted set | live replicas, scored by their heartbeat's expiry |

Redis never sees a cookie: an ejection names it by `cookie_fingerprint`, so a new cookie
for the same id is not ejected. This module speaks Redis only: the rules its scripts apply are
core/pool_policy.py's (the Lua takes its numbers from there), and modes, shares and
which lease is live are shared_pool.py's.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gptomni_relay.core import pool_policy
from gptomni_relay.core.errors import PoolUnavailable
from gptomni_relay.core.pool_policy import LUA_COOLDOWN_DELAY, Cooldowns, Tally
from gptomni_relay.core.store_link import StoreLink, StoreUnavailable, encode_bulk, encode_command, encode_parts

VERDICT_KEEP_SECONDS = 24 * 3600  # ejections and strike counts of credentials nobody uses any more fade away

_NOW = """local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: the n credentials' lease keys, then their n cooling keys, then their n ejected keys.
# ARGV: lease_ms, member, start (0-based rotation), dry ("1": only say whether a slot is
# free), excluded (",2,5,": 0-based indexes) -- the ACQUIRE_REQUEST_ARGUMENTS -- then per
# credential max, weight, fingerprint. Returns {index (1-based)} or {0, configured, usable,
# untried, healthy, soonest cooldown end in ms} (pool_policy.Tally: the in-process pool's
# pool_policy.pick and tally, over leases counted here). Its cost is Lua's, per redis.call: verdicts are read
# with one MGET each, and leases are counted (ZCOUNT of the unexpired) rather than pruned,
# except on the credential a lease is added to.
ACQUIRE_REQUEST_ARGUMENTS = 5
ACQUIRE = _NOW + """
local lease_ms = tonumber(ARGV[1])
local n = #KEYS / 3
local start = tonumber(ARGV[3])
if n == 0 then return {0, 0, 0, 0, 0, -1} end
local function mget(first, last)  -- in parts: unpack() has a limit (~8,000 values)
  local values = {}
  for from = first, last, 1000 do
    local part = redis.call('MGET', unpack(KEYS, from, math.min(from + 999, last)))
    for j = 1, #part do values[#values + 1] = part[j] end
  end
  return values
end
local cooling_until = mget(n + 1, 2 * n)
local ejected = mget(2 * n + 1, 3 * n)
local usable, untried, healthy, soonest = 0, 0, 0, -1
local best, best_load = -1, 0
for step = 0, n - 1 do
  local i = (start + step) % n
  local a = 5 + i * 3
  if ejected[i + 1] ~= ARGV[a + 3] then
    usable = usable + 1
    if not string.find(ARGV[5], ',' .. i .. ',', 1, true) then
      untried = untried + 1
      local cooling = 0
      if cooling_until[i + 1] then
        cooling = (tonumber(cooling_until[i + 1]) or 0) - now
        -- An older relay wrote the strike count there, not the end: its expiry says.
        if cooling < -1e12 then cooling = redis.call('PTTL', KEYS[n + i + 1]) end
      end
      if cooling > 0 then
        if soonest < 0 or cooling < soonest then soonest = cooling end
      else
        healthy = healthy + 1
        local held = redis.call('ZCOUNT', KEYS[i + 1], '(' .. now, '+inf')
        if held < tonumber(ARGV[a + 1]) then
          local load = held / tonumber(ARGV[a + 2])
          if best < 0 or load < best_load then best, best_load = i, load end
        end
      end
    end
  end
end
if best < 0 then return {0, n, usable, untried, healthy, soonest} end
if ARGV[4] ~= '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[best + 1], '-inf', now)
  redis.call('ZADD', KEYS[best + 1], now + lease_ms, ARGV[2])
  redis.call('PEXPIRE', KEYS[best + 1], lease_ms)
end
return {best + 1}
"""

# KEYS: cooling, strikes. ARGV: base_ms, max_ms, asked_ms (-1: none) -- pool_policy's
# Cooldowns.lua_args -- and keep_ms. The delay is pool_policy's LUA_COOLDOWN_DELAY, the
# in-process pool's Cooldowns.delay_ms over the strikes counted here. A cooling key holds
# when it ends (ms, Redis's clock: ACQUIRE reads them all with one MGET) and expires then;
# a cooldown only grows. Returns {strikes, cooldown left in ms}.
COOL_DOWN = _NOW + """
local strikes = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
""" + LUA_COOLDOWN_DELAY + """
local left = redis.call('PTTL', KEYS[1])
if delay > 0 and delay > left then
  redis.call('SET', KEYS[1], now + delay, 'PX', delay)
  left = delay
end
return {strikes, math.max(left, 0)}
"""

# KEYS: replicas, then L lease keys, then per credential (cooling, ejected, strikes, leases).
# ARGV: replica, lease_ms, L, L members, then per credential its fingerprint.
# Heartbeat, renew this replica's leases (only those still present: a released one is
# never brought back), and read every credential's verdicts and who else holds it.
# Returns {heartbeat was alive (1/0), live replicas, per credential {ejected, cooling ms,
# strikes, {replica, leases, replica, leases, ...} of the other replicas}}.
SYNC = _NOW + """
local lease_ms = tonumber(ARGV[2])
local l = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local alive = redis.call('ZSCORE', KEYS[1], ARGV[1]) and 1 or 0
redis.call('ZADD', KEYS[1], now + lease_ms, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease_ms)
for j = 1, l do
  redis.call('ZADD', KEYS[1 + j], 'XX', now + lease_ms, ARGV[3 + j])
  redis.call('PEXPIRE', KEYS[1 + j], lease_ms)
end
local verdicts = {}
local c = (#KEYS - 1 - l) / 4
for i = 0, c - 1 do
  local k = 1 + l + i * 4
  local cooling = redis.call('PTTL', KEYS[k + 1])
  local ejected = redis.call('GET', KEYS[k + 2]) == ARGV[4 + l + i] and 1 or 0
  local counts, holders = {}, {}
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[k + 4], now, '+inf')) do
    local holder = string.match(member, '^(.*):[^:]*$') or member
    if holder ~= ARGV[1] then
      if not counts[holder] then counts[holder] = 0; holders[#holders + 1] = holder end
      counts[holder] = counts[holder] + 1
    end
  end
  local others = {}
  for _, holder in ipairs(holders) do
    others[#others + 1] = holder
    others[#others + 1] = counts[holder]
  end
  verdicts[i + 1] = {ejected, math.max(cooling, 0), tonumber(redis.call('GET', KEYS[k + 3]) or '0'), others}
end
return {alive, redis.call('ZRANGE', KEYS[1], 0, -1), verdicts}
"""

# KEYS: L lease keys, C cooling keys, E ejected keys. ARGV: lease_ms, L, C, E, then the L
# members, C cooldowns left (ms), E fingerprints, keep_ms. After the store was out of
# reach (or lost its data): this replica's live leases and what it learnt meanwhile.
REGISTER = _NOW + """
local lease_ms, l, c, e = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 1, l do
  redis.call('ZADD', KEYS[i], now + lease_ms, ARGV[4 + i])
  redis.call('PEXPIRE', KEYS[i], lease_ms)
end
for i = 1, c do
  local ms = tonumber(ARGV[4 + l + i])
  if ms > redis.call('PTTL', KEYS[l + i]) then redis.call('SET', KEYS[l + i], now + ms, 'PX', ms) end
end
for i = 1, e do
  redis.call('SET', KEYS[l + c + i], ARGV[4 + l + c + i], 'EX', ARGV[5 + l + c + e])
end
return l
"""


def cookie_fingerprint(cookie: str) -> str:
    """Names a cookie in the store without revealing it (an ejection is of one cookie)."""
    return hashlib.sha256(b"gptomni-ejected-cookie\0" + cookie.encode("utf-8")).hexdigest()[:32]


def printable_url(url: str) -> str:
    """The store's address for logs: scheme, host, port and database, never a password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True)
class Candidate:
    """A credential as the acquire script weighs it."""

    id: str
    max_concurrency: int
    weight: int
    fingerprint: str


class Prepared:
    """A pool's candidates as the acquire script takes them, encoded once per pool reload."""

    __slots__ = ("candidates", "index", "keys", "args", "part_count")

    def __init__(self, store: SharedStore, candidates: Sequence[Candidate]) -> None:
        self.candidates = list(candidates)
        self.index = {candidate.id: i for i, candidate in enumerate(self.candidates)}
        keys = [store.lease_key(c.id) for c in self.candidates]
        keys += [store._key("cooling", c.id) for c in self.candidates]
        keys += [store._key("ejected", c.id) for c in self.candidates]
        args: list[str | int] = []
        for c in self.candidates:
            args += (c.max_concurrency, c.weight, c.fingerprint)
        self.keys = encode_bulk(len(keys), *keys)  # numkeys, then the keys
        self.args = encode_bulk(*args)  # after the per-request arguments
        # EVALSHA or EVAL, the script, numkeys, the keys, 5 per-request arguments, the rest
        self.part_count = 3 + len(keys) + ACQUIRE_REQUEST_ARGUMENTS + len(args)


@dataclass(frozen=True)
class Verdict:
    ejected: bool
    cooling_for: float  # seconds
    strikes: int
    held_by_others: dict[str, int]  # replica -> leases it holds on this credential


@dataclass(frozen=True)
class Snapshot:
    heartbeat_was_alive: bool
    replicas: list[str]
    verdicts: dict[str, Verdict]


def picked_or_refusal(reply: list[int]) -> int | PoolUnavailable:
    """The acquire script's reply: the index it took a slot on, or why it took none."""
    if reply[0]:
        return int(reply[0]) - 1
    configured, usable, untried, healthy, soonest_ms = (int(n) for n in reply[1:])
    found = pool_policy.refusal(Tally(configured, usable, untried, healthy, free=0, soonest_ms=soonest_ms))
    assert found is not None  # noqa: S101 - free=0: there is always a reason
    return found


class Script:
    """A Lua script sent by its SHA-1 (EVALSHA), or whole (EVAL) when Redis does not know it."""

    __slots__ = ("by_sha", "by_body")

    def __init__(self, body: str) -> None:
        sha = hashlib.sha1(body.encode()).hexdigest()  # noqa: S324 - how Redis names scripts
        self.by_sha = encode_bulk(b"EVALSHA", sha)
        self.by_body = encode_bulk(b"EVAL", body)


class SharedStore:
    """Every command goes over one link (core/store_link.py; the relay's is the pipelined
    connection of infra/redis_connection.py, wired in by state.py): the
    request path's acquire and release as much as the sync tick's, so a connection left
    stale by a store restart is found, and replaced, by whichever command comes first."""

    def __init__(self, line: StoreLink, prefix: str, lease_seconds: float) -> None:
        self._line = line
        self._tag = f"{{{prefix}}}"
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._acquire = Script(ACQUIRE)
        self._cool_down = Script(COOL_DOWN)
        self._sync = Script(SYNC)
        self._register = Script(REGISTER)

    async def aclose(self) -> None:
        await self._line.aclose()

    def on_connection_lost(self, callback: Callable[[StoreUnavailable], None]) -> None:
        self._line.on_lost = callback

    def reconnect(self) -> None:
        """After a failure: the next command connects afresh (see StoreLink)."""
        self._line.reconnect()

    @property
    def batches_sent(self) -> int:
        return self._line.batches_sent

    def lease_key(self, credential_id: str) -> str:
        return f"{self._tag}:leases:{credential_id}"

    def _key(self, kind: str, credential_id: str) -> str:
        return f"{self._tag}:{kind}:{credential_id}"

    def _command(self, *parts: str | int) -> asyncio.Future[Any]:
        return self._line.send(encode_parts(*parts))

    def _call(self, script: Script, keys: Sequence[str], args: Sequence[str | int]) -> asyncio.Future[Any]:
        # EVALSHA or EVAL, the script, numkeys, the keys, the arguments
        return self._run(script, 3 + len(keys) + len(args), encode_bulk(len(keys), *keys, *args))

    def _run(self, script: Script, part_count: int, *encoded: bytes,
             convert: Callable[[Any], Any] | None = None) -> asyncio.Future[Any]:
        """The script by its SHA-1, or whole if Redis does not know it; `encoded`: its parts
        after the script (numkeys, keys, arguments), `part_count`: all of the command's."""
        return self._line.send(encode_command(part_count, script.by_sha, *encoded), convert=convert,
                               on_missing_script=lambda: encode_command(part_count, script.by_body, *encoded))

    # --- for other state on the same connection (core/key_limits_store.py) -----------

    def tagged_key(self, *parts: str) -> str:
        """A key under this store's hash tag (one Redis Cluster node for all)."""
        return ":".join((self._tag, *parts))

    def run_script(self, script: Script, keys: Sequence[str], args: Sequence[str | int]) -> asyncio.Future[Any]:
        return self._call(script, keys, args)

    # --- leases --------------------------------------------------------------------

    def prepare(self, candidates: Sequence[Candidate]) -> Prepared:
        return Prepared(self, candidates)

    def acquire(self, prepared: Prepared, excluded: frozenset[str] | set[str], member: str,
                start: int, dry: bool = False) -> asyncio.Future[int | PoolUnavailable]:
        """Takes a slot for `member` on the least-loaded usable candidate; the future gets
        its index, or why none could be taken. `dry`: take nothing, only say. Cancelling
        the future does not stop the script."""
        skip = ","
        if excluded:
            skip += "".join(f"{prepared.index[cid]}," for cid in excluded if cid in prepared.index)
        request = encode_bulk(self._lease_ms, member, start, b"1" if dry else b"0", skip)
        return self._run(self._acquire, prepared.part_count, prepared.keys, request, prepared.args,
                         convert=picked_or_refusal)

    def release(self, key: str, member: str) -> asyncio.Future[int]:
        """Removes one lease (the future gets how many were removed: 0 or 1)."""
        return self._command("ZREM", key, member)

    async def release_all(self, leases: Iterable[tuple[str, str]]) -> None:
        """Removes (lease key, member) pairs, in one batch."""
        members: dict[str, list[str]] = {}
        for key, member in leases:
            members.setdefault(key, []).append(member)
        await asyncio.gather(*(self._command("ZREM", key, *group) for key, group in members.items()))

    async def register(self, leases: Sequence[tuple[str, str]], cooling: Sequence[tuple[str, float]],
                       ejected: Sequence[tuple[str, str]]) -> None:
        keys = [key for key, _ in leases]
        keys += [self._key("cooling", cid) for cid, _ in cooling]
        keys += [self._key("ejected", cid) for cid, _ in ejected]
        args: list[str | int] = [self._lease_ms, len(leases), len(cooling), len(ejected)]
        args += [member for _, member in leases]
        args += [max(1, round(seconds * 1000)) for _, seconds in cooling]
        args += [fingerprint for _, fingerprint in ejected]
        args.append(VERDICT_KEEP_SECONDS)
        await self._call(self._register, keys, args)

    async def sync(self, replica: str, leases: Sequence[tuple[str, str]],
                   credentials: Sequence[tuple[str, str]]) -> Snapshot:
        """Heartbeat, lease renewal, every credential's verdicts and the other replicas'
        leases on it, in one round trip (its cost grows with the leases held: at most the
        sum of the credentials' maxConcurrency)."""
        keys = [f"{self._tag}:replicas", *(key for key, _ in leases)]
        for cid, _ in credentials:
            keys += (self._key("cooling", cid), self._key("ejected", cid), self._key("strikes", cid),
                     self.lease_key(cid))
        args: list[str | int] = [replica, self._lease_ms, len(leases), *(member for _, member in leases)]
        args += [fingerprint for _, fingerprint in credentials]
        alive, replicas, verdicts = await self._call(self._sync, keys, args)
        return Snapshot(
            heartbeat_was_alive=bool(alive),
            replicas=list(replicas),
            verdicts={cid: Verdict(bool(v[0]), int(v[1]) / 1000, int(v[2]),
                                   {v[3][i]: int(v[3][i + 1]) for i in range(0, len(v[3]), 2)})
                      for (cid, _), v in zip(credentials, verdicts, strict=True)},
        )

    async def leave(self, replica: str) -> None:
        await self._command("ZREM", f"{self._tag}:replicas", replica)

    # --- verdicts ------------------------------------------------------------------

    async def cool_down(self, credential_id: str, cooldowns: Cooldowns, retry_after: float | None) -> float:
        """Counts a rate limit and cools the credential down (pool_policy's rules); returns
        the seconds left."""
        keys = [self._key("cooling", credential_id), self._key("strikes", credential_id)]
        args = [*cooldowns.lua_args(retry_after), VERDICT_KEEP_SECONDS * 1000]
        _, left_ms = await self._call(self._cool_down, keys, args)
        return int(left_ms) / 1000

    async def eject(self, credential_id: str, fingerprint: str) -> None:
        await self._command("SET", self._key("ejected", credential_id), fingerprint, "EX", VERDICT_KEEP_SECONDS)

    async def clear_strikes(self, credential_id: str) -> None:
        await self._command("DEL", self._key("strikes", credential_id))

    async def reinstate(self, credential_id: str) -> None:
        await self._command("DEL", *(self._key(kind, credential_id) for kind in ("ejected", "cooling", "strikes")))
