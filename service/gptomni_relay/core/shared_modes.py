"""The shared pool's modes, and the one function that moves it between them.

    Fallback --Rejoined--> Settling --Settled--> Shared
        ^                     |                    |
        +-----StoreFailed-----+----StoreFailed-----+
        +------------------HeartbeatLost-----------+

- **Shared**: every acquire is the store's script; the limits hold cluster-wide.
- **Fallback**: the store does not answer (or lost this replica): acquires are this
  replica's own, within its share of each credential (the share table below).
- **Settling**: the store answers again and this replica's leases and verdicts are back
  in it; acquires go through the store but still within the share, until every replica
  has had a tick to do the same (docs/shared-pool.md, "Recovery").

`Observed` (every sync tick that reaches the store) refreshes the share table in any mode.
Every mode carries its `Shares`; `limit` is what a credential allows this replica in it.
Pure: no I/O, no clock of its own (events carry `now`), so each transition is tested alone
(tests/test_shared_modes.py); shared_pool.py does the I/O around them.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from gptomni_relay.core.pool import PoolMode


class Limited(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def max_concurrency(self) -> int: ...


@dataclass(frozen=True)
class Shares:
    """This replica's view of who shares each credential while the store is out of reach."""

    replica: str
    expected: int  # GPTOMNI_REPLICAS: the fewest replicas a share assumes
    replicas: tuple[str, ...] = ()  # live in the store, sorted, as last seen
    before: tuple[str, ...] | None = None  # live when it was last shared; kept until shared again
    others_excess: Mapping[str, int] = field(default_factory=dict)  # credential -> leases others hold beyond their shares

    def count(self, replicas: tuple[str, ...] | None = None) -> int:
        return max(self.expected, len(self.replicas if replicas is None else replicas))

    @staticmethod
    def rank_in(replica: str, replicas: tuple[str, ...]) -> int | None:
        return replicas.index(replica) if replica in replicas else None

    def of_rank(self, credential: Limited, rank: int | None, count: int | None = None) -> int:
        """A replica's share of a credential: the floor of maxConcurrency / replicas, plus
        one of the remainder's slots if the replica's rank (among those last seen in the
        store) is one that the rotation, which starts at a different rank for each
        credential, gives them to. The shares add up to maxConcurrency at most."""
        count = count or self.count()
        share, remainder = divmod(credential.max_concurrency, count)
        if remainder and rank is not None:
            offset = zlib.crc32(credential.id.encode("utf-8")) % count
            if (rank - offset) % count < remainder:
                share += 1
        return share

    def base(self, credential: Limited, with_before: bool) -> int:
        """The share before the others' excess; `with_before`: the smaller of the shares
        from the view before the outage and the view now (the others may still count on
        the old view)."""
        share = self.of_rank(credential, self.rank_in(self.replica, self.replicas))
        if with_before and self.before is not None:
            share = min(share, self.of_rank(credential, self.rank_in(self.replica, self.before),
                                            self.count(self.before)))
        return share

    def less_excess(self, credential: Limited, share: int) -> int:
        return max(0, share - self.others_excess.get(credential.id, 0))

    def excess_of(self, held_by_others: Mapping[str, Mapping[str, int]],
                  credentials: Mapping[str, Limited]) -> dict[str, int]:
        """Per credential, the leases other replicas hold beyond their shares (a replica no
        longer alive in the store has no share: all it holds is excess)."""
        ranks = {replica: rank for rank, replica in enumerate(self.replicas)}
        excess: dict[str, int] = {}
        for credential_id, held in held_by_others.items():
            credential = credentials.get(credential_id)
            if credential is None:
                continue
            over = sum(max(0, leases - (self.of_rank(credential, ranks[replica]) if replica in ranks else 0))
                       for replica, leases in held.items())
            if over:
                excess[credential_id] = over
        return excess


@dataclass(frozen=True)
class Shared:
    shares: Shares
    pool_mode = PoolMode.SHARED
    store_up = True

    def limit(self, credential: Limited, now: float) -> int:
        """Not applied (the store's script counts every replica): what a share would be."""
        return self.shares.less_excess(credential, self.shares.base(credential, with_before=False))


