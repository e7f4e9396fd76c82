"""The credential pool: which cookie serves the next request, and what upstream said of each.

The rules (selection, what a verdict does, cooldowns, refusals) are core/pool_policy.py's;
this module keeps the state they apply to. Everything here runs on the event loop thread;
no locks are needed.

`Pool` is what the rest of the relay uses. `CredentialPool` is the in-process pool (one
replica, the demo); `shared_pool.SharedCredentialPool` holds the same state for every
replica in a shared store and keeps a `CredentialPool` as its lease ledger.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from gptomni_common.upstream.protocol import Outcome
from gptomni_relay.core import pool_policy
from gptomni_relay.core.errors import AllBusy, AllChallenged, AllCoolingDown, PoolUnavailable
from gptomni_relay.core.pool_policy import Cooldowns, Effect


@dataclass(frozen=True)
class Credential:
    id: str
    cookie: str = field(repr=False)
    weight: int = 1
    max_concurrency: int = 8


class PoolMode(StrEnum):
    LOCAL = "local"  # in-process state: one replica, or the demo
    SHARED = "shared"  # limits and verdicts held for every replica in the shared store
    FALLBACK = "fallback"  # the shared store is unreachable: this replica keeps to its share


class Health(StrEnum):
    HEALTHY = "healthy"
    COOLING = "cooling"
    EJECTED = "ejected"


@dataclass(frozen=True)
class CredentialStatus:
    id: str
    health: Health
    in_flight: int
    cooling_for: float


class PoolLease(Protocol):
    """One request's hold on one credential: report what upstream said, release once."""

    credential: Credential

    def report(self, outcome: Outcome, retry_after: float | None = None) -> None: ...

    def release(self) -> None: ...


class Pool(Protocol):
    """What failover, the probes, metrics and the pool-file reload use of a pool."""

    @property
    def mode(self) -> PoolMode: ...

    @property
    def store_up(self) -> bool | None:
        """Whether the shared store answers; None without one."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def acquire(self, exclude: frozenset[str] | set[str] = frozenset(), wait_seconds: float = 0.0) -> PoolLease: ...

    async def unavailability(self, exclude: frozenset[str] | set[str] = frozenset()) -> PoolUnavailable | None: ...

    def replace(self, credentials: Iterable[Credential]) -> None: ...

    def reinstate(self, credential_id: str) -> None: ...

    def statuses(self) -> list[CredentialStatus]: ...

    def ejected_credentials(self) -> list[Credential]: ...

    def is_ready(self) -> bool: ...

    def total_in_flight(self) -> int: ...


@dataclass
class Slot:
    credential: Credential
    in_flight: int = 0
    ejected: bool = False
    cooling_until: float = 0.0
    strikes: int = 0
    cooled_by: Outcome | None = None  # the verdict of this replica behind the current cooldown

    def health(self, now: float) -> Health:
        if self.ejected:
            return Health.EJECTED
        if self.cooling_until > now:
            return Health.COOLING
        return Health.HEALTHY


class Lease:
    """One request's hold on one credential. Release exactly once (idempotent)."""

    def __init__(self, pool: CredentialPool, slot: Slot) -> None:
        self._pool = pool
        self._slot = slot
        self._released = False
        self.credential = slot.credential

    @property
    def strikes(self) -> int:
        """Consecutive rate limits of this lease's credential, as this process knows them."""
        return self._slot.strikes

    def report(self, outcome: Outcome, retry_after: float | None = None) -> None:
        self._pool._record(self._slot, outcome, retry_after)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._slot)


