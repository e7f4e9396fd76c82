"""Selection and verdict rules of the pool, on a controllable clock."""

from __future__ import annotations

import pytest

from gptomni_common.upstream import Outcome
from gptomni_relay.core.errors import AllBusy, AllCoolingDown, NoCredentials
from gptomni_relay.core.pool import Credential, CredentialPool, Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool_of(*credentials: Credential, clock: Clock | None = None) -> CredentialPool:
    pool = CredentialPool(cooldown_base_seconds=5, cooldown_max_seconds=40, clock=clock or Clock())
    pool.replace(credentials)
    return pool


def test_least_in_flight_per_weight() -> None:
    pool = pool_of(Credential("a", "ca", weight=1, max_concurrency=100), Credential("b", "cb", weight=3, max_concurrency=100))
    leases = [pool.try_acquire() for _ in range(40)]
    counts = {"a": 0, "b": 0}
    for lease in leases:
        counts[lease.credential.id] += 1
    assert counts == {"a": 10, "b": 30}


def test_ties_rotate_instead_of_always_picking_the_first() -> None:
    pool = pool_of(Credential("a", "ca"), Credential("b", "cb"), Credential("c", "cc"))
    picked = []
    for _ in range(6):
        lease = pool.try_acquire()
        picked.append(lease.credential.id)
        lease.release()
    assert set(picked) == {"a", "b", "c"}


def test_max_concurrency_then_busy() -> None:
    pool = pool_of(Credential("a", "ca", max_concurrency=2))
    first, _ = pool.try_acquire(), pool.try_acquire()
    with pytest.raises(AllBusy):
        pool.try_acquire()
    first.release()
    first.release()  # idempotent
    assert pool.try_acquire().credential.id == "a"
    assert pool.total_in_flight() == 2


def test_exponential_backoff_capped_and_reset_by_success() -> None:
    clock = Clock()
    pool = pool_of(Credential("a", "ca"), clock=clock)
    delays = []
    for _ in range(5):
        lease = pool.try_acquire()
        lease.report(Outcome.RATE_LIMITED)
        lease.release()
        with pytest.raises(AllCoolingDown) as caught:
            pool.try_acquire()
        delays.append(caught.value.retry_after)
        clock.now += caught.value.retry_after
    assert delays == [5, 10, 20, 40, 40]
    lease = pool.try_acquire()
    lease.report(Outcome.OK)
    lease.report(Outcome.CHALLENGE, retry_after=3)
    assert pool.statuses()[0].cooling_for == 3


def test_unauthorized_ejects_until_reinstated_or_new_cookie() -> None:
    pool = pool_of(Credential("a", "ca"))
    pool.try_acquire().report(Outcome.UNAUTHORIZED)
    assert pool.statuses()[0].health is Health.EJECTED and not pool.is_ready()
    with pytest.raises(NoCredentials):
        pool.try_acquire()
    pool.reinstate("a")
    assert pool.is_ready()


def test_leases_from_before_a_reload_release_cleanly() -> None:
    pool = pool_of(Credential("a", "ca"))
    old = pool.try_acquire()
    pool.replace([Credential("b", "cb")])
    old.release()
    assert [s.in_flight for s in pool.statuses()] == [0]


def test_transient_errors_do_not_change_state() -> None:
    pool = pool_of(Credential("a", "ca"))
    lease = pool.try_acquire()
    lease.report(Outcome.ERROR)
    lease.report(Outcome.TIMEOUT)
    assert pool.statuses()[0].health is Health.HEALTHY
