"""One pool for every relay replica: per-cookie limits and verdicts kept in a shared store.

With `GPTOMNI_REDIS_URL` set, each acquire is one atomic script in Redis
(shared_store.py) that picks the least-loaded credential by its cluster-wide in-flight
count and takes a slot there, so across all replicas a cookie never has more than its
`maxConcurrency` requests in flight. A 429, a challenge or a rejection reported by any
replica is in the store at once, and every acquire reads it there.

A slot is a lease with an expiry. The replica renews its leases (and its heartbeat) every
sync tick, so a stream that runs for minutes keeps its slot while a replica that dies
stops renewing, and its slots come back within the lease time.

The local `CredentialPool` is this replica's lease ledger: its own leases, and the
store's verdicts mirrored (for metrics and readiness). The modes — shared, settling,
fallback with its share table — and the one function that moves between them are
shared_modes.py's; this module does the I/O around them. When the store does not answer,
this replica leases from its ledger only its share of each cookie,
`maxConcurrency // replicas`, the remainder going to the first replicas in a rotation
that differs per cookie, so the shares never add up to more than the limit
(docs/shared-pool.md). The sync tick keeps trying the store; when it answers, this replica
puts its live leases and what it learnt meanwhile back into the store, settles (acquiring
through the store, still within its share) until the other replicas have done the same,
and returns to shared mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from functools import partial

from gptomni_common.upstream.protocol import Outcome
from gptomni_relay.core import pool_policy
from gptomni_relay.core.errors import AllBusy, NoCredentials, PoolUnavailable
from gptomni_relay.core.pool import (
    Credential,
    CredentialPool,
    CredentialStatus,
    Lease,
    PoolMode,
    Slot,
)
from gptomni_relay.core.pool_policy import Cooldowns, Effect, effect_of
from gptomni_relay.core.shared_modes import (
    Event,
    Fallback,
    HeartbeatLost,
    Mode,
    Observed,
    Rejoined,
    Settled,
    Settling,
    Shared,
    Shares,
    StoreFailed,
    transition,
)
from gptomni_relay.core.shared_store import Candidate, SharedStore, cookie_fingerprint
from gptomni_relay.core.store_link import StoreUnavailable

log = logging.getLogger(__name__)

# A request waiting for a slot retries this often (jittered) for slots other replicas
# free; a slot this replica frees wakes it at once.
WAIT_POLL_SECONDS = 0.05
# How long the last background writes may take at shutdown.
STOP_FLUSH_SECONDS = 2.0


class SharedLease:
    """A lease in the shared pool: this replica's local lease plus its member in the store."""

    __slots__ = ("credential", "key", "member", "registered", "_pool", "_local", "_released")

    def __init__(self, pool: SharedCredentialPool, local: Lease, key: str, member: str, registered: bool) -> None:
        self.credential = local.credential
        self.key = key
        self.member = member
        self.registered = registered  # believed to be in the store
        self._pool = pool
        self._local = local
        self._released = False

    def report(self, outcome: Outcome, retry_after: float | None = None) -> None:
        had_strikes = self._local.strikes > 0
        self._local.report(outcome, retry_after)
        self._pool._report(self.credential, outcome, retry_after, had_strikes)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._local.release()
            self._pool._forget(self)