class CredentialPool:
    """The in-process pool. `limit` caps each credential's in-flight count (default: its
    maxConcurrency; without a shared store, each replica's share). The shared pool keeps
    one as its lease ledger (take, release, verdicts) and applies its own mode's limits."""

    def __init__(
        self,
        cooldown_base_seconds: float = 5.0,
        cooldown_max_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        limit: Callable[[Credential], int] | None = None,
    ) -> None:
        self._cooldowns = Cooldowns.from_seconds(cooldown_base_seconds, cooldown_max_seconds)
        self._clock = clock
        self._limit = limit or (lambda credential: credential.max_concurrency)
        self._slots: dict[str, Slot] = {}
        self._rotation = itertools.count()
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def mode(self) -> PoolMode:
        return PoolMode.LOCAL

    @property
    def store_up(self) -> None:
        return None

    async def start(self) -> None:
        """Nothing to start: the in-process pool has no connections or tasks."""

    async def stop(self) -> None:
        """Nothing to stop."""

    # --- configuration -------------------------------------------------------------

    def replace(self, credentials: Iterable[Credential]) -> None:
        """Install a new pool. State survives for unchanged ids; a new cookie for an id starts
        afresh (no ejection, cooldown or strikes: those were the old cookie's)."""
        new_slots: dict[str, Slot] = {}
        for credential in credentials:
            slot = self._slots.get(credential.id)
            if slot is None:
                slot = Slot(credential)
            else:
                # Leases still point at this slot object: keep it, and its in-flight count.
                if slot.credential.cookie != credential.cookie:
                    slot.ejected, slot.cooling_until, slot.strikes, slot.cooled_by = False, 0.0, 0, None
                slot.credential = credential
            new_slots[credential.id] = slot
        self._slots = new_slots
        self.wake_waiters()

    # --- selection -----------------------------------------------------------------

    async def acquire(self, exclude: frozenset[str] | set[str] = frozenset(), wait_seconds: float = 0.0) -> Lease:
        """Lease the best credential, waiting up to `wait_seconds` while all are busy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            try:
                return self.try_acquire(exclude)
            except AllBusy:
                if loop.time() >= deadline:
                    raise
            await self.wait_for_change(deadline)

    async def wait_for_change(self, deadline: float) -> None:
        """Until a slot is released or the pool changes, or the loop's clock reaches `deadline`."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def try_acquire(self, exclude: frozenset[str] | set[str] = frozenset()) -> Lease:
        slots = list(self._slots.values())
        # Start the scan at a rotating offset so that ties spread across credentials.
        start = next(self._rotation) % len(slots) if slots else 0
        best = pool_policy.pick(slots, start, exclude, self._clock(), self._limit_of)
        if best is None:
            raise self.why_unavailable(exclude) or AllBusy("every credential is at its concurrency limit")
        return self.take(best)

    def _limit_of(self, slot: Slot) -> int:
        return self._limit(slot.credential)

    def take(self, slot: Slot) -> Lease:
        """A lease on `slot` whatever its load: the shared pool has already counted it."""
        slot.in_flight += 1
        return Lease(self, slot)

    def slots(self) -> list[Slot]:
        return list(self._slots.values())

    def now(self) -> float:
        return self._clock()

    async def unavailability(self, exclude: frozenset[str] | set[str] = frozenset()) -> PoolUnavailable | None:
        return self.why_unavailable(exclude)

    def why_unavailable(self, exclude: frozenset[str] | set[str] = frozenset()) -> PoolUnavailable | None:
        """Why nothing could be leased (ignoring `exclude`d ids), or None if something could."""
        found = pool_policy.refusal(pool_policy.tally(list(self._slots.values()), exclude, self._clock(),
                                                      self._limit_of))
        return self.explained(found, exclude) if found is not None else None

    def explained(self, refusal: PoolUnavailable, exclude: frozenset[str] | set[str] = frozenset()) -> PoolUnavailable:
        """`refusal`, or AllChallenged when every credential it found cooling was cooled by a
        Cloudflare challenge (as far as this replica's verdicts tell: the shared store keeps
        no reasons)."""
        if not isinstance(refusal, AllCoolingDown) or isinstance(refusal, AllChallenged):
            return refusal
        now = self._clock()
        cooling = [s for s in self._slots.values()
                   if not s.ejected and s.credential.id not in exclude and s.cooling_until > now]
        if cooling and all(s.cooled_by is Outcome.CHALLENGE for s in cooling):
            return AllChallenged(refusal.retry_after or 1.0)
        return refusal

    # --- verdicts ------------------------------------------------------------------

    def _record(self, slot: Slot, outcome: Outcome, retry_after: float | None) -> None:
        effect = pool_policy.effect_of(outcome)
        if effect is Effect.CLEAR_STRIKES:
            slot.strikes = 0
            slot.cooled_by = None
        elif effect is Effect.EJECT:
            slot.ejected = True
        elif effect is Effect.COOL_DOWN:
            slot.strikes += 1
            delay = self._cooldowns.delay_ms(slot.strikes, retry_after) / 1000
            slot.cooling_until = max(slot.cooling_until, self._clock() + delay)
            slot.cooled_by = outcome

    def _release(self, slot: Slot) -> None:
        slot.in_flight -= 1
        self.wake_waiters()

    def wake_waiters(self) -> None:
        """Every acquire waiting for a slot looks again."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def mirror(self, credential_id: str, ejected: bool, cooling_for: float, strikes: int) -> None:
        """Take on what the shared store says of a credential. A cooldown only ever grows
        here: a verdict this replica has just reported may not have reached the store yet."""
        slot = self._slots.get(credential_id)
        if slot is None:
            return
        lifted = slot.ejected and not ejected
        slot.ejected = ejected
        slot.strikes = strikes
        if cooling_for > 0:
            slot.cooling_until = max(slot.cooling_until, self._clock() + cooling_for)
        if lifted:
            self.wake_waiters()

    def reinstate(self, credential_id: str) -> None:
        slot = self._slots.get(credential_id)
        if slot is not None:
            slot.ejected = False
            slot.strikes = 0
            slot.cooling_until = 0.0
            slot.cooled_by = None
            self.wake_waiters()

    # --- views ---------------------------------------------------------------------

    def statuses(self) -> list[CredentialStatus]:
        now = self._clock()
        return [
            CredentialStatus(
                id=s.credential.id,
                health=s.health(now),
                in_flight=s.in_flight,
                cooling_for=max(0.0, s.cooling_until - now),
            )
            for s in self._slots.values()
        ]

    def ejected_credentials(self) -> list[Credential]:
        return [s.credential for s in self._slots.values() if s.ejected]

    def is_ready(self) -> bool:
        """At least one credential that is not ejected (cooling ones recover by themselves)."""
        return any(not s.ejected for s in self._slots.values())

    def total_in_flight(self) -> int:
        return sum(s.in_flight for s in self._slots.values())
