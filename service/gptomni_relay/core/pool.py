"""The credential pool: which cookie serves the next request, and what upstream said of each.

Selection is least-in-flight per unit of weight among usable credentials, capped by each
credential's maxConcurrency. Upstream verdicts change state: 401/403 eject a credential,
429 and Cloudflare challenges cool it down with exponential backoff (or the upstream's
Retry-After). Everything here runs on the event loop thread; no locks are needed.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from gptomni_common.upstream.protocol import Outcome
from gptomni_relay.core.errors import AllBusy, AllCoolingDown, NoCredentials, NothingLeftToTry, PoolUnavailable


@dataclass(frozen=True)
class Credential:
    id: str
    cookie: str = field(repr=False)
    weight: int = 1
    max_concurrency: int = 8


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


@dataclass
class _Slot:
    credential: Credential
    in_flight: int = 0
    ejected: bool = False
    cooling_until: float = 0.0
    strikes: int = 0

    def health(self, now: float) -> Health:
        if self.ejected:
            return Health.EJECTED
        if self.cooling_until > now:
            return Health.COOLING
        return Health.HEALTHY


class Lease:
    """One request's hold on one credential. Release exactly once (idempotent)."""

    def __init__(self, pool: CredentialPool, slot: _Slot) -> None:
        self._pool = pool
        self._slot = slot
        self._released = False
        self.credential = slot.credential

    def report(self, outcome: Outcome, retry_after: float | None = None) -> None:
        self._pool._record(self._slot, outcome, retry_after)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._slot)


class CredentialPool:
    def __init__(
        self,
        cooldown_base_seconds: float = 5.0,
        cooldown_max_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cooldown_base = cooldown_base_seconds
        self._cooldown_max = cooldown_max_seconds
        self._clock = clock
        self._slots: dict[str, _Slot] = {}
        self._rotation = itertools.count()
        self._waiters: list[asyncio.Future[None]] = []

    # --- configuration -------------------------------------------------------------

    def replace(self, credentials: Iterable[Credential]) -> None:
        """Install a new pool. State survives for unchanged ids; a new cookie lifts an ejection."""
        new_slots: dict[str, _Slot] = {}
        for credential in credentials:
            old = self._slots.get(credential.id)
            slot = _Slot(credential)
            if old is not None:
                slot.in_flight = old.in_flight
                slot.cooling_until = old.cooling_until
                slot.strikes = old.strikes
                slot.ejected = old.ejected and old.credential.cookie == credential.cookie
                # Leases still point at the old slot object; keep counting on it.
                old.credential = credential
                old.ejected = slot.ejected
                slot = old
            new_slots[credential.id] = slot
        self._slots = new_slots
        self._wake_waiters()

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
            waiter: asyncio.Future[None] = loop.create_future()
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
        now = self._clock()
        slots = list(self._slots.values())
        # Start the scan at a rotating offset so that ties spread across credentials.
        start = next(self._rotation) % len(slots) if slots else 0
        best: _Slot | None = None
        best_load = float("inf")
        for i in range(len(slots)):
            slot = slots[(start + i) % len(slots)]
            if slot.credential.id in exclude or slot.health(now) is not Health.HEALTHY:
                continue
            if slot.in_flight >= slot.credential.max_concurrency:
                continue
            load = slot.in_flight / slot.credential.weight
            if load < best_load:
                best, best_load = slot, load
        if best is None:
            raise self.unavailability(exclude) or AllBusy("every credential is at its concurrency limit")
        best.in_flight += 1
        return Lease(self, best)

    def unavailability(self, exclude: frozenset[str] | set[str] = frozenset()) -> PoolUnavailable | None:
        """Why nothing could be leased (ignoring `exclude`d ids), or None if something could."""
        now = self._clock()
        if not self._slots:
            return NoCredentials("no credentials are configured")
        usable = [s for s in self._slots.values() if not s.ejected]
        if not usable:
            return NoCredentials("every credential was rejected by the upstream")
        untried = [s for s in usable if s.credential.id not in exclude]
        if not untried:
            return NothingLeftToTry("every usable credential was already tried")
        healthy = [s for s in untried if s.health(now) is Health.HEALTHY]
        if not healthy:
            return AllCoolingDown(retry_after=max(1.0, min(s.cooling_until - now for s in untried)))
        if all(s.in_flight >= s.credential.max_concurrency for s in healthy):
            return AllBusy("every credential is at its concurrency limit")
        return None

    # --- verdicts ------------------------------------------------------------------

    def _record(self, slot: _Slot, outcome: Outcome, retry_after: float | None) -> None:
        if outcome is Outcome.OK:
            slot.strikes = 0
        elif outcome is Outcome.UNAUTHORIZED:
            slot.ejected = True
        elif outcome in (Outcome.RATE_LIMITED, Outcome.CHALLENGE):
            slot.strikes += 1
            backoff = self._cooldown_base * 2 ** min(slot.strikes - 1, 32)
            # The upstream's Retry-After is honoured up to our own cap: a hostile or broken
            # upstream must not park a cookie for a day.
            delay = min(retry_after if retry_after is not None else backoff, self._cooldown_max)
            slot.cooling_until = max(slot.cooling_until, self._clock() + delay)

    def _release(self, slot: _Slot) -> None:
        slot.in_flight -= 1
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def reinstate(self, credential_id: str) -> None:
        slot = self._slots.get(credential_id)
        if slot is not None:
            slot.ejected = False
            slot.strikes = 0
            slot.cooling_until = 0.0
            self._wake_waiters()

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