class SharedCredentialPool:
    def __init__(self, store: SharedStore, *, replica_id: str, expected_replicas: int, lease_seconds: float,
                 sync_seconds: float, cooldown_base_seconds: float = 5.0, cooldown_max_seconds: float = 300.0,
                 store_address: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        store.on_connection_lost(self._store_failed)  # even an idle one: the store may have restarted
        # `clock` times the local book's cooldowns and the outage's excess window (tests
        # pass a fake one); the store's leases and cooldowns run on Redis's own clock.
        # The local pool is this replica's lease ledger (and, in fallback, what it leases
        # from); the share a credential allows is the mode's (shared_modes.py).
        self._local = CredentialPool(cooldown_base_seconds, cooldown_max_seconds, clock=clock)
        self._cooldowns = Cooldowns.from_seconds(cooldown_base_seconds, cooldown_max_seconds)
        self._replica = replica_id
        self._lease_seconds = lease_seconds
        self._sync_seconds = sync_seconds
        self._address = store_address
        self._mode: Mode = Fallback(Shares(replica_id, max(1, expected_replicas)))
        self._in_outage = False  # logged once per outage
        self._registered_on_return = 0
        self._settling = asyncio.Lock()
        self._leases: dict[str, SharedLease] = {}  # member -> this replica's live leases
        self._unreleased: set[tuple[str, str]] = set()  # released while the store was out of reach
        self._registering = False
        self._slots: list[Slot] = []
        self._candidates: list[Candidate] = []
        self._prepared = store.prepare([])
        self._sequence = itertools.count()
        self._rotation = itertools.count()
        self._background: set[asyncio.Future[object]] = set()  # writes nobody waits for
        self._syncer: asyncio.Task[None] | None = None

    # --- what the relay reads ------------------------------------------------------

    @property
    def mode(self) -> PoolMode:
        return self._mode.pool_mode

    @property
    def store_up(self) -> bool:
        return self._mode.store_up

    @property
    def state(self) -> Mode:
        """The mode with its share table (shared_modes.py)."""
        return self._mode

    @property
    def replica_id(self) -> str:
        return self._replica

    def statuses(self) -> list[CredentialStatus]:
        """Health as the store says (mirrored every tick); in-flight counts of this replica."""
        return self._local.statuses()

    def ejected_credentials(self) -> list[Credential]:
        return self._local.ejected_credentials()

    def is_ready(self) -> bool:
        return self._local.is_ready()

    def total_in_flight(self) -> int:
        return self._local.total_in_flight()

    def share(self, credential: Credential) -> int:
        """This replica's limit on `credential` in its mode (what a share would be, when shared)."""
        return self._mode.limit(credential, self._local.now())

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await self.sync_once()
        self._move(Settled(self._local.now(), all_registered=not self._leases, at_start=True))
        self._syncer = asyncio.create_task(self._sync_forever(), name="shared-pool-sync")

    async def stop(self) -> None:
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
            self._syncer = None
        await self.flush(STOP_FLUSH_SECONDS)
        if self.store_up:
            leftovers = {(lease.key, lease.member) for lease in self._leases.values() if lease.registered}
            with contextlib.suppress(StoreUnavailable):
                await self._store.release_all(leftovers | self._unreleased)
                await self._store.leave(self._replica)
        await self._store.aclose()

    async def flush(self, timeout: float) -> None:
        """Waits (at most `timeout`) for the writes released leases and verdicts started."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)

    # --- configuration -------------------------------------------------------------

    def replace(self, credentials: Iterable[Credential]) -> None:
        self._local.replace(credentials)
        self._slots = self._local.slots()
        self._candidates = [
            Candidate(s.credential.id, s.credential.max_concurrency, s.credential.weight,
                      cookie_fingerprint(s.credential.cookie))
            for s in self._slots
        ]
        self._prepared = self._store.prepare(self._candidates)

    def reinstate(self, credential_id: str) -> None:
        self._local.reinstate(credential_id)
        if self.store_up:
            self._spawn(self._store.reinstate(credential_id))

    # --- selection -----------------------------------------------------------------

    async def acquire(self, exclude: frozenset[str] | set[str] = frozenset(), wait_seconds: float = 0.0) -> SharedLease:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            mode = self._mode
            try:
                if isinstance(mode, Shared):
                    return await self._acquire_shared(exclude)
                if isinstance(mode, Settling):  # in the store, and within this replica's share
                    # One at a time, so that each counts the ones before it (in the local book).
                    async with self._settling:
                        if isinstance(self._mode, Shared):
                            return await self._acquire_shared(exclude)
                        if isinstance(self._mode, Settling):
                            return await self._acquire_shared(exclude, self._at_share())
                    continue  # the store went away meanwhile
                return self._adopt(self._acquire_in_fallback(exclude))
            except StoreUnavailable:
                continue  # now in fallback: try again there at once
            except AllBusy:
                if loop.time() >= deadline:
                    raise
            wake_at = deadline
            if mode.store_up:
                wake_at = min(deadline, loop.time() + WAIT_POLL_SECONDS * (0.5 + random.random()))
            elif isinstance(mode, Fallback) and self._local.now() < mode.excess_until:  # the share grows then
                wake_at = min(deadline, loop.time() + mode.excess_until - self._local.now())
            await self._local.wait_for_change(wake_at)

    def _limit(self, slot: Slot) -> int:
        return self._mode.limit(slot.credential, self._local.now())

    def _acquire_in_fallback(self, exclude: frozenset[str] | set[str]) -> Lease:
        """A lease from the local ledger, within this replica's share (pool_policy's rules)."""
        slots = self._local.slots()
        start = next(self._rotation) % len(slots) if slots else 0
        now = self._local.now()
        best = pool_policy.pick(slots, start, exclude, now, self._limit)
        if best is None:
            raise self._fallback_refusal(exclude) or AllBusy("every credential is at its concurrency limit")
        return self._local.take(best)

    def _fallback_refusal(self, exclude: frozenset[str] | set[str]) -> PoolUnavailable | None:
        found = pool_policy.refusal(pool_policy.tally(self._local.slots(), exclude, self._local.now(), self._limit))
        return self._local.explained(found, exclude) if found is not None else None

    async def _acquire_shared(self, exclude: frozenset[str] | set[str], at_share: frozenset[str] = frozenset()) -> SharedLease:
        slots, candidates, prepared = self._slots, self._candidates, self._prepared
        if not slots:
            raise NoCredentials("no credentials are configured")
        member = f"{self._replica}:{next(self._sequence)}"
        start = next(self._rotation) % len(slots)
        # The script runs to its end even if this request is cancelled meanwhile (a
        # hang-up): then the slot it took is given back as soon as the answer comes.
        call = self._store.acquire(prepared, exclude | at_share if at_share else exclude, member, start)
        try:
            picked = await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(partial(self._abandoned, candidates, member))
            raise
        except StoreUnavailable as exc:
            self._store_failed(exc)
            raise
        if isinstance(picked, PoolUnavailable):
            if at_share and not isinstance(picked, NoCredentials):
                raise AllBusy("every credential is at this replica's share of its concurrency limit")
            raise self._local.explained(picked, exclude)
        return self._adopt(self._local.take(slots[picked]), member, registered=True)

    def _adopt(self, local: Lease, member: str | None = None, registered: bool = False) -> SharedLease:
        """Wraps a local lease: taken in the store (`registered`) or, in fallback mode, not."""
        member = member or f"{self._replica}:{next(self._sequence)}"
        lease = SharedLease(self, local, self._store.lease_key(local.credential.id), member, registered)
        self._leases[member] = lease
        return lease

    def _at_share(self) -> frozenset[str]:
        return frozenset(s.credential.id for s in self._slots if s.in_flight >= self._limit(s))

    def _abandoned(self, candidates: list[Candidate], member: str, call: asyncio.Future[int | PoolUnavailable]) -> None:
        if call.cancelled() or call.exception() is not None:
            return
        picked = call.result()
        if isinstance(picked, int):
            self._release_in_store(self._store.lease_key(candidates[picked].id), member)

    async def unavailability(self, exclude: frozenset[str] | set[str] = frozenset()) -> PoolUnavailable | None:
        if isinstance(self._mode, Shared) and self._slots:
            try:
                found = await self._store.acquire(self._prepared, exclude, "", 0, dry=True)
            except StoreUnavailable as exc:
                self._store_failed(exc)
            else:
                return self._local.explained(found, exclude) if isinstance(found, PoolUnavailable) else None
        return self._fallback_refusal(exclude)

    # --- what the leases tell the store --------------------------------------------

    def _report(self, credential: Credential, outcome: Outcome, retry_after: float | None, had_strikes: bool) -> None:
        if not self.store_up:
            return  # learnt locally; put into the store when it answers again
        effect = effect_of(outcome)
        if effect is Effect.CLEAR_STRIKES:
            if had_strikes:
                self._spawn(self._store.clear_strikes(credential.id))
        elif effect is Effect.EJECT:
            self._spawn(self._store.eject(credential.id, cookie_fingerprint(credential.cookie)))
        elif effect is Effect.COOL_DOWN:
            self._spawn(self._store.cool_down(credential.id, self._cooldowns, retry_after))

    def _forget(self, lease: SharedLease) -> None:
        self._leases.pop(lease.member, None)
        if self._registering:  # it may be in the registration on its way: remove it after that
            self._unreleased.add((lease.key, lease.member))
            return
        if not lease.registered:
            return
        if not self.store_up:
            self._unreleased.add((lease.key, lease.member))
            return
        self._release_in_store(lease.key, lease.member)

    def _release_in_store(self, key: str, member: str) -> None:
        """Sends the release without waiting for it (the request is done); `flush` can."""
        call = self._store.release(key, member)
        self._background.add(call)
        call.add_done_callback(partial(self._released_in_store, (key, member)))

    def _released_in_store(self, lease: tuple[str, str], call: asyncio.Future[int]) -> None:
        self._background.discard(call)
        error = StoreUnavailable("the release was cancelled") if call.cancelled() else call.exception()
        if error is None:
            # A waiter woken by the local release may have asked the store just before this.
            self._local.wake_waiters()
            return
        self._unreleased.add(lease)  # the next sync tick that reaches the store retries it
        if isinstance(error, StoreUnavailable):
            self._store_failed(error)
        else:
            log.error("shared pool: a release failed", extra={"error": f"{type(error).__name__}: {error}"})

    def _spawn(self, call: Awaitable[object]) -> None:
        task = asyncio.ensure_future(self._guarded(call))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _guarded(self, call: Awaitable[object]) -> None:
        try:
            await call
        except StoreUnavailable as exc:
            self._store_failed(exc)
        except Exception:
            log.exception("shared pool: a write to the store failed")

    # --- the sync tick ---------------------------------------------------------------

    async def _sync_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            next_tick = loop.time() + self._sync_seconds
            try:
                await self.sync_once()
            except Exception:
                log.exception("shared pool: sync tick failed")
            await asyncio.sleep(max(0.0, next_tick - loop.time()))

    async def sync_once(self) -> None:
        """Heartbeat, lease renewal and the store's verdicts; after an outage, rejoining."""
        credentials = [(c.id, c.fingerprint) for c in self._candidates]
        try:
            if isinstance(self._mode, Fallback):
                # Leases first, heartbeat after: a replica alive in the store has its leases there.
                await self._rejoin()
            leases = [(lease.key, lease.member) for lease in self._leases.values() if lease.registered]
            snapshot = await self._store.sync(self._replica, leases, credentials)
            if self._in_outage:
                self._in_outage = False
                log.info("shared pool store reachable again: leases re-registered; cluster-wide limits once the "
                         "other replicas are back", extra={"store": self._address, "leases": self._registered_on_return,
                                                            "replicas": len(snapshot.replicas)})
            replicas = tuple(sorted(snapshot.replicas))
            if isinstance(self._mode, Shared) and not snapshot.heartbeat_was_alive:
                log.warning("shared pool: this replica's heartbeat had expired in the store (store restarted, or "
                            "this process stalled); re-registering its leases", extra={"store": self._address})
                self._move(HeartbeatLost(self._local.now(), self._lease_seconds))
                self._move(Observed(replicas, self._mode.shares.others_excess))
                await self._rejoin()
                return  # the snapshot predates what was just put back
            for credential_id, verdict in snapshot.verdicts.items():
                self._local.mirror(credential_id, verdict.ejected, verdict.cooling_for, verdict.strikes)
            seen = replace(self._mode.shares, replicas=replicas)
            by_id = {slot.credential.id: slot.credential for slot in self._slots}
            excess = seen.excess_of({cid: v.held_by_others for cid, v in snapshot.verdicts.items()}, by_id)
            self._move(Observed(replicas, excess))
            if isinstance(self._mode, Settling) and self._mode.may_end(self._local.now()):
                await self._register_pending()
                # Leases taken in fallback during that await are not in the store yet: next tick.
                self._move(Settled(self._local.now(), all(lease.registered for lease in self._leases.values())))
        except StoreUnavailable as exc:
            self._store_failed(exc)

    async def _rejoin(self) -> None:
        """Puts this replica's live leases and the verdicts it learnt while away into the
        store (whether the store lost them or not), then settles (shared_modes.Settling)."""
        for lease in self._leases.values():
            lease.registered = False
        registered = await self._register_pending(*self._learnt(), always=True)  # a round trip, even if empty
        # From here on, acquires go through the store (within the share), and verdicts are written there.
        self._move(Rejoined(self._local.now(), self._sync_seconds, self._lease_seconds))
        # Leases taken and verdicts learnt in fallback during that await: all verdicts again
        # (a cooldown in the store is only ever lengthened, an ejection written twice is one).
        registered += await self._register_pending(*self._learnt())
        self._registered_on_return = registered

    def _learnt(self) -> tuple[list[tuple[str, float]], list[tuple[str, str]]]:
        """The cooldowns and ejections of the local ledger, to put into the store on rejoining."""
        now = self._local.now()
        slots = self._local.slots()
        cooling = [(s.credential.id, s.cooling_until - now) for s in slots if s.cooling_until > now]
        ejected = [(s.credential.id, cookie_fingerprint(s.credential.cookie)) for s in slots if s.ejected]
        return cooling, ejected

    async def _register_pending(self, cooling: list[tuple[str, float]] | None = None,
                                ejected: list[tuple[str, str]] | None = None, always: bool = False) -> int:
        pending = [lease for lease in self._leases.values() if not lease.registered]
        if pending or cooling or ejected or always:
            self._registering = True  # a release meanwhile waits in _unreleased
            try:
                await self._store.register([(lease.key, lease.member) for lease in pending], cooling or [],
                                           ejected or [])
            finally:
                self._registering = False
            for lease in pending:
                lease.registered = True
        stale, self._unreleased = self._unreleased, set()
        if stale:
            try:
                await self._store.release_all(stale)
            except StoreUnavailable:
                self._unreleased |= stale
                raise
        return len(pending)

    def _move(self, event: Event) -> None:
        """The one place the mode changes (shared_modes.transition); its effects here."""
        before, self._mode = self._mode, transition(self._mode, event)
        if isinstance(self._mode, Shared) and not isinstance(before, Shared):
            message = ("shared pool store reachable: cluster-wide limits" if isinstance(event, Settled) and event.at_start
                       else "shared pool store answers again: back to cluster-wide limits")
            log.info(message, extra={"store": self._address, "replica": self._replica,
                                     "replicas": len(self._mode.shares.replicas)})
            self._local.wake_waiters()

    def _store_failed(self, exc: StoreUnavailable) -> None:
        self._move(StoreFailed(self._local.now(), self._lease_seconds))
        if not self._in_outage:
            self._in_outage = True
            # The connection may be stale, or to a node that stopped being the primary.
            self._store.reconnect()
            log.warning(
                "shared pool store unreachable: this replica serves within its share of each credential until "
                "the store answers again",
                extra={"store": self._address, "error": str(exc), "replicas_assumed": self._mode.shares.count(),
                       "shares": {s.credential.id: self._limit(s) for s in self._slots}},
            )
