"""The credential pool's rules, written once: what a verdict does, how long a cooldown is,
which credential is picked, and why none could be.

Two backends apply them: the in-process pool (core/pool.py) calls these functions; the
shared pool's Lua (core/shared_store.py) gets its numbers from here (`Cooldowns.lua_args`,
`LUA_COOLDOWN_DELAY`, generated from the same constants) and its refusal reasons are read
by `refusal`. tests/test_pool_policy.py runs one table of cooldown cases through both the
Python and the Lua; tests/test_pool_selection.py runs the selection cases against both
pools (in-process and a real Redis).

Times are whole milliseconds, so that both backends compute exactly the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

from gptomni_common.upstream.protocol import Outcome
from gptomni_relay.core.errors import AllBusy, AllCoolingDown, NoCredentials, NothingLeftToTry, PoolUnavailable

# An upstream Retry-After of 0 (or an HTTP date already past) must not turn a 429 into an
# immediate retry loop: a cooldown the upstream asked for lasts at least this long (unless
# the configured maximum is shorter still).
COOLDOWN_FLOOR_MS = 1000
# The backoff doubles per consecutive rate limit; past this many doublings it is far beyond
# any maximum, and the number stays exact in Lua's doubles (2**32 x 300,000 ms < 2**53).
BACKOFF_EXPONENT_CAP = 32
# A refusal for cooling credentials tells the client to come back in at least this long.
MIN_RETRY_AFTER_SECONDS = 1.0


class Effect(StrEnum):
    """What a verdict does to its credential."""

    CLEAR_STRIKES = "clear_strikes"  # a success: the backoff starts over
    EJECT = "eject"  # the cookie was rejected: never used again until reinstated or replaced
    COOL_DOWN = "cool_down"  # rate limited or challenged: a strike, and a cooldown
    NONE = "none"  # a timeout or an error says nothing about the cookie


VERDICTS: Mapping[Outcome, Effect] = {
    Outcome.OK: Effect.CLEAR_STRIKES,
    Outcome.UNAUTHORIZED: Effect.EJECT,  # 401 / 403
    Outcome.RATE_LIMITED: Effect.COOL_DOWN,  # 429
    Outcome.CHALLENGE: Effect.COOL_DOWN,  # a Cloudflare challenge no clearance passed
    Outcome.TIMEOUT: Effect.NONE,
    Outcome.ERROR: Effect.NONE,
}


def effect_of(outcome: Outcome) -> Effect:
    return VERDICTS.get(outcome, Effect.NONE)


@dataclass(frozen=True)
class Cooldowns:
    """How long a credential cools down after its `strikes`-th consecutive rate limit: the
    upstream's Retry-After if it gave one (at least COOLDOWN_FLOOR_MS), else the exponential
    backoff from `base_ms`; never more than `max_ms` (a hostile or broken upstream must not
    park a cookie for a day). A cooldown only ever grows: a shorter one never cuts a longer
    one short."""

    base_ms: int
    max_ms: int

    @classmethod
    def from_seconds(cls, base_seconds: float, max_seconds: float) -> Cooldowns:
        return cls(max(1, round(base_seconds * 1000)), max(1, round(max_seconds * 1000)))

    def asked_ms(self, retry_after: float | None) -> int:
        """The upstream's Retry-After as this policy takes it: -1 for none (missing or not a
        number), else clamped to [COOLDOWN_FLOOR_MS, max_ms]. 0, negative (a past date) and
        huge (or infinite) values all land inside."""
        if retry_after is None or math.isnan(retry_after):
            return -1
        if retry_after * 1000 >= self.max_ms:  # also inf; before round(), which inf would break
            return self.max_ms
        return min(max(round(retry_after * 1000), COOLDOWN_FLOOR_MS), self.max_ms)

    def delay_ms(self, strikes: int, retry_after: float | None) -> int:
        asked = self.asked_ms(retry_after)
        if asked >= 0:
            return asked
        return min(self.base_ms * 2 ** min(max(strikes, 1) - 1, BACKOFF_EXPONENT_CAP), self.max_ms)

    def lua_args(self, retry_after: float | None) -> tuple[int, int, int]:
        """ARGV of LUA_COOLDOWN_DELAY: base, max, the asked delay (-1: none)."""
        return self.base_ms, self.max_ms, self.asked_ms(retry_after)


# `delay_ms` in Lua, for a script whose `strikes` is counted in Redis (core/shared_store.py's
# COOL_DOWN) and whose ARGV[1..3] are `Cooldowns.lua_args`. The floor is already in ARGV[3].
LUA_COOLDOWN_DELAY = f"""
local delay = tonumber(ARGV[3])
if delay < 0 then delay = tonumber(ARGV[1]) * 2 ^ math.min(math.max(strikes, 1) - 1, {BACKOFF_EXPONENT_CAP}) end
delay = math.floor(math.min(delay, tonumber(ARGV[2])))
"""


# --- selection --------------------------------------------------------------------------

class Weighed(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> int: ...


class Seat(Protocol):
    """A credential as selection weighs it (core/pool.py's Slot)."""

    in_flight: int
    ejected: bool
    cooling_until: float

    @property
    def credential(self) -> Weighed: ...


S = TypeVar("S", bound=Seat)


def pick(seats: Sequence[S], start: int, exclude: Collection[str], now: float,
                  limit: Callable[[S], int]) -> S | None:
    """The credential for the next request: among those not ejected, not `exclude`d, not
    cooling and below their `limit`, the least in flight per unit of weight; ties go to the
    first one from `start` (a rotating offset, so ties spread). The Lua of the shared
    pool's ACQUIRE is this loop, over leases counted in Redis."""
    best: S | None = None
    best_load = math.inf
    count = len(seats)
    for step in range(count):
        seat = seats[(start + step) % count]
        if seat.ejected or seat.cooling_until > now or seat.credential.id in exclude:
            continue
        if seat.in_flight >= limit(seat):
            continue
        load = seat.in_flight / seat.credential.weight
        if load < best_load:
            best, best_load = seat, load
    return best


@dataclass(frozen=True)
class Tally:
    """Why nothing could be picked, counted the same way by both backends: credentials
    configured, not ejected (usable), of those not excluded (untried), of those not cooling
    (healthy), of those below their limit (free); the soonest cooldown end among the
    untried, in ms from now (-1: none cooling)."""

    configured: int
    usable: int
    untried: int
    healthy: int
    free: int
    soonest_ms: float = -1


def tally(seats: Sequence[S], exclude: Collection[str], now: float, limit: Callable[[S], int]) -> Tally:
    usable = untried = healthy = free = 0
    soonest = -1.0
    for seat in seats:
        if seat.ejected:
            continue
        usable += 1
        if seat.credential.id in exclude:
            continue
        untried += 1
        if seat.cooling_until > now:
            left = (seat.cooling_until - now) * 1000
            soonest = left if soonest < 0 else min(soonest, left)
            continue
        healthy += 1
        if seat.in_flight < limit(seat):
            free += 1
    return Tally(len(seats), usable, untried, healthy, free, soonest)


def refusal(found: Tally) -> PoolUnavailable | None:
    """Why no credential can take the request, in this order, or None if one can."""
    if found.configured == 0:
        return NoCredentials("no credentials are configured")
    if found.usable == 0:
        return NoCredentials("every credential was rejected by the upstream")
    if found.untried == 0:
        return NothingLeftToTry("every usable credential was already tried")
    if found.healthy == 0:
        return AllCoolingDown(retry_after=max(MIN_RETRY_AFTER_SECONDS, found.soonest_ms / 1000))
    if found.free == 0:
        return AllBusy("every credential is at its concurrency limit")
    return None
