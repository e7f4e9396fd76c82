"""The shared pool's state in Redis: keys, Lua scripts and the calls that run them.

Every decision that must hold across replicas is one Lua script, which Redis runs
atomically: picking the least-loaded credential and taking a slot on it, cooling a
credential down, renewing this replica's leases. Times are Redis's own clock (`TIME`),
so replicas whose clocks disagree still agree on when a lease or a cooldown ends.

Keys (all under one hash tag, so a Redis Cluster keeps them on one node):

| key | type | holds |
| --- | --- | --- |
| `{P}:leases:<id>` | sorted set | one member per request holding the credential, scored by its expiry (ms) |
| `{P}:cooling:<id>` | string with PX | present while the credential cools down |
| `{P}:ejected:<id>` | string | the fingerprint of the cookie GPT-Omni rejected |
| `{P}:strikes:<id>` | string | consecutive rate limits (the backoff's exponent) |
| `{P}:replicas` | sorted set | live replicas, scored by their heartbeat's expiry |

Redis never sees a cookie: an ejection names it by `cookie_fingerprint`, so a new cookie
for the same id is not ejected. This module speaks Redis only; policy (modes, shares,
which lease is live) is shared_pool.py's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gptomni_relay.core.errors import AllBusy, AllCoolingDown, NoCredentials, NothingLeftToTry, PoolUnavailable

VERDICT_KEEP_SECONDS = 24 * 3600  # ejections and strike counts of credentials nobody uses any more fade away

_NOW = """local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: per credential (leases, cooling, ejected). ARGV: lease_ms, member, start (0-based
# rotation), dry ("1": only say whether a slot is free), excluded (",2,5,": 0-based indexes),
# then per credential max, weight, fingerprint. Returns {index (1-based)} or {0, usable,
# untried, healthy, soonest cooldown end in ms}.
ACQUIRE = _NOW + """
local lease_ms = tonumber(ARGV[1])
local n = #KEYS / 3
local start = tonumber(ARGV[3])
local usable, untried, healthy, soonest = 0, 0, 0, -1
local best, best_load = -1, 0
for step = 0, n - 1 do
  local i = (start + step) % n
  local k, a = i * 3, 5 + i * 3
  if redis.call('GET', KEYS[k + 3]) ~= ARGV[a + 3] then
    usable = usable + 1
    if not string.find(ARGV[5], ',' .. i .. ',', 1, true) then
      untried = untried + 1
      local cooling = redis.call('PTTL', KEYS[k + 2])
      if cooling > 0 then
        if soonest < 0 or cooling < soonest then soonest = cooling end
      else
        healthy = healthy + 1
        redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', now)
        local held = redis.call('ZCARD', KEYS[k + 1])
        if held < tonumber(ARGV[a + 1]) then
          local load = held / tonumber(ARGV[a + 2])
          if best < 0 or load < best_load then best, best_load = i, load end
        end
      end
    end
  end
end
if best < 0 then return {0, usable, untried, healthy, soonest} end
if ARGV[4] ~= '1' then
  redis.call('ZADD', KEYS[best * 3 + 1], now + lease_ms, ARGV[2])
  redis.call('PEXPIRE', KEYS[best * 3 + 1], lease_ms)
end
return {best + 1}
"""

# KEYS: cooling, strikes. ARGV: base_ms, max_ms, retry_after_ms (-1: none), keep_ms.
# The same backoff as the in-process pool. Returns {strikes, cooldown left in ms}.
COOL_DOWN = _NOW + """
local strikes = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local delay = tonumber(ARGV[3])
if delay < 0 then delay = tonumber(ARGV[1]) * 2 ^ math.min(strikes - 1, 32) end
delay = math.floor(math.min(delay, tonumber(ARGV[2])))
local left = redis.call('PTTL', KEYS[1])
if delay > 0 and delay > left then
  redis.call('SET', KEYS[1], strikes, 'PX', delay)
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
  if ms > redis.call('PTTL', KEYS[l + i]) then redis.call('SET', KEYS[l + i], 1, 'PX', ms) end
end
for i = 1, e do
  redis.call('SET', KEYS[l + c + i], ARGV[4 + l + c + i], 'EX', ARGV[5 + l + c + e])
end
return l
"""


class StoreUnavailable(Exception):
    """The shared store did not answer (or answered with an error)."""


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

    __slots__ = ("candidates", "index", "keys", "args")

    def __init__(self, store: SharedStore, candidates: Sequence[Candidate]) -> None:
        self.candidates = list(candidates)
        self.index = {candidate.id: i for i, candidate in enumerate(self.candidates)}
        self.keys: list[bytes] = []
        self.args: list[bytes] = []
        for c in self.candidates:
            self.keys += (store.lease_key(c.id).encode(), store._key("cooling", c.id).encode(),
                          store._key("ejected", c.id).encode())
            self.args += (str(c.max_concurrency).encode(), str(c.weight).encode(), c.fingerprint.encode())


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


def refusal(usable: int, untried: int, healthy: int, soonest_ms: int) -> PoolUnavailable:
    """The in-process pool's reasons, in its order (CredentialPool.why_unavailable)."""
    if usable == 0:
        return NoCredentials("every credential was rejected by the upstream")
    if untried == 0:
        return NothingLeftToTry("every usable credential was already tried")
    if healthy == 0:
        return AllCoolingDown(retry_after=max(1.0, soonest_ms / 1000))
    return AllBusy("every credential is at its concurrency limit")


class SharedStore:
    def __init__(self, client: Redis, prefix: str, lease_seconds: float) -> None:
        self._client = client
        self._tag = f"{{{prefix}}}"
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._acquire = client.register_script(ACQUIRE)
        self._cool_down = client.register_script(COOL_DOWN)
        self._sync = client.register_script(SYNC)
        self._register = client.register_script(REGISTER)

    @classmethod
    def connect(cls, url: str, password: str | None, timeout_seconds: float, prefix: str,
                lease_seconds: float, max_connections: int = 64) -> SharedStore:
        """A client that fails fast: no retries of its own (the pool falls back instead)
        and at most `max_connections` to the store (callers beyond wait their turn)."""
        pool = BlockingConnectionPool.from_url(
            url, password=password, max_connections=max_connections, timeout=timeout_seconds,
            socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0), decode_responses=True, client_name="gptomni-relay",
        )
        return cls(Redis(connection_pool=pool), prefix, lease_seconds)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def drop_connections(self) -> None:
        """Closes every connection (after a failure they are suspect; new ones are made)."""
        await self._client.connection_pool.disconnect()

    def lease_key(self, credential_id: str) -> str:
        return f"{self._tag}:leases:{credential_id}"

    def _key(self, kind: str, credential_id: str) -> str:
        return f"{self._tag}:{kind}:{credential_id}"

    async def _run(self, call):  # noqa: ANN001, ANN202 - any awaitable of the client
        try:
            return await call
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    # --- leases --------------------------------------------------------------------

    def prepare(self, candidates: Sequence[Candidate]) -> Prepared:
        return Prepared(self, candidates)

    async def acquire(self, prepared: Prepared, excluded: frozenset[str] | set[str], member: str,
                      start: int, dry: bool = False) -> int | PoolUnavailable:
        """Takes a slot for `member` on the least-loaded usable candidate and returns its
        index, or says why none could be taken. `dry`: take nothing, only say."""
        skip = ","
        if excluded:
            skip += "".join(f"{prepared.index[cid]}," for cid in excluded if cid in prepared.index)
        args = [self._lease_ms, member, start, b"1" if dry else b"0", skip, *prepared.args]
        result = await self._run(self._acquire(prepared.keys, args))
        if result[0]:
            return int(result[0]) - 1
        return refusal(*(int(n) for n in result[1:]))

    async def release(self, leases: Iterable[tuple[str, str]]) -> None:
        """Removes (lease key, member) pairs: one round trip for all."""
        pipe = self._client.pipeline(transaction=False)
        for key, member in leases:
            pipe.zrem(key, member)
        await self._run(pipe.execute())

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
        await self._run(self._register(keys, args))

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
        alive, replicas, verdicts = await self._run(self._sync(keys, args))
        return Snapshot(
            heartbeat_was_alive=bool(alive),
            replicas=list(replicas),
            verdicts={cid: Verdict(bool(v[0]), int(v[1]) / 1000, int(v[2]),
                                   {v[3][i]: int(v[3][i + 1]) for i in range(0, len(v[3]), 2)})
                      for (cid, _), v in zip(credentials, verdicts, strict=True)},
        )

    async def leave(self, replica: str) -> None:
        await self._run(self._client.zrem(f"{self._tag}:replicas", replica))

    # --- verdicts ------------------------------------------------------------------

    async def cool_down(self, credential_id: str, base_seconds: float, max_seconds: float,
                        retry_after: float | None) -> float:
        """Counts a rate limit and cools the credential down; returns the seconds left."""
        keys = [self._key("cooling", credential_id), self._key("strikes", credential_id)]
        retry_ms = -1 if retry_after is None else max(0, round(retry_after * 1000))
        args = [round(base_seconds * 1000), round(max_seconds * 1000), retry_ms, VERDICT_KEEP_SECONDS * 1000]
        _, left_ms = await self._run(self._cool_down(keys, args))
        return int(left_ms) / 1000

    async def eject(self, credential_id: str, fingerprint: str) -> None:
        await self._run(self._client.set(self._key("ejected", credential_id), fingerprint, ex=VERDICT_KEEP_SECONDS))

    async def clear_strikes(self, credential_id: str) -> None:
        await self._run(self._client.delete(self._key("strikes", credential_id)))

    async def reinstate(self, credential_id: str) -> None:
        await self._run(self._client.delete(*(self._key(kind, credential_id) for kind in ("ejected", "cooling", "strikes"))))