@dataclass(frozen=True)
class Fallback:
    shares: Shares
    # Requests the others took in shared mode run on after the store went away; like a
    # lease nobody renews, their excess counts for one lease time from the outage's start.
    excess_until: float = 0.0
    pool_mode = PoolMode.FALLBACK
    store_up = False

    def limit(self, credential: Limited, now: float) -> int:
        share = self.shares.base(credential, with_before=True)
        return self.shares.less_excess(credential, share) if now < self.excess_until else share


@dataclass(frozen=True)
class Settling:
    shares: Shares
    until: float  # shared again no sooner (every replica has had a tick to rejoin)...
    deadline: float  # ...and, unless the replicas of before are all back, no later than this
    outage: Fallback  # where a failure before the store is confirmed goes back to (the same outage)
    confirmed: bool = False  # a sync tick has reached the store since rejoining
    pool_mode = PoolMode.FALLBACK  # to metrics and readiness: not yet cluster-wide
    store_up = True

    def limit(self, credential: Limited, now: float) -> int:
        return self.shares.less_excess(credential, self.shares.base(credential, with_before=True))

    def may_end(self, now: float) -> bool:
        if now < self.until:
            return False
        peers_back = set(self.shares.before or ()) - {self.shares.replica} <= set(self.shares.replicas)
        return peers_back or now >= self.deadline


Mode = Shared | Fallback | Settling


# --- events -------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoreFailed:
    """A command failed, or the connection closed (even an idle one: the store may have restarted)."""

    now: float
    lease_seconds: float


@dataclass(frozen=True)
class HeartbeatLost:
    """In shared mode, the store no longer knew this replica: it restarted, or this process stalled."""

    now: float
    lease_seconds: float


@dataclass(frozen=True)
class Rejoined:
    """This replica's live leases and the verdicts it learnt meanwhile are in the store again."""

    now: float
    sync_seconds: float
    lease_seconds: float


@dataclass(frozen=True)
class Observed:
    """A sync tick reached the store: the live replicas, and the others' excess over their shares."""

    replicas: tuple[str, ...]
    others_excess: Mapping[str, int]


@dataclass(frozen=True)
class Settled:
    """Settling may end: `all_registered` says whether every lease of this replica is in the
    store; `at_start`: at start-up (nothing of this replica's to settle: shared at once)."""

    now: float
    all_registered: bool
    at_start: bool = False


Event = StoreFailed | HeartbeatLost | Rejoined | Observed | Settled


def transition(mode: Mode, event: Event) -> Mode:
    """The mode after `event`. Events that do not apply to a mode leave it as it is."""
    shares = mode.shares
    if isinstance(event, Observed):
        shares = replace(shares, replicas=tuple(sorted(event.replicas)), others_excess=dict(event.others_excess))
        if isinstance(mode, Settling):
            return replace(mode, shares=shares, confirmed=True)
        return replace(mode, shares=shares)
    if isinstance(event, StoreFailed):
        if isinstance(mode, Shared):
            return Fallback(replace(shares, before=shares.replicas), excess_until=event.now + event.lease_seconds)
        if isinstance(mode, Settling):
            if not mode.confirmed:  # the same outage: its excess window runs on
                return replace(mode.outage, shares=shares)
            return Fallback(shares, excess_until=event.now + event.lease_seconds)
        return mode  # already in fallback: the same outage
    if isinstance(event, HeartbeatLost):
        if isinstance(mode, Shared):
            return Fallback(replace(shares, before=shares.replicas), excess_until=event.now + event.lease_seconds)
        return mode
    if isinstance(event, Rejoined):
        if isinstance(mode, Fallback):
            until = event.now + event.sync_seconds * 1.5
            return Settling(shares, until=until, deadline=until + event.lease_seconds, outage=mode)
        return mode
    if isinstance(event, Settled):
        if isinstance(mode, Settling) and event.all_registered and (event.at_start or mode.may_end(event.now)):
            return Shared(replace(shares, before=None))
        return mode
    raise TypeError(f"not a shared-pool event: {event!r}")
